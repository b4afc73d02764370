"""`python -m tfcmir.evaluate --task=gtzan|jamendo|continuation|all --models=exports/A,exports/B`.

The paper's section 3.3 on exported encoders, as users run them: every track is embedded with the
export's SavedModel through `tfcmir.inference` (patches of 256 frames), then

  gtzan         MLP (256 ReLU) on patch embeddings, majority vote per track, accuracy (Table 1)
  jamendo       MLP 128-64 on mean track embeddings, macro ROC-AUC / PR-AUC per category (Table 2)
  continuation  Annoy neighbours of each seed among the test-split songs, nDCG@100 / MAP@100 (Table 3)
  catalogue     your own labelled catalogue with a split by track (--catalogue_*): 1-NN and linear-probe
                label accuracy and playlist hit@10, beside log-mel statistics (evaluate/catalogue.py)

Tables (Markdown + JSON) and plots (GTZAN confusion matrices, 2-D embedding maps) go to --eval_dir.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import flags

from tfcmir import audio, inference, safeio
from tfcmir.errors import InputError
from tfcmir.data.corpus import load_mel, mel_file
from tfcmir.evaluate import report

FLAGS = flags.FLAGS
PAPER_NAMES = {"contr_cf_g": "Contr_CF-G", "contr_g": "Contr_G", "contr_cf": "Contr_CF",
               "bline_g": "B-line_G", "bline_cf": "B-line_CF", "bline_cf_g": "B-line_CF-G"}


def load_encoders(export_dirs, strict=False):
  """{row label: inference.Encoder}; rows are named after the paper's models when the mode says which.

  Each encoder computes mels in its model's level convention and checks them against its training
  mels (`strict`: an off-distribution file stops the run instead of a warning).
  """
  encoders = {}
  for export_dir in export_dirs:
    encoder = inference.Encoder(export_dir, strict=strict)
    label = PAPER_NAMES.get(encoder.manifest.get("mode"), os.path.basename(export_dir))
    if label in encoders:
      label = f"{label} ({os.path.basename(os.path.normpath(export_dir))})"
    encoders[label] = encoder
  return encoders


def embed_audio(encoder, paths):
  """{path: (patches, D)} for readable files; unreadable ones raise, naming the file."""
  rows, per_patch, skipped = inference.embed_files(paths, encoder, progress=False)
  if skipped:
    path, reason = skipped[0]
    raise InputError(f"{path}: {reason} ({len(skipped)} unreadable files in all)")
  return {row["path"]: patches for row, patches in zip(rows, per_patch)}


def run_gtzan(encoders, gtzan_dir, repetitions, seed, out_dir):
  from tfcmir.evaluate import gtzan
  split = gtzan.read_gtzan(gtzan_dir)
  rels = sorted({rel for part in split.values() for rel, _ in part})
  results = {}
  for label, encoder in encoders.items():
    by_path = embed_audio(encoder, [os.path.join(gtzan_dir, r) for r in rels])
    patches = {rel: by_path[os.path.join(gtzan_dir, rel)] for rel in rels}
    results[label] = gtzan.evaluate_gtzan(patches, split, repetitions=repetitions, seed=seed)
    slug = _slug(label)
    report.plot_confusion(results[label]["confusion"], results[label]["classes"],
                          os.path.join(out_dir, f"gtzan_confusion_{slug}.png"),
                          f"GTZAN test, {label}")
    test = [(rel, genre) for rel, genre in split["test"]]
    report.plot_embedding_map([patches[rel].mean(0) for rel, _ in test], [g for _, g in test],
                              os.path.join(out_dir, f"gtzan_map_{slug}.png"),
                              f"GTZAN test embeddings, {label}", seed)
  return results


def run_jamendo(encoders, jamendo_dir, split_index, repetitions, seed):
  from tfcmir.evaluate import jamendo
  categories = {c: jamendo.read_jamendo_split(jamendo_dir, c, split_index)
                for c, _ in report.JAMENDO_COLUMNS}
  listed = sorted({path for splits in categories.values() for part in splits.values()
                   for path, _ in part})
  files = {path: jamendo.audio_path(jamendo_dir, path) for path in listed}
  results = {}
  for label, encoder in encoders.items():
    by_file = embed_audio(encoder, sorted(files.values()))
    tracks = {path: by_file[f].mean(0) for path, f in files.items()}  # track = mean over patches
    results[label] = {c: jamendo.evaluate_jamendo(tracks, splits, repetitions=repetitions, seed=seed)
                      for c, splits in categories.items()}
  return results


def melon_track_embeddings(encoder, mel_dir, song_ids, batch_patches=256):
  """{song id: mean patch embedding} from Melon-layout mel files (the Melon set ships mels only)."""
  out, pending, owners = {}, [], []

  def flush():
    if not pending:
      return
    vectors = encoder(np.concatenate(pending))
    start = 0
    for song_id, count in owners:
      out[song_id] = vectors[start:start + count].mean(0)
      start += count
    pending.clear()
    owners.clear()

  for song_id in song_ids:
    path = mel_file(mel_dir, song_id)
    if not os.path.exists(path):
      continue
    patches = audio.split_patches_numpy(load_mel(path))
    pending.append(patches)
    owners.append((song_id, len(patches)))
    if sum(len(p) for p in pending) >= batch_patches:
      flush()
  flush()
  return out


def run_continuation(encoders, melon_dir, mel_dir, split_file, seed, k=100, search=None):
  """Continuation scores of each encoder; `search` holds evaluate_continuation's index options
  (index, search_k, nlist, nprobe)."""
  from tfcmir.evaluate import continuation
  if not os.path.exists(split_file):
    raise InputError(f"{split_file}: no split; continuation needs the test split of tfcmir.prepare "
                     "(--tfrecord_dir)")
  with open(split_file, encoding="utf-8") as f:
    test_ids = set(json.load(f)["test"])
  playlists = continuation.read_melon_playlists(melon_dir)
  needed = sorted({s for p in playlists if test_ids.intersection(p) for s in p})
  results = {}
  for label, encoder in encoders.items():
    vectors = melon_track_embeddings(encoder, mel_dir or melon_dir, needed)
    results[label] = continuation.evaluate_continuation(vectors, playlists, sorted(test_ids), k=k,
                                                        seed=seed, **(search or {}))
  return results


def _slug(label):
  return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def evaluate(tasks, export_dirs, out_dir, gtzan_dir=None, jamendo_dir=None, jamendo_split=0,
             melon_dir=None, mel_dir=None, split_file=None, repetitions=10, seed=0,
             continuation_k=100, search=None, strict=False):
  """Runs the tasks on every export; returns {task: Markdown table} and writes the reports.

  `strict`: an audio file whose mel level is far from the training mels' stops the run (else a
  warning names it; tfcmir/levels.py).
  """
  if not export_dirs:
    raise InputError("--models is required: one or more export folders (exports/NAME)")
  encoders = load_encoders(export_dirs, strict)
  os.makedirs(out_dir, exist_ok=True)
  tables, timings = {}, {}
  for task in tasks:
    started = time.time()
    if task == "gtzan":
      _require(gtzan_dir, "--gtzan_dir")
      results = run_gtzan(encoders, gtzan_dir, repetitions, seed, out_dir)
    elif task == "jamendo":
      _require(jamendo_dir, "--jamendo_dir")
      results = run_jamendo(encoders, jamendo_dir, jamendo_split, repetitions, seed)
    else:
      _require(melon_dir, "--melon_dir")
      results = run_continuation(encoders, melon_dir, mel_dir, split_file, seed, continuation_k,
                                 search)
    tables[task] = report.save_report(out_dir, task, results)
    timings[task] = round(time.time() - started, 1)
  safeio.write_json(os.path.join(out_dir, "timings.json"), timings)
  return tables


def search_flags():
  """The continuation's search options from the --continuation_* flags."""
  return dict(index=FLAGS.continuation_index, search_k=FLAGS.continuation_search_k,
              nlist=FLAGS.continuation_nlist, nprobe=FLAGS.continuation_nprobe)


