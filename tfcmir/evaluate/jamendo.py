"""Automatic tagging on MTG-Jamendo (paper section 3.3).

The protocol: a track is the mean of its patch embeddings; an MLP Dense(128) -> BN -> ReLU ->
Dense(64) -> BN -> ReLU -> Dropout -> Dense(n_tags, sigmoid) is trained with binary cross-entropy and
Adam, early-stopped on the validation loss (best weights restored), and scored on the test split with
macro ROC-AUC (the paper's metric) and macro PR-AUC (the official baseline's second one), averaged
over `repetitions` runs. Each category (genre, instrument, moodtheme) has its own split files.

Decisions the paper leaves open, made here:
  * `evaluate_jamendo` accepts (D,) track embeddings or (n_patches, D) patch embeddings, which it
    averages, so callers can pass `embed_files` output directly.
  * Features are standardised with the training tracks' statistics.
  * The tag vocabulary is the tags of the training split; the metrics average over the tags that have
    both positive and negative test tracks (AUC is undefined otherwise), listed in the result's "tags".
  * Tracks without an embedding are left out and counted in "skipped"; an empty split is an error.
"""

from __future__ import annotations

import os

import numpy as np

from tfcmir.errors import InputError

CATEGORIES = ("genre", "instrument", "moodtheme")
PARTS = ("train", "validation", "test")
HEADER = "TRACK_ID"
FIXED_COLUMNS = 5  # TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION; the tags follow


def split_file(jamendo_dir, category, part, split=0):
  """The TSV of one category, part and split: data/splits/split-N/autotagging_{category}-{part}.tsv."""
  return os.path.join(jamendo_dir, "data", "splits", f"split-{split}", f"autotagging_{category}-{part}.tsv")


def read_jamendo_split(jamendo_dir, category, split=0):
  """Reads the train / validation / test TSVs of one tag category.

  Args:
    jamendo_dir: the MTG-Jamendo folder (holding data/splits/).
    category: "genre", "instrument" or "moodtheme".
    split: which of the official splits 0..4.

  Returns:
    {"train" | "validation" | "test": [(path, [tags])]}, path the TSV's PATH column (`NN/ID.mp3`,
    relative to the audio folder: see `audio_path`), tags as written (`genre---rock`).

  Raises:
    InputError: an unknown category, a missing file, a missing header or a malformed line; the message
      names the file (and line).
  """
  if category not in CATEGORIES:
    raise InputError(f"Jamendo category must be one of {', '.join(CATEGORIES)}, got {category!r}")
  return {part: _read_tsv(split_file(jamendo_dir, category, part, split)) for part in PARTS}


def _read_tsv(path):
  if not os.path.exists(path):
    raise InputError(f"{path}: MTG-Jamendo split file not found")
  # newline=None turns CRLF into \n; strip("\r\n") also covers a stray \r.
  with open(path, encoding="utf-8") as f:
    lines = [line.rstrip("\r\n") for line in f]
  if not lines or not lines[0].startswith(HEADER):
    raise InputError(f"{path}:1: expected a header starting with {HEADER}")
  tracks = []
  for number, line in enumerate(lines[1:], 2):
    if not line.strip():
      continue
    fields = line.split("\t")
    tags = [t.strip() for t in fields[FIXED_COLUMNS:] if t.strip()]
    if len(fields) <= FIXED_COLUMNS or not fields[3].strip() or not tags:
      raise InputError(f"{path}:{number}: malformed line (want TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, "
                       f"DURATION and at least one tag, tab-separated): {line[:80]!r}")
    tracks.append((fields[3].strip(), tags))
  return tracks


