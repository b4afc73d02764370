"""Runs an exported tfcmir Essentia model (.pb) with Essentia's own TensorflowPredict; own process only.

Essentia's pip build bundles libtensorflow 2.5 and aborts when TensorFlow was imported first, so the
tests call this script with subprocess rather than importing Essentia.

Usage:
  python essentia_predict.py patches GRAPH.pb PATCHES.npy EMBEDDINGS.npy PROJECTION.npy
      PATCHES.npy: float32 (batch, 256, 48) time-major mel patches in dB.
  python essentia_predict.py audio GRAPH.pb AUDIO EMBEDDINGS.npy PROJECTION.npy [MEL.npy]
      AUDIO: any file MonoLoader decodes; the documented Essentia front end, end to end.
  Writes float32 (batch, D) arrays: one row per patch.
"""
import sys

import essentia
import essentia.standard as es
import numpy as np
# The same Essentia mel chain tests/test_audio.py checks tfcmir.audio against (this script's directory
# is on sys.path when it runs as a script).
from essentia_mel import melon_mel

PATCH_FRAMES = 256
NUM_BANDS = 48
OUTPUTS = ["embeddings", "projection"]


def patches_of(mel):
  """Non-overlapping 256-frame patches, the last partial one dropped: (batch, 256, 48)."""
  count = len(mel) // PATCH_FRAMES
  if count == 0:
    raise SystemExit(f"audio too short: {len(mel)} frames, a patch needs {PATCH_FRAMES}")
  return mel[:count * PATCH_FRAMES].reshape(count, PATCH_FRAMES, NUM_BANDS)


def predict(graph, patches):
  """TensorflowPredict on (batch, 256, 48) patches: {output name: float32 (batch, D)}."""
  pool = essentia.Pool()
  # The Pool holds 4-D tensors: (batch, 1, frames, bands); squeeze=True (the default) drops the 1.
  pool.set("mel", np.ascontiguousarray(patches[:, None], dtype=np.float32))
  model = es.TensorflowPredict(graphFilename=graph, inputs=["mel"], outputs=OUTPUTS)
  out = model(pool)
  # Outputs come back 4-D as well, (batch, 1, 1, D).
  return {name: np.asarray(out[name], np.float32).reshape(len(patches), -1) for name in OUTPUTS}


def main(args):
  mode, graph, src, emb_out, proj_out = args[:5]
  if mode == "patches":
    patches = np.load(src).astype(np.float32)
  elif mode == "audio":
    mel = melon_mel(es.MonoLoader(filename=src, sampleRate=16000)())
    if len(args) > 5:
      np.save(args[5], mel)
    patches = patches_of(mel)
  else:
    raise SystemExit(f"unknown mode {mode!r}: use 'patches' or 'audio'")
  if patches.ndim != 3 or patches.shape[1:] != (PATCH_FRAMES, NUM_BANDS):
    raise SystemExit(f"patches must be (batch, {PATCH_FRAMES}, {NUM_BANDS}); got {patches.shape}")
  out = predict(graph, patches)
  np.save(emb_out, out["embeddings"])
  np.save(proj_out, out["projection"])


if __name__ == "__main__":
  main(sys.argv[1:])
