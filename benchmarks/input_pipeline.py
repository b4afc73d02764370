"""Input pipeline throughput: prepared shards -> cropped training batches, in songs/s and MB/s.

    python benchmarks/input_pipeline.py                  # synthetic Melon-sized shards (4,096 songs)
    python benchmarks/input_pipeline.py --tfrecord_dir tfrecords/demo    # shards you prepared
    python benchmarks/input_pipeline.py --quick          # smoke test (CI): tiny, one repeat

Measures `tfcmir.train.pipeline.dataset(..., training=True)` at batch 128 (random crops, shuffle, batch,
prefetch), and the stages that make it up, each cumulative over the one before:

  read       interleaved TFRecordDataset over the shuffled shards (what the disk must deliver)
  parse      + tf.io.parse_single_example of every record (the mel stays encoded bytes)
  decode     + the whole float16 mel decoded to float32, padded, then cropped: the reader before
             issue 7 (for comparison; the reader no longer does this)
  crop       + the reader's crop: 256 frames cut from the encoded bytes, only those decoded
  dataset    pipeline.dataset itself: + shuffle 2048, batch, cast to float32, prefetch

on one core (threads and the process pinned to one CPU, in a subprocess) and on all cores. MB/s is
shard bytes per second (songs/s x the mean record size on disk). CPU us/song is the process's CPU
time (user + system, every thread) per song: unlike songs/s it hardly moves when other work shares
the machine, and it is what the pipeline takes from a training step running on the same cores.

Synthetic shards are written with the real schema (`tfcmir.shards.serialize`): Melon-sized
mels (1,876 frames x 48 bands, float16; 2 % shorter than a crop, to exercise the padding), 10 genres,
300 CF factors, 128-MiB shards, in a temporary folder removed at the end. The shards are read from the
page cache; a corpus larger than memory is read at the disk's speed, so compare MB/s with it.
"""

import argparse
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
STAGES = ("read", "parse", "decode", "crop", "dataset")
STAGE_NAMES = {
    "read": "read: interleaved TFRecordDataset",
    "parse": "+ parse Example (mel kept as bytes)",
    "decode": "+ decode whole mel to float32, pad, crop (reader before)",
    "crop": "+ crop the float16 bytes, decode the crop as bit patterns (reader now)",
    "dataset": "pipeline.dataset: + shuffle, batch, cast, prefetch",
}


def write_synthetic(out_dir, songs, frames, bands=48, max_genres=10, cf_dim=300, shard_mb=128,
                    short_fraction=0.02, seed=0):
  """Writes `songs` synthetic training songs as prepared shards + manifest.json; returns the manifest.

  The mels are 64 distinct random dB arrays reused across songs (the values do not change the reader's
  speed); every 1/short_fraction-th song has 200 frames, fewer than a crop.
  """
  import tensorflow as tf

  from tfcmir import safeio, shards

  rng = np.random.default_rng(seed)
  bases = rng.normal(-80.0, 20.0, (64, frames, bands)).astype(np.float16)
  per_shard = max(1, int(shard_mb * 2**20 // (frames * bands * 2 + 4 * cf_dim + 200)))
  count = -(-songs // per_shard)
  short_every = int(round(1 / short_fraction)) if short_fraction > 0 else 0
  listed = []
  for index in range(count):
    name = shards.shard_name("train", index, count)
    path = os.path.join(out_dir, name)
    ids = range(index * per_shard, min(songs, (index + 1) * per_shard))
    with tf.io.TFRecordWriter(path) as writer:
      for song in ids:
        mel = bases[song % 64][:200] if short_every and song % short_every == 0 else bases[song % 64]
        genres = np.zeros(max_genres, np.int64)
        genres[:1 + song % 3] = rng.integers(1, 250, 1 + song % 3)
        writer.write(shards.serialize(song, "train", mel, genres,
                                       rng.normal(0, 0.1, cf_dim).astype(np.float32), True))
    listed.append({"file": name, "split": "train", "records": len(ids), "bytes": os.path.getsize(path),
                   "sha256": safeio.sha256_file(path)})
  manifest = {"schema": {"bands": bands, "max_genres": max_genres, "cf_dim": cf_dim},
              "shards": listed, "fingerprint": "synthetic",
              "counts": {"songs": {"train": songs, "val": 0, "test": 0},
                         "with_cf": {"train": songs, "val": 0, "test": 0}}}
  with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1)
  return manifest


def stage_dataset(stage, tfrecord_dir, manifest, crop_frames, seed):
  """An endless dataset of one cumulative stage (see the module docstring); elements are songs."""
  import tensorflow as tf

  from tfcmir import shards
  from tfcmir.train import pipeline

  schema = manifest["schema"]
  files = [os.path.join(tfrecord_dir, s["file"]) for s in manifest["shards"]
           if s["split"] == "train" and s["records"] > 0]
  ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
  # The same interleave as pipeline.dataset, repeated so a measurement never runs out of songs.
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=tf.data.AUTOTUNE,
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).repeat()
  if stage == "read":
    return ds
  spec = shards.features(schema["max_genres"], schema["cf_dim"])
  bands = schema["bands"]

  def parse(serialized):
    return tf.io.parse_single_example(serialized, spec)

  def decode(serialized):
    example = shards.parse(serialized, schema["max_genres"], schema["cf_dim"], bands)
    return dict(example, mel=pipeline.crop(example["mel"], crop_frames, True, seed))

  def crop(serialized):
    example = parse(serialized)
    return dict(example, mel=pipeline.crop_encoded(example["mel"], crop_frames, bands, True, seed))

  fn = {"parse": parse, "decode": decode, "crop": crop}[stage]
  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)