def audio_path(jamendo_dir, path, audio_dir=None):
  """Where the audio of a TSV PATH lies.

  Args:
    jamendo_dir: the MTG-Jamendo folder.
    path: the PATH column (`NN/ID.mp3`).
    audio_dir: the folder the audio was downloaded to, for layouts that keep it apart from the
      metadata; None looks in `{jamendo_dir}/audio/` (the demo and download-script layout) and then
      `{jamendo_dir}/`.

  Returns:
    The file path (it need not exist: unreadable files are reported when embedded).
  """
  if audio_dir is not None:
    return os.path.join(audio_dir, path)
  inside = os.path.join(jamendo_dir, "audio", path)
  return inside if os.path.exists(inside) else os.path.join(jamendo_dir, path)


def _matrix(track_embeddings, tracks, vocabulary):
  """(path, tags) list -> (features (N, D), multi-hot (N, T), skipped count)."""
  kept = [(p, tags) for p, tags in tracks if p in track_embeddings]
  if not kept:
    raise InputError("a Jamendo split has no track with an embedding (keys are the TSV PATH values)")
  x = np.stack([_track_vector(track_embeddings[p]) for p, _ in kept])
  y = np.zeros((len(kept), len(vocabulary)), np.float32)
  for i, (_, tags) in enumerate(kept):
    y[i, [vocabulary[t] for t in tags if t in vocabulary]] = 1
  return x, y, len(tracks) - len(kept)


def _track_vector(embedding):
  embedding = np.asarray(embedding, np.float32)
  return embedding.mean(0) if embedding.ndim == 2 else embedding


def build_model(dim, n_tags, dropout=0.5, learning_rate=1e-3):
  """The paper's tagging MLP: (batch, dim) track embeddings -> (batch, n_tags) tag probabilities."""
  import keras
  layers = keras.layers
  inputs = keras.Input((dim,))
  x = inputs
  for units in (128, 64):
    x = layers.Dense(units)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
  x = layers.Dropout(dropout)(x)
  model = keras.Model(inputs, layers.Dense(n_tags, activation="sigmoid")(x))
  model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
  return model


class _Tagger:
  """The tagging MLP with its training and validation steps traced once, for every run of a category.

  Each run starts from exactly the state a freshly built model would have (weights, BatchNorm
  statistics and dropout seed from `keras.utils.set_random_seed(seed)`; zeroed Adam moments), so the
  runs are those of `fit` with `EarlyStopping(restore_best_weights=True)` (shuffled mini-batches, the
  last one partial; validation loss after each epoch; best weights restored), without retracing: a new
  model per run cost ~1.2 s of tracing for ~1 s of arithmetic at the demo's size. Each epoch is one
  compiled graph call, as `fit` spent ~100 ms per epoch on its own bookkeeping.
  """

  def __init__(self, dim, n_tags, batch_size, dropout):
    import keras
    import tensorflow as tf
    self.shape, self.dropout = (dim, n_tags), dropout
    self.model = build_model(dim, n_tags, dropout)
    variables = self.model.trainable_variables
    self.model.optimizer.build(variables)
    # Zeroed moments and step count, and the learning rate (a variable too): restored before each run.
    self.optimizer_start = [v.numpy() for v in self.model.optimizer.variables]
    loss_fn = keras.losses.BinaryCrossentropy()
    model = self.model

    @tf.function
    def train_epoch(x, y, order):
      for start in tf.range(0, tf.shape(order)[0], batch_size):
        rows = order[start:start + batch_size]
        with tf.GradientTape() as tape:
          loss = loss_fn(tf.gather(y, rows), model(tf.gather(x, rows), training=True))
        model.optimizer.apply(tape.gradient(loss, variables), variables)

    @tf.function
    def validation_loss(x, y):
      return loss_fn(y, model(x, training=False))

    self.train_epoch, self.validation_loss = train_epoch, validation_loss

  def reset(self, seed):
    import keras
    keras.utils.set_random_seed(seed)
    fresh = build_model(*self.shape, self.dropout)
    for target, source in zip(self.model.variables, fresh.variables, strict=True):
      target.assign(source)
    for variable, value in zip(self.model.optimizer.variables, self.optimizer_start, strict=True):
      variable.assign(value)


