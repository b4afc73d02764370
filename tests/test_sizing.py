"""tfcmir/train/sizing.py: training settings that follow the data's size, and flags that win."""

import copy
import json
import os

import pytest
from absl import flags

from helpers import ROOT
from tfcmir import flags as tfcmir_flags  # noqa: F401
from tfcmir.train import cli, sizing

FLAGS = flags.FLAGS
MELON_TRAIN = 520_000  # Melon's training split, roughly


def test_the_papers_setting_is_the_flags_defaults():
  for name, value in sizing.PAPER.items():
    default = FLAGS[name].default
    assert (tuple(int(c) for c in default) if name == "conv_channels" else default) == value, name


def test_a_melon_sized_split_gets_the_papers_setting():
  for n in (sizing.LARGE, MELON_TRAIN):
    assert {name: value for name, (value, _) in sizing.choose(n).items()} == sizing.PAPER


@pytest.mark.parametrize("n", [2, 5, 20, 80, 209, 1_000, 1_200, 10_000, 99_999])
def test_small_splits_get_a_batch_that_fits_and_early_stopping(n):
  chosen = {name: value for name, (value, _) in sizing.choose(n).items()}
  assert 2 <= chosen["batch_size"] <= min(n, 128)
  assert chosen["early_stopping"] > 0
  assert len(chosen["conv_channels"]) == len(sizing.PAPER["conv_channels"])
  assert chosen["epochs"] * max(n // chosen["batch_size"], 1) >= 100


def test_settings_grow_with_the_data():
  sizes = [20, 80, 209, 1_000, 10_000, 50_000, MELON_TRAIN]
  for small, large in zip(sizes, sizes[1:]):
    a, b = sizing.choose(small), sizing.choose(large)
    assert a["batch_size"][0] <= b["batch_size"][0]
    assert sum(a["conv_channels"][0]) <= sum(b["conv_channels"][0])
    assert a["learning_rate"][0] >= b["learning_rate"][0]


def _prepared(tmp_path, n_train):
  (tmp_path / "manifest.json").write_text(json.dumps({
      "schema": {}, "shards": {}, "counts": {"songs": {"train": n_train, "val": 10, "test": 10},
                                             "with_cf": {"train": n_train, "val": 10, "test": 10}}}))
  return str(tmp_path)


def _sources(table):
  return [line.split()[2] for line in table.splitlines()[2:]]


def _size(argv, capsys):
  values = copy.deepcopy(FLAGS)  # the global FLAGS stays unparsed for other tests
  values(["tfcmir.train", *argv])
  cli.size_to_data(values)
  return values, capsys.readouterr().out


def test_train_sizes_a_small_catalogue_and_prints_why(tmp_path, capsys):
  values, table = _size([f"--tfrecord_dir={_prepared(tmp_path, 209)}"], capsys)
  chosen = sizing.choose(209)
  assert values.batch_size == chosen["batch_size"][0] < 128
  assert values.conv_channels == [str(c) for c in chosen["conv_channels"][0]]
  assert values.early_stopping == chosen["early_stopping"][0]
  assert "209 training songs" in table and _sources(table) == ["auto"] * len(chosen)


def test_explicit_flags_win_on_the_command_line_and_in_a_flagfile(tmp_path, capsys):
  flagfile = tmp_path / "mine.flags"
  flagfile.write_text("--learning_rate=0.05\n--conv_channels=4,4,4,4,4,4,4\n")
  values, table = _size([f"--tfrecord_dir={_prepared(tmp_path, 209)}", "--batch_size=128",
                         f"--flagfile={flagfile}"], capsys)
  assert (values.batch_size, values.learning_rate, values.conv_channels) == (128, 0.05, ["4"] * 7)
  assert values.hidden_dim == sizing.choose(209)["hidden_dim"][0]  # not given: chosen
  assert values.early_stopping > 0
  assert _sources(table).count("flag") == 3


def test_the_demo_flagfile_trains_as_the_demo_job_does(tmp_path, capsys):
  """configs/demo.flags sets the encoder and --epochs; on the demo's ~1,150 training songs (with CF vectors) the rest
  stays the paper's, as in the demo job (which calls loop.run with the flags as parsed)."""
  values, _ = _size([f"--flagfile={os.path.join(ROOT, 'configs', 'demo.flags')}",
                     f"--tfrecord_dir={_prepared(tmp_path, 1_160)}"], capsys)
  parsed = copy.deepcopy(FLAGS)
  parsed(["tfcmir.train", f"--flagfile={os.path.join(ROOT, 'configs', 'demo.flags')}"])
  for name in sizing.PAPER:
    assert getattr(values, name) == getattr(parsed, name), name


def test_the_melon_flagfile_trains_the_papers_setting(tmp_path, capsys):
  values, _ = _size([f"--flagfile={os.path.join(ROOT, 'configs', 'melon.flags')}",
                     f"--tfrecord_dir={_prepared(tmp_path, MELON_TRAIN)}"], capsys)
  for name, value in sizing.PAPER.items():
    assert getattr(values, name) == ([str(c) for c in value] if name == "conv_channels" else value)


def test_the_cosine_schedule_decays_to_a_tenth_over_the_run():
  settings = {"learning_rate": 3e-4, "batch_size": 32, "epochs": 10, "steps_per_epoch": 0}
  assert cli.learning_rate(settings, 209, "constant") == 3e-4
  schedule = cli.learning_rate(settings, 209, "cosine")  # 6 steps an epoch
  assert float(schedule(0)) == pytest.approx(3e-4)
  assert float(schedule(60)) == pytest.approx(3e-5)
