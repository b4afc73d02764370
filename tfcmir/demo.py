"""The main job on the demo data: `python -m tfcmir.demo --flagfile=configs/demo.flags`.

Runs the whole pipeline that exists so far on the built-in demo data, and ends with a summary:
  1. generate the demo datasets (Melon, GTZAN and MTG-Jamendo layouts) into --demo_dir;
  2. check that they carry learnable structure (tfcmir.data.probes), and stop if not;
  3. prepare the demo Melon corpus into shards (--tfrecord_dir), as `python -m tfcmir.prepare` does;
  4. train the contrastive model (--mode) on them, as `python -m tfcmir.train` does, and check that its
     audio embeddings of held-out songs predict genre better than the same encoder untrained;
  5. export the trained audio encoder (SavedModel, TFLite, Essentia), as `python -m tfcmir.export`.
The downstream evaluation joins this job when it is built.
"""

import os
import sys
import time

from absl import flags

from tfcmir import flags as tfcmir_flags
from tfcmir.data import demo, probes

FLAGS = flags.FLAGS

# A demo dataset whose probes fall below these has lost its structure (measured on the default demo:
# genre 0.93, GTZAN transfer 0.75, playlist hit@50 0.24 against 0.03 at random).
MIN_GENRE_ACCURACY = 0.6
MIN_PLAYLIST_LIFT = 3.0


def main(argv):
  from tfcmir import export as export_cli
  from tfcmir import train as train_cli
  from tfcmir.prepare import cli as prepare_cli

  timings = {}
  out = FLAGS.out or FLAGS.demo_dir

  started = time.time()
  print(f"[1/5] demo datasets -> {out}", flush=True)
  manifest = demo.generate(out, demo.config_from_flags(), FLAGS.workers, FLAGS.overwrite)
  print(demo.summary(out, manifest), flush=True)
  timings["generate demo data"] = time.time() - started

  started = time.time()
  print("\n[2/5] structure probes", flush=True)
  report = probes.demo_structure(out, seed=FLAGS.seed)
  print(probes.format_report(report), flush=True)
  if (report["genre"][0] < MIN_GENRE_ACCURACY
      or report["playlist"][0] < MIN_PLAYLIST_LIFT * report["playlist"][1]):
    print("error: the demo data lacks learnable genre or playlist structure", file=sys.stderr)
    sys.exit(1)
  timings["structure probes"] = time.time() - started

  started = time.time()
  print(f"\n[3/5] prepare the demo Melon corpus -> {FLAGS.tfrecord_dir}", flush=True)
  FLAGS.source = "melon"
  FLAGS.melon_dir = os.path.join(out, "melon")  # the data this job generated, whatever the flagfile
  prepared = prepare_cli.run(FLAGS.tfrecord_dir)
  print(prepare_cli.summary(FLAGS.tfrecord_dir, prepared), flush=True)
  timings["prepare shards"] = time.time() - started

  started = time.time()
  model_dir = FLAGS.model_dir or os.path.join("runs", "demo", FLAGS.mode)
  print(f"\n[4/5] train {FLAGS.mode} -> {model_dir}", flush=True)
  FLAGS.model_dir = model_dir
  trained, probe_result = train_cli.run()
  print(train_cli.format_summary(trained, probe_result), flush=True)
  timings[f"train {FLAGS.mode}"] = time.time() - started
  if probe_result["trained"] <= max(probe_result["untrained"], 2 * probe_result["chance"]):
    print("error: the trained audio encoder is no better than an untrained one", file=sys.stderr)
    sys.exit(1)

  started = time.time()
  export_dir = os.path.join(FLAGS.export_dir, "demo", FLAGS.mode)
  print(f"\n[5/5] export the audio encoder -> {export_dir}", flush=True)
  exported = export_cli.export(model_dir, export_dir, FLAGS.export_version, overwrite=True,
                               flags_used=tfcmir_flags.resolved(),
                               genre_vocab=os.path.join(FLAGS.tfrecord_dir, "genre_vocab.json"))
  for key, value in exported["verification"].items():
    print(f"  {key}: {value:.3g}")
  timings["export"] = time.time() - started

  print("\n| step | seconds |\n|---|---|")
  for step, seconds in timings.items():
    print(f"| {step} | {seconds:.1f} |")
  print(f"| total | {sum(timings.values()):.1f} |")
  print("\ndone: demo data generated, structure confirmed, shards prepared, model trained, "
        "encoder exported")


if __name__ == "__main__":
  tfcmir_flags.run_main(main)