def _run(tagger, data, seed, epochs, patience):
  """One training run; returns (test probabilities (N, T), epochs trained up to the best one)."""
  import tensorflow as tf
  tagger.reset(seed)  # weights and dropout follow this seed; shuffling follows `rng`
  rng = np.random.default_rng(seed)
  model = tagger.model
  (x_train, y_train), (x_val, y_val), (x_test, _) = data
  x, y = tf.constant(x_train, tf.float32), tf.constant(y_train, tf.float32)
  x_val, y_val = tf.constant(x_val, tf.float32), tf.constant(y_val, tf.float32)
  best_loss, best_epoch, best_weights = np.inf, 0, None
  for epoch in range(1, epochs + 1):
    tagger.train_epoch(x, y, tf.constant(rng.permutation(len(x_train)), tf.int32))
    loss = float(tagger.validation_loss(x_val, y_val))
    if loss < best_loss:
      best_loss, best_epoch, best_weights = loss, epoch, model.get_weights()
    elif epoch - best_epoch >= patience:
      break
  if best_weights is not None:
    model.set_weights(best_weights)
  return model(x_test, training=False).numpy(), best_epoch


def evaluate_jamendo(track_embeddings, splits, repetitions=10, seed=0, epochs=200, patience=10,
                     batch_size=64, dropout=0.5):
  """Trains and tests the paper's tagging MLP `repetitions` times.

  Args:
    track_embeddings: {TSV path: (D,) track embedding, or (n_patches, D) patch embeddings to average}.
    splits: `read_jamendo_split` output.
    repetitions: independent runs; run r seeds Keras with seed + r.
    seed: the first run's seed.
    epochs: the most epochs a run trains.
    patience: epochs without a lower validation loss before a run stops (best weights restored).
    batch_size: training batch size.
    dropout: the dropout rate before the output layer.

  Returns:
    {"roc_auc_mean", "roc_auc_std", "pr_auc_mean", "pr_auc_std" (population std over runs),
     "roc_aucs", "pr_aucs" [per run], "tags" [the tags scored], "epochs" [best epoch per run],
     "skipped" {part: listed tracks without an embedding}, "test_tracks"}.
  """
  from sklearn.metrics import average_precision_score, roc_auc_score
  tags = sorted({t for _, track_tags in splits["train"] for t in track_tags})
  vocabulary = {t: i for i, t in enumerate(tags)}
  parts = {part: _matrix(track_embeddings, splits[part], vocabulary) for part in PARTS}
  mean, std = parts["train"][0].mean(0), parts["train"][0].std(0) + 1e-8
  data = [((parts[p][0] - mean) / std, parts[p][1]) for p in PARTS]
  y_test = data[2][1]
  scored = np.flatnonzero((y_test.sum(0) > 0) & (y_test.sum(0) < len(y_test)))
  if not len(scored):
    raise InputError("no tag has both positive and negative tracks in the Jamendo test split")
  roc, pr, best_epochs = [], [], []
  import keras
  keras.backend.clear_session()  # the taggers of earlier categories and exports
  tagger = _Tagger(data[0][0].shape[1], data[0][1].shape[1], batch_size, dropout)
  for r in range(repetitions):
    probabilities, best_epoch = _run(tagger, data, seed + r, epochs, patience)
    roc.append(float(roc_auc_score(y_test[:, scored], probabilities[:, scored], average="macro")))
    pr.append(float(average_precision_score(y_test[:, scored], probabilities[:, scored], average="macro")))
    best_epochs.append(best_epoch)
  return {"roc_auc_mean": float(np.mean(roc)), "roc_auc_std": float(np.std(roc)),
          "pr_auc_mean": float(np.mean(pr)), "pr_auc_std": float(np.std(pr)), "roc_aucs": roc,
          "pr_aucs": pr, "tags": [tags[i] for i in scored], "epochs": best_epochs,
          "skipped": {p: parts[p][2] for p in PARTS}, "test_tracks": len(y_test)}
