"""GTZAN genre evaluation: the split reader, the majority vote, and the MLP protocol on synthetic data."""

import os

import numpy as np
import pytest

from helpers import mel_statistics
from tfcmir.errors import InputError
from tfcmir.evaluate import gtzan


def _write_gtzan(root, lines):
  """Writes empty audio files and the three split files; `lines` maps split file -> listed paths."""
  for name, rels in lines.items():
    for rel in rels:
      os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
      open(os.path.join(root, rel), "wb").close()
    with open(os.path.join(root, name), "w") as f:
      f.write("\n".join(rels) + "\n\n")  # a trailing blank line, as some copies have


def test_read_gtzan(tmp_path):
  _write_gtzan(str(tmp_path), {"train_filtered.txt": ["blues/blues.00012.wav", "rock/rock.00001.wav"],
                               "valid_filtered.txt": ["jazz/jazz.00003.wav"],
                               "test_filtered.txt": ["rock/rock.00002.wav"]})
  split = gtzan.read_gtzan(str(tmp_path))
  assert split["train"] == [("blues/blues.00012.wav", "blues"), ("rock/rock.00001.wav", "rock")]
  assert split["valid"] == [("jazz/jazz.00003.wav", "jazz")]
  assert split["test"] == [("rock/rock.00002.wav", "rock")]


def test_read_gtzan_missing_audio_names_file_and_line(tmp_path):
  _write_gtzan(str(tmp_path), {"train_filtered.txt": ["blues/blues.00012.wav"],
                               "valid_filtered.txt": ["jazz/jazz.00003.wav"],
                               "test_filtered.txt": ["rock/rock.00002.wav"]})
  with open(tmp_path / "test_filtered.txt", "a") as f:
    f.write("pop/pop.00099.wav\n")
  with pytest.raises(InputError, match=r"test_filtered\.txt:3: .*pop/pop\.00099\.wav"):
    gtzan.read_gtzan(str(tmp_path))
  os.remove(tmp_path / "valid_filtered.txt")
  with pytest.raises(InputError, match=r"valid_filtered\.txt: GTZAN split file not found"):
    gtzan.read_gtzan(str(tmp_path))


def test_majority_vote():
  # Two patches vote class 2, one votes class 0: the vote wins over class 0's larger summed probability.
  assert gtzan.majority_vote([[0.99, 0.0, 0.01], [0.3, 0.1, 0.6], [0.3, 0.1, 0.6]]) == 2
  # A 1-1 tie between classes 0 and 1: class 1 has the higher summed probability (0.9 + 0.45).
  assert gtzan.majority_vote([[0.5, 0.45, 0.05], [0.05, 0.9, 0.05]]) == 1
  assert gtzan.majority_vote([[0.2, 0.3, 0.5]]) == 2


def _synthetic(rng, classes=4, tracks=(20, 10, 30), patches=5, dim=16, signal=3.0):
  """Patch embeddings around a per-class centre (`signal` 0: pure noise) and the matching split."""
  centres = rng.normal(size=(classes, dim)) * signal
  embeddings, split = {}, {}
  for name, n in zip(("train", "valid", "test"), tracks):
    split[name] = []
    for c in range(classes):
      for k in range(n):
        rel = f"g{c}/{name}.{k:05d}.wav"
        embeddings[rel] = centres[c] + rng.normal(size=(patches, dim))
        split[name].append((rel, f"g{c}"))
  return embeddings, split


def test_separable_classes_are_learned():
  embeddings, split = _synthetic(np.random.default_rng(0))
  result = gtzan.evaluate_gtzan(embeddings, split, repetitions=2, max_epochs=30)
  assert result["accuracy_mean"] > 0.95
  assert result["classes"] == ["g0", "g1", "g2", "g3"]
  assert result["confusion"].sum() == 2 * 120  # summed over both runs
  assert np.trace(result["confusion"]) > 0.95 * 240
  assert result["skipped"] == {"train": 0, "valid": 0, "test": 0}


def test_noise_is_near_chance():
  embeddings, split = _synthetic(np.random.default_rng(1), signal=0.0)
  result = gtzan.evaluate_gtzan(embeddings, split, repetitions=3, max_epochs=30, patience=5)
  assert 0.1 < result["accuracy_mean"] < 0.45  # chance is 0.25 (120 test tracks)


def test_fixed_seed_is_deterministic_and_missing_tracks_are_counted():
  embeddings, split = _synthetic(np.random.default_rng(2), signal=0.5)
  del embeddings["g1/test.00003.wav"]
  first = gtzan.evaluate_gtzan(embeddings, split, repetitions=2, seed=7, max_epochs=15)
  second = gtzan.evaluate_gtzan(embeddings, split, repetitions=2, seed=7, max_epochs=15)
  assert first["accuracies"] == second["accuracies"]
  assert np.array_equal(first["confusion"], second["confusion"])
  assert first["skipped"]["test"] == 1 and first["test_tracks"] == 119



def test_demo_layout_beats_chance(small_demo):
  root = os.path.join(small_demo, "gtzan")
  split = gtzan.read_gtzan(root)
  embeddings = {rel: mel_statistics(os.path.join(root, rel)) for tracks in split.values()
                for rel, _ in tracks}
  result = gtzan.evaluate_gtzan(embeddings, split, repetitions=2)
  assert len(result["classes"]) == 10
  assert result["accuracy_mean"] > 0.3  # chance is 0.1


def test_each_epoch_sees_another_batch_order(monkeypatch):
  """scikit-learn re-seeds partial_fit's shuffle each call: the epochs' orders come from our generator."""
  from sklearn.neural_network import MLPClassifier
  from tfcmir.evaluate import gtzan as gtzan_lib
  seen = []
  original = MLPClassifier.partial_fit

  def recording(self, x, y, classes=None):
    seen.append(x[:, 0].copy())
    return original(self, x, y, classes=classes)

  monkeypatch.setattr(MLPClassifier, "partial_fit", recording)
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(40, 3)), np.arange(40) % 2
  val = (x[:4], y[:4], np.arange(4), y[:4])
  gtzan_lib._train(x, y, val, np.arange(2), seed=5, max_epochs=3, patience=10)
  first = list(seen)
  assert len(first) == 3 and not np.array_equal(first[0], first[1])
  assert all(sorted(e) == sorted(x[:, 0]) for e in first)  # a permutation of the same patches
  seen.clear()
  gtzan_lib._train(x, y, val, np.arange(2), seed=5, max_epochs=3, patience=10)
  assert all(np.array_equal(a, b) for a, b in zip(first, seen))  # seeded: the same run again
