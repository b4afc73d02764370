"""`python -m tfcmir.evaluate --flagfile=...`: see tfcmir/evaluate/cli.py."""

from tfcmir import flags as tfcmir_flags
from tfcmir.evaluate import cli

if __name__ == "__main__":
  tfcmir_flags.run_main(cli.main)
