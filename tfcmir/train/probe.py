"""A quick check that an audio encoder learnt something: genre of held-out songs from its embeddings.

Embeds the centre crop of every song of a split with the audio encoder's pre-head vector (what the
downstream tasks use), and fits a logistic regression to each song's main genre with repeated 5-fold
cross-validation. The same is done with the same encoder untrained (random weights), which is the
bar a trained encoder must clear, and the majority class gives chance.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tfcmir.model import contrastive
from tfcmir.train import pipeline


def embed_split(audio_encoder, tfrecord_dir, split="test", batch_size=64, manifest=None):
  """(pre-head embeddings (songs, d), first genre id of each song (songs,))."""
  embeddings, labels = [], []
  for batch in pipeline.dataset(tfrecord_dir, split, batch_size, training=False, manifest=manifest):
    pre_head, _ = audio_encoder(batch["mel"], training=False, return_pre_head=True)
    embeddings.append(np.asarray(pre_head))
    labels.append(batch["genres"].numpy()[:, 0])  # main genres come first
  if not embeddings:
    return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
  return np.concatenate(embeddings), np.concatenate(labels)


REPEATS = 4  # a test split of ~150 songs moves one 5-fold score by +-0.03; 4 shuffles average that out


def genre_accuracy(x, y, seed=0):
  """5-fold cross-validated accuracy of a logistic regression, averaged over REPEATS shuffles of the
  folds (classes with < 5 songs dropped)."""
  values, counts = np.unique(y, return_counts=True)
  keep = np.isin(y, values[counts >= 5])
  x, y = x[keep], y[keep]
  model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.5))
  folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=REPEATS, random_state=seed)
  return float(np.mean(cross_val_score(model, x, y, cv=folds)))


MIN_SONGS_PER_GENRE = 5  # one per cross-validation fold


def probe_problem(y):
  """Why the probe cannot run on these labels (a one-line reason), or None."""
  values, counts = np.unique(y, return_counts=True)
  usable = int(np.sum(counts >= MIN_SONGS_PER_GENRE))
  if usable < 2:
    return (f"{len(y)} songs, {usable} genre(s) with >= {MIN_SONGS_PER_GENRE} songs; the 5-fold "
            "probe needs two")
  return None


def held_out_genre_probe(model, config, tfrecord_dir, split="test", seed=0, manifest=None):
  """{'trained', 'untrained', 'chance'} genre accuracies on `split` (songs unseen in training), or
  {'skipped': reason} when the split is too small for the probe."""
  x, y = embed_split(model.audio_encoder, tfrecord_dir, split, manifest=manifest)
  problem = probe_problem(y)
  if problem:
    return {"skipped": f"{split} split: {problem}", "songs": int(len(y))}
  untrained = contrastive.build_model(config)
  x0, _ = embed_split(untrained.audio_encoder, tfrecord_dir, split, manifest=manifest)
  _, counts = np.unique(y, return_counts=True)
  return {"trained": genre_accuracy(x, y, seed), "untrained": genre_accuracy(x0, y, seed),
          "chance": float(counts.max() / counts.sum()), "songs": int(len(y))}
