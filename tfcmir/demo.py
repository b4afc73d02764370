"""The main job on the demo data: `python -m tfcmir.demo --flagfile=configs/demo.flags`.

The whole pipeline on the built-in demo data, ending with the paper's three tables:
  1. generate the demo datasets (Melon, GTZAN and MTG-Jamendo layouts) into --demo_dir;
  2. check that they carry learnable structure (tfcmir.data.structure), and stop if not;
  3. prepare the demo Melon corpus into shards (--tfrecord_dir), as `python -m tfcmir.prepare`;
  4. train the contrastive model (--mode, Contr_CF-G) and the baseline B-line_CF-G, as
     `python -m tfcmir.train`, into <--model_dir or runs/demo>/<mode>; the contrastive encoder must
     predict the genre of held-out songs better than the same encoder untrained;
  5. export both audio encoders, as `python -m tfcmir.export`, into <--export_dir>/demo/<mode>;
  6. evaluate both on GTZAN, MTG-Jamendo and playlist continuation, as `python -m tfcmir.evaluate`,
     into <--eval_dir>/demo, and print the tables;
  7. search the shared space, as `python -m tfcmir.search`: precision@10 of genre words -> audio and
     audio -> audio on the demo GTZAN tracks (the baseline has no shared space: audio -> audio only).
Every step reuses what an earlier run left complete, so a re-run after a kill goes on where it stopped.
"""

import os
import sys
import time

from absl import flags

from tfcmir import flags as tfcmir_flags
from tfcmir import safeio
from tfcmir.data import generator, structure

FLAGS = flags.FLAGS
BASELINE = "bline_cf_g"

# A demo dataset whose probes fall below these has lost its structure (measured on the default demo:
# genre 0.93, GTZAN transfer 0.75, playlist hit@50 0.24 against 0.03 at random).
MIN_GENRE_ACCURACY = 0.6
MIN_PLAYLIST_LIFT = 3.0


class Steps:
  """Prints numbered steps and keeps their timings."""

  def __init__(self, total):
    self.total, self.done, self.timings = total, 0, {}

  def start(self, title):
    self.done += 1
    self.title, self.started = title, time.time()
    print(f"\n[{self.done}/{self.total}] {title}", flush=True)

  def end(self):
    self.timings[self.title] = time.time() - self.started

  def table(self):
    lines = ["| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in self.timings.items()]
    return "\n".join(lines + [f"| total | {sum(self.timings.values()):.1f} |"])


def main(argv):
  # The steps' own modules load TensorFlow: imported here, after the flags are checked.
  from tfcmir import export as export_cli
  from tfcmir.evaluate import cli as evaluate_cli
  from tfcmir.prepare import cli as prepare_cli
  from tfcmir.search import evaluation as search_evaluation
  from tfcmir.train import cli as train_cli
  from tfcmir.train import loop

  steps = Steps(7)
  out = FLAGS.out or FLAGS.demo_dir
  steps.start(f"demo datasets -> {out}")
  manifest = generator.generate(out, generator.config_from_flags(), FLAGS.workers, FLAGS.overwrite)
  print(generator.summary(out, manifest), flush=True)
  steps.end()

  steps.start("structure probes")
  found = structure.demo_structure(out, seed=FLAGS.seed)
  print(structure.format_report(found), flush=True)
  if (found["genre"][0] < MIN_GENRE_ACCURACY
      or found["playlist"][0] < MIN_PLAYLIST_LIFT * found["playlist"][1]):
    print("error: the demo data lacks learnable genre or playlist structure", file=sys.stderr)
    sys.exit(1)
  steps.end()

  steps.start(f"prepare the demo Melon corpus -> {FLAGS.tfrecord_dir}")
  source = {"name": "melon", "melon_dir": os.path.join(out, "melon")}  # this job's data, whatever flags say
  prepared = prepare_cli.run(FLAGS.tfrecord_dir, source, prepare_cli.config_from_flags(),
                             FLAGS.workers, FLAGS.overwrite, FLAGS.strict, tfcmir_flags.resolved(),
                             mel_level=FLAGS.mel_level)
  print(prepare_cli.summary(FLAGS.tfrecord_dir, prepared), flush=True)
  steps.end()

  runs_root = FLAGS.model_dir or os.path.join("runs", "demo")
  modes = [FLAGS.mode] + ([BASELINE] if FLAGS.mode != BASELINE else [])
  steps.start(f"train {', '.join(modes)} -> {runs_root}")
  data = loop.Data.read(FLAGS.tfrecord_dir)
  for mode in modes:
    model_dir = os.path.join(runs_root, mode)
    model_settings, settings, table = train_cli.plan(data, mode)  # as `python -m tfcmir.train` would
    settings["flags_used"]["model_dir"] = model_dir
    print(table, flush=True)
    trained, probe_result = loop.run(FLAGS.tfrecord_dir, model_dir, mode, model_settings, settings,
                                     data=data)
    print(loop.format_summary(trained, probe_result), flush=True)
    if mode == modes[0] and probe_result["trained"] <= max(probe_result["untrained"],
                                                           2 * probe_result["chance"]):
      print("error: the trained audio encoder is no better than an untrained one", file=sys.stderr)
      sys.exit(1)
  steps.end()

  steps.start("export the audio encoders")
  exports = []
  for mode in modes:
    export_dir = os.path.join(FLAGS.export_dir, "demo", mode)
    exported = export_cli.export(os.path.join(runs_root, mode), export_dir, FLAGS.export_version,
                                 overwrite=True, flags_used=tfcmir_flags.resolved(),
                                 tfrecord_dir=FLAGS.tfrecord_dir)
    checks = ", ".join(f"{k} {v:.2g}" for k, v in exported["verification"].items())
    print(f"{export_dir}: {checks}", flush=True)
    exports.append(export_dir)
  steps.end()

  eval_dir = os.path.join(FLAGS.eval_dir, "demo")
  steps.start(f"evaluate (GTZAN, MTG-Jamendo, playlist continuation) -> {eval_dir}")
  tables = evaluate_cli.evaluate(
      ["gtzan", "jamendo", "continuation"], exports, eval_dir, gtzan_dir=os.path.join(out, "gtzan"),
      jamendo_dir=os.path.join(out, "mtg-jamendo"), jamendo_split=FLAGS.jamendo_split,
      melon_dir=os.path.join(out, "melon"),
      split_file=os.path.join(FLAGS.tfrecord_dir, "split.json"),
      repetitions=FLAGS.eval_repetitions, seed=FLAGS.seed, continuation_k=FLAGS.continuation_k,
      search=evaluate_cli.search_flags())
  steps.end()

  steps.start("search the shared space (demo GTZAN tracks: genre words -> audio, audio -> audio)")
  tables["search"] = search_evaluation.search_table(
      exports, os.path.join(out, "gtzan"), os.path.join(out, "melon", "genre_gn_all.json"))
  safeio.write_text(os.path.join(eval_dir, "search.md"), tables["search"] + "\n")
  steps.end()

  titles = {"gtzan": "Table 1: GTZAN genre classification",
            "jamendo": "Table 2: MTG-Jamendo auto-tagging",
            "continuation": "Table 3: Melon playlist continuation",
            "search": "Search: precision@10 of `python -m tfcmir.search genre` and `similar`"}
  for task, table in tables.items():
    print(f"\n{titles[task]} (demo data)\n{table}")
  print("\n" + steps.table())
  print(f"\ndone: the whole pipeline ran on the demo data; tables and plots in {eval_dir}")


if __name__ == "__main__":
  tfcmir_flags.run_main(main)
