"""Flags: the paper's defaults, flagfiles, and clear errors for unknown flags and bad values."""

import copy
import glob
import os

import pytest
from absl import flags

from helpers import ROOT, run_module
from tfcmir import flags as tfcmir_flags  # noqa: F401

FLAGS = flags.FLAGS

# ../shared/REFERENCE.md section 1 (the paper) and section 2 (the authors' code, where the paper is silent).
PAPER_DEFAULTS = {
    "crop_frames": 256, "genre_dim": 200, "max_genres": 10, "cf_dim": 300, "kernel_size": 3, "attention_heads": 4,
    "dropout": 0.5, "temperature": 0.1, "lambda_a2g": 1.0, "lambda_a2p": 1.0, "lambda_g2p": 1.0,
    "batch_size": 128, "learning_rate": 1e-4, "mode": "contr_cf_g",
    "conv_channels": ["128", "128", "256", "256", "256", "256", "512"],
}


@pytest.mark.parametrize("name, value", sorted(PAPER_DEFAULTS.items()))
def test_defaults_are_the_papers(name, value):
  assert FLAGS[name].default == value


def test_front_end_is_melons():
  """Not flags (every export bakes the front end in): one set of constants, Melon's."""
  from tfcmir import audio
  assert (audio.SAMPLE_RATE, audio.FRAME_SIZE, audio.HOP_SIZE, audio.NUM_BANDS, audio.PATCH_FRAMES) == (
      16000, 512, 256, 48, 256)
  for gone in ("sample_rate", "frame_size", "hop_size", "mel_bands"):
    assert gone not in FLAGS


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(ROOT, "configs", "*.flags"))))
def test_every_config_parses(config):
  values = copy.deepcopy(FLAGS)  # parse a copy: the global FLAGS stays unparsed for other tests
  values(["tfcmir", f"--flagfile={config}"])
  assert values.seed == 0


@pytest.mark.parametrize("args, message", [
    (["--bogus=1"], "Unknown command line flag 'bogus'"),
    (["--demo_songs=-5"], "demo_songs"),
    (["--mode=contrastive"], "mode"),
    (["--dropout=1.5"], "dropout"),
    (["--conv_channels=128,x"], "--conv_channels must be a comma-separated list of positive integers"),
    (["--split_fractions=0.5,0.5,0.5"], "--split_fractions must be three positive numbers summing to 1"),
    (["--flagfile=/nonexistent/demo.flags"], "/nonexistent/demo.flags"),
])
def test_bad_flags_stop_with_a_message_naming_them(args, message):
  result = run_module("tfcmir.data.generator", *args)
  assert result.returncode != 0
  assert message in result.stderr
  assert "Traceback" not in result.stderr


def test_unknown_flag_inside_a_flagfile_is_rejected(tmp_path):
  path = tmp_path / "bad.flags"
  path.write_text("--seed=1\n--no_such_flag=3\n")
  result = run_module("tfcmir.demo", f"--flagfile={path}")
  assert result.returncode != 0
  assert "no_such_flag" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--learning_rate=nan"], "--learning_rate must be a finite number"),
    (["--warp_learning_rate=inf"], "--warp_learning_rate must be a finite number"),
    (["--temperature=nan"], "--temperature must be a finite number"),
    (["--learning_rate=0"], "--learning_rate must be > 0"),
    (["--warp_learning_rate=0"], "--warp_learning_rate must be > 0"),
])
def test_nan_inf_and_non_positive_learning_rates_are_rejected_when_parsed(args, message):
  values = copy.deepcopy(flags.FLAGS)
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    values(["prog", *args])
