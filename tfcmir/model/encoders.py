"""The three encoders of the paper (section 2.1, eq. 1-8) as Keras layers.

  * `AudioEncoder` (e_a): mel-spectrogram -> Z conv blocks -> feed-forward block -> phi_a. It also hands
    out the flattened conv features ("pre-head", 1024-d by default), which is what the authors'
    `encode.py` saves for downstream tasks.
  * `GenreEncoder` (e_w): genre ids -> Word2Vec table -> self-attention -> FF with skip -> masked sum ->
    LayerNorm -> phi_w.
  * `CFEncoder` (e_cf): WARP factors -> FF, ReLU, dropout, FF, LayerNorm -> phi_cf.

Every encoder follows its own dtype policy inside (so mixed precision speeds up the convolutions) and
returns float32, so the contrastive losses are always computed in float32. None reads flags: they take
plain arguments and round-trip through `get_config`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

# The authors' pools for Z = 7 blocks on (256 frames, 48 bands): blocks 5 and 6 pool time only, so the
# 48 bands go 24, 12, 6, 3, 3, 3, 1 while the 256 frames halve every block down to 2: 2 x 1 x 512 = 1024.
AUTHORS_POOLS = ((2, 2), (2, 2), (2, 2), (2, 2), (2, 1), (2, 1), (2, 2))

# PyTorch's BatchNorm defaults (momentum 0.1 of the new batch, eps 1e-5), as the authors trained with;
# Keras' own (0.99, 1e-3) make the moving statistics lag far behind during short runs.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
LN_EPSILON = 1e-6


def default_pools(num_blocks, frames, bands):
  """Max-pool sizes for `num_blocks` conv blocks on a (frames, bands) input.

  The rule, per axis: halve it in a block while the result keeps at least 3 rows, and halve it in the
  last block whenever it still has 2 or more. For 7 blocks on (256, 48) this is exactly the authors'
  `AUTHORS_POOLS`; for other depths or input sizes it degrades gracefully instead of pooling to zero.

  Args:
    num_blocks: Z, the number of conv blocks.
    frames: input frames (T_a), or None when unknown (then time is halved in every block).
    bands: input mel bands (F_a), or None when unknown (then halved in every block).

  Returns:
    tuple of `num_blocks` (time_pool, band_pool) pairs.
  """
  return tuple(zip(_axis_pools(num_blocks, frames), _axis_pools(num_blocks, bands)))


def _axis_pools(num_blocks, size):
  pools = []
  for block in range(num_blocks):
    last = block == num_blocks - 1
    pool = 2 if size is None or size // 2 >= 3 or (last and size >= 2) else 1
    pools.append(pool)
    size = None if size is None else size // pool
  return pools


def _output_float32(x):
  # Losses compare embeddings through exp(cos / 0.1): keep them out of float16.
  return ops.cast(x, "float32")


@keras.saving.register_keras_serializable(package="tfcmir")
class AudioEncoder(keras.layers.Layer):
  """e_a: mel-spectrogram -> (pre-head features, projection phi_a), eq. 1-4.

  Input BatchNorm (authors' code), then per block Conv2D(k x k, stride 1, 'same', no bias) -> BN ->
  ReLU -> MaxPool; flatten; then Dense(hidden) -> BN -> ReLU -> Dropout(p) -> Dense(embedding) ->
  LayerNorm(1e-6).

  Args:
    channels: output channels of each of the Z conv blocks.
    kernel_size: K, the square kernel size.
    pools: one (time, band) max-pool size per block; None derives them from the input shape with
      `default_pools` (the authors' pools for 7 blocks on 256 x 48).
    hidden_dim: width of FF_a1.
    embedding_dim: width of FF_a2, the contrastive space.
    dropout: p, the dropout probability of the feed-forward block.

  Call args:
    mel: float (batch, frames, bands) time-major mel-spectrogram in dB (256 x 48 in the paper).
    training: whether BatchNorm uses batch statistics and dropout is active.
    return_pre_head: also return the flattened conv features.

  Returns:
    float32 (batch, embedding_dim) phi_a; with `return_pre_head`, the tuple (pre_head, phi_a) where
    pre_head is float32 (batch, pre_head_dim), 1024-d for the default config on 256 x 48.
  """

  def __init__(self, channels=(128, 128, 256, 256, 256, 256, 512), kernel_size=3, pools=None,
               hidden_dim=512, embedding_dim=128, dropout=0.5, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(int(c) for c in channels)
    if not self.channels:
      raise ValueError("AudioEncoder needs at least one conv block")
    self.pools = None if pools is None else tuple(tuple(int(s) for s in p) for p in pools)
    if self.pools is not None and len(self.pools) != len(self.channels):
      raise ValueError(f"{len(self.pools)} pools for {len(self.channels)} conv blocks")
    self.kernel_size = int(kernel_size)
    self.hidden_dim = int(hidden_dim)
    self.embedding_dim = int(embedding_dim)
    self.dropout = float(dropout)
    self.resolved_pools = None  # Known once built (the input shape decides the default pools).
    self.pre_head_dim = None

    policy = self.dtype_policy
    self.input_norm = _batch_norm(policy, "input_norm")
    self.convs = [keras.layers.Conv2D(c, self.kernel_size, padding="same", use_bias=False, dtype=policy,
                                      name=f"conv{z + 1}") for z, c in enumerate(self.channels)]
    self.conv_norms = [_batch_norm(policy, f"conv{z + 1}_norm") for z in range(len(self.channels))]
    self.pool_layers = []
    self.flatten = keras.layers.Flatten(dtype=policy)
    self.hidden = keras.layers.Dense(self.hidden_dim, use_bias=False, dtype=policy, name="ff_a1")
    self.hidden_norm = _batch_norm(policy, "ff_a1_norm")
    self.head_dropout = keras.layers.Dropout(self.dropout, dtype=policy)
    self.projection = keras.layers.Dense(self.embedding_dim, dtype=policy, name="ff_a2")
    self.out_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, dtype=policy.variable_dtype,
                                                    name="out_norm")

  def build(self, input_shape):
    batch, frames, bands = input_shape
    pools = self.pools or default_pools(len(self.channels), frames, bands)
    self.resolved_pools = pools
    self.pool_layers = [keras.layers.MaxPooling2D(p, dtype=self.dtype_policy, name=f"pool{z + 1}")
                        for z, p in enumerate(pools)]
    shape = (batch, frames, bands, 1)
    self.input_norm.build(shape)
    for conv, norm, pool, size in zip(self.convs, self.conv_norms, self.pool_layers, pools):
      conv.build(shape)
      shape = conv.compute_output_shape(shape)
      norm.build(shape)
      if any(s is not None and s < p for s, p in zip(shape[1:3], size)):
        raise ValueError(f"pools {pools} shrink a ({frames}, {bands}) input to nothing")
      shape = pool.compute_output_shape(shape)
    if any(s is None for s in shape[1:]):
      raise ValueError(f"AudioEncoder needs a fixed input size to flatten; got {input_shape}")
    self.pre_head_dim = math.prod(shape[1:])
    self.hidden.build((batch, self.pre_head_dim))
    self.hidden_norm.build((batch, self.hidden_dim))
    self.projection.build((batch, self.hidden_dim))
    self.out_norm.build((batch, self.embedding_dim))

  def call(self, mel, training=False, return_pre_head=False):
    x = self.input_norm(ops.expand_dims(mel, -1), training=training)
    for conv, norm, pool in zip(self.convs, self.conv_norms, self.pool_layers):
      x = pool(ops.relu(norm(conv(x), training=training)))
    pre_head = self.flatten(x)
    x = ops.relu(self.hidden_norm(self.hidden(pre_head), training=training))
    x = self.out_norm(self.projection(self.head_dropout(x, training=training)))
    if return_pre_head:
      return _output_float32(pre_head), _output_float32(x)
    return _output_float32(x)

  def embed(self, mel, training=False):
    """Both outputs at once: (pre_head (batch, pre_head_dim), phi_a (batch, embedding_dim)), float32."""
    return self(mel, training=training, return_pre_head=True)

  def get_config(self):
    config = super().get_config()
    config.update(channels=list(self.channels), kernel_size=self.kernel_size,
                  pools=None if self.pools is None else [list(p) for p in self.pools],
                  hidden_dim=self.hidden_dim, embedding_dim=self.embedding_dim, dropout=self.dropout)
    return config


def _batch_norm(policy, name):
  # synchronized: under a multi-replica strategy the batch statistics are those of the global batch,
  # so the model computes the same function on one replica or eight (a no-op on one).
  return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=policy,
                                         synchronized=True, name=name)


@keras.saving.register_keras_serializable(package="tfcmir")
class GenreEncoder(keras.layers.Layer):
  """e_w: padded genre ids -> phi_w, eq. 5-7.

  V' = SelfAttention(W2V(ids)) (multi-head, no biases, output projected to `embedding_dim`);
  V = V' + Dropout(p)(Dense(V')); phi_w = LayerNorm(sum of V over the real genres).

  Padding (id 0) is masked as a key, and padded positions are left out of the sum: unlike the authors'
  code, where padded queries leak into it, the output depends only on the set of real genres (and the
  sum makes it order-free). A song with no genres gives LayerNorm(0), i.e. the LayerNorm bias.

  Args:
    vocab_vectors: float (V + 1, F_w) Word2Vec vectors, row 0 the padding id. Copied into a table that
      is fine-tuned when `trainable_table` (as the authors do).
    vocab_shape: (V + 1, F_w), only when `vocab_vectors` is None: the table then starts at zero and is
      expected to be loaded from a checkpoint (this is how `from_config` rebuilds the layer).
    num_heads: attention heads (4 in the paper).
    key_dim: size of each head's queries, keys and values (128 in the authors' code).
    embedding_dim: output size, the contrastive space (F'_w).
    dropout: p, the dropout on the feed-forward branch of eq. 6.
    attention_dropout: dropout on the attention weights (0.1 in the authors' code).
    trainable_table: fine-tune the Word2Vec table.

  Call args:
    ids: int (batch, T_w) genre ids, 0 = padding, any padding length.
    training: whether dropout is active.

  Returns:
    float32 (batch, embedding_dim) phi_w.
  """

  def __init__(self, vocab_vectors=None, vocab_shape=None, num_heads=4, key_dim=128, embedding_dim=128,
               dropout=0.5, attention_dropout=0.1, trainable_table=True, **kwargs):
    super().__init__(**kwargs)
    if vocab_vectors is not None:
      vocab_vectors = np.asarray(vocab_vectors, np.float32)
      if vocab_vectors.ndim != 2 or vocab_vectors.shape[0] < 2:
        raise ValueError(f"vocab_vectors must be (V + 1, F_w) with V >= 1; got {vocab_vectors.shape}")
      vocab_shape = vocab_vectors.shape
    elif vocab_shape is None:
      raise ValueError("GenreEncoder needs vocab_vectors or vocab_shape")
    self._vocab_vectors = vocab_vectors  # Not config: the weights carry it once built.
    self.vocab_shape = tuple(int(s) for s in vocab_shape)
    self.num_heads = int(num_heads)
    self.key_dim = int(key_dim)
    self.embedding_dim = int(embedding_dim)
    self.dropout = float(dropout)
    self.attention_dropout = float(attention_dropout)
    self.trainable_table = bool(trainable_table)

    policy = self.dtype_policy
    self.table = keras.layers.Embedding(*self.vocab_shape, trainable=self.trainable_table, dtype=policy,
                                        name="word2vec")
    self.attention = keras.layers.MultiHeadAttention(
        self.num_heads, self.key_dim, use_bias=False, output_shape=self.embedding_dim,
        dropout=self.attention_dropout, dtype=policy, name="self_attention")
    self.ff = keras.layers.Dense(self.embedding_dim, dtype=policy, name="ff_w")
    self.ff_dropout = keras.layers.Dropout(self.dropout, dtype=policy)
    self.out_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, dtype=policy.variable_dtype,
                                                    name="out_norm")

  def build(self, input_shape):
    batch, length = input_shape
    self.table.build(input_shape)
    if self._vocab_vectors is not None:
      self.table.embeddings.assign(self._vocab_vectors)
    words = (batch, length, self.vocab_shape[1])
    self.attention.build(words, words)
    self.ff.build((batch, length, self.embedding_dim))
    self.out_norm.build((batch, self.embedding_dim))

  def call(self, ids, training=False):
    ids = ops.cast(ids, "int32")
    real = ops.not_equal(ids, 0)  # (batch, T_w)
    words = self.table(ids)
    # A padded query attends to nothing; a real one only to real keys.
    pairs = ops.logical_and(ops.expand_dims(real, 2), ops.expand_dims(real, 1))
    attended = self.attention(words, words, attention_mask=pairs, training=training)  # V'
    values = attended + self.ff_dropout(self.ff(attended), training=training)  # V, eq. 6
    # `where`, not a product: whatever a padded row holds, it cannot reach the sum.
    values = ops.where(ops.expand_dims(real, -1), values, ops.zeros_like(values))
    return _output_float32(self.out_norm(ops.sum(values, axis=1)))  # eq. 7

  def get_config(self):
    config = super().get_config()
    config.update(vocab_shape=list(self.vocab_shape), num_heads=self.num_heads, key_dim=self.key_dim,
                  embedding_dim=self.embedding_dim, dropout=self.dropout,
                  attention_dropout=self.attention_dropout, trainable_table=self.trainable_table)
    return config


@keras.saving.register_keras_serializable(package="tfcmir")
class CFEncoder(keras.layers.Layer):
  """e_cf: collaborative-filtering factors -> phi_cf, eq. 8.

  Dense(hidden) -> ReLU -> Dropout(p) -> Dense(embedding) -> LayerNorm(1e-6).

  Ours: F_cf -> 512, dropout 0.5 (the shared --hidden_dim and --dropout) -> 128. The authors' CF head
  is 301 -> 128, dropout 0.3, -> 128 (their 300 factors plus LightFM's item bias); pass
  hidden_dim=128, dropout=0.3 for theirs.

  Args:
    hidden_dim: width of FF_cf1.
    embedding_dim: width of FF_cf2, the contrastive space.
    dropout: p.

  Call args:
    factors: float (batch, F_cf) WARP item factors, F_cf = 300 (--cf_dim); the item bias is not
      appended (the authors' input is 301 wide: factors plus bias).
    training: whether dropout is active.

  Returns:
    float32 (batch, embedding_dim) phi_cf.
  """

  def __init__(self, hidden_dim=512, embedding_dim=128, dropout=0.5, **kwargs):
    super().__init__(**kwargs)
    self.hidden_dim = int(hidden_dim)
    self.embedding_dim = int(embedding_dim)
    self.dropout = float(dropout)
    policy = self.dtype_policy
    self.hidden = keras.layers.Dense(self.hidden_dim, activation="relu", dtype=policy, name="ff_cf1")
    self.head_dropout = keras.layers.Dropout(self.dropout, dtype=policy)
    self.projection = keras.layers.Dense(self.embedding_dim, dtype=policy, name="ff_cf2")
    self.out_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, dtype=policy.variable_dtype,
                                                    name="out_norm")

  def build(self, input_shape):
    batch = input_shape[0]
    self.hidden.build(input_shape)
    self.projection.build((batch, self.hidden_dim))
    self.out_norm.build((batch, self.embedding_dim))

  def call(self, factors, training=False):
    x = self.head_dropout(self.hidden(factors), training=training)
    return _output_float32(self.out_norm(self.projection(x)))

  def get_config(self):
    config = super().get_config()
    config.update(hidden_dim=self.hidden_dim, embedding_dim=self.embedding_dim, dropout=self.dropout)
    return config
