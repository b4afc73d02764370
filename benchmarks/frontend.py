"""Audio front-end throughput: decode + resample per format, and the mel layer, in x real time.

    python benchmarks/frontend.py [--seconds 60] [--batch 16]
    python benchmarks/frontend.py --quick     # smoke test (CI)

Prints a table; figures are seconds of audio processed per wall-clock second on this machine.
"""

import argparse
import os

import numpy as np

import common
from tfcmir import audio

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "real-audio")


def best_of(fn, repeats=5):
  return common.best_of(fn, repeats, warmup=0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=60.0, help="audio per mel batch item")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--quick", action="store_true", help="smoke test: 5 s x 2")
  args = parser.parse_args()
  if args.quick:
    args.seconds, args.batch = 5.0, 2
  import tensorflow as tf

  rows = []
  for name in sorted(os.listdir(FIXTURES)):
    if name.rsplit(".", 1)[-1] not in ("wav", "flac", "ogg", "mp3"):
      continue
    path = os.path.join(FIXTURES, name)
    duration = len(audio.load_audio(path)) / audio.SAMPLE_RATE
    rows.append((f"decode+resample {name}", duration / best_of(lambda: audio.load_audio(path))))
  rng = np.random.default_rng(0)
  waves = (0.1 * rng.standard_normal((args.batch, int(args.seconds * 16000)))).astype(np.float32)
  layer = audio.MelSpectrogram()
  total = args.batch * args.seconds
  rows.append((f"mel layer, eager, batch {args.batch} x {args.seconds:.0f} s",
               total / best_of(lambda: layer(waves))))
  graph = tf.function(layer, input_signature=[tf.TensorSpec([None, None], tf.float32)])
  graph(waves)
  rows.append((f"mel layer, tf.function, batch {args.batch} x {args.seconds:.0f} s",
               total / best_of(lambda: graph(waves))))
  print(common.machine_line())
  print(common.table(["step", "x real time"], [(name, f"{speed:,.0f}") for name, speed in rows]))


if __name__ == "__main__":
  main()
