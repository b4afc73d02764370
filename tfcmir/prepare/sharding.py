"""Writes prepared songs to TFRecord shards, in parallel, resumably.

Each shard is written by a worker process under a temporary name, checksummed, and renamed when
complete; a small progress record (records, bytes, sha256, problems) is saved before the rename. So a
shard file that exists is whole, a killed run loses at most the shards in flight, and a re-run writes
only what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os

import numpy as np
from tqdm import tqdm

from tfcmir import safeio, shards
from tfcmir.errors import InputError, Problems
from tfcmir.data.corpus import load_mel

PROGRESS_DIR = ".progress"


@dataclasses.dataclass(frozen=True)
class Entry:
  """Everything a worker needs to write one song."""
  song_id: int
  split: str
  genres: np.ndarray      # int64 (max_genres,)
  cf: np.ndarray          # float32 (cf_dim,)
  has_cf: bool
  mel_path: str | None = None
  audio_path: str | None = None


@dataclasses.dataclass(frozen=True)
class ShardTask:
  name: str
  entries: tuple
  out_dir: str
  bands: int
  crop_frames: int
  strict: bool
  mel_level: str = "essentia"  # the front end's window normalisation for audio songs (tfcmir/levels.py)



def plan(entries, songs_per_shard, out_dir, bands, crop_frames, strict, mel_level="essentia"):
  """Groups entries by split (train, val, test order) into shards of at most `songs_per_shard`."""
  tasks = []
  for split in ("train", "val", "test"):
    items = [e for e in entries if e.split == split]
    count = max(1, -(-len(items) // songs_per_shard)) if items else 0
    for i in range(count):
      chunk = tuple(items[i * songs_per_shard:(i + 1) * songs_per_shard])
      tasks.append(ShardTask(shards.shard_name(split, i, count), chunk, out_dir, bands, crop_frames, strict,
                             mel_level))
  return tasks


FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def _song_mel(entry, bands, mel_level="essentia"):
  if entry.mel_path is not None:
    return load_mel(entry.mel_path, bands)
  from tfcmir import audio  # catalogue songs: the project's own front end
  try:
    return audio.file_to_mel(entry.audio_path, level=mel_level)
  except audio.AudioError as err:
    raise InputError(str(err)) from err


def song_example(entry, bands, crop_frames, problems, mel_level="essentia"):
  """One song -> its serialized record, or None if its mel or audio is unusable.

  The one per-song step of every shard writer (this module's and tfcmir.beam.prepare's), so both write
  the same bytes. A bad song is reported to `problems` (raising there when strict); a mel shorter
  than `crop_frames` is noted as 'short_mel' and kept (padded when read).
  """
  
  try:
    mel = _song_mel(entry, bands, mel_level)
  except InputError as err:
    problems.report("bad_mel" if entry.mel_path else "bad_audio", str(err))
    return None
  # Shards store float16: a larger value would become +-inf there, and training would then fail far
  # from its cause. Such mels are not in any front end's range (dB or log-compressed magnitudes).
  high, low = float(np.max(mel)), float(np.min(mel))
  if max(high, -low) > FLOAT16_MAX:
    problems.report("bad_mel", f"{entry.mel_path or entry.audio_path}: song {entry.song_id}: mel "
                    f"values reach {high if high > -low else low:.4g}, beyond float16's +-65504 (the "
                    "shards' type)")
    return None
  if mel.shape[0] < crop_frames:
    problems.note("short_mel", f"song {entry.song_id}: {mel.shape[0]} frames < {crop_frames}, "
                  "padded when read")
  return shards.serialize(entry.song_id, entry.split, mel, entry.genres, entry.cf, entry.has_cf)


def write_shard(task):
  """Worker: writes one shard; returns its progress record (a dict)."""
  import tensorflow as tf

  problems = Problems(strict=task.strict)
  written = 0
  # The temporary name is the shard's own hidden `.NAME.partial`, which prepare's --overwrite clears.
  with safeio.atomic_path(os.path.join(task.out_dir, task.name),
                          temporary=os.path.join(task.out_dir, f".{task.name}.partial")) as temporary:
    with tf.io.TFRecordWriter(temporary) as writer:
      for entry in task.entries:
        serialized = song_example(entry, task.bands, task.crop_frames, problems, task.mel_level)
        if serialized is not None:
          writer.write(serialized)
          written += 1
    progress = {"file": task.name, "split": task.name.split("-")[0], "records": written,
                "bytes": os.path.getsize(temporary), "sha256": safeio.sha256_file(temporary),
                "short_mel": problems.counts["short_mel"],
                "problems": {"counts": dict(problems.counts), "examples": dict(problems.examples)}}
    safeio.write_json(os.path.join(task.out_dir, PROGRESS_DIR, task.name + ".json"), progress)
  return progress


def _done(task):
  """The progress record of a shard finished by an earlier run, or None."""
  final = os.path.join(task.out_dir, task.name)
  record = os.path.join(task.out_dir, PROGRESS_DIR, task.name + ".json")
  if not (os.path.exists(final) and os.path.exists(record)):
    return None
  with open(record, encoding="utf-8") as f:
    progress = json.load(f)
  return progress if progress.get("bytes") == os.path.getsize(final) else None


def write_all(tasks, workers=2, progress_bar=True):
  """Writes every shard not already complete; returns (progress records in task order, skipped)."""
  results, todo = {}, []
  for task in tasks:
    done = _done(task)
    if done is None:
      todo.append(task)
    else:
      results[task.name] = done
  if todo:
    bar = tqdm(total=sum(len(t.entries) for t in todo), unit="song", desc="shards",
               disable=not progress_bar)
    # 'spawn': the parent may hold TensorFlow threads, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(todo))) as pool:
      for progress in pool.imap_unordered(write_shard, todo):
        results[progress["file"]] = progress
        bar.update(sum(len(t.entries) for t in todo if t.name == progress["file"]))
    bar.close()
  return [results[t.name] for t in tasks], len(tasks) - len(todo)
