"""Tasks: each owns one objective of the paper and turns encoder outputs into a loss.

As in TensorFlow Recommenders, the model holds no loss arithmetic: it runs the encoders and sums what
its tasks return. Every task returns the SUM of its per-song losses over this replica's songs, so that
summing over replicas (what the optimizer does with gradients) gives exactly the loss of the global
batch, whatever the number of replicas.

  ContrastiveTask   eq. 9-13: NT-Xent between pairs of modalities, weighted by lambda, with the
                    embeddings of every replica gathered so each song is contrasted with the global batch
  GenrePrediction   B-line_G: multi-label genre prediction from the audio (binary cross-entropy)
  CFRegression      B-line_CF: regression of the WARP vector from the audio (mean squared error)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcmir.model import losses


def gather_replicas(x):
  """All replicas' rows of `x` and the index of this replica's first row.

  Outside a multi-replica step this is `(x, 0)`. The gather is differentiable: each replica's gradient
  for its own rows collects what every replica's loss sends back to them.
  """
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return x, 0
  gathered = context.all_gather(x, axis=0)
  return gathered, context.replica_id_in_sync_group * tf.shape(x)[0]


class ContrastiveTask(keras.layers.Layer):
  """Weighted sum of symmetric NT-Xent losses over pairs of modalities (eq. 13).

  Args:
    pairs: ((name, modality_x, modality_y, weight), ...), e.g. ("a2g", "audio", "genre", 1.0).
    temperature: tau.
  """

  def __init__(self, pairs, temperature=0.1, **kwargs):
    super().__init__(**kwargs)
    self.pairs = tuple(tuple(p) for p in pairs)
    self.temperature = temperature

  def call(self, embeddings):
    """embeddings: {modality: float32 (local_batch, d)} -> {pair name: weighted loss (scalar)}."""
    # One gather for all modalities, in a fixed order. Collectives pair up across workers by the order
    # they are created in: a gather per modality in set order (which varies with each process's hash
    # seed) swapped modalities between workers under MultiWorkerMirroredStrategy.
    modalities = sorted({m for _, x, y, _ in self.pairs for m in (x, y)})
    widths = [embeddings[m].shape[-1] for m in modalities]
    joined, offset = gather_replicas(tf.concat([embeddings[m] for m in modalities], axis=-1))
    gathered = dict(zip(modalities, tf.split(joined, widths, axis=-1)))
    out = {}
    for name, x, y, weight in self.pairs:
      loss = losses.pair_loss(embeddings[x], embeddings[y], self.temperature, gathered[x],
                              gathered[y], offset)
      out[name] = weight * loss
    return out


def genre_targets(genre_ids, vocabulary_size):
  """int (batch, T_w) genre table rows, 0 = padding -> float32 (batch, vocabulary_size) multi-hot."""
  hot = tf.reduce_max(tf.one_hot(genre_ids, vocabulary_size + 1), axis=1)
  return hot[:, 1:]


class GenrePrediction(keras.layers.Layer):
  """B-line_G: a linear head on the audio embedding predicts the song's genres (multi-label)."""

  def __init__(self, vocabulary_size, weight=1.0, **kwargs):
    super().__init__(**kwargs)
    self.vocabulary_size = vocabulary_size
    self.weight = weight
    self.head = keras.layers.Dense(vocabulary_size, dtype="float32", name="genre_logits")

  def call(self, audio, genre_ids):
    targets = genre_targets(genre_ids, self.vocabulary_size)
    logits = self.head(audio)
    per_song = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits), axis=1)
    return {"genre": self.weight * tf.reduce_sum(per_song)}


class CFRegression(keras.layers.Layer):
  """B-line_CF: a linear head on the audio embedding regresses the song's WARP vector."""

  def __init__(self, cf_dim, weight=1.0, **kwargs):
    super().__init__(**kwargs)
    self.weight = weight
    self.head = keras.layers.Dense(cf_dim, dtype="float32", name="cf_regression")

  def call(self, audio, cf):
    per_song = tf.reduce_mean(tf.square(self.head(audio) - cf), axis=1)
    return {"cf": self.weight * tf.reduce_sum(per_song)}
