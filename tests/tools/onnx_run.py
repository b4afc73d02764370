"""Runs an .onnx encoder with onnxruntime alone, as an app would: TensorFlow is never imported.

Usage: python onnx_run.py MODEL.onnx OUTPUT.npz INPUT.npy [INPUT.npy ...]
Each input goes to the model's one input in its own call; OUTPUT.npz holds output NAME of input i as
`NAME_i`, and `input_shape` the model's declared input shape.
"""
import sys

import numpy as np
import onnxruntime as ort


def main(model, dst, *sources):
  session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
  (declared,) = session.get_inputs()
  names = [o.name for o in session.get_outputs()]
  out = {"input_shape": np.array([str(d) for d in declared.shape])}
  for i, src in enumerate(sources):
    for name, value in zip(names, session.run(names, {declared.name: np.load(src)})):
      out[f"{name}_{i}"] = value
  np.savez(dst, **out)
  assert "tensorflow" not in sys.modules, "TensorFlow was imported"


if __name__ == "__main__":
  main(*sys.argv[1:])
