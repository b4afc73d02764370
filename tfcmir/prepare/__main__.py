"""`python -m tfcmir.prepare --flagfile=...`: see tfcmir/prepare/cli.py."""

from tfcmir import flags as tfcmir_flags
from tfcmir.prepare import cli

if __name__ == "__main__":
  tfcmir_flags.run_main(cli.main, pipeline_options=True)
