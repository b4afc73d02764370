"""The per-song work of `python -m tfcmir.prepare --runner=...` as an Apache Beam pipeline.

The global steps (split, genre Word2Vec, WARP) run first as always (tfcmir/prepare/steps.py) and save
their files; steps.prepare then hands the songs to `BeamShardWriter`, which runs

    songs.jsonl (one work item a line: id, split, genre rows, CF vector, mel or audio path)
      -> ReadFromText -> Reshuffle -> SongToRecord (load the mel or decode the audio, serialize with
         tfcmir.prepare.sharding.song_example, the local writer's own function)
      -> records by split -> WriteToTFRecord per split: {split}-00000-of-0000N.tfrecord
      -> each shard scanned once: records, bytes, sha256, short mels  -> shards.jsonl
      -> problems (bad or short mels), combined                       -> problems.json

and returns the shard records steps.prepare needs for the same manifest.json as a local run, so
tfcmir.train reads Beam output unchanged. Record order within and across shards
is the runner's; the records are the local writer's, byte for byte.

Every worker must be able to open the mel or audio files and the output folder by the same paths as
this process (one machine, or a shared filesystem such as NFS or a gcsfuse-mounted bucket).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import shutil
import struct
import time

import apache_beam as beam
import numpy as np

from tfcmir.beam import options as options_lib
from tfcmir.errors import Problems
from tfcmir import safeio, shards
from tfcmir.prepare import sharding

WORK_DIR = ".beam"  # work items and the pipeline's reports; removed when the run succeeds
PROBLEMS = "problems"


# --- Work items. ---------------------------------------------------------------------------------------


def entry_to_json(entry):
  """A sharding.Entry -> one JSON line; the CF vector as base64 float32 bytes, so it is bit-exact."""
  return json.dumps({
      "song_id": int(entry.song_id), "split": entry.split,
      "genres": np.asarray(entry.genres, np.int64).tolist(),
      "cf": base64.b64encode(np.asarray(entry.cf, "<f4").tobytes()).decode("ascii"),
      "has_cf": bool(entry.has_cf), "mel_path": entry.mel_path, "audio_path": entry.audio_path})


def entry_from_json(line):
  item = json.loads(line)
  return sharding.Entry(item["song_id"], item["split"], np.asarray(item["genres"], np.int64),
                      np.frombuffer(base64.b64decode(item["cf"]), "<f4").astype(np.float32),
                      item["has_cf"], item["mel_path"], item["audio_path"])


# --- The pipeline's steps. -----------------------------------------------------------------------------


class SongToRecord(beam.DoFn):
  """A work item -> (split, serialized record); its problems to the 'problems' output."""

  def __init__(self, bands, crop_frames, strict, mel_level="essentia"):
    super().__init__()
    self._mel_level = mel_level
    self._bands = bands
    self._crop_frames = crop_frames
    self._strict = strict

  def process(self, line):
    entry = entry_from_json(line)
    problems = Problems(strict=self._strict)  # strict: raises InputError, which fails the run
    serialized = sharding.song_example(entry, self._bands, self._crop_frames, problems,
                                     self._mel_level)
    for kind, count in problems.counts.items():
      yield beam.pvalue.TaggedOutput(PROBLEMS, (kind, count, problems.examples[kind]))
    if serialized is not None:
      yield entry.split, serialized


class CombineProblems(beam.CombineFn):
  """(kind, count, examples) -> {"counts": {kind: n}, "examples": {kind: [first messages]}}.

  Keeps the Problems.MAX_LOGGED smallest messages of each kind, so the examples do not depend on the
  order the runner delivers them in.
  """

  def create_accumulator(self):
    return collections.Counter(), {}

  def add_input(self, accumulator, element):
    kind, count, examples = element
    return self.merge_accumulators([accumulator, (collections.Counter({kind: count}),
                                                  {kind: list(examples)})])

  def merge_accumulators(self, accumulators):
    counts, examples = collections.Counter(), collections.defaultdict(list)
    for c, e in accumulators:
      counts.update(c)
      for kind, messages in e.items():
        examples[kind] = sorted(examples[kind] + messages)[:Problems.MAX_LOGGED]
    return counts, dict(examples)

  def extract_output(self, accumulator):
    counts, examples = accumulator
    return {"counts": dict(counts), "examples": examples}


def describe_shard(path, crop_frames):
  """A written shard -> its manifest record: reads it once for records, bytes, sha256, short mels."""
  from tensorflow.core.example import example_pb2  # protobuf only; the workers have TensorFlow

  counts = {"records": 0, "short": 0, "bytes": 0}

  def frames():  # the file's bytes, record by record, counting as they go by
    with open(path, "rb") as f:
      while True:
        header = f.read(12)  # TFRecord framing: uint64 length, uint32 masked crc of the length
        if not header:
          break
        (length,) = struct.unpack("<Q", header[:8])
        data = f.read(length)
        footer = f.read(4)  # masked crc of the data
        counts["bytes"] += len(header) + len(data) + len(footer)
        example = example_pb2.Example.FromString(data)
        counts["short"] += example.features.feature["frames"].int64_list.value[0] < crop_frames
        counts["records"] += 1
        yield header + data + footer

  digest = safeio.sha256_chunks(frames())
  name = os.path.basename(path)
  return {"file": name, "split": name.split("-")[0], "records": counts["records"],
          "bytes": counts["bytes"], "sha256": digest, "short_mel": int(counts["short"])}


# --- The writer steps.prepare calls. -------------------------------------------------------------------


def clean(out_dir):
  """Removes what an unfinished run (Beam or local) left: shards, Beam's temp folders, work files."""
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if shards.SHARD_FILE.match(name):
      os.remove(path)
    elif name in (WORK_DIR, sharding.PROGRESS_DIR) or name.startswith("beam-temp-"):
      shutil.rmtree(path)


