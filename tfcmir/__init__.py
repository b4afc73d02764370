"""tfcmir: music audio embeddings from multiple cross-modal contrastive learning (Ferraro et al. 2021)."""

from tfcmir import runtime

# Before TensorFlow loads (tfcmir/runtime.py says why): oneDNN kernels on every x86 CPU, quiet start.
runtime.configure_environment()
runtime.quiet_tensorflow_start()

__version__ = "0.1.0"
