"""tfcmir: music audio embeddings from multiple cross-modal contrastive learning.

Pins follow ../shared/STACK.md (the set verified to work together on CPython 3.11, x86-64).
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "tensorflow==2.21.0",  # not tensorflow-cpu: one wheel runs everywhere; mixing both corrupts
    "keras==3.15.1",
    "numpy>=2.4,<2.5",
    "scipy>=1.13",
    "gensim==4.4.0",
    "scikit-learn>=1.9,<1.10",
    "annoy==1.17.3",
    "absl-py==2.5.1",
    "iterative-stratification==0.1.9",
    "soundfile==0.14.0",
    "soxr>=1.1,<1.2",
    "tqdm>=4.66",
    "faiss-cpu==1.15.1",  # cosine search: the continuation (tfcmir/evaluate/continuation.py), tfcmir.search
    "matplotlib>=3.9,<4",  # evaluation plots (confusion matrix, embedding map)
]

SERVING = [
    "tensorflow-serving-api==2.21.0",  # PredictionLog protos for TF Serving warm-up files
    "ai-edge-litert==2.3.0",           # the TFLite runtime an app uses, without TensorFlow
]

# ONNX: the runtime `embed --artifact=onnx` and apps use, and the converter export needs to write onnx/.
ONNX = ["onnxruntime==1.32.0", "tf2onnx==1.17.0", "onnx==1.23.2"]
LIGHTFM = ["lightfm-next==1.19.0"]

# Beam runs prepare and embed on a cluster (--runner); [tfrecord] brings crcmod for its TFRecord sink.
BEAM = ["apache-beam[tfrecord]==2.77.0"]

EXTRAS = {
    "serving": SERVING,
    "beam": BEAM,
    "onnx": ONNX,
    # LightFM (the authors' WARP library) as its maintained fork: --cf_backend=lightfm and the WARP
    # reference of tests/test_warp.py. 1.19.0 ships only a source archive (built with the C compiler).
    "lightfm": LIGHTFM,
    "bench": ["implicit==0.7.3"] + LIGHTFM,  # reference BPR and LightFM for benchmarks/warp.py
    # Essentia's pip build is a pre-release; the exact pin lets pip take it without --pre.
    "test": ["pytest>=8", "pytest-xdist==3.8.0", "essentia-tensorflow==2.1b6.dev1389"]
            + SERVING + BEAM  # tests/test_beam.py
            + LIGHTFM,  # tests/test_warp.py
}
EXTRAS["test"] += ONNX  # tests/test_export.py runs the ONNX models

setup(
    name="tfcmir",
    version="0.1.0",
    description="Music audio embeddings from multiple cross-modal contrastive learning "
                "(Ferraro et al., IEEE SPL 2021) in TensorFlow/Keras",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tfcmir", "tfcmir.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
