"""The training input pipeline: prepared shards -> batches of mel crops, genres and CF vectors.

    ds = pipeline.dataset("tfrecords/demo", "train", batch_size=128, training=True, seed=0)
    for batch in ds: batch["mel"]  # float32 (128, 256, 48)

It reads manifest.json first and checks every shard against it (present, right size; optionally the
sha256 or every record), so a truncated or corrupt shard is reported by name before training starts.
Training takes a new random 256-frame crop each time a song is drawn (as the authors' code); evaluation
takes the centre crop. Mels shorter than the crop are padded with the front end's floor (-200 dB).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tfcmir.audio import DB_FLOOR
from tfcmir.data.corpus import InputError
from tfcmir.prepare import records, shards

MANIFEST = "manifest.json"
VERIFY_LEVELS = ("none", "size", "checksum", "records")


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


def scan_shard(path, max_genres, cf_dim, bands):
  """Reads every record of a shard; returns the count or raises InputError naming the shard."""
  count = 0
  try:
    for serialized in tf.data.TFRecordDataset(path):
      records.parse(serialized, max_genres, cf_dim, bands)
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
    if level == "checksum" and shards.sha256_file(path) != shard["sha256"]:
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


def crop(mel, frames, training, seed=None):
  """A (frames, bands) mel -> (frames_out, bands): random crop when training, centre crop otherwise.

  Shorter mels are padded at the end with DB_FLOOR, the front end's silence.
  """
  length = tf.shape(mel)[0]
  pad = tf.maximum(0, frames - length)
  mel = tf.pad(mel, [[0, pad], [0, 0]], constant_values=DB_FLOOR)
  room = tf.shape(mel)[0] - frames
  if training:
    start = tf.random.uniform([], 0, room + 1, dtype=tf.int32, seed=seed)
  else:
    start = room // 2
  return mel[start:start + frames]


def dataset(tfrecord_dir, split, batch_size, crop_frames=256, training=True, seed=None,
            shuffle_buffer=2048, drop_remainder=None, verify="size", repeat=False, only_with_cf=False):
  """Batches of one split of prepared shards.

  Args:
    tfrecord_dir: a folder written by tfcmir.prepare.
    split: 'train', 'val' or 'test'.
    batch_size: songs per batch.
    crop_frames: frames per crop (T_a = 256).
    training: random crops, shuffled shard order and songs; else centre crops in file order.
    seed: makes the shuffles and crops repeatable.
    shuffle_buffer: songs in the shuffle buffer (training only).
    drop_remainder: defaults to `training` (the authors drop the last incomplete batch).
    verify: 'none', 'size' (default), 'checksum' or 'records' check of the shards before reading.
    repeat: repeat forever (the caller then sets steps per epoch).
    only_with_cf: keep only songs that have a CF vector (has_cf = 1), for the modes that use it.

  Returns:
    tf.data.Dataset of dicts: mel float32 (batch, crop_frames, bands), genres int64 (batch, T_w),
    cf float32 (batch, F_cf), has_cf int64 (batch,), song_id int64 (batch,).
  """
  manifest = read_manifest(tfrecord_dir)
  verify_shards(tfrecord_dir, manifest, split, verify)
  schema = manifest["schema"]
  files = [os.path.join(tfrecord_dir, s["file"]) for s in manifest["shards"]
           if s["split"] == split and s["records"] > 0]
  if not files:
    raise InputError(f"{tfrecord_dir}: no records in split '{split}'")
  drop_remainder = training if drop_remainder is None else drop_remainder
  files = tf.data.Dataset.from_tensor_slices(files)
  if training:
    files = files.shuffle(len(manifest["shards"]), seed=seed, reshuffle_each_iteration=True)
  ds = files.interleave(tf.data.TFRecordDataset, cycle_length=tf.data.AUTOTUNE,
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
  if repeat:
    ds = ds.repeat()
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

  def prepare(serialized):
    example = records.parse(serialized, schema["max_genres"], schema["cf_dim"], schema["bands"])
    return {"mel": crop(example["mel"], crop_frames, training, seed),
            "genres": example["genres"], "cf": example["cf"], "has_cf": example["has_cf"],
            "song_id": example["song_id"]}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
  if only_with_cf:
    ds = ds.filter(lambda example: example["has_cf"] > 0)
  return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
