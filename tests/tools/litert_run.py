"""Runs a .tflite encoder with ai-edge-litert alone, as an app would: TensorFlow is never imported.

Usage: python litert_run.py MODEL.tflite mel|waveform INPUT.npy OUTPUT.npy
Writes `embedding` (mel model) or `patch_embeddings` (waveform model).
"""
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def main(model, kind, src, dst):
  x = np.load(src)
  interpreter = Interpreter(model_path=model)
  interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
  interpreter.allocate_tensors()
  out = interpreter.get_signature_runner()(**{kind: x})
  np.save(dst, out["embedding" if kind == "mel" else "patch_embeddings"])
  assert "tensorflow" not in sys.modules, "TensorFlow was imported"


if __name__ == "__main__":
  main(*sys.argv[1:])
