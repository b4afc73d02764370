"""The format of an embeddings folder (`python -m tfcmir.embed --out=DIR`): written by the local embed
and by the Beam embed, read back without Beam.

The local embed (write_outputs) writes under --out:
  embeddings.npy            float32 (files, D): the mean of each file's patch embeddings
  index.csv                 row, path, patches, first_patch, padded, seconds
  patch_embeddings.npy      with --per_patch: float32 (all patches, D)
  (or, with --embed_format=npz, the same arrays in one embeddings.npz)
  embeddings_manifest.json  written last: the files of this run (an earlier run's others are removed)

The Beam embed (`--runner=...`, tfcmir/beam/embed.py) writes under --out, read back by read_embeddings:
  embeddings-00000-of-0000N.tfrecord | .parquet   one record per embedded file (below)
  skipped.csv                                     path,reason of every file that could not be read
  embeddings_manifest.json                        written last: the shard files, format, counts

A record: row (the file's position in the input list), path, embedding float32 (D,) (the mean of
the file's patch embeddings, as the local embed's embeddings.npy), patches, padded, seconds, and with
--per_patch, patch_embeddings float32 (patches * D,), row-major.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from tfcmir import safeio
from tfcmir.errors import InputError

MANIFEST = "embeddings_manifest.json"
SKIPPED = "skipped.csv"
PREFIX = "embeddings"
SUFFIX = {"tfrecord": ".tfrecord", "parquet": ".parquet"}


def row_record(row, index, embedding, patch_embeddings=None):
  """One embedded file -> the dict every output format stores.

  Args:
    row: a row of tfcmir.inference.embed_files (path, patches, padded, seconds).
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


def previous_outputs(out):
  """The files an earlier embed (local or Beam) listed in out's embeddings manifest: ours to remove."""
  path = os.path.join(out, MANIFEST)
  try:
    manifest = safeio.read_json(path)
    files = list(manifest.get("files", []))
  except (OSError, ValueError, AttributeError, TypeError):
    return []
  if manifest.get("format") != "local":
    files.append("skipped.csv")  # a Beam run's, not in its list of shards
  return [f for f in files if isinstance(f, str) and os.path.basename(f) == f]


def remove_stale(out, previous, written):
  """Removes what an earlier run wrote into `out` and this one did not (never files of others)."""
  safeio.remove_ours(out, sorted(set(previous) - set(written)))


def write_outputs(out, rows, per_patch, per_patch_out=False, fmt="npy"):
  """Writes the arrays and the index, each under a temporary name renamed when complete, and
  embeddings_manifest.json listing them; files an earlier run listed there and this one did not
  write (an old patch_embeddings.npy) are removed."""
  os.makedirs(out, exist_ok=True)
  safeio.clean_leftovers(out)  # temporary files of a killed run
  previous = previous_outputs(out)
  means = np.stack([p.mean(0) for p in per_patch]).astype(np.float32) if per_patch else np.zeros((0, 0))
  first = np.cumsum([0] + [r["patches"] for r in rows])[:-1]
  arrays = {"embeddings": means}
  if per_patch_out:
    arrays["patch_embeddings"] = (np.concatenate(per_patch).astype(np.float32) if per_patch
                                  else np.zeros((0, 0), np.float32))
  if fmt == "npz":
    arrays.update(paths=np.array([r["path"] for r in rows]), patches=np.array([r["patches"] for r in rows]),
                  first_patch=first, padded=np.array([r["padded"] for r in rows]))
    safeio.atomic_write(os.path.join(out, "embeddings.npz"), lambda f: np.savez(f, **arrays))
    _finish(out, previous, ["embeddings.npz"])
    return
  for name, array in arrays.items():
    safeio.atomic_write(os.path.join(out, f"{name}.npy"), lambda f, a=array: np.save(f, a))

  def write_index(f):
    writer = csv.writer(f)
    writer.writerow(["row", "path", "patches", "first_patch", "padded", "seconds"])
    for i, (row, start) in enumerate(zip(rows, first)):
      writer.writerow([i, row["path"], row["patches"], int(start), int(row["padded"]),
                       f"{row['seconds']:.2f}"])
  safeio.atomic_write(os.path.join(out, "index.csv"), write_index, text=True)
  _finish(out, previous, [f"{name}.npy" for name in arrays] + ["index.csv"])


def _finish(out, previous, written):
  remove_stale(out, previous, written)
  safeio.write_json(os.path.join(out, MANIFEST), {"written_by": safeio.WRITTEN_BY, "format": "local",
                                                  "files": written})
