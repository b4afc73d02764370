"""Quick probes of whether a corpus carries learnable structure (the demo data's sanity check).

Each probe fits the simplest model that could find the structure, on held-out data, and reports it
next to its chance level. The demo main job prints them; tests/test_demo.py asserts on them, with a
negative control (labels shuffled) to show a probe can fail.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def mel_statistics(mel):
  """(bands, frames) or (frames, bands) dB mel with 48 bands -> per-band mean, std and delta energy."""
  mel = np.asarray(mel, np.float32)
  if mel.shape[0] != 48 and mel.shape[-1] == 48:
    mel = mel.T
  mel = np.maximum(mel, -160.0)  # digital silence floors at -200 dB; do not let it dominate
  delta = np.abs(np.diff(mel, axis=1))
  return np.concatenate([mel.mean(1), mel.std(1), delta.mean(1)])


def classification_probe(train_x, train_y, test_x, test_y, seed=0):
  """Logistic regression accuracy on (x, y); returns (accuracy, majority-class accuracy)."""
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
  model.fit(train_x, train_y)
  accuracy = float(np.mean(model.predict(test_x) == np.asarray(test_y)))
  counts = collections.Counter(train_y)
  majority = counts.most_common(1)[0][0]
  return accuracy, float(np.mean(np.asarray(test_y) == majority))


def regression_probe(train_x, train_y, test_x, test_y):
  """Ridge regression R^2 on held-out data (0 is no better than predicting the mean)."""
  model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
  model.fit(train_x, train_y)
  residual = np.sum((model.predict(test_x) - test_y) ** 2)
  total = np.sum((np.asarray(test_y) - np.mean(train_y)) ** 2)
  return float(1 - residual / total)


def playlist_probe(train_playlists, test_playlists, song_ids, k=50, seed=0, score_fn=None):
  """Leave-one-out hit rate@k of an item co-occurrence recommender, with its random level.

  For each test playlist one song is hidden; the others score every song by how often it shares a
  train playlist with them (`score_fn(seeds)` replaces that score, e.g. with a genre-only one).

  Returns:
    (hit rate of the scorer, hit rate of a random ranking = k / number of candidates).
  """
  rng = np.random.default_rng(seed)
  index = {s: i for i, s in enumerate(song_ids)}
  n = len(song_ids)
  co = np.zeros((n, n), np.float32)
  for playlist in train_playlists:
    rows = np.array([index[s] for s in playlist if s in index])
    co[np.ix_(rows, rows)] += 1
  np.fill_diagonal(co, 0)
  hits = total = 0
  for playlist in test_playlists:
    rows = [index[s] for s in playlist if s in index]
    if len(rows) < 3:
      continue
    hidden = rows[rng.integers(len(rows))]
    seeds = [r for r in rows if r != hidden]
    scores = co[seeds].sum(0) if score_fn is None else score_fn(seeds)
    scores = scores + 1e-6 * rng.random(n)  # random tie-break
    scores[seeds] = -np.inf
    top = np.argpartition(-scores, k)[:k]
    hits += hidden in top
    total += 1
  return hits / max(total, 1), k / (n - 1)


def _load_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def demo_structure(demo_dir, shuffle_labels=False, seed=0):
  """Runs every probe on a demo dataset (tfcmir.data.generator); returns {probe: (score, chance)}.

  genre:     main genre from mel statistics, Melon songs, 80/20 split (accuracy)
  gtzan:     the same classifier trained on Melon, tested on the demo GTZAN test split (transfer)
  energy:    hidden energy from mel statistics (R^2; chance 0)
  playlist:  leave-one-out hit rate@k of co-occurrence on val+test playlists, k = songs / 30 (50 for
             the default demo)
  playlist_genre_only: the same with a genre-overlap + popularity scorer: playlists carry more
  `shuffle_labels` permutes the genre labels and playlist memberships: the negative control.
  """
  from tfcmir import audio  # TensorFlow, only when the GTZAN audio is needed

  rng = np.random.default_rng(seed)
  melon = os.path.join(demo_dir, "melon")
  truth = [t for t in _load_json(os.path.join(demo_dir, "truth", "melon.json"))]
  with_mel = [t for t in truth if t["has_mel"]]
  x = np.stack([mel_statistics(np.load(os.path.join(melon, str(t["id"] // 1000), f"{t['id']}.npy")))
                for t in with_mel])
  genre = np.array([t["main_genre"] for t in with_mel])
  energy = np.array([t["energy"] for t in with_mel])
  if shuffle_labels:
    genre, energy = rng.permutation(genre), rng.permutation(energy)
  train = np.arange(len(x)) % 5 != 0
  report = {"genre": classification_probe(x[train], genre[train], x[~train], genre[~train], seed),
            "energy": (regression_probe(x[train], energy[train], x[~train], energy[~train]), 0.0)}
  gtzan = os.path.join(demo_dir, "gtzan")
  with open(os.path.join(gtzan, "test_filtered.txt")) as f:
    rels = f.read().split()
  gx = np.stack([mel_statistics(audio.file_to_mel(os.path.join(gtzan, r))) for r in rels])
  gy = np.array([r.split("/")[0] for r in rels])
  report["gtzan"] = classification_probe(x, genre, gx, gy, seed)

  ids = [t["id"] for t in truth]
  train_pl = [p["songs"] for p in _load_json(os.path.join(melon, "train.json"))]
  test_pl = [p["songs"] for name in ("val", "test") for p in _load_json(os.path.join(melon, f"{name}.json"))]
  if shuffle_labels:
    pool = rng.permutation([s for p in train_pl + test_pl for s in p])
    sizes = np.cumsum([len(p) for p in train_pl + test_pl])[:-1]
    shuffled = [list(p) for p in np.split(pool, sizes)]
    train_pl, test_pl = shuffled[:len(train_pl)], shuffled[len(train_pl):]
  k = max(5, len(ids) // 30)
  report["playlist"] = playlist_probe(train_pl, test_pl, ids, k=k, seed=seed)
  main_onehot = np.zeros((len(ids), 10))
  for i, t in enumerate(truth):
    for code in t["genres"]:
      main_onehot[i, int(code[2:4]) - 1] = 1
  index = {s: i for i, s in enumerate(ids)}
  popularity = np.zeros(len(ids))
  for p in train_pl:
    for s in p:
      popularity[index[s]] += 1
  report["playlist_genre_only"] = playlist_probe(
      train_pl, test_pl, ids, k=k, seed=seed,
      score_fn=lambda seeds: main_onehot @ main_onehot[seeds].sum(0) + 0.01 * popularity)
  return report


def format_report(report):
  names = {"genre": "main genre from mel stats (Melon)", "gtzan": "same classifier on GTZAN test",
           "energy": "hidden energy from mel stats, R^2", "playlist": "playlist hit@k, co-occurrence",
           "playlist_genre_only": "playlist hit@k, genre + popularity only"}
  lines = ["| probe | score | chance |", "|---|---|---|"]
  lines += [f"| {names[k]} | {v[0]:.3f} | {v[1]:.3f} |" for k, v in report.items()]
  return "\n".join(lines)
