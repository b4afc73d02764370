"""tfcmir: music audio embeddings from multiple cross-modal contrastive learning (Ferraro et al. 2021)."""

import os

# TensorFlow's C++ INFO and WARNING lines (CUDA probing, oneDNN notices) drown the progress output of
# every command; users who want them set TF_CPP_MIN_LOG_LEVEL themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
