"""`python -m tfcmir.train` with no flag but its folders, on catalogues of 100, 1,000 and 10,000 songs.

    python benchmarks/catalogue_sizes.py [--sizes=100,1000,10000] [--out=DIR] [--seconds=5]
    python benchmarks/catalogue_sizes.py --quick     # one 50-song catalogue, 1 epoch (CI smoke test)

Each catalogue is a synthetic one from the demo generator (Melon's layout, --seconds of audio a song:
one 256-frame crop and a little more), prepared with `python -m tfcmir.prepare`'s defaults, then
trained with `python -m tfcmir.train --tfrecord_dir=... --model_dir=...` and nothing else, as a user
with their own catalogue would. The table gives what the run chose (tfcmir/train/sizing.py), how it
ended, its time and the held-out genre probe it prints; a run that does not exit 0 is a row that says
`failed`. Commands run as subprocesses, so the figures include start-up.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import common


def _run(args, log):
  start = time.perf_counter()
  with open(log, "w", encoding="utf-8") as f:
    code = subprocess.call([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT)
  return code, time.perf_counter() - start


def _settings(text):
  """{setting: value} from the chosen-settings table train prints."""
  block = text.split("training settings for", 1)[1].splitlines()[2:]
  found = {}
  for line in block:
    parts = line.split()
    if len(parts) < 3 or parts[2] not in ("auto", "flag"):
      break
    found[parts[0]] = parts[1]
  return found


def one_catalogue(n, out, seconds, quick):
  os.makedirs(out, exist_ok=True)
  data, prepared, run = (os.path.join(out, name) for name in ("data", "tfrecords", "run"))
  config = ["--seed=0", f"--demo_songs={n}", f"--demo_playlists={max(10, n * 2 // 5)}",
            f"--demo_seconds={seconds}", "--demo_gtzan_per_genre=4", "--demo_jamendo_tracks=20"]
  log = {step: os.path.join(out, f"{step}.log") for step in ("generate", "prepare", "train")}
  code, gen_s = _run(["tfcmir.data.generator", f"--out={data}", *config], log["generate"])
  if code:
    return [n, f"failed: generate ({log['generate']})", *[""] * 10]
  code, prep_s = _run(["tfcmir.prepare", "--source=melon", f"--melon_dir={data}/melon",
                       f"--tfrecord_dir={prepared}"], log["prepare"])
  if code:
    return [n, f"failed: prepare ({log['prepare']})", *[""] * 10]
  extra = ["--epochs=1"] if quick else []  # the only flag beyond the folders, and only in --quick
  code, train_s = _run(["tfcmir.train", f"--tfrecord_dir={prepared}", f"--model_dir={run}", *extra],
                       log["train"])
  text = open(log["train"], encoding="utf-8", errors="replace").read()
  if code:
    return [n, f"failed: train exit {code} ({log['train']})", *[""] * 10]
  chosen = _settings(text)
  trained = re.search(r"training settings for (\d+) training songs", text)
  ran = re.search(r": (\d+) epochs, ([\d.]+) s, ([\d.]+) songs/s", text)
  best = re.search(r"best validation loss [\d.]+ at epoch (\d+)", text)
  probe = re.search(r"trained ([\d.]+), untrained ([\d.]+), chance ([\d.]+)", text)
  epochs = int(ran.group(1))
  ended = "early stop" if epochs < int(chosen["epochs"]) else "epoch cap"
  return [n, trained.group(1) if trained else "?", chosen["batch_size"], chosen["conv_channels"],
          chosen["learning_rate"], f"{chosen['epochs']} / {chosen['early_stopping']}",
          f"{epochs} ({ended})", best.group(1) if best else "-", f"{gen_s + prep_s:.0f}",
          f"{float(ran.group(2)):.0f}", ran.group(3),
          f"{probe.group(1)} / {probe.group(2)} / {probe.group(3)}" if probe else "-"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="100,1000,10000")
  parser.add_argument("--out", default=None, help="keep the catalogues and runs here (default: a "
                                                  "temporary folder, removed at the end)")
  parser.add_argument("--seconds", type=float, default=5.0)
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  sizes = [50] if args.quick else [int(s) for s in args.sizes.split(",")]
  print(common.machine_line(), flush=True)
  headers = ["songs", "train split", "batch", "conv channels", "lr", "epoch cap / patience",
             "epochs run", "best epoch", "data + prepare s", "train s", "songs/s",
             "held-out probe trained / untrained / chance"]
  rows = []
  with tempfile.TemporaryDirectory(prefix="catalogue-sizes-") as scratch:
    root = args.out or scratch
    for n in sizes:
      out = os.path.join(root, f"catalogue-{n}")
      rows.append(one_catalogue(n, out, args.seconds, args.quick))
      print(f"{n} songs: {rows[-1]}", flush=True)
  print(common.table(headers, rows))
  return 1 if any(str(r[1]).startswith("failed") for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
