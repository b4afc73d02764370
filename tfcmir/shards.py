"""The format of a prepared folder (tfrecords/NAME/): one module below the writer and the readers.

tfcmir.prepare (and tfcmir.beam.prepare) write it; training, the level statistics and the tests read it.

    manifest.json              written last: schema, counts, fingerprint, and every shard with its
                               records, bytes and sha256 (read_manifest, verify_shards)
    {split}-{i:05d}-of-{n:05d}.tfrecord   the songs of one split (shard_name, SHARD_FILE)
    genre_vectors.npy, genre_vocab.json   the genre table the genre encoder starts from (genre_table)
    split.json, warp.npz, state.json      the preparation's own artifacts (tfcmir.prepare.steps)

The records:

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

import json
import os
import re

import numpy as np

from tfcmir import safeio
from tfcmir.errors import InputError

# TensorFlow is imported by the functions that need it: the split and genre steps of prepare, and the
# Beam workers, use the names and the manifest without it.
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
GENRE_VECTORS = "genre_vectors.npy"
GENRE_VOCAB = "genre_vocab.json"
GENRE_PAD = 0  # row 0 of the genre table: padding, zeros
VERIFY_LEVELS = ("none", "size", "checksum", "records")
# A shard of ours, or one being written (the writer's temporary name, hidden, ".partial").
SHARD_FILE = re.compile(r"^\.?(train|val|test)-\d{5}-of-\d{5}\.tfrecord(\.partial)?$")


def shard_name(split, index, count):
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


MEL_DTYPE = np.dtype("<f2")
MEL_BITS = "uint16"  # how the readers decode MEL_DTYPE's bytes (see mel_from_bits)


def features(max_genres, cf_dim):
  """The parsing spec, sized by the manifest's max_genres and cf_dim."""
  import tensorflow as tf

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
  import tensorflow as tf

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
  import tensorflow as tf

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
  import tensorflow as tf

  return tf.cast(tf.bitcast(bits, tf.float16), tf.float32)


def parse_numpy(serialized, max_genres, cf_dim, bands):
  """The same as `parse`, eagerly, returning NumPy values (the mel still float16, bit for bit)."""
  import tensorflow as tf

  example = tf.io.parse_single_example(serialized, features(max_genres, cf_dim))
  out = {k: v.numpy() for k, v in example.items()}
  out["mel"] = np.frombuffer(out["mel"], MEL_DTYPE).reshape(-1, bands)
  out["split"] = out["split"].decode()
  return out


def split_size(manifest, split, only_with_cf=False):
  """Songs of `split` in the shards (those with a CF vector only, if asked)."""
  counts = manifest["counts"]["with_cf" if only_with_cf else "songs"]
  return int(counts[split])


def read_manifest(tfrecord_dir):
  path = os.path.join(tfrecord_dir, MANIFEST)
  if not os.path.exists(path):
    raise InputError(f"{path}: no manifest; run `python -m tfcmir.prepare` for {tfrecord_dir} first")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except json.JSONDecodeError as err:
    raise InputError(f"{path}: malformed manifest ({err})") from err
  for key in ("schema", "shards", "counts"):
    if key not in manifest:
      raise InputError(f"{path}: manifest lacks '{key}'; was it written by tfcmir.prepare?")
  return manifest


def read_fingerprint(tfrecord_dir):
  """The manifest's fingerprint of the preparation, or None when there is no readable manifest."""
  try:
    return safeio.read_json(os.path.join(tfrecord_dir, MANIFEST)).get("fingerprint")
  except (OSError, ValueError, AttributeError):
    return None


def scan_shard(path, max_genres, cf_dim, bands):
  """Reads every record of a shard; returns the count or raises InputError naming the shard."""
  import tensorflow as tf

  count = 0
  try:
    for serialized in tf.data.TFRecordDataset(path):
      parse(serialized, max_genres, cf_dim, bands)
      count += 1
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
    raise InputError(f"{path}: corrupt shard, record {count} cannot be read "
                     f"({err.message.splitlines()[0]})") from err
  return count


def verify_shards(tfrecord_dir, manifest, split=None, level="size"):
  """Checks the shards of `split` (all if None) against the manifest; raises InputError by name."""
  if level not in VERIFY_LEVELS:
    raise ValueError(f"verify level must be one of {VERIFY_LEVELS}, got {level!r}")
  schema = manifest["schema"]
  for shard in manifest["shards"]:
    if split is not None and shard["split"] != split:
      continue
    path = os.path.join(tfrecord_dir, shard["file"])
    if level == "none":
      continue
    if not os.path.exists(path):
      raise InputError(f"{path}: shard listed in the manifest is missing")
    size = os.path.getsize(path)
    if size != shard["bytes"]:
      raise InputError(f"{path}: shard is {size} bytes, the manifest says {shard['bytes']} "
                       "(truncated or replaced); re-run tfcmir.prepare")
    if level == "checksum" and safeio.sha256_file(path) != shard["sha256"]:
      raise InputError(f"{path}: shard checksum differs from the manifest (corrupt); "
                       "re-run tfcmir.prepare --overwrite")
    if level == "records":
      count = scan_shard(path, schema["max_genres"], schema["cf_dim"], schema["bands"])
      if count != shard["records"]:
        raise InputError(f"{path}: {count} records, the manifest says {shard['records']}")


def find_corrupt_shards(tfrecord_dir, split=None):
  """Names the shards that fail a full read (to explain a DataLossError met during training)."""
  manifest = read_manifest(tfrecord_dir)
  bad = []
  for shard in manifest["shards"]:
    if split is None or shard["split"] == split:
      try:
        verify_shards(tfrecord_dir, {**manifest, "shards": [shard]}, level="records")
      except InputError as err:
        bad.append(str(err))
  return bad

def read_genre_vocab(folder):
  """{code: table row} of a prepared folder's genre_vocab.json."""
  path = os.path.join(folder, GENRE_VOCAB)
  try:
    return safeio.read_json(path)["codes"]
  except (OSError, ValueError, KeyError, TypeError) as err:
    raise InputError(f"{path}: missing or damaged ({err}); run tfcmir.prepare again") from err


def genre_table(folder):
  """(codes, table): the genre codes in row order (row i + 1 is codes[i]) and the float32 table."""
  vocab = read_genre_vocab(folder)
  path = os.path.join(folder, GENRE_VECTORS)
  try:
    table = np.load(path)
  except (OSError, ValueError) as err:
    raise InputError(f"{path}: missing or damaged ({err}); run tfcmir.prepare again") from err
  return sorted(vocab, key=vocab.get), table


def frontend_of(manifest):
  """The front-end kwargs (tfcmir.audio) that made, or match, a preparation's mels: its level.

  Manifests from before the level was recorded hold mels of the front end's default.
  """
  return {"level": manifest.get("mel_level", {}).get("level", "essentia")}
