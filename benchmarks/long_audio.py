"""Peak memory of embedding one long file, against its length.

    python benchmarks/long_audio.py                 # 1, 5, 20 and 60 minutes (~5 minutes)
    python benchmarks/long_audio.py --quick         # smoke test (CI): 1 minute
    python benchmarks/long_audio.py --write         # also writes benchmarks/results/<date>-long-audio.md

Each length is a synthetic 44.1 kHz stereo FLAC (tones and noise), written block by block. One child
process per file and path embeds it with `inference.embed_files` and an untrained demo-size export (memory
does not depend on the weights) and reports its peak resident memory, VmHWM from /proc/self/status
(ru_maxrss of a child would include what the fork inherited), and its resident memory before the file,
with TensorFlow and the model loaded:

  chunked   the command's path: audio.mel_chunks (decode, resample and mel ~4 minutes at a time)
  whole     the former path, for comparison: load_audio on the whole file, one mel, then patches
            (up to --whole_max_minutes; it grows by ~40 MB a minute)

Target (issue 15): a one-hour file embeds under 1 GB peak.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import common

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RATE = 44100


def status_kb(field):
  with open("/proc/self/status", encoding="utf-8") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return 0


def write_synthetic(path, minutes, seed=0):
  """minutes of 44.1 kHz stereo 16-bit FLAC, written a minute at a time (bounded memory here too)."""
  import soundfile as sf
  rng = np.random.default_rng(seed)
  with sf.SoundFile(path, "w", RATE, 2, subtype="PCM_16", format="FLAC") as f:
    for minute in range(int(np.ceil(minutes))):
      n = int(RATE * 60 * min(1.0, minutes - minute))
      t = (np.arange(n) + minute * 60 * RATE) / RATE
      tones = sum(np.sin(2 * np.pi * hz * t * (1 + 0.01 * np.sin(t / 7))) for hz in (110, 330, 880))
      f.write((0.2 * tones[:, None] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32))


def make_export(folder):
  """An untrained demo-size audio tower saved as an export inference.Encoder loads."""
  import keras
  import tensorflow as tf

  from tfcmir import export, safeio
  from tfcmir.model import checkpoint as checkpoint_lib
  from tfcmir.model import contrastive
  keras.utils.set_random_seed(0)
  config = contrastive.model_config("bline_cf", (41, 16), 32, channels=[16, 16, 32, 32, 32, 32, 64],
                                    hidden_dim=256, embedding_dim=256)
  model = contrastive.build_model(config)
  model.build_from_batch(checkpoint_lib.dummy_batch(config))
  tower = export.AudioTower(model)
  tf.saved_model.save(tower, os.path.join(folder, "saved_model", "1"),
                      signatures={"serving_default": tower.serve_mel})
  safeio.write_json(os.path.join(folder, "export_manifest.json"), {"version": 1, "embedding_dim": 256})


def child(path, export_dir, mode):
  """Embeds `path` once; prints JSON: peak and starting resident memory (MB), seconds, patches."""
  from tfcmir import audio, inference
  encoder = inference.Encoder(export_dir)
  encoder(np.zeros((1, 256, 48), np.float32))  # the first call's allocations belong to the baseline
  if mode == "whole":
    def whole_patches(p, **frontend):
      waveform = audio.load_audio(p)
      mel = audio.mel_spectrogram(waveform, **frontend)
      patches = np.asarray(audio.split_patches(mel[None], 256))[0]
      return patches, len(mel) < 256, len(waveform) / audio.SAMPLE_RATE
    inference.file_patches = whole_patches
  before = status_kb("VmRSS")
  started = time.time()
  rows, _, skipped = inference.embed_files([path], encoder, progress=False)
  assert not skipped, skipped
  print(json.dumps({"peak_mb": status_kb("VmHWM") / 1024, "before_mb": before / 1024,
                    "seconds": time.time() - started, "patches": rows[0]["patches"]}))


def measure(path, export_dir, mode):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, __file__, "--child", path, "--export", export_dir,
                           "--mode", mode], capture_output=True, text=True, env=env, timeout=3600)
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_class():
  return "AVX-512 class" if "avx512f" in common.cpu_flags() else "no AVX-512"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20, 60])
  parser.add_argument("--whole_max_minutes", type=float, default=20)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--write", action="store_true", help="write benchmarks/results/<date>-long-audio.md")
  parser.add_argument("--child")
  parser.add_argument("--export")
  parser.add_argument("--mode", default="chunked", choices=["chunked", "whole"])
  args = parser.parse_args()
  if args.child:
    return child(args.child, args.export, args.mode)
  minutes = [1] if args.quick else args.minutes
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    make_export(os.path.join(folder, "export"))
    for length in minutes:
      path = os.path.join(folder, f"{length:g}min.flac")
      write_synthetic(path, length)
      cells = [f"{length:g}", f"{os.path.getsize(path) / 2**20:.0f}"]
      for mode in ("chunked", "whole"):
        if mode == "whole" and length > args.whole_max_minutes:
          cells += ["-", "-"]
          continue
        got = measure(path, os.path.join(folder, "export"), mode)
        cells += [f"{got['peak_mb']:.0f} (+{got['peak_mb'] - got['before_mb']:.0f})",
                  f"{got['seconds']:.1f}"]
      rows.append(cells)
      os.remove(path)
      print(" | ".join(cells), flush=True)
  headers = ["minutes", "FLAC MB", "chunked peak RSS MB (+ over baseline)", "chunked s",
             "whole-file peak RSS MB (+)", "whole-file s"]
  text = "\n".join([
      f"# Long audio: peak memory against file length, {datetime.date.today()} ({cpu_class()})", "",
      "```", "python benchmarks/long_audio.py" + (" --quick" if args.quick else ""), "```", "",
      common.machine_line(), "",
      "44.1 kHz stereo FLAC, embedded by `inference.embed_files` (untrained demo-size export) in a child "
      "process per row; peak = VmHWM, baseline = resident memory with TensorFlow and the model "
      "loaded, before the file. Target: a one-hour file under 1 GB peak.", "",
      common.table(headers, rows)])
  print(text)
  if args.write:
    path = os.path.join(HERE, "results", f"{datetime.date.today()}-long-audio.md")
    with open(path, "w", encoding="utf-8") as f:
      f.write(text + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
