"""tfcmir/train/sizing.py: training settings that follow the data's size, and flags that win."""

import copy
import os

import pytest
from absl import flags

from helpers import ROOT
from tfcmir import flags as tfcmir_flags  # noqa: F401
from tfcmir.train import cli, loop, sizing

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


def _data(n_train):
  """A prepared folder's Data as plan() reads it: only the split sizes matter."""
  return loop.Data("unused", {"counts": {"songs": {"train": n_train, "val": 10, "test": 10},
                                         "with_cf": {"train": n_train, "val": 10, "test": 10}}}, None)


def _sources(table):
  return [line.split()[2] for line in table.splitlines()[2:]]


def _plan(argv, n_train):
  """plan() under `argv`: {setting: value as it runs}, loop.train's settings, the printed table."""
  values = copy.deepcopy(FLAGS)  # the global FLAGS stays unparsed for other tests
  values(["tfcmir.train", *argv])
  model_settings, settings, table = cli.plan(_data(n_train), values.mode, values)
  ran = {"batch_size": settings["batch_size"], "conv_channels": tuple(model_settings["channels"]),
         "hidden_dim": model_settings["hidden_dim"], "epochs": settings["epochs"],
         "early_stopping": settings["early_stopping"], "learning_rate": settings["learning_rate"]}
  return ran, settings, table


def test_train_sizes_a_small_catalogue_and_prints_why():
  ran, settings, table = _plan([], 209)
  chosen = {name: value for name, (value, _) in sizing.choose(209).items()}
  assert ran["batch_size"] == chosen["batch_size"] < 128
  assert ran["conv_channels"] == chosen["conv_channels"]
  assert (ran["epochs"], ran["early_stopping"]) == (chosen["epochs"], chosen["early_stopping"])
  assert ran["learning_rate"] == chosen["learning_rate"]  # a constant schedule
  assert "209 training songs" in table and _sources(table) == ["auto"] * len(chosen)
  # config.json's flags record what ran, not the defaults that did not.
  assert settings["flags_used"]["batch_size"] == chosen["batch_size"]
  assert settings["flags_used"]["conv_channels"] == [str(c) for c in chosen["conv_channels"]]


def test_explicit_flags_win_on_the_command_line_and_in_a_flagfile(tmp_path):
  flagfile = tmp_path / "mine.flags"
  flagfile.write_text("--learning_rate=0.05\n--conv_channels=4,4,4,4,4,4,4\n")
  ran, settings, table = _plan(["--batch_size=128", f"--flagfile={flagfile}"], 209)
  assert (ran["batch_size"], ran["learning_rate"], ran["conv_channels"]) == (128, 0.05, (4,) * 7)
  assert ran["hidden_dim"] == sizing.choose(209)["hidden_dim"][0]  # not given: chosen
  assert ran["early_stopping"] > 0
  assert _sources(table).count("flag") == 3
  assert settings["flags_used"]["learning_rate"] == 0.05


def test_the_cosine_schedule_is_built_over_the_chosen_epochs():
  ran, settings, _ = _plan(["--lr_schedule=cosine"], 209)
  schedule = ran["learning_rate"]
  total = settings["epochs"] * (209 // settings["batch_size"])
  assert float(schedule(0)) == pytest.approx(sizing.SMALL_LR)
  assert float(schedule(total)) == pytest.approx(sizing.SMALL_LR / 10)


def test_the_demo_flagfile_keeps_the_papers_setting_where_it_sets_nothing():
  """configs/demo.flags sets the encoder and --epochs; on the demo's ~1,150 training songs (with CF
  vectors) the rest stays the paper's."""
  ran, _, _ = _plan([f"--flagfile={os.path.join(ROOT, 'configs', 'demo.flags')}"], 1_160)
  assert ran["conv_channels"] == (16, 16, 32, 32, 32, 32, 64) and ran["hidden_dim"] == 256
  assert (ran["epochs"], ran["early_stopping"]) == (40, 0)
  assert (ran["batch_size"], ran["learning_rate"]) == (128, 1e-4)


def test_the_melon_flagfile_trains_the_papers_setting():
  ran, _, _ = _plan([f"--flagfile={os.path.join(ROOT, 'configs', 'melon.flags')}"], MELON_TRAIN)
  assert ran == {name: value for name, value in sizing.PAPER.items() if name != "lr_schedule"}


def test_the_cosine_schedule_decays_to_a_tenth_over_the_run():
  settings = {"learning_rate": 3e-4, "batch_size": 32, "epochs": 10, "steps_per_epoch": 0}
  assert cli.learning_rate(settings, 209, "constant") == 3e-4
  schedule = cli.learning_rate(settings, 209, "cosine")  # 6 steps an epoch
  assert float(schedule(0)) == pytest.approx(3e-4)
  assert float(schedule(60)) == pytest.approx(3e-5)
