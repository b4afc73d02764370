"""Shared fixtures: the real-audio excerpts, a small demo dataset, and Essentia in its own process."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REAL_AUDIO = os.path.join(HERE, "fixtures", "real-audio")
REAL_FILES = sorted(f for f in os.listdir(REAL_AUDIO) if f.rsplit(".", 1)[-1] in ("wav", "flac", "ogg",
                                                                                   "mp3"))

# A demo small enough for the fast tests (a few seconds to build) yet with every layout and structure.
SMALL_DEMO = dict(seed=3, songs=500, playlists=240, seconds=6.0, missing_mel=0.03, gtzan_per_genre=8,
                  jamendo_tracks=60)


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


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
  from tfcmir.data import demo
  out = str(tmp_path_factory.mktemp("demo") / "data")
  demo.generate(out, demo.DemoConfig(**SMALL_DEMO), workers=2)
  return out


@pytest.fixture(scope="session")
def small_prepared(small_demo, tmp_path_factory):
  """The small demo corpus prepared once (small CF and genre vectors): (corpus, tfrecord_dir, manifest)."""
  from tfcmir.data import melon
  from tfcmir.prepare import steps
  out = str(tmp_path_factory.mktemp("prepared") / "tfrecords")
  corpus = melon.read_melon(os.path.join(small_demo, "melon"))
  manifest = steps.prepare(corpus, out, FAST_PREPARE(), workers=2, progress=False)
  return corpus, out, manifest


def FAST_PREPARE():  # noqa: N802  (a constant, built lazily so conftest does not import TensorFlow)
  from tfcmir.prepare import steps
  return steps.PrepareConfig(seed=0, cf_dim=32, genre_dim=16, warp_epochs=5, shard_mb=8)


def pytest_collection_modifyitems(config, items):
  """Files with slow tests first, the main job's first of all.

  Under pytest-xdist (--dist loadfile) each process takes whole files in this order: the long ones start
  at once, and the many short files fill in around them instead of leaving one process idle at the end.
  """
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}

  def rank(item):
    if item.path.name == "test_demo.py":
      return 0
    return 1 if item.path in slow_files else 2

  items.sort(key=rank)  # stable: within a rank, the collection order
