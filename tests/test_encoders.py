"""The encoders (eq. 1-8): shapes, the authors' pooling, masking of padded genres, serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcmir.model import encoders

SMALL_AUDIO = dict(channels=(8, 8, 16, 16, 16, 16, 32), hidden_dim=32, embedding_dim=16)
VOCAB, WORD_DIM = 21, 16  # 20 genres + the padding row


@pytest.fixture(scope="module")
def vocab():
  return np.random.default_rng(0).standard_normal((VOCAB, WORD_DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def mel():
  return np.random.default_rng(1).normal(-40.0, 20.0, (2, 256, 48)).astype(np.float32)


def small_genre_encoder(vocab, **kwargs):
  return encoders.GenreEncoder(vocab, **dict(dict(num_heads=4, key_dim=8, embedding_dim=12), **kwargs))


# --- Audio encoder. --------------------------------------------------------------------------------


def test_default_pools_are_the_authors():
  assert encoders.default_pools(7, 256, 48) == encoders.AUTHORS_POOLS
  # Other depths never pool an axis below one row, and collapse it in the last block.
  for blocks in (3, 5, 8, 10):
    pools = encoders.default_pools(blocks, 256, 48)
    assert len(pools) == blocks
    assert 48 // np.prod([p[1] for p in pools]) >= 1 and 256 // np.prod([p[0] for p in pools]) >= 1


def test_default_audio_encoder(mel):
  enc = encoders.AudioEncoder()
  pre_head, phi = enc.embed(mel)
  assert pre_head.shape == (2, 1024) and phi.shape == (2, 128)
  assert pre_head.dtype == tf.float32 and phi.dtype == tf.float32
  assert enc.resolved_pools == encoders.AUTHORS_POOLS
  # Convs 9 * (1*128 + 128*128 + 128*256 + 3*256*256 + 256*512) = 3,392,640 (no bias: BN follows);
  # BNs 4 * (1 + 128 + 128 + 4*256 + 512) = 7,172; FF_a1 1024*512 = 524,288 (no bias) and its BN
  # 2,048; FF_a2 512*128 + 128 = 65,664; LayerNorm 256. Total 3,992,068 (4.0 M).
  assert enc.count_params() == 3_992_068
  np.testing.assert_allclose(enc(mel).numpy(), phi.numpy(), atol=1e-6)
  # LayerNorm output (gamma = 1, beta = 0 at init): zero mean, unit variance per row.
  np.testing.assert_allclose(phi.numpy().mean(-1), 0.0, atol=1e-4)


def test_small_audio_encoder_and_training_mode(mel):
  enc = encoders.AudioEncoder(**SMALL_AUDIO)
  pre_head, phi = enc(mel, return_pre_head=True)
  assert pre_head.shape == (2, 2 * 1 * 32) and phi.shape == (2, 16)
  np.testing.assert_array_equal(enc(mel).numpy(), enc(mel, training=False).numpy())
  # Training mode: batch statistics and dropout, so a different output, random from call to call.
  train_a, train_b = enc(mel, training=True).numpy(), enc(mel, training=True).numpy()
  assert not np.allclose(train_a, phi.numpy(), atol=1e-3)
  assert not np.allclose(train_a, train_b, atol=1e-3)


def test_audio_encoder_explicit_pools_and_errors():
  enc = encoders.AudioEncoder(channels=(4, 8), pools=((4, 4), (4, 3)), hidden_dim=8, embedding_dim=4)
  pre_head, _ = enc.embed(np.zeros((1, 64, 48), np.float32))
  assert pre_head.shape == (1, 4 * 4 * 8)
  with pytest.raises(ValueError, match="pools for"):
    encoders.AudioEncoder(channels=(4, 8), pools=((2, 2),))
  with pytest.raises(ValueError, match="to nothing"):
    encoders.AudioEncoder(channels=(4,), pools=((2, 64),))(np.zeros((1, 8, 48), np.float32))


def test_audio_encoder_mixed_precision_outputs_float32(mel):
  enc = encoders.AudioEncoder(channels=(4, 4), hidden_dim=8, embedding_dim=4, dtype="mixed_bfloat16")
  pre_head, phi = enc.embed(mel[:, :32, :16])
  assert enc.compute_dtype == "bfloat16" and enc.convs[0].kernel.dtype == "float32"
  assert pre_head.dtype == tf.float32 and phi.dtype == tf.float32
  assert np.all(np.isfinite(phi.numpy()))


# --- Genre encoder. --------------------------------------------------------------------------------


def reference_genre(enc, genres):
  """Eq. 5-7 in NumPy from the layer's weights, on the real genres only (no padding, no mask)."""
  x = enc.table.embeddings.numpy()[genres]  # (T, F_w)
  att = enc.attention
  q = np.einsum("tf,fnh->tnh", x, att.query_dense.kernel.numpy())
  k = np.einsum("tf,fnh->tnh", x, att.key_dense.kernel.numpy())
  v = np.einsum("tf,fnh->tnh", x, att.value_dense.kernel.numpy())
  scores = np.einsum("snh,tnh->nts", k, q) / np.sqrt(enc.key_dim)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum("nts,snh->tnh", weights, v)
  attended = np.einsum("tnh,nhe->te", heads, att.output_dense.kernel.numpy())  # V'
  values = attended + attended @ enc.ff.kernel.numpy() + enc.ff.bias.numpy()  # V
  total = values.sum(0)
  norm = (total - total.mean()) / np.sqrt(total.var() + encoders.LN_EPSILON)
  return norm * enc.out_norm.gamma.numpy() + enc.out_norm.beta.numpy()


