"""The TFRecord schema of prepared songs: one module for the writer and the reader.

One `tf.train.Example` per song:
  song_id   int64
  split     bytes   'train' | 'val' | 'test'
  mel       bytes   float16 little-endian, time-major (frames, bands): a crop is one contiguous slice
  frames    int64   the number of mel frames T
  genres    int64 (max_genres,)  rows of the genre vector table, main genres first, 0-padded
  cf        float32 (cf_dim,)    the song's WARP factors (zeros when has_cf is 0)
  has_cf    int64   1 when the song was in the factorised matrix (train/val songs in a train playlist)

Why float16 for the mel: it halves the shards and the bytes the input pipeline reads, against 4 bytes
of float32, and float16 keeps 11 significant bits whatever the scale, so no assumption about the dB
range of someone's mels is baked in. The rounding is at most 2^-11 relative: 0.03 dB for values in
-64..-128 dB (music), 0.06 dB down to -256 dB; far below the 0.1-dB-scale differences between
resamplers, and below any change a 48-band mel can show. The pipeline casts back to float32.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

MEL_DTYPE = np.dtype("<f2")
MEL_BITS = tf.uint16  # how the readers decode MEL_DTYPE's bytes (see mel_from_bits)


def features(max_genres, cf_dim):
  """The parsing spec, sized by the manifest's max_genres and cf_dim."""
  return {
      "song_id": tf.io.FixedLenFeature([], tf.int64),
      "split": tf.io.FixedLenFeature([], tf.string),
      "mel": tf.io.FixedLenFeature([], tf.string),
      "frames": tf.io.FixedLenFeature([], tf.int64),
      "genres": tf.io.FixedLenFeature([max_genres], tf.int64),
      "cf": tf.io.FixedLenFeature([cf_dim], tf.float32),
      "has_cf": tf.io.FixedLenFeature([], tf.int64),
  }


def serialize(song_id, split, mel, genres, cf, has_cf):
  """One song -> serialized tf.train.Example.

  Args:
    song_id: int.
    split: 'train', 'val' or 'test'.
    mel: float (frames, bands) time-major, in dB.
    genres: int (max_genres,) genre table rows.
    cf: float (cf_dim,).
    has_cf: bool.
  """
  mel16 = np.ascontiguousarray(mel, dtype=MEL_DTYPE)
  feature = {
      "song_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(song_id)])),
      "split": tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode()])),
      "mel": tf.train.Feature(bytes_list=tf.train.BytesList(value=[mel16.tobytes()])),
      "frames": tf.train.Feature(int64_list=tf.train.Int64List(value=[mel16.shape[0]])),
      "genres": tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(genres).tolist())),
      "cf": tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(cf, np.float32).tolist())),
      "has_cf": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(bool(has_cf))])),
  }
  # deterministic=True: map fields otherwise serialize in per-process hash order, and identical songs
  # would give shards with different checksums run to run.
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def parse(serialized, max_genres, cf_dim, bands):
  """Serialized Example(s) -> dict of tensors; the mel decoded to float32 (frames, bands).

  Works on a scalar string (one record); map it before batching.
  """
  example = tf.io.parse_single_example(serialized, features(max_genres, cf_dim))
  bits = tf.io.decode_raw(example["mel"], MEL_BITS, little_endian=True)
  example["mel"] = mel_from_bits(tf.reshape(bits, [-1, bands]))
  return example


def mel_from_bits(bits):
  """float16 bit patterns (uint16, any shape) -> float32 values.

  Readers move a mel as the uint16 bit patterns of its float16 values and convert once, here: with
  oneDNN on (tfcmir/runtime.py), TensorFlow logs an error line for every graph op on float16 tensors
  on CPUs without AVX512_FP16, and falls back to the same Eigen kernel; a uint16 op moves the same bytes.
  """
  return tf.cast(tf.bitcast(bits, tf.float16), tf.float32)


def parse_numpy(serialized, max_genres, cf_dim, bands):
  """The same as `parse`, eagerly, returning NumPy values (the mel still float16, bit for bit)."""
  example = tf.io.parse_single_example(serialized, features(max_genres, cf_dim))
  out = {k: v.numpy() for k, v in example.items()}
  out["mel"] = np.frombuffer(out["mel"], MEL_DTYPE).reshape(-1, bands)
  out["split"] = out["split"].decode()
  return out
