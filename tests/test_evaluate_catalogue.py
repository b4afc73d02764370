"""`python -m tfcmir.evaluate --task=catalogue`: the measures against hand-worked figures, the reader's
checks, and a run on a tiny catalogue of tones."""

import itertools
import math
import os

import numpy as np
import pytest
import soundfile as sf

from helpers import run_module
from tfcmir.errors import InputError
from tfcmir import runtime
from tfcmir.evaluate import catalogue


def test_nearest_neighbour_accuracy_separable_and_shuffled():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(4, 16)) * 10
  train_y = np.repeat(np.arange(4), 30)
  test_y = np.repeat(np.arange(4), 50)
  train_x = centres[train_y] + rng.normal(size=(120, 16))
  test_x = centres[test_y] + rng.normal(size=(200, 16))
  assert catalogue.nearest_neighbour_accuracy(train_x, train_y, test_x, test_y) == 1.0
  shuffled = rng.permutation(train_y)
  assert abs(catalogue.nearest_neighbour_accuracy(train_x, shuffled, test_x, test_y) - 0.25) < 0.12


def test_playlist_hits_by_hand():
  angles = np.radians([0, 10, 90, 100])
  vectors = np.stack([np.cos(angles), np.sin(angles)], 1)
  # Track 0's nearest is 1: a hit in playlist [0, 1], a miss in [0, 2]; track 3 is not held out.
  hit, random_hit, pairs = catalogue.playlist_hits(vectors, [[0, 1], [0, 2], [3, 2]], held_out=[0],
                                                   k=1)
  assert (hit, pairs) == (0.5, 2)
  assert random_hit == pytest.approx(1 / 3)  # one of the 3 other tracks drawn, 1 of them in P
  # With k=2 track 0's neighbours are 1 and 2 (90 degrees away, 3 is at 100): [0, 2] is a hit.
  hit, _, _ = catalogue.playlist_hits(vectors, [[0, 2]], held_out=[0], k=2)
  assert hit == 1.0


def test_random_level_matches_enumeration():
  # 1 - C(N-1-m, k) / C(N-1, k), against counting every k-subset of the N-1 candidates.
  n, k = 9, 3
  for others in (1, 2, 5):
    candidates = range(n - 1)
    members = set(range(others))
    subsets = list(itertools.combinations(candidates, k))
    share = sum(bool(members & set(s)) for s in subsets) / len(subsets)
    playlist = list(range(1, others + 1)) + [0]  # track 0 held out with `others` others
    vectors = np.random.default_rng(others).normal(size=(n, 4))
    _, random_hit, _ = catalogue.playlist_hits(vectors, [playlist], held_out=[0], k=k)
    assert random_hit == pytest.approx(share)
    assert share == pytest.approx(1 - math.comb(n - 1 - others, k) / math.comb(n - 1, k))


def labelled_clusters(vectors_of_track, seed=0):
  """A Labelled of 4 styles x 6 tracks x 3 songs, 2 tracks per style held out, one playlist a style."""
  rng = np.random.default_rng(seed)
  labels, tracks, splits, vectors = [], [], [], []
  for style in range(4):
    for track in range(6):
      centre = vectors_of_track(style, track)
      for _ in range(3):
        labels.append(f"style{style}")
        tracks.append(f"{style}/{track}")
        splits.append("test" if track < 2 else "train")
        vectors.append(centre + 0.05 * rng.normal(size=centre.shape))
  playlists = [[i for i, t in enumerate(tracks) if t.startswith(f"{style}/")] for style in range(4)]
  return catalogue.Labelled([f"{i}.wav" for i in range(len(labels))], labels, tracks, splits,
                            playlists), np.stack(vectors)


def test_score_clustered_and_shuffled():
  rng = np.random.default_rng(1)
  centres = rng.normal(size=(4, 12)) * 5
  labelled, x = labelled_clusters(lambda s, t: centres[s] + rng.normal(size=12))
  result = catalogue.score(x, labelled)
  assert result["nn_accuracy"] == result["probe_accuracy"] == result["hit@10"] == 1.0
  assert result["playlist_pairs"] == 8  # 2 held-out tracks in each of 4 playlists
  assert result["majority_accuracy"] == 0.25
  # 24 tracks, 5 others in each playlist: 1 - C(18, 10) / C(23, 10).
  assert result["random_hit@10"] == pytest.approx(1 - math.comb(18, 10) / math.comb(23, 10))
  # A vector per track that knows nothing of the style: near chance.
  noise = {}
  labelled, x = labelled_clusters(lambda s, t: noise.setdefault((s, t), rng.normal(size=12)))
  result = catalogue.score(x, labelled)
  assert result["nn_accuracy"] < 0.6 and result["probe_accuracy"] < 0.6