def test_genre_encoder_shapes_and_table(vocab):
  enc = encoders.GenreEncoder(np.random.default_rng(2).standard_normal((11, 200)))  # paper sizes
  out = enc(np.array([[3, 1, 0, 0], [5, 0, 0, 0], [10, 9, 8, 7]]))
  assert out.shape == (3, 128) and out.dtype == tf.float32
  small = small_genre_encoder(vocab)
  small(np.array([[1, 2]]))
  np.testing.assert_array_equal(small.table.embeddings.numpy(), vocab)  # starts from Word2Vec
  assert small.table.trainable
  assert not small_genre_encoder(vocab, trainable_table=False).table.trainable


def test_padding_changes_nothing(vocab):
  enc = small_genre_encoder(vocab)
  genres = [4, 17, 9]
  padded_short = enc(np.array([genres + [0] * 2])).numpy()[0]
  padded_long = enc(np.array([[0] + genres[:2] + [0, 0, 0] + genres[2:] + [0] * 3])).numpy()[0]
  alone = enc(np.array([genres])).numpy()[0]
  expected = reference_genre(enc, genres)
  for out in (padded_short, padded_long, alone):
    np.testing.assert_allclose(out, expected, atol=1e-5)
  # Whatever the padding row holds, masked positions cannot reach the output.
  enc.table.embeddings.assign(np.concatenate([np.full((1, WORD_DIM), 1e3, np.float32), vocab[1:]]))
  np.testing.assert_allclose(enc(np.array([genres + [0] * 2])).numpy()[0], padded_short, atol=1e-5)


def test_order_of_genres_changes_nothing(vocab):
  enc = small_genre_encoder(vocab)
  ids = np.array([[4, 17, 9, 2, 0], [9, 2, 17, 4, 0], [0, 2, 9, 4, 17], [4, 0, 17, 9, 2]])
  out = enc(ids).numpy()
  for row in out[1:]:
    np.testing.assert_allclose(row, out[0], atol=1e-5)


def test_song_without_genres_is_finite(vocab):
  for attention_dropout in (0.1, 0.0):  # 0.0 takes Keras' fused attention path
    enc = small_genre_encoder(vocab, attention_dropout=attention_dropout)
    ids = np.array([[0, 0, 0], [3, 0, 0]])
    with tf.GradientTape() as tape:
      out = enc(ids, training=True)
      loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, enc.trainable_variables)
    # LayerNorm of a zero sum is its bias (zero at init).
    np.testing.assert_array_equal(out.numpy()[0], enc.out_norm.beta.numpy())
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)


def test_genre_dropout_only_in_training(vocab):
  enc = small_genre_encoder(vocab, dropout=0.5, attention_dropout=0.5)
  ids = np.array([[4, 17, 9, 2, 0]] * 4)
  np.testing.assert_array_equal(enc(ids).numpy(), enc(ids, training=False).numpy())
  train = enc(ids, training=True).numpy()
  assert not np.allclose(train, enc(ids).numpy(), atol=1e-3)
  assert not np.allclose(train[0], train[1], atol=1e-3)  # a fresh mask per example


# --- CF encoder. -----------------------------------------------------------------------------------


def test_cf_encoder():
  enc = encoders.CFEncoder()
  factors = np.random.default_rng(3).random((4, 301)).astype(np.float32)
  out = enc(factors)
  assert out.shape == (4, 128) and out.dtype == tf.float32
  # 301*512 + 512 + 512*128 + 128 + 2*128
  assert enc.count_params() == 220_544
  np.testing.assert_array_equal(out.numpy(), enc(factors, training=False).numpy())
  assert not np.allclose(out.numpy(), enc(factors, training=True).numpy(), atol=1e-3)


# --- Serialization. --------------------------------------------------------------------------------


def test_config_round_trip(vocab):
  for layer in (encoders.AudioEncoder(**SMALL_AUDIO, pools=encoders.AUTHORS_POOLS),
                small_genre_encoder(vocab), encoders.CFEncoder(hidden_dim=8, embedding_dim=4)):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
  assert "vocab_vectors" not in small_genre_encoder(vocab).get_config()  # weights, not config


def test_saved_model_file_gives_identical_outputs(tmp_path, vocab, mel):
  mel_in = keras.Input((256, 48))
  ids_in = keras.Input((5,), dtype="int32")
  cf_in = keras.Input((7,))
  pre_head, phi_a = encoders.AudioEncoder(**SMALL_AUDIO)(mel_in, return_pre_head=True)
  outputs = [pre_head, phi_a, small_genre_encoder(vocab)(ids_in),
             encoders.CFEncoder(hidden_dim=8, embedding_dim=4)(cf_in)]
  model = keras.Model([mel_in, ids_in, cf_in], outputs)
  inputs = [mel, np.array([[4, 17, 0, 0, 0], [0, 0, 0, 0, 0]]),
            np.random.default_rng(4).random((2, 7)).astype(np.float32)]
  # A few training steps' worth of changed weights and BN statistics, so the file must carry them.
  rng = np.random.default_rng(5)
  for w in model.weights:
    scale, shift = rng.uniform(0.9, 1.1, w.shape), rng.normal(0.0, 0.01, w.shape)
    w.assign((w.numpy() * scale + shift).astype(w.dtype))
  path = str(tmp_path / "encoders.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  for before, after in zip(model(inputs), loaded(inputs)):
    assert np.all(np.isfinite(before.numpy()))
    np.testing.assert_array_equal(before.numpy(), after.numpy())
