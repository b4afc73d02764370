"""What `python -m tfcmir.embed --runner=...` writes, and `read_embeddings` to load it back (no Beam needed).

Under --out:
  embeddings-00000-of-0000N.tfrecord | .parquet   one record per embedded file (below)
  skipped.csv                                     path,reason of every file that could not be read
  embeddings_manifest.json                        written last: the shard files, format, counts

A record: row (the file's position in the input list), path, embedding float32 (D,) (the mean of
the file's patch embeddings, as the local embed's embeddings.npy), patches, padded, seconds, and with
--per_patch, patch_embeddings float32 (patches * D,), row-major.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfcmir.data.corpus import InputError

MANIFEST = "embeddings_manifest.json"
SKIPPED = "skipped.csv"
PREFIX = "embeddings"
SUFFIX = {"tfrecord": ".tfrecord", "parquet": ".parquet"}


def row_record(row, index, embedding, patch_embeddings=None):
  """One embedded file -> the dict every output format stores.

  Args:
    row: a row of tfcmir.embed.embed_files (path, patches, padded, seconds).
    index: the file's position in the input list.
    embedding: float32 (D,) mean patch embedding.
    patch_embeddings: float32 (patches, D), or None.
  """
  record = {"row": int(index), "path": row["path"], "embedding": np.asarray(embedding, np.float32),
            "patches": int(row["patches"]), "padded": bool(row["padded"]),
            "seconds": float(row["seconds"])}
  if patch_embeddings is not None:
    record["patch_embeddings"] = np.asarray(patch_embeddings, np.float32).reshape(-1)
  return record


def to_example(record):
  """A row record -> serialized tf.train.Example."""
  import tensorflow as tf

  def floats(v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(v, np.float32).tolist()))

  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

  feature = {"row": ints(record["row"]),
             "path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[record["path"].encode()])),
             "embedding": floats(record["embedding"]), "patches": ints(record["patches"]),
             "padded": ints(record["padded"]), "seconds": floats([record["seconds"]])}
  if "patch_embeddings" in record:
    feature["patch_embeddings"] = floats(record["patch_embeddings"])
  example = tf.train.Example(features=tf.train.Features(feature=feature))
  return example.SerializeToString(deterministic=True)


def _from_example(serialized):
  from tensorflow.core.example import example_pb2

  feature = example_pb2.Example.FromString(serialized).features.feature
  record = {"row": feature["row"].int64_list.value[0],
            "path": feature["path"].bytes_list.value[0].decode(),
            "embedding": np.array(feature["embedding"].float_list.value, np.float32),
            "patches": feature["patches"].int64_list.value[0],
            "padded": bool(feature["padded"].int64_list.value[0]),
            "seconds": feature["seconds"].float_list.value[0]}
  if "patch_embeddings" in feature:
    record["patch_embeddings"] = np.array(feature["patch_embeddings"].float_list.value, np.float32)
  return record


def arrow_schema(per_patch):
  """The Parquet schema of a row record."""
  import pyarrow as pa

  fields = [("row", pa.int64()), ("path", pa.string()), ("embedding", pa.list_(pa.float32())),
            ("patches", pa.int64()), ("padded", pa.bool_()), ("seconds", pa.float64())]
  if per_patch:
    fields.append(("patch_embeddings", pa.list_(pa.float32())))
  return pa.schema(fields)


def to_parquet_row(record):
  """A row record -> the plain-Python dict WriteToParquet takes."""
  return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()}


def _read_shard(path, fmt):
  if fmt == "parquet":
    import pyarrow.parquet as pq
    table = pq.read_table(path).to_pylist()
    for record in table:
      record["embedding"] = np.asarray(record["embedding"], np.float32)
      if record.get("patch_embeddings") is not None:
        record["patch_embeddings"] = np.asarray(record["patch_embeddings"], np.float32)
    return table
  import tensorflow as tf
  return [_from_example(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def read_manifest(out_dir):
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    raise InputError(f"{path}: no embeddings manifest; was `python -m tfcmir.embed --runner=...` "
                     f"run into {out_dir}, and did it finish?")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_embeddings(out_dir):
  """Loads a Beam embed's outputs into the arrays the local embed writes, in input order.

  Returns:
    dict: embeddings float32 (files, D); paths (files,) str; patches (files,) int; first_patch (files,)
    int (row of each file's first patch in patch_embeddings); padded (files,) bool; seconds (files,)
    float; with --per_patch, patch_embeddings float32 (total patches, D). As embeddings.npz of
    `python -m tfcmir.embed --embed_format=npz`, plus seconds.
  """
  manifest = read_manifest(out_dir)
  records = []
  for name in manifest["files"]:
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
      raise InputError(f"{path}: listed in {MANIFEST} but missing")
    records += _read_shard(path, manifest["format"])
  if len(records) != manifest["embedded"]:
    raise InputError(f"{out_dir}: {len(records)} records in the shards, {MANIFEST} says "
                     f"{manifest['embedded']}")
  records.sort(key=lambda r: r["row"])
  dim = manifest["dim"]
  patches = np.array([r["patches"] for r in records], np.int64)
  out = {"embeddings": (np.stack([r["embedding"] for r in records]) if records
                        else np.zeros((0, dim), np.float32)),
         "paths": np.array([r["path"] for r in records]),
         "patches": patches,
         "first_patch": np.cumsum(np.concatenate([[0], patches]))[:-1],
         "padded": np.array([r["padded"] for r in records], bool),
         "seconds": np.array([r["seconds"] for r in records], np.float64)}
  if manifest["per_patch"]:
    out["patch_embeddings"] = (np.concatenate([r["patch_embeddings"] for r in records]).reshape(-1, dim)
                               if records else np.zeros((0, dim), np.float32))
  return out
