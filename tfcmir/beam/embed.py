"""`python -m tfcmir.embed --runner=... --embed_model=EXPORT --out=DIR AUDIO ...` as an Apache Beam pipeline.

    (row, path) for every audio file -> Reshuffle -> BatchElements (files)
      -> EmbedFiles: the export's encoder loaded once per worker (DoFn.setup), then the local embed's
         own tfcmir.inference.embed_files on each batch (decode, mel, 256-frame patches, --embed_batch
         patches per encoder call)
      -> records -> WriteToTFRecord | WriteToParquet: DIR/embeddings-0000i-of-0000N.{tfrecord,parquet}
      -> unreadable files (path, reason)          -> DIR/skipped.csv
    then DIR/embeddings_manifest.json, written last; tfcmir.embeddings.read_embeddings loads it all
    back into the local embed's arrays.

Every worker must be able to open the export and the audio files by the paths given here.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from tfcmir import embeddings, export_format, inference, safeio
from tfcmir.beam import options as options_lib
from tfcmir.errors import InputError

SKIPPED_TAG = "skipped"
WORK_DIR = ".beam"
NAMESPACE = "tfcmir.embed"
MAX_FILES_PER_BATCH = 32


class EmbedFiles(beam.DoFn):
  """A batch of (row, path) -> one record per readable file; (path, reason) of the others."""

  def __init__(self, export_dir, artifact, batch_patches, per_patch):
    super().__init__()
    self._export_dir = export_dir
    self._artifact = artifact
    self._batch_patches = batch_patches
    self._per_patch = per_patch
    self._encoder = None
    self._files = Metrics.counter(NAMESPACE, "files")
    self._patches = Metrics.counter(NAMESPACE, "patches")
    self._padded = Metrics.counter(NAMESPACE, "padded")
    self._milliseconds = Metrics.counter(NAMESPACE, "audio_ms")

  def setup(self):
    # Once per DoFn instance (a worker keeps it for many bundles): loading a SavedModel takes seconds.
    self._encoder = inference.Encoder(self._export_dir, self._artifact)

  def process(self, batch):
    paths = [path for _, path in batch]
    rows, per_patch, skipped = inference.embed_files(paths, self._encoder, self._batch_patches,
                                                     progress=False)
    unreadable = {path for path, _ in skipped}
    readable = [(index, path) for index, path in batch if path not in unreadable]
    for (index, _), row, patch_embeddings in zip(readable, rows, per_patch):
      self._files.inc()
      self._patches.inc(row["patches"])
      self._padded.inc(int(row["padded"]))
      self._milliseconds.inc(int(round(row["seconds"] * 1000)))
      yield embeddings.row_record(row, index, patch_embeddings.mean(0),
                               patch_embeddings if self._per_patch else None)
    for path, reason in skipped:
      yield beam.pvalue.TaggedOutput(SKIPPED_TAG, (path, reason))


def _csv_line(path, reason):
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="").writerow([path, reason])
  return buffer.getvalue()


def build(pipeline, paths, export_dir, out, work_dir, artifact="saved_model", batch_patches=64,
          per_patch=False, fmt="tfrecord", num_shards=0):
  """Adds the embedding of `paths` to `pipeline`; see the module doc for what lands in `out`."""
  results = (pipeline
             | "Files" >> beam.Create(list(enumerate(paths)))
             | "Spread" >> beam.Reshuffle()
             | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=MAX_FILES_PER_BATCH)
             | "Embed" >> beam.ParDo(EmbedFiles(export_dir, artifact, batch_patches, per_patch))
             .with_outputs(SKIPPED_TAG, main="records"))
  prefix = os.path.join(out, embeddings.PREFIX)
  if fmt == "parquet":
    written = (results.records
               | "ToParquetRows" >> beam.Map(embeddings.to_parquet_row)
               | "Write" >> beam.io.WriteToParquet(prefix, embeddings.arrow_schema(per_patch),
                                                   file_name_suffix=embeddings.SUFFIX[fmt],
                                                   num_shards=num_shards))
  else:
    written = (results.records
               | "ToExamples" >> beam.Map(embeddings.to_example)
               | "Write" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=embeddings.SUFFIX[fmt],
                                                    num_shards=num_shards))
  (written
   | "FileNames" >> beam.Map(os.path.basename)
   | "WriteFileList" >> beam.io.WriteToText(os.path.join(work_dir, "files"), ".txt",
                                            shard_name_template=""))
  (results[SKIPPED_TAG]
   | "SkippedToCsv" >> beam.MapTuple(_csv_line)
   | "WriteSkipped" >> beam.io.WriteToText(os.path.join(work_dir, "skipped"), ".csv",
                                           shard_name_template="", header="path,reason"))


def _check_export(export_dir, artifact):
  """The export's manifest, checked here so a bad --embed_model fails before any worker starts."""
  manifest = export_format.read_manifest(export_dir)
  export_format.verify(export_dir, manifest, artifact)  # again in each worker, as it loads
  if artifact in export_format.TFLITE_FILES or artifact == "onnx":
    model = os.path.join(export_dir, *export_format.artifact_files(manifest, artifact)[0].split("/"))
    if not os.path.exists(model):
      raise InputError(f"{model}: this export has no such {'ONNX' if artifact == 'onnx' else 'TFLite'} "
                       "model")
  return manifest


