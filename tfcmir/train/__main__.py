"""`python -m tfcmir.train --flagfile=...`: see tfcmir/train/cli.py."""

from tfcmir import flags as tfcmir_flags
from tfcmir.train import cli

if __name__ == "__main__":
  tfcmir_flags.run_main(cli.main)
