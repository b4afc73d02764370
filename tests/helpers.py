"""What several test files share: paths, the real-audio excerpts, the small demo's settings, running a
command as a user would, Essentia in its own process, and a stand-in encoder."""

import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REAL_AUDIO = os.path.join(HERE, "fixtures", "real-audio")
REAL_FILES = sorted(f for f in os.listdir(REAL_AUDIO) if f.rsplit(".", 1)[-1] in ("wav", "flac", "ogg",
                                                                                   "mp3"))

# A demo small enough for the fast tests (a few seconds to build) yet with every layout and structure.
SMALL_DEMO = dict(seed=3, songs=500, playlists=240, seconds=6.0, missing_mel=0.03, gtzan_per_genre=8,
                  jamendo_tracks=60)


def FAST_PREPARE():  # noqa: N802  (a constant, built lazily so helpers do not import TensorFlow)
  from tfcmir.prepare import steps
  return steps.PrepareConfig(seed=0, cf_dim=32, genre_dim=16, warp_epochs=5, shard_mb=8)


def run_essentia(*pairs, level="essentia"):
  """Runs tests/tools/essentia_mel.py on (input, output.npy) pairs in a separate process.

  `level`: the window normalisation, "essentia" (normalized=True) or "authors" (normalized=False).

  Essentia's pip build bundles libtensorflow 2.5, and importing it after TensorFlow aborts the process.
  """
  args = [a for pair in pairs for a in pair]
  result = subprocess.run([sys.executable, os.path.join(HERE, "tools", "essentia_mel.py"),
                           f"--level={level}", *args],
                          capture_output=True, text=True, timeout=300)
  if result.returncode:
    raise RuntimeError(f"essentia_mel.py failed:\n{result.stderr[-3000:]}")


def run_module(module, *args, timeout=600, cwd=ROOT):
  """Runs `python -m module args` as a user would; returns the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=cwd)


def mel_statistics(path, chunk=64):
  """A stand-in encoder: per-band mean and deviation of each 64-frame chunk of a file, (chunks, 96)."""
  from tfcmir import audio
  mel = audio.file_to_mel(path)
  chunks = mel[:max(1, len(mel) // chunk) * chunk].reshape(-1, chunk, mel.shape[1])
  return np.concatenate([chunks.mean(1), chunks.std(1)], axis=1)
