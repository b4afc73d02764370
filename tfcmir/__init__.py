"""tfcmir: music audio embeddings from multiple cross-modal contrastive learning (Ferraro et al. 2021)."""

from tfcmir import runtime

# Before TensorFlow loads (tfcmir/runtime.py says why): oneDNN kernels on every x86 CPU, quiet start.
runtime.configure_environment()
runtime.quiet_tensorflow_start()


def _preflight():
  """`python -m tfcmir.X --bad-flag` fails (and --help answers) here, before X imports TensorFlow."""
  import sys

  # While `python -m` locates the command's module (and so imports this package), argv[0] is "-m".
  if sys.argv[:1] == ["-m"]:
    from tfcmir import flags

    module = flags.command_module()
    if module:
      flags.preflight(module, sys.argv[1:])


_preflight()

__version__ = "0.1.0"
