"""`python -m tfcmir.search SUBCOMMAND --index=DIR ...`: see tfcmir/search/cli.py."""

from tfcmir import flags as tfcmir_flags
from tfcmir.search import cli

if __name__ == "__main__":
  tfcmir_flags.run_main(cli.main, allow_args=True)
