"""The training model: encoders + tasks, with a thin custom train_step.

One class serves the paper's six models, chosen by `mode`:
  contr_cf_g  audio-genre, audio-playlist and genre-playlist alignment (the proposed model, Contr_CF-G)
  contr_g     audio-genre only (Contr_G)          contr_cf   audio-playlist only (Contr_CF)
  bline_g     genre prediction from audio         bline_cf   CF-vector regression from audio
  bline_cf_g  both baselines at once (B-line_CF-G)

A batch is the reader's dict (tfcmir.train.pipeline): mel (batch, 256, 48), genres (batch, T_w),
cf (batch, F_cf). Losses are sums over the replica's songs (see tfcmir/model/tasks.py); the metrics
report them per song, so the logged numbers do not depend on the batch size or the replica count.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcmir.model import encoders, tasks

MODES = ("contr_cf_g", "contr_g", "contr_cf", "bline_g", "bline_cf", "bline_cf_g")


def mode_inputs(mode):
  """Which modalities a mode trains on besides the audio."""
  return {"genre": mode in ("contr_cf_g", "contr_g", "bline_g", "bline_cf_g"),
          "cf": mode in ("contr_cf_g", "contr_cf", "bline_cf", "bline_cf_g")}


def contrastive_pairs(mode, lambda_a2g=1.0, lambda_a2p=1.0, lambda_g2p=1.0):
  pairs = {"contr_cf_g": (("a2g", "audio", "genre", lambda_a2g), ("a2p", "audio", "cf", lambda_a2p),
                          ("g2p", "genre", "cf", lambda_g2p)),
           "contr_g": (("a2g", "audio", "genre", lambda_a2g),),
           "contr_cf": (("a2p", "audio", "cf", lambda_a2p),)}
  return pairs.get(mode, ())


class CrossModalModel(keras.Model):
  """Audio encoder aligned with (or supervised by) genre and playlist information.

  Args:
    mode: one of MODES.
    genre_table: float (V + 1, F_w) Word2Vec genre vectors, row 0 padding.
    cf_dim: F_cf.
    audio: kwargs of encoders.AudioEncoder.
    genre: kwargs of encoders.GenreEncoder (besides the table).
    cf: kwargs of encoders.CFEncoder.
    temperature: tau.
    lambdas: (lambda_a2g, lambda_a2p, lambda_g2p).
  """

  def __init__(self, mode, genre_table, cf_dim, audio=None, genre=None, cf=None, temperature=0.1,
               lambdas=(1.0, 1.0, 1.0), **kwargs):
    super().__init__(**kwargs)
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    self.mode = mode
    self.uses = mode_inputs(mode)
    self.audio_encoder = encoders.AudioEncoder(**(audio or {}), name="audio_encoder")
    self.genre_encoder = None
    self.cf_encoder = None
    self.tasks = []
    pairs = contrastive_pairs(mode, *lambdas)
    if pairs:
      if self.uses["genre"]:
        self.genre_encoder = encoders.GenreEncoder(genre_table, **(genre or {}), name="genre_encoder")
      if self.uses["cf"]:
        self.cf_encoder = encoders.CFEncoder(**(cf or {}), name="cf_encoder")
      self.tasks.append(tasks.ContrastiveTask(pairs, temperature, name="contrastive"))
    else:
      if self.uses["genre"]:
        self.tasks.append(tasks.GenrePrediction(genre_table.shape[0] - 1, lambdas[0], name="genre_task"))
      if self.uses["cf"]:
        self.tasks.append(tasks.CFRegression(cf_dim, lambdas[1], name="cf_task"))
    self.loss_names = [p[0] for p in pairs] or [n for n, u in (("genre", self.uses["genre"]),
                                                                ("cf", self.uses["cf"])) if u]
    self.trackers = {name: keras.metrics.Mean(name=name) for name in ["loss"] + self.loss_names}

  @property
  def metrics(self):
    # Listed here so that fit() resets them every epoch.
    return list(self.trackers.values())

  def build(self, input_shape=None):
    # The encoders build themselves on their first call (build_from_batch); nothing to do here.
    self.built = True

  def call(self, batch, training=False):
    """The embeddings of a batch: {'audio', 'audio_pre_head', 'genre'?, 'cf'?}, float32."""
    pre_head, audio = self.audio_encoder(batch["mel"], training=training, return_pre_head=True)
    out = {"audio": audio, "audio_pre_head": pre_head}
    if self.genre_encoder is not None:
      out["genre"] = self.genre_encoder(batch["genres"], training=training)
    if self.cf_encoder is not None:
      out["cf"] = self.cf_encoder(batch["cf"], training=training)
    return out

  def compute_losses(self, batch, training=False):
    """{loss name: sum over this replica's songs} for the mode's tasks."""
    embeddings = self(batch, training=training)
    out = {}
    for task in self.tasks:
      if isinstance(task, tasks.ContrastiveTask):
        out.update(task(embeddings))
      elif isinstance(task, tasks.GenrePrediction):
        out.update(task(embeddings["audio"], batch["genres"]))
      else:
        out.update(task(embeddings["audio"], batch["cf"]))
    return out

  def _report(self, losses, batch):
    songs = tf.cast(tf.shape(batch["mel"])[0], tf.float32)
    total = tf.add_n(list(losses.values()))
    self.trackers["loss"].update_state(total / songs)
    for name, value in losses.items():
      self.trackers[name].update_state(value / songs)
    logs = {name: tracker.result() for name, tracker in self.trackers.items()}
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
      # Keras (3.15) reduces the replicas' logs across workers as a mean along axis 0, which a scalar
      # does not have: give each a length-1 axis, which that mean removes.
      logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs

  def train_step(self, batch):
    with tf.GradientTape() as tape:
      losses = self.compute_losses(batch, training=True)
      total = tf.add_n(list(losses.values()))
      # Loss scaling for float16 mixed precision (a no-op otherwise). No division by the number of
      # replicas: the task losses are sums, and the optimizer sums gradients over replicas.
      scaled = self.optimizer.scale_loss(total)
    gradients = tape.gradient(scaled, self.trainable_variables)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
    return self._report(losses, batch)

  def test_step(self, batch):
    return self._report(self.compute_losses(batch, training=False), batch)

  def build_from_batch(self, batch):
    """Creates every variable (encoders and task heads) from one batch, before fit or restore."""
    self.compute_losses(batch, training=False)

  def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    # Keras (3.15) builds an unbuilt model from a first batch that it takes from the epoch's iterator
    # and all-reduces over the replicas; under MultiWorkerMirroredStrategy that reduce fails on a dict
    # batch. This model and its optimizer are built before fit (build_from_batch), so there is nothing
    # to build, and no batch is spent on it.
    if self.built and getattr(self, "optimizer", None) is not None and self.optimizer.built:
      return None
    return super()._maybe_symbolic_build(iterator, data_batch)


def model_config(mode, genre_vocab_shape, cf_dim, channels, kernel_size=3, hidden_dim=512,
                 embedding_dim=128, dropout=0.5, attention_heads=4, temperature=0.1,
                 lambdas=(1.0, 1.0, 1.0)):
  """The JSON-able description of a model: saved beside its checkpoints, read back by export."""
  return {"mode": mode, "genre_vocab_shape": list(genre_vocab_shape), "cf_dim": int(cf_dim),
          "audio": {"channels": [int(c) for c in channels], "kernel_size": kernel_size,
                    "hidden_dim": hidden_dim, "embedding_dim": embedding_dim, "dropout": dropout},
          "genre": {"num_heads": attention_heads, "embedding_dim": embedding_dim, "dropout": dropout},
          "cf": {"hidden_dim": hidden_dim, "embedding_dim": embedding_dim, "dropout": dropout},
          "temperature": temperature, "lambdas": list(lambdas)}


def build_model(config, genre_table=None):
  """A CrossModalModel from `model_config(...)`; the genre table initialises the genre embeddings
  (zeros of the recorded shape when None: the weights then come from a checkpoint)."""
  import numpy as np
  table = (np.zeros(config["genre_vocab_shape"], np.float32) if genre_table is None
           else np.asarray(genre_table, np.float32))
  if list(table.shape) != list(config["genre_vocab_shape"]):
    raise ValueError(f"genre table of shape {table.shape}, the model expects "
                     f"{config['genre_vocab_shape']}")
  return CrossModalModel(config["mode"], table, config["cf_dim"], audio=config["audio"],
                         genre=config["genre"], cf=config["cf"], temperature=config["temperature"],
                         lambdas=tuple(config["lambdas"]))
