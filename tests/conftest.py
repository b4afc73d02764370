"""Shared fixtures (a small demo dataset, its preparation) and the order of the test files; the helpers
they and the tests share are in helpers.py."""

import os

import pytest

from helpers import FAST_PREPARE, SMALL_DEMO


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
  from tfcmir.data import generator
  out = str(tmp_path_factory.mktemp("demo") / "data")
  generator.generate(out, generator.DemoConfig(**SMALL_DEMO), workers=2)
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
