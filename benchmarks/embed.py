"""Embedding extraction speed on ONE core: seconds of audio embedded per second, per artifact.

    python benchmarks/embed.py            # paper- and demo-size encoders (~5 minutes)
    python benchmarks/embed.py --quick    # smoke test (CI): demo size, fewer repeats

Builds exports of the paper-size encoder (the flag defaults: 7 conv blocks 128..512, hidden 512,
4.0M parameters) and the demo-size one (configs/demo.flags: 16..64, hidden 256) with untrained weights
(speed does not depend on them) using the project's own export code, in a temporary folder. Then, in
one child process per export, pinned to one core (`common.pin_threads(1)`):

  encoder       `inference.Encoder` on mel patches already in memory, at --embed_batch (64) and batch 1;
                one 256-frame patch is 256 * 256 / 16000 = 4.096 s of audio
  + front end   `inference.embed_files` on real audio files (tests/fixtures/real-audio: wav, flac, ogg,
                mp3 at 16-48 kHz, mono and stereo): decode, resample, mel, patches, encoder; seconds
                are those of the files (a 10 s file is two patches, its last 1.8 s is not embedded)
  commands      `tfcmir.embed.embed` and `tfcmir.search.index` (SavedModel), each from the
                export folder to its written output (load, embed, write), on copies of the same
                files: indexing should run at the embed rate (issue 19)
  front end     `inference.file_patches` alone (no encoder)
  from_waveform the SavedModel's from_waveform signature on the decoded 16 kHz waveforms, one call
                per file (front end in the graph); the same for onnx/audio_waveform.onnx in
                onnxruntime

`cpu/wall` is the process CPU time over the wall time of the measurement: well under 1 means another
process shared the core, and the figure is low.
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import common

HERE = os.path.dirname(os.path.abspath(__file__))
REAL_AUDIO = os.path.join(HERE, "..", "tests", "fixtures", "real-audio")
PATCH_SECONDS = 256 * 256 / 16000
SIZES = {"paper": ([128, 128, 256, 256, 256, 256, 512], 512),
         "demo": ([16, 16, 32, 32, 32, 32, 64], 256)}
ARTIFACTS = ("saved_model", "tflite", "tflite_quantized", "onnx")
TARGET = 300  # x real time, float TFLite, paper size, one core
EMBED_ROW = "embed command's work (load, embed, write)"
INDEX_ROW = "search index's work (load, embed, write the index)"


def build_export(root, size):
  """An export of an untrained contr_cf_g model of the given size; returns its folder."""
  from tfcmir import export
  from tfcmir.model import checkpoint as checkpoint_lib
  from tfcmir.model import contrastive
  channels, hidden = SIZES[size]
  config = contrastive.model_config("contr_cf_g", (51, 200), 300, channels=channels, hidden_dim=hidden)
  model = contrastive.build_model(config)
  model.build_from_batch(checkpoint_lib.dummy_batch(config))
  run = os.path.join(root, f"run_{size}")
  os.makedirs(run)
  model.save_weights(os.path.join(run, "best.weights.h5"))
  with open(os.path.join(run, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"model": config, "data": {"tfrecord_dir": "untrained", "fingerprint": "0" * 12}}, f)
  out = os.path.join(root, f"export_{size}")
  export.export(run, out, essentia=False)
  return out


def audio_files():
  return [os.path.join(REAL_AUDIO, f) for f in sorted(os.listdir(REAL_AUDIO))
          if f.endswith((".wav", ".flac", ".ogg", ".mp3"))]


def timed(fn, repeats):
  """(best wall seconds of fn(), CPU seconds / wall seconds over all runs) after one warm-up run."""
  fn()
  wall, cpu, best = time.perf_counter(), time.process_time(), float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best, (time.process_time() - cpu) / (time.perf_counter() - wall)


def measure(export_dir, batch, repeats, file_copies, command_copies, front_end):
  """Child process, one core: rows [(artifact, path, batch, x real time, patches/s, cpu/wall)]."""
  common.pin_threads(1)
  from tfcmir import audio, inference
  rows = []
  files = audio_files() * file_copies
  seconds = sum(len(audio.load_audio(f)) for f in files) / audio.SAMPLE_RATE
  mel = np.random.default_rng(0).normal(-60, 20, (batch, 256, 48)).astype(np.float32)
  for artifact in ARTIFACTS:
    encoder = inference.Encoder(export_dir, artifact)
    for size, calls in ((batch, 1), (1, 16)):
      x = mel[:size]
      wall, load = timed(lambda: [encoder(x) for _ in range(calls)], repeats)
      rows.append((artifact, "encoder", size, size * calls * PATCH_SECONDS / wall, size * calls / wall,
                   load))
    embedded = inference.embed_files(files, encoder, batch, progress=False)[0]
    wall, load = timed(lambda: inference.embed_files(files, encoder, batch, progress=False), repeats)
    rows.append((artifact, "+ front end (embed_files)", batch, seconds / wall,
                 sum(r["patches"] for r in embedded) / wall, load))
  import tensorflow as tf
  signature = tf.saved_model.load(os.path.join(export_dir, "saved_model", "1")).signatures["from_waveform"]
  waves = [tf.constant(audio.load_audio(f)[None]) for f in files]
  wall, load = timed(lambda: [signature(waveform=w) for w in waves], repeats)
  rows.append(("saved_model", "from_waveform signature, decoded waveforms", 1, seconds / wall, None,
               load))
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
  session = ort.InferenceSession(os.path.join(export_dir, "onnx", "audio_waveform.onnx"), options,
                                 providers=["CPUExecutionProvider"])
  arrays = [w.numpy() for w in waves]
  wall, load = timed(lambda: [session.run(["embedding"], {"waveform": w}) for w in arrays], repeats)
  rows.append(("onnx", "audio_waveform.onnx, decoded waveforms", 1, seconds / wall, None, load))
  rows += command_rows(export_dir, audio_files() * command_copies, batch, repeats)
  if front_end:
    wall, load = timed(lambda: [inference.file_patches(f) for f in files], repeats)
    patches = sum(len(inference.file_patches(f)[0]) for f in files)
    rows.append(("-", "front end alone (decode, resample, mel, patches)", "-", seconds / wall,
                 patches / wall, load))
  return rows


def command_rows(export_dir, files, batch, repeats):
  """The work of `tfcmir.embed` and of `tfcmir.search index` on the same files, each from the export
  folder to its output folder (load the SavedModel, embed, write), alternated: issue 19 asks that
  indexing run at the embed rate."""
  from tfcmir import audio, embed, search
  with tempfile.TemporaryDirectory(prefix="tfcmir-bench-index-") as root:
    # Distinct paths: the index keeps one row per path, so the copies must not share one.
    named = []
    for i, path in enumerate(files):
      named.append(os.path.join(root, f"{i:03d}-{os.path.basename(path)}"))
      shutil.copyfile(path, named[-1])
    seconds = sum(len(audio.load_audio(f)) for f in named) / audio.SAMPLE_RATE

    def embed_command():
      embed.embed(export_dir, named, tempfile.mkdtemp(dir=root), batch_patches=batch, progress=False)

    def index_command():
      search.index(export_dir, named, tempfile.mkdtemp(dir=root), progress=False)

    # Alternated, each after a full garbage collection: a loaded SavedModel is freed by the cyclic
    # collector, and that cost would otherwise land inside whichever run comes next.
    walls, cpus = {embed_command: [], index_command: []}, {embed_command: [], index_command: []}
    for run in range(repeats + 1):  # the first round warms up
      for fn in (embed_command, index_command):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if run:
          walls[fn].append(time.perf_counter() - wall)
          cpus[fn].append(time.process_time() - cpu)
    (embed_wall, embed_load), (index_wall, index_load) = (
        (min(walls[fn]), sum(cpus[fn]) / sum(walls[fn])) for fn in (embed_command, index_command))
  return [("saved_model", EMBED_ROW, batch, seconds / embed_wall, None, embed_load),
          ("saved_model", INDEX_ROW, batch, seconds / index_wall, None, index_load)]


def child(export_dir, args, front_end):
  spec = {"export_dir": export_dir, "batch": args.batch, "repeats": args.repeats,
          "file_copies": args.file_copies, "command_copies": args.command_copies,
          "front_end": front_end}
  result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise SystemExit(f"measuring {export_dir} failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="demo size only, one repeat")
  parser.add_argument("--batch", type=int, default=64, help="patches per encoder call (--embed_batch)")
  parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
  parser.add_argument("--file_copies", type=int, default=2,
                      help="the six real-audio files (53 s) this many times per front-end run")
  parser.add_argument("--command_copies", type=int, default=10,
                      help="the six files this many times for the embed and search-index commands: "
                           "enough audio that loading the export is not most of the time")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    spec = json.loads(args.child)
    print(json.dumps(measure(**spec)))
    return
  sizes = ["demo"] if args.quick else ["paper", "demo"]
  if args.quick:
    args.repeats, args.file_copies, args.command_copies = 1, 1, 3

  started = time.perf_counter()
  rows = []
  with tempfile.TemporaryDirectory(prefix="tfcmir-bench-embed-") as root:
    exports = {size: build_export(root, size) for size in sizes}
    print(f"exports built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for size in sizes:
      rows += [(size, *row) for row in child(exports[size], args, front_end=size == sizes[-1])]

  print(common.machine_line("one core per measurement"))
  print(common.table(
      ["encoder", "artifact", "path", "batch", "x real time", "patches/s", "cpu/wall"],
      [(size, artifact, path, batch, f"{speed:,.0f}", "-" if rate is None else f"{rate:,.1f}",
        f"{load:.2f}") for size, artifact, path, batch, speed, rate, load in rows]))
  for size in sizes:
    rate = {path: speed for s, _, path, _, speed, _, _ in rows if s == size}
    print(f"{size} size: search index at {rate[INDEX_ROW] / rate[EMBED_ROW]:.2f}x the embed "
          "command's rate (same files and export, one after the other)")
  if not args.quick:
    best = max(speed for size, artifact, path, batch, speed, _, _ in rows
               if (size, artifact, path) == ("paper", "tflite", "encoder"))
    saved = max(speed for size, artifact, path, batch, speed, _, _ in rows
                if (size, artifact, path) == ("paper", "saved_model", "encoder"))
    onnx = max(speed for size, artifact, path, batch, speed, _, _ in rows
               if (size, artifact, path) == ("paper", "onnx", "encoder"))
    print(f"\nfloat TFLite, paper size, one core: {best:,.0f}x real time (target {TARGET}x: "
          f"{'met' if best >= TARGET else f'missed by {TARGET / best:.2f}x'}); SavedModel "
          f"{saved:,.0f}x ({'no slower' if saved >= best else 'slower'} than TFLite); ONNX "
          f"{onnx:,.0f}x ({onnx / best:.2f}x TFLite's)")
  print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
