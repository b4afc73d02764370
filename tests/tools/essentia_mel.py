"""The Melon mel chain computed by Essentia's own algorithms; run in its own process.

Essentia's pip build bundles libtensorflow 2.5 and aborts when TensorFlow was imported first, so the
tests call this script with subprocess rather than importing Essentia.

Usage: python essentia_mel.py [--level=essentia|authors] IN OUT.npy [IN OUT.npy ...]
  --level: Windowing(normalized=True), Essentia's default (essentia), or normalized=False, the authors'
      utils.melspectrogram (authors).
  IN: a .npy float32 16 kHz mono waveform, or an audio file read by Essentia's MonoLoader at 16 kHz
      (its own decoder, mixdown and resampler).
  OUT.npy: float32 (frames, 48) dB mel-spectrogram.
"""
import sys

import essentia.standard as es
import numpy as np


def melon_mel(waveform, normalized=True):
  cutter = es.FrameCutter(frameSize=512, hopSize=256, startFromZero=False)
  window = es.Windowing(type="hann", normalized=normalized)
  spectrum = es.Spectrum(size=512)
  melbands = es.MelBands(numberBands=48, sampleRate=16000, inputSize=257, type="power",
                         normalize="unit_tri", warpingFormula="slaneyMel", weighting="linear",
                         lowFrequencyBound=0, highFrequencyBound=8000)
  to_db = es.UnaryOperator(type="lin2db", scale=2)
  rows = []
  while True:
    frame = cutter(waveform)
    if len(frame) == 0:
      break
    rows.append(to_db(melbands(spectrum(window(frame)))))
  return np.array(rows, dtype=np.float32)


def main(args):
  normalized = True
  if args and args[0].startswith("--level="):
    normalized = {"essentia": True, "authors": False}[args.pop(0).split("=", 1)[1]]
  for src, dst in zip(args[0::2], args[1::2]):
    if src.endswith(".npy"):
      waveform = np.load(src).astype(np.float32)
    else:
      waveform = es.MonoLoader(filename=src, sampleRate=16000)()
    np.save(dst, melon_mel(waveform, normalized))


if __name__ == "__main__":
  main(sys.argv[1:])