def song_counter(ds):
  """fn(songs) pulls `songs` elements through `ds` inside the graph (no Python per song) and returns
  the seconds it took; traced once, so a call costs only the iterator's start."""
  import tensorflow as tf

  @tf.function
  def pull(songs):
    return ds.take(songs).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)

  def run(songs):
    start = time.perf_counter()
    pull(tf.constant(songs, tf.int64)).numpy()
    return time.perf_counter() - start
  return run


def cpu_seconds():
  import resource
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(fn, seconds, repeats):
  """fn(scale) runs `scale` units of work; returns (best units/s, CPU s per unit of that run).

  The scale is doubled until one run lasts `seconds`, then `repeats` runs of it are timed.
  """
  scale = 1
  while True:
    elapsed = fn(scale)
    if elapsed >= seconds / 4 or scale >= 2**20:
      break
    scale *= 2
  scale = max(1, int(scale * seconds / max(elapsed, 1e-9)))
  best = (0.0, 0.0)
  for _ in range(repeats):
    cpu = cpu_seconds()
    elapsed = fn(scale)
    rate = scale / elapsed
    if rate > best[0]:
      best = (rate, (cpu_seconds() - cpu) / scale)
  return best


def worker(args):
  """Runs every stage in this process (pinned to args.cores) and prints one JSON line of results."""
  common.pin_threads(int(args.cores))
  import tensorflow as tf  # noqa: F401  (after pinning)

  from tfcmir import shards
  from tfcmir.train import pipeline

  manifest = shards.read_manifest(args.tfrecord_dir)
  results = {}
  for stage in args.stages.split(","):
    if stage == "dataset":
      ds = pipeline.dataset(args.tfrecord_dir, "train", args.batch, training=True, seed=args.seed,
                            repeat=True)
      iterator = iter(ds)
      # The shuffle buffer (2,048 songs) fills first; measure the steady state after it.
      for _ in range(2048 // args.batch + 2):
        next(iterator)

      def run(batches, iterator=iterator):
        start = time.perf_counter()
        for _ in range(batches):
          next(iterator)
        return time.perf_counter() - start

      rate, cpu = measure(run, args.seconds, args.repeats)
      rate, cpu = rate * args.batch, cpu / args.batch
    else:
      count = song_counter(stage_dataset(stage, args.tfrecord_dir, manifest, args.crop_frames,
                                         args.seed))
      count(64)  # traces the functions, warms the page cache
      rate, cpu = measure(lambda songs, count=count: count(64 * songs), args.seconds, args.repeats)
      rate, cpu = rate * 64, cpu / 64
    results[stage] = {"songs_per_s": rate, "cpu_us_per_song": cpu * 1e6}
  print("RESULT " + json.dumps(results), flush=True)


def run_worker(args, cores):
  """Runs `worker` in a subprocess pinned to `cores`; returns its results."""
  command = [sys.executable, os.path.abspath(__file__), "--worker", "--cores", str(cores),
             "--tfrecord_dir", args.tfrecord_dir, "--batch", str(args.batch),
             "--seconds", str(args.seconds), "--repeats", str(args.repeats), "--seed", str(args.seed),
             "--crop_frames", str(args.crop_frames), "--stages", args.stages]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
  if done.returncode or not lines:
    sys.exit(f"input_pipeline.py: the {cores}-core measurement failed:\n{done.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, one repeat")
  parser.add_argument("--tfrecord_dir", help="prepared shards to read (default: synthetic ones)")
  parser.add_argument("--songs", type=int, default=4096, help="synthetic songs")
  parser.add_argument("--frames", type=int, default=1876, help="frames per synthetic mel (Melon: 1,876)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--crop_frames", type=int, default=256)
  parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed run")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (best is kept)")
  parser.add_argument("--cores", default="1,all", help="core counts to measure, e.g. 1,all")
  parser.add_argument("--stages", default=",".join(STAGES))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the figures here (train_step.py --pipeline_json)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  if args.quick:
    args.songs, args.batch, args.seconds, args.repeats, args.cores = 160, 16, 0.1, 1, "1"
  started = time.perf_counter()
  temporary = None
  try:
    if not args.tfrecord_dir:
      temporary = args.tfrecord_dir = tempfile.mkdtemp(prefix="tfcmir-bench-shards-")
      print(f"writing {args.songs} synthetic songs ({args.frames} x 48 float16 mels) ...", flush=True)
      write_synthetic(args.tfrecord_dir, args.songs, args.frames)
    with open(os.path.join(args.tfrecord_dir, "manifest.json"), encoding="utf-8") as f:
      manifest = json.load(f)
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    songs = sum(s["records"] for s in train)
    record_mb = sum(s["bytes"] for s in train) / max(songs, 1) / 1e6
    all_cores = common.usable_cores()
    cores = sorted({all_cores if c == "all" else int(c) for c in args.cores.split(",")})
    measured = {c: run_worker(args, c) for c in cores}
  finally:
    if temporary:
      shutil.rmtree(temporary, ignore_errors=True)

  headers = ["stage (cumulative)"]
  for c in cores:
    headers += [f"songs/s, {c} core{'s' * (c > 1)}", "MB/s", "CPU us/song"]
  rows = []
  for stage in args.stages.split(","):
    row = [STAGE_NAMES[stage]]
    for c in cores:
      figure = measured[c][stage]
      row += [f"{figure['songs_per_s']:,.0f}", f"{figure['songs_per_s'] * record_mb:,.0f}",
              f"{figure['cpu_us_per_song']:,.0f}"]
    rows.append(row)
  print(common.machine_line())
  print(f"shards: {songs} train songs in {len(train)} shard(s), {record_mb * 1e3:.1f} kB per record "
        f"on disk ({'synthetic' if temporary else args.tfrecord_dir}); batch {args.batch}, "
        f"{args.crop_frames}-frame crops; best of {args.repeats} run(s) of {args.seconds:g} s")
  print(common.table(headers, rows))
  final = {c: measured[c]["dataset"]["songs_per_s"] for c in cores if "dataset" in measured[c]}
  if final:
    per_core = final[min(final)] / min(final)
    print(f"pipeline.dataset: {per_core:,.0f} songs/s per core on {min(final)} core "
          f"(target >= 1,000: {'met' if per_core >= 1000 else 'MISSED'}); "
          f"{final[max(final)]:,.0f} songs/s on {max(final)} cores")
  if args.json:
    summary = {"cores": {str(c): measured[c] for c in cores}, "record_mb": record_mb,
               "batch": args.batch, "machine": common.machine_line()}
    temporary_json = args.json + ".partial"
    with open(temporary_json, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    os.replace(temporary_json, args.json)
  print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
  main()