def shard_counts(entries, songs_per_shard):
  """{split: shards}, as the local writer plans them (tfcmir.prepare.sharding.plan)."""
  sizes = collections.Counter(e.split for e in entries)
  return {split: -(-sizes[split] // songs_per_shard) for split in shards.SPLITS if sizes[split]}


def build(pipeline, songs_file, out_dir, work_dir, counts, bands, crop_frames, strict,
          mel_level="essentia"):
  """Adds the preparation to `pipeline`; outputs land in `out_dir` and its reports in `work_dir`."""
  results = (pipeline
             | "ReadSongs" >> beam.io.ReadFromText(songs_file)
             | "Spread" >> beam.Reshuffle()
             | "SongToRecord" >> beam.ParDo(SongToRecord(bands, crop_frames, strict, mel_level)).with_outputs(
                 PROBLEMS, main="records"))
  by_split = results.records | "BySplit" >> beam.Partition(lambda kv, n: shards.SPLITS.index(kv[0]),
                                                            len(shards.SPLITS))
  written = []
  for index, split in enumerate(shards.SPLITS):
    if split in counts:
      written.append(
          by_split[index]
          | f"Records[{split}]" >> beam.Values()
          | f"Write[{split}]" >> beam.io.WriteToTFRecord(os.path.join(out_dir, split),
                                                         file_name_suffix=".tfrecord",
                                                         num_shards=counts[split]))
  (written
   | "AllShards" >> beam.Flatten()
   | "SpreadShards" >> beam.Reshuffle()
   | "Describe" >> beam.Map(describe_shard, crop_frames)
   | "ShardsToJson" >> beam.Map(json.dumps)
   | "WriteShardList" >> beam.io.WriteToText(os.path.join(work_dir, "shards"), ".jsonl",
                                             shard_name_template=""))
  (results[PROBLEMS]
   | "Problems" >> beam.CombineGlobally(CombineProblems())
   | "ProblemsToJson" >> beam.Map(json.dumps)
   | "WriteProblems" >> beam.io.WriteToText(os.path.join(work_dir, "problems"), ".json",
                                            shard_name_template=""))


class BeamShardWriter:
  """steps.prepare's `shard_writer`: the shards written by a Beam pipeline (see the module doc)."""

  def __init__(self, pipeline_options, timeout_s=0, progress=True):
    self.options = pipeline_options
    self.timeout_s = timeout_s
    self.progress = progress

  def __call__(self, entries, songs_per_shard, out_dir, config, strict, problems):
    clean(out_dir)
    work_dir = os.path.join(out_dir, WORK_DIR)
    os.makedirs(work_dir)
    songs_file = os.path.join(work_dir, "songs.jsonl")
    with open(songs_file, "w", encoding="utf-8") as f:
      for entry in entries:
        f.write(entry_to_json(entry) + "\n")
    counts = shard_counts(entries, songs_per_shard)
    started = time.time()
    if self.progress:
      print(f"beam: {len(entries)} songs -> {sum(counts.values())} shards on "
            f"{options_lib.runner_name(self.options)} ...", flush=True)
    pipeline = beam.Pipeline(options=self.options)
    build(pipeline, songs_file, out_dir, work_dir, counts, config.bands, config.crop_frames, strict,
          config.mel_level)
    options_lib.run(pipeline, self.timeout_s)

    with open(os.path.join(work_dir, "shards.jsonl"), encoding="utf-8") as f:
      written = [json.loads(line) for line in f if line.strip()]
    written.sort(key=lambda r: (shards.SPLITS.index(r["split"]), r["file"]))  # the local writer's order
    with open(os.path.join(work_dir, "problems.json"), encoding="utf-8") as f:
      found = json.load(f)
    problems.merge(found["counts"], found["examples"])
    for record in written:
      record["problems"] = {"counts": {}, "examples": {}}  # the songs' problems are merged above
    shutil.rmtree(work_dir)
    if self.progress:
      print(f"beam: wrote {sum(r['records'] for r in written)} records in {len(written)} shards in "
            f"{time.time() - started:.1f} s", flush=True)
    return written, 0