def _require(value, flag):
  if not value:
    raise InputError(f"{flag} is required for this task")


def main(argv):
  if FLAGS.task == "catalogue":  # any labelled catalogue with a track-grouped split
    from tfcmir.evaluate import catalogue
    for flag in ("catalogue_audio_dir", "catalogue_csv", "catalogue_playlists"):
      _require(getattr(FLAGS, flag), f"--{flag}")
    table = catalogue.evaluate_catalogue(load_encoders(FLAGS.models, FLAGS.strict),
                                         FLAGS.catalogue_audio_dir, FLAGS.catalogue_csv,
                                         FLAGS.catalogue_playlists, FLAGS.out or FLAGS.eval_dir, FLAGS.seed)
    print(f"\ncatalogue\n{table}")
    return
  tasks = ["gtzan", "jamendo", "continuation"] if FLAGS.task == "all" else [FLAGS.task]
  tables = evaluate(tasks, FLAGS.models, FLAGS.out or FLAGS.eval_dir, FLAGS.gtzan_dir,
                    FLAGS.jamendo_dir, FLAGS.jamendo_split, FLAGS.melon_dir, FLAGS.melon_mel_dir,
                    os.path.join(FLAGS.tfrecord_dir, "split.json"), FLAGS.eval_repetitions,
                    FLAGS.seed, FLAGS.continuation_k, search_flags(), FLAGS.strict)
  for task, table in tables.items():
    print(f"\n{task}\n{table}")
