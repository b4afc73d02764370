"""MTG-Jamendo tagging evaluation: the TSV reader and the MLP protocol on synthetic data."""

import os

import numpy as np
import pytest

from helpers import mel_statistics
from tfcmir.errors import InputError
from tfcmir.evaluate import jamendo

HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"


def _write_tsv(path, rows):
  """Writes one split TSV the way the dataset ships it: header, tab-separated, CRLF line ends."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="") as f:
    f.write("\r\n".join([HEADER] + ["\t".join(r) for r in rows]) + "\r\n")


def _write_category(root, category, parts):
  for part, rows in parts.items():
    _write_tsv(jamendo.split_file(root, category, part), rows)


def _row(track, path, *tags):
  return [f"track_{track:07d}", "artist_000001", "album_000001", path, "212.5", *tags]


def test_read_jamendo_split(tmp_path):
  root = str(tmp_path)
  _write_category(root, "moodtheme", {
      "train": [_row(214, "14/214.mp3", "mood/theme---happy", "mood/theme---energetic"),
                _row(1215, "15/1215.mp3", "mood/theme---sad")],
      "validation": [_row(300, "00/300.mp3", "mood/theme---calm")],
      "test": [_row(401, "01/401.mp3", "mood/theme---happy")]})
  splits = jamendo.read_jamendo_split(root, "moodtheme")
  assert splits["train"] == [("14/214.mp3", ["mood/theme---happy", "mood/theme---energetic"]),
                             ("15/1215.mp3", ["mood/theme---sad"])]
  assert splits["validation"] == [("00/300.mp3", ["mood/theme---calm"])]
  assert splits["test"] == [("01/401.mp3", ["mood/theme---happy"])]


def test_read_jamendo_errors_name_the_file(tmp_path):
  root = str(tmp_path)
  good = [_row(1, "01/1.mp3", "genre---rock")]
  _write_category(root, "genre", {"train": good, "validation": good,
                                  "test": good + [_row(2, "02/2.mp3")]})  # no tags: malformed
  with pytest.raises(InputError, match=r"autotagging_genre-test\.tsv:3: malformed"):
    jamendo.read_jamendo_split(root, "genre")
  with pytest.raises(InputError, match=r"autotagging_instrument-train\.tsv: .*not found"):
    jamendo.read_jamendo_split(root, "instrument")
  with pytest.raises(InputError, match="category"):
    jamendo.read_jamendo_split(root, "mood")


def test_audio_path(tmp_path):
  root = str(tmp_path)
  assert jamendo.audio_path(root, "14/214.mp3") == os.path.join(root, "14/214.mp3")
  os.makedirs(tmp_path / "audio" / "14")
  open(tmp_path / "audio" / "14" / "214.mp3", "wb").close()
  assert jamendo.audio_path(root, "14/214.mp3") == os.path.join(root, "audio", "14/214.mp3")
  assert jamendo.audio_path(root, "14/214.mp3", audio_dir="/data/mp3") == "/data/mp3/14/214.mp3"


def _synthetic(rng, tags=5, tracks=(300, 100, 200), dim=12, signal=True):
  """Tracks whose tags are thresholded linear functions of their embedding (or independent of it)."""
  weights = rng.normal(size=(dim, tags))
  embeddings, splits = {}, {}
  for part, n in zip(jamendo.PARTS, tracks):
    x = rng.normal(size=(n, dim))
    scores = x @ weights if signal else rng.normal(size=(n, tags))
    splits[part] = []
    for i in range(n):
      path = f"{i % 100:02d}/{part}{i}.mp3"
      names = [f"genre---t{t}" for t in range(tags) if scores[i, t] > 0.5] or ["genre---none"]
      embeddings[path] = x[i]
      splits[part].append((path, names))
  return embeddings, splits


def test_separable_tags_are_learned():
  embeddings, splits = _synthetic(np.random.default_rng(0))
  result = jamendo.evaluate_jamendo(embeddings, splits, repetitions=1, epochs=25, batch_size=32)
  assert result["roc_auc_mean"] > 0.9
  assert result["pr_auc_mean"] > 0.7
  assert "genre---t0" in result["tags"]


def test_noise_is_near_chance_and_patches_are_averaged():
  embeddings, splits = _synthetic(np.random.default_rng(1), signal=False)
  # (n_patches, D) values are averaged to the track: equal patches give the same track embedding.
  embeddings = {p: np.stack([e, e]) for p, e in embeddings.items()}
  result = jamendo.evaluate_jamendo(embeddings, splits, repetitions=1, epochs=25, patience=5)
  assert 0.4 < result["roc_auc_mean"] < 0.6


def test_fixed_seed_is_deterministic_and_missing_tracks_are_counted():
  embeddings, splits = _synthetic(np.random.default_rng(2), tracks=(120, 40, 60))
  del embeddings[splits["test"][0][0]]
  first = jamendo.evaluate_jamendo(embeddings, splits, repetitions=2, seed=5, epochs=5)
  again = jamendo.evaluate_jamendo(embeddings, splits, repetitions=1, seed=6, epochs=5)
  assert again["roc_aucs"] == first["roc_aucs"][1:] and again["pr_aucs"] == first["pr_aucs"][1:]
  assert first["roc_aucs"][0] != first["roc_aucs"][1]  # run r is seeded with seed + r
  assert first["skipped"]["test"] == 1 and first["test_tracks"] == 59



def test_demo_layout_beats_chance(small_demo):
  root = os.path.join(small_demo, "mtg-jamendo")
  splits = jamendo.read_jamendo_split(root, "instrument", split=1)
  assert all(tags and tags[0].startswith("instrument---") for part in splits.values() for _, tags in part)
  embeddings = {p: mel_statistics(jamendo.audio_path(root, p)) for part in splits.values()
                for p, _ in part}  # patch statistics, averaged to the track by evaluate_jamendo
  result = jamendo.evaluate_jamendo(embeddings, splits, repetitions=1, epochs=40, batch_size=8)
  assert result["roc_auc_mean"] > 0.6  # chance is 0.5
