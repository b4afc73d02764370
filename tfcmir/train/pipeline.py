"""The training input pipeline: prepared shards -> batches of mel crops, genres and CF vectors.

    ds = pipeline.dataset("tfrecords/demo", "train", batch_size=128, training=True, seed=0)
    for batch in ds: batch["mel"]  # float32 (128, 256, 48)

It reads manifest.json first and checks every shard against it (tfcmir/shards.py) (present, right size; optionally the
sha256 or every record), so a truncated or corrupt shard is reported by name before training starts.
Training takes a new random 256-frame crop each time a song is drawn (as the authors' code); evaluation
takes the centre crop. Mels shorter than the crop are padded with the front end's floor (-200 dB).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfcmir.audio import DB_FLOOR
from tfcmir.errors import InputError
from tfcmir import shards

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


_DB_FLOOR_BITS = int(np.array(DB_FLOOR, shards.MEL_DTYPE).view(np.uint16))


def crop_encoded(mel_bytes, frames, bands, training, seed=None):
  """The crop of `crop`, cut from a record's encoded float16 mel; only the crop is decoded.

  A Melon mel is ~1,876 frames: decoding it whole to float32 (and padding it, a copy) to keep 256 of
  them converted and copied 7x the values kept.

  Args:
    mel_bytes: scalar string, the record's `mel`: float16 little-endian, time-major (frames, bands).
    frames: frames per crop.
    bands: mel bands per frame.
    training: a uniformly random start (drawn as `crop` draws it), else the centre.
    seed: op seed of the random start.

  Returns:
    uint16 (frames, bands): the float16 bit patterns (shards.mel_from_bits converts them); a mel
    shorter than `frames` is padded at the end with DB_FLOOR.
  """
  row = bands * shards.MEL_DTYPE.itemsize
  size = tf.strings.length(mel_bytes)
  tf.debugging.assert_equal(size % row, 0, message=f"mel bytes are not whole frames of {bands} bands")
  length = size // row
  room = tf.maximum(0, length - frames)
  if training:
    start = tf.random.uniform([], 0, room + 1, dtype=tf.int32, seed=seed)
  else:
    start = room // 2
  piece = tf.strings.substr(mel_bytes, start * row, frames * row)
  mel = tf.reshape(tf.io.decode_raw(piece, shards.MEL_BITS, little_endian=True), [-1, bands])
  return tf.pad(mel, [[0, frames - tf.shape(mel)[0]], [0, 0]], constant_values=_DB_FLOOR_BITS)


def dataset(tfrecord_dir, split, batch_size, crop_frames=256, training=True, seed=None,
            shuffle_buffer=2048, drop_remainder=None, verify="size", repeat=False, only_with_cf=False,
            input_context=None, take_batches=None, manifest=None):
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
    input_context: a tf.distribute.InputContext (strategy.distribute_datasets_from_function): this
      input pipeline's part of the data. Training: a disjoint subset of the shard files if there are at
      least as many files as pipelines (each worker reads only its own), else every pipeline reads all
      files in order and keeps its 1/N of the shards. Evaluation: always the records, in file order.
      `batch_size` is then the per-replica batch.
    take_batches: evaluation: only the first `take_batches` global batches (per-replica batch x
      replicas in sync) of the split, so that every pipeline yields exactly `take_batches` batches and
      no worker waits for another that has run out.
    manifest: the folder's manifest, when the caller has read it already.

  Returns:
    tf.data.Dataset of dicts: mel float32 (batch, crop_frames, bands), genres int64 (batch, T_w),
    cf float32 (batch, F_cf), has_cf int64 (batch,), song_id int64 (batch,).
  """
  manifest = manifest or shards.read_manifest(tfrecord_dir)
  shards.verify_shards(tfrecord_dir, manifest, split, verify)
  schema = manifest["schema"]
  files = [os.path.join(tfrecord_dir, s["file"]) for s in manifest["shards"]
           if s["split"] == split and s["records"] > 0]
  if not files:
    raise InputError(f"{tfrecord_dir}: no records in split '{split}'")
  drop_remainder = training if drop_remainder is None else drop_remainder
  pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  shard_records = pipelines > 1 and (not training or len(files) < pipelines)
  if pipelines > 1 and not shard_records:
    files = files[pipeline_id::pipelines]
  if training and seed is not None and not shard_records:
    seed += pipeline_id  # the workers' shuffles and crops are not copies of one another
  files = tf.data.Dataset.from_tensor_slices(files)
  if training:
    files = files.shuffle(len(manifest["shards"]), seed=seed, reshuffle_each_iteration=True)
  # Sharding by record needs the same record order on every worker: a deterministic interleave.
  ds = files.interleave(tf.data.TFRecordDataset, cycle_length=tf.data.AUTOTUNE,
                        num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=not training or shard_records)
  if repeat:
    ds = ds.repeat()
  spec = shards.features(schema["max_genres"], schema["cf_dim"])

  def prepare(serialized):
    example = tf.io.parse_single_example(serialized, spec)
    return {"mel": crop_encoded(example["mel"], crop_frames, schema["bands"], training, seed),
            "genres": example["genres"], "cf": example["cf"], "has_cf": example["has_cf"],
            "song_id": example["song_id"]}

  # Crop before the shuffle: each draw of a song still gets its own crop, and the buffer holds float16
  # crops (~25 kB a song, as bit patterns) instead of whole records (~180 kB for Melon). Convert after
  # batching: one op a batch instead of one a song.
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=not training or shard_records)
  if only_with_cf:
    ds = ds.filter(lambda example: example["has_cf"] > 0)
  if take_batches is not None:
    replicas = input_context.num_replicas_in_sync if input_context else 1
    ds = ds.take(take_batches * batch_size * replicas)
  if shard_records:  # after the filter: each pipeline gets the same number of songs, +-1
    ds = ds.shard(pipelines, pipeline_id)
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(lambda batch: dict(batch, mel=shards.mel_from_bits(batch["mel"])))
  ds = ds.prefetch(tf.data.AUTOTUNE)
  if not training:
    # Keras drops the validation iterator after every epoch, and deleting an iterator joins its
    # autotuning thread, which blocked 1-10 s an epoch while the training pipeline kept the cores busy
    # (measured on the demo). Without autotuning, AUTOTUNE means one call per core and the deletion is
    # immediate; a read-once evaluation pipeline loses nothing by it.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.with_options(options)
  return ds