def tone_catalogue(root, header="path,genres,track,split", split=None, genres=("Low|Low calm", "High")):
  """2 styles x 3 tracks x 2 clips of 5 s tones; track 0 of each style held out."""
  music = os.path.join(root, "music")
  os.makedirs(music, exist_ok=True)
  lines, playlists = [header], {0: [], 1: []}
  t = np.arange(5 * 16000) / 16000
  for style, base in enumerate((220.0, 1760.0)):
    for track in range(3):
      for clip in range(2):
        name = f"s{style}t{track}c{clip}.wav"
        frequency = base * (1 + 0.03 * track + 0.01 * clip)
        sf.write(os.path.join(music, name), (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32),
                 16000)
        side = split(style, track, clip) if split else ("test" if track == 0 else "train")
        cells = [name, genres[style], f"s{style}t{track}", side]
        lines.append(",".join(cells[:len(header.split(","))]))
        playlists[style].append(f"music/{name}")
  csv_path = os.path.join(root, "songs.csv")
  with open(csv_path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  folder = os.path.join(root, "playlists")
  os.makedirs(folder, exist_ok=True)
  for style, entries in playlists.items():
    with open(os.path.join(folder, f"p{style}.m3u"), "w", encoding="utf-8") as f:
      f.write("\n".join(f"../{e}" for e in entries) + "\n")
  return music, csv_path, folder


def test_reader_labels_tracks_and_split(tmp_path):
  labelled = catalogue.read_labelled(*tone_catalogue(str(tmp_path)))
  assert labelled.labels[:2] == ["low", "low"] and labelled.labels[-1] == "high"  # the first genre
  assert labelled.splits.count("test") == 4 and len(set(labelled.tracks)) == 6
  assert [len(p) for p in labelled.playlists] == [6, 6]


@pytest.mark.parametrize("kind, message", [
    ("no_split", "no 'split' column"),
    ("mixed", "has songs in both train and test"),
    ("no_genres", "no song has a genre"),
    ("no_test", "no labelled song in the test split"),
])
def test_reader_errors(tmp_path, kind, message):
  args = {"no_split": dict(header="path,genres,track"),
          "mixed": dict(split=lambda s, t, c: "test" if (t, c) == (0, 1) else "train"),
          "no_genres": dict(genres=("", "")),
          "no_test": dict(split=lambda s, t, c: "train")}[kind]
  with pytest.raises(InputError, match=message):
    catalogue.read_labelled(*tone_catalogue(str(tmp_path), **args))


class MeanBandEncoder:
  """A stand-in export: each patch's embedding is its mean mel per band, floored at -160 dB as
  mel_statistics floors it."""
  frontend = {"level": "essentia"}
  guard = type("NoGuard", (), {"check": staticmethod(lambda path, patches: None)})()

  def __call__(self, patches):
    return np.maximum(np.asarray(patches), -160.0).mean(axis=1)


def test_export_rows_and_floor_on_tones(tmp_path):
  music, csv_path, playlists = tone_catalogue(str(tmp_path))
  labelled = catalogue.read_labelled(music, csv_path, playlists)
  # The stand-in's song vector, via tfcmir.inference, is the mean band energy: the floor's first 48 columns.
  embedded = catalogue.export_vectors(MeanBandEncoder(), labelled.paths)
  floor = catalogue.mel_vectors(labelled.paths, MeanBandEncoder.frontend)
  np.testing.assert_allclose(embedded, floor[:, :48], rtol=1e-5, atol=1e-4)
  out = str(tmp_path / "report")
  table = catalogue.evaluate_catalogue({"bands": MeanBandEncoder()}, music, csv_path, playlists, out)
  assert "| bands | 1.000 | 1.000 | 1.000 |" in table  # two pitches far apart
  assert "| log-mel statistics | 1.000 | 1.000 | 1.000 |" in table
  assert "held out: 4 songs of 2 tracks; training: 8 songs of 4 tracks" in table
  assert os.path.exists(os.path.join(out, "catalogue.md"))
  assert os.path.exists(os.path.join(out, "catalogue.json"))


def test_command_without_split_is_one_line(tmp_path):
  music, csv_path, playlists = tone_catalogue(str(tmp_path), header="path,genres,track")
  result = run_module("tfcmir.evaluate", "--task=catalogue", f"--catalogue_audio_dir={music}",
                      f"--catalogue_csv={csv_path}", f"--catalogue_playlists={playlists}",
                      f"--eval_dir={tmp_path / 'report'}", timeout=120)
  assert result.returncode == 1
  # TensorFlow's start-up lines are test_runtime's concern; under a loaded CI machine one set has
  # escaped the start-up filter (noted, not fixed). The error itself must be one line.
  lines = [line for line in result.stderr.splitlines() if line.strip() and not runtime.is_noise(line)]
  assert len(lines) == 1 and "no 'split' column" in lines[0], result.stderr[-2000:]
