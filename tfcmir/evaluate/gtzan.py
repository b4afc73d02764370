"""Genre classification on GTZAN's fault-filtered split (paper section 3.3).

The protocol: an MLP with one hidden layer of 256 ReLU units is trained on the *patch* embeddings of
the training tracks (every patch an instance, labelled with its track's genre); a test track's genre is
the majority vote of its patches' predictions, and the score is track accuracy on the test split,
averaged over `repetitions` runs with different seeds.

Decisions the paper leaves open, made here:
  * Features are standardised with the mean and deviation of the training patches.
  * The validation split does model selection: the MLP trains epoch by epoch (Adam, `partial_fit`) and
    the epoch with the best validation track accuracy is kept (ties: lower validation patch log-loss);
    training stops `patience` epochs after the last improvement. scikit-learn re-seeds its shuffle
    from `random_state` on every `partial_fit`, so each epoch would see the same batch order: the
    patches are permuted before each epoch by a generator seeded once per run.
  * Vote ties go to the tied class with the highest summed patch probability.
  * A listed track without an embedding (an unreadable file `embed_files` skipped) is left out and
    counted in the result's "skipped"; an empty split is an error.
"""

from __future__ import annotations

import copy
import os

import numpy as np
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from tfcmir.errors import InputError

SPLIT_FILES = {"train": "train_filtered.txt", "valid": "valid_filtered.txt", "test": "test_filtered.txt"}


def read_gtzan(gtzan_dir):
  """Reads the three fault-filtered split files.

  Args:
    gtzan_dir: the GTZAN folder holding `{genre}/{genre}.000NN.wav` and the `*_filtered.txt` files.

  Returns:
    {"train" | "valid" | "test": [(relpath, genre)]}, relpaths as written in the split files (relative
    to `gtzan_dir`), genre the first path component.

  Raises:
    InputError: a missing split file, or a listed audio file that does not exist (names file and line).
  """
  return {split: _read_split_file(gtzan_dir, name) for split, name in SPLIT_FILES.items()}


def _read_split_file(gtzan_dir, name):
  path = os.path.join(gtzan_dir, name)
  if not os.path.exists(path):
    raise InputError(f"{path}: GTZAN split file not found")
  tracks = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      rel = line.strip().replace("\\", "/")
      if not rel:
        continue
      if "/" not in rel:
        raise InputError(f"{path}:{number}: '{rel}' is not a genre/file path")
      if not os.path.exists(os.path.join(gtzan_dir, rel)):
        raise InputError(f"{path}:{number}: listed file {rel} does not exist under {gtzan_dir}")
      tracks.append((rel, rel.split("/", 1)[0]))
  return tracks


def by_relpath(rows, per_patch, root):
  """`embed_files` output -> {path relative to `root` (forward slashes): (n_patches, D) array}."""
  return {os.path.relpath(row["path"], root).replace(os.sep, "/"): patches
          for row, patches in zip(rows, per_patch)}


def majority_vote(probabilities):
  """One track's patch probabilities -> its class index.

  Args:
    probabilities: (n_patches, n_classes) per-patch class probabilities.

  Returns:
    The class most patches predict; among tied classes, the one with the highest summed probability.
  """
  probabilities = np.asarray(probabilities)
  votes = np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1])
  tied = np.flatnonzero(votes == votes.max())
  return int(tied[np.argmax(probabilities.sum(0)[tied])])


def _stack(patch_embeddings, tracks, class_index):
  """-> (patches (N, D), patch labels (N,), track of each patch (N,), track labels, tracks skipped)."""
  kept = [(rel, genre) for rel, genre in tracks if rel in patch_embeddings]
  if not kept:
    raise InputError("a GTZAN split has no track with an embedding (check the embedding keys: relpaths "
                     "like blues/blues.00012.wav)")
  arrays = [np.atleast_2d(np.asarray(patch_embeddings[rel], np.float32)) for rel, _ in kept]
  labels = np.array([class_index[genre] for _, genre in kept])
  owner = np.repeat(np.arange(len(kept)), [len(a) for a in arrays])
  return np.concatenate(arrays), labels[owner], owner, labels, len(tracks) - len(kept)


def _track_predictions(clf, x, owner, n_tracks):
  probabilities = clf.predict_proba(x)
  return np.array([majority_vote(probabilities[owner == t]) for t in range(n_tracks)]), probabilities


def _train(x, y, val, classes, seed, max_epochs, patience):
  """Trains epoch by epoch; returns (the model of the best validation epoch, that epoch)."""
  x_val, y_val, owner_val, labels_val = val
  clf = MLPClassifier(hidden_layer_sizes=(256,), activation="relu", solver="adam",
                      batch_size=min(200, len(x)), random_state=seed)
  order_rng = np.random.default_rng(seed)
  best, best_score, best_epoch = None, None, 0
  for epoch in range(1, max_epochs + 1):
    order = order_rng.permutation(len(x))
    clf.partial_fit(x[order], y[order], classes=classes)
    predicted, probabilities = _track_predictions(clf, x_val, owner_val, len(labels_val))
    score = (np.mean(predicted == labels_val), -log_loss(y_val, probabilities, labels=classes))
    if best_score is None or score > best_score:
      best, best_score, best_epoch = copy.deepcopy(clf), score, epoch
    elif epoch - best_epoch >= patience:
      break
  return best, best_epoch


def evaluate_gtzan(patch_embeddings, split, repetitions=10, seed=0, max_epochs=100, patience=10):
  """Trains and tests the paper's genre MLP `repetitions` times.

  Args:
    patch_embeddings: {relpath: (n_patches, D) array}, relpaths as in `split` (see `by_relpath`).
    split: `read_gtzan` output.
    repetitions: independent runs; run r uses random_state seed + r (initialisation and shuffling).
    seed: the first run's seed.
    max_epochs: the most epochs a run trains.
    patience: epochs without a better validation score before a run stops.

  Returns:
    {"accuracy_mean", "accuracy_std" (population std over runs), "accuracies" [per run],
     "confusion" (classes, classes) int counts summed over all runs (rows true, columns predicted),
     "classes" [genre names, the confusion order], "epochs" [the selected epoch per run],
     "skipped" {split: listed tracks without an embedding}, "test_tracks"}.
  """
  classes = sorted({genre for tracks in split.values() for _, genre in tracks})
  class_index = {genre: i for i, genre in enumerate(classes)}
  data = {name: _stack(patch_embeddings, split[name], class_index) for name in ("train", "valid", "test")}
  x_train, y_train = data["train"][:2]
  scaler = StandardScaler().fit(x_train)  # train statistics only: the test split stays unseen
  scaled = {name: (scaler.transform(d[0]),) + d[1:4] for name, d in data.items()}
  indices = np.arange(len(classes))
  accuracies, epochs = [], []
  confusion = np.zeros((len(classes), len(classes)), np.int64)
  for r in range(repetitions):
    clf, epoch = _train(scaled["train"][0], y_train, scaled["valid"], indices, seed + r, max_epochs,
                        patience)
    x_test, _, owner, labels = scaled["test"]
    predicted, _ = _track_predictions(clf, x_test, owner, len(labels))
    np.add.at(confusion, (labels, predicted), 1)
    accuracies.append(float(np.mean(predicted == labels)))
    epochs.append(epoch)
  return {"accuracy_mean": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
          "accuracies": accuracies, "confusion": confusion, "classes": classes, "epochs": epochs,
          "skipped": {name: d[4] for name, d in data.items()}, "test_tracks": len(scaled["test"][3])}