def run(paths, export_dir, out, pipeline_options, artifact="saved_model", batch_patches=64,
        per_patch=False, fmt="tfrecord", num_shards=0, timeout_s=0):
  """Embeds `paths` with a Beam pipeline into `out`; returns the embeddings manifest (a dict)."""
  export = _check_export(export_dir, artifact)
  if fmt == "parquet":
    try:
      import pyarrow  # noqa: F401  (Beam's Parquet sink)
    except ImportError as err:
      raise InputError("--beam_output=parquet needs pyarrow: pip install pyarrow") from err
  os.makedirs(out, exist_ok=True)
  manifest_path = os.path.join(out, embeddings.MANIFEST)
  previous = embeddings.previous_outputs(out)
  if os.path.exists(manifest_path):
    os.remove(manifest_path)  # from now on the folder holds no complete result until this run's
  work_dir = os.path.join(out, WORK_DIR)
  shutil.rmtree(work_dir, ignore_errors=True)
  started = time.time()
  pipeline = beam.Pipeline(options=pipeline_options)
  build(pipeline, paths, os.path.abspath(export_dir), out, work_dir, artifact, batch_patches,
        per_patch, fmt, num_shards)
  result = options_lib.run(pipeline, timeout_s)

  with open(os.path.join(work_dir, "files.txt"), encoding="utf-8") as f:
    files = sorted(line.strip() for line in f if line.strip())
  os.replace(os.path.join(work_dir, "skipped.csv"), os.path.join(out, embeddings.SKIPPED))
  shutil.rmtree(work_dir)
  _remove_stale_shards(out, files)
  embeddings.remove_stale(out, previous, files + [embeddings.SKIPPED])
  with open(os.path.join(out, embeddings.SKIPPED), encoding="utf-8", newline="") as f:
    skipped = [(r["path"], r["reason"]) for r in csv.DictReader(f)]
  inference.check_some_read(paths, skipped)
  counts = {name: options_lib.counter(result, name)
            for name in ("files", "patches", "padded", "audio_ms")}
  manifest = {"written_by": safeio.WRITTEN_BY, "format": fmt, "files": files, "embedded": counts["files"],
              "patches": counts["patches"], "padded": counts["padded"],
              "audio_seconds": counts["audio_ms"] / 1000 if counts["audio_ms"] is not None else None,
              "skipped": len(skipped), "inputs": len(paths),
              "dim": int(export["embedding_dim"]), "per_patch": bool(per_patch),
              "export": os.path.abspath(export_dir), "artifact": artifact,
              "runner": options_lib.runner_name(pipeline_options),
              "seconds": round(time.time() - started, 2)}
  if manifest["embedded"] is None:  # a runner without metrics: the inputs that were not skipped
    manifest["embedded"] = len(paths) - len(skipped)
  safeio.write_json(manifest_path, manifest)
  manifest["skipped_files"] = skipped
  return manifest


def _remove_stale_shards(out, files):
  """Shards of an earlier run with another shard count: not this run's, and would confuse a glob."""
  pattern = re.compile(rf"^{embeddings.PREFIX}-\d{{5}}-of-\d{{5}}\.(tfrecord|parquet)$")
  for name in os.listdir(out):
    if pattern.match(name) and name not in files:
      os.remove(os.path.join(out, name))


def summary(manifest, out):
  """The lines the local embed prints, for a Beam run."""
  seconds = manifest["audio_seconds"] or 0.0
  lines = [f"embedded {manifest['embedded']} files ({manifest['patches']} patches, {seconds:.0f} s "
           f"of audio) with {manifest['artifact']} on {manifest['runner']} in "
           f"{manifest['seconds']:.1f} s -> {out} ({len(manifest['files'])} {manifest['format']} "
           f"shards; read them with tfcmir.embeddings.read_embeddings)"]
  if manifest["padded"]:
    lines.append(f"shorter than one patch, padded with silence: {manifest['padded']} "
                 "(flagged in the records)")
  lines += [f"skipped {path}: {reason}" for path, reason in manifest["skipped_files"]]
  return "\n".join(lines)
