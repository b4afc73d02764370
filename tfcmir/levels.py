"""The level convention of a corpus's mels, detected from the data, and a guard against off-level input.

Two conventions produce Melon-style dB mels, and they differ by 40*log10(255.5/2) = 84.25 dB in every
bin (tfcmir/audio.py): Essentia's `Windowing` default, normalized=True ("essentia"), and the authors'
own extraction, normalized=False ("authors"). A model trained on one and fed the other sees inputs its
input BatchNorm never saw, so the convention is measured once (prepare), recorded with the data, the
run and the export, and every audio -> mel path of that model uses it.

How it is detected (`detect`), on a sample of the corpus's mel files:
  * the values must be 20*log10 dB: mostly negative (a linear or log10(1 + C x) scale is not), with a
    music-like spread (p95 - p5 of the bands below 6 kHz: 56-125 dB measured on the real excerpts of
    tests/fixtures; a natural log of the power spreads 8.7x less);
  * the level is the median, over non-silent frames, of each frame's loudest band: -62 to -93 dB
    (median -77) on the same excerpts under the "essentia" convention, so 84.25 dB more under
    "authors". Each convention accepts +-40 dB around its centre; the 4 dB between the two windows and
    everything outside them is refused with the level observed, never guessed.

The guard (`Guard`): the export records the training mels' per-band medians and spreads, and the range
(1st-99th percentile) of the training songs' own shifts from those medians (songs differ in loudness:
quiet classical and loud rock are both training data). embed and evaluate compute each input file's
shift (the median over the bands of its band medians minus the training ones) and warn (or, with
--strict, stop) when it lies more than 20 dB outside the training songs' range.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from tfcmir import audio
from tfcmir.errors import InputError

AUTHORS_OFFSET_DB = 40 * np.log10(255.5 / 2)  # 84.25: the unscaled Hann window sums to 255.5, not 2
# Median over non-silent frames of the loudest band, "essentia" convention, real excerpts (see above).
ESSENTIA_FRAME_LEVEL_DB = -77.0
CENTRES_DB = {"essentia": ESSENTIA_FRAME_LEVEL_DB, "authors": ESSENTIA_FRAME_LEVEL_DB + AUTHORS_OFFSET_DB}
TOLERANCE_DB = 40.0
SPREAD_DB = (25.0, 200.0)  # p95 - p5 of dB mels of music; a natural-log scale gives ~6-15
MIN_NEGATIVE = 0.5         # dB mels of music are mostly below 0 dB under either convention
SPREAD_BANDS = 36          # bands below ~6 kHz: an mp3 low-pass leaves the top ones at the floor
GUARD_SHIFT_DB = 20.0      # a file whose bands sit further than this from the training mels is flagged
SILENT_DB = audio.DB_FLOOR + 1


def measure(mels):
  """(frames, bands) mels -> the statistics `detect` reads, pooled as medians over the files."""
  levels, spreads, negative = [], [], []
  for mel in mels:
    mel = np.asarray(mel, np.float32)
    loud = mel.max(axis=1) > SILENT_DB
    if not loud.any():
      continue
    mel = mel[loud]
    levels.append(float(np.median(mel.max(axis=1))))
    low = mel[:, :SPREAD_BANDS]
    spreads.append(float(np.percentile(low, 95) - np.percentile(low, 5)))
    negative.append(float(np.mean(low < 0)))
  if not levels:
    raise InputError("no mel with a non-silent frame to measure the level convention on")
  return {"frame_level_db": round(float(np.median(levels)), 2),
          "spread_db": round(float(np.median(spreads)), 2),
          "negative_fraction": round(float(np.median(negative)), 3), "files": len(levels)}


def detect(stats, where="the corpus's mels"):
  """Statistics of `measure` -> "essentia" or "authors"; InputError naming the level otherwise."""
  seen = (f"median frame level {stats['frame_level_db']:.1f}, spread {stats['spread_db']:.1f}, "
          f"{100 * stats['negative_fraction']:.0f}% negative values over {stats['files']} files")
  if stats["negative_fraction"] < MIN_NEGATIVE:
    raise InputError(f"{where}: not 20*log10 dB mels ({seen}): a linear or log(1 + x) scale? "
                     "tfcmir expects Essentia-style dB mels")
  if not SPREAD_DB[0] <= stats["spread_db"] <= SPREAD_DB[1]:
    raise InputError(f"{where}: not 20*log10 dB mels ({seen}; dB mels of music spread "
                     f"{SPREAD_DB[0]:.0f}-{SPREAD_DB[1]:.0f}): a natural-log or other scale?")
  for level, centre in CENTRES_DB.items():
    if abs(stats["frame_level_db"] - centre) <= TOLERANCE_DB:
      return level
  raise InputError(f"{where}: level in neither convention ({seen}); expected about "
                   + " or ".join(f"{c:.0f} dB ({k})" for k, c in CENTRES_DB.items())
                   + f" +-{TOLERANCE_DB:.0f}; if you know it, say so with --mel_level")


def resolve(requested, mels, where="the corpus's mels"):
  """--mel_level (auto, essentia, authors) and a sample of mels -> (level, how, statistics or None).

  With no mels to measure (a catalogue of audio files), auto means the front end's default.
  """
  mels = list(mels)
  stats = measure(mels) if mels else None
  if requested != "auto":
    return audio.check_level(requested), "--mel_level", stats
  if stats is None:
    return audio.DEFAULT_LEVEL, "computed from audio by tfcmir's front end", None
  return detect(stats, where), "detected", stats


# --- The guard: per-band statistics of the training mels, and a check of each input. ------------------


def band_statistics(mels):
  """(frames, bands) mels -> per band over non-silent frames, "median" and "spread" (p90 - p10), and
  "song_shift_db": the [1st, 99th] percentiles of the songs' own shifts from those medians."""
  songs = [m[m.max(axis=1) > SILENT_DB] for m in (np.asarray(m, np.float32) for m in mels)]
  songs = [m for m in songs if len(m)]
  if not songs:
    raise InputError("no non-silent mel frame to take level statistics from")
  rows = np.concatenate(songs)
  stats = {"median": np.round(np.median(rows, axis=0), 2).tolist(),
           "spread": np.round(np.percentile(rows, 90, axis=0) - np.percentile(rows, 10, axis=0),
                              2).tolist(),
           "frames": int(len(rows))}
  shifts = [shift_db(stats, m) for m in songs]
  stats["song_shift_db"] = np.round(np.percentile(shifts, [1, 99]), 2).tolist()
  return stats


def shift_db(reference, mel):
  """Median over the bands of (file's band median - training band median), dB; None when silent."""
  mel = np.asarray(mel, np.float32).reshape(-1, len(reference["median"]))
  mel = mel[mel.max(axis=1) > SILENT_DB]
  if not len(mel):
    return None
  return float(np.median(np.median(mel, axis=0) - np.asarray(reference["median"])))


class Guard:
  """Compares inputs with the training mels' statistics; warns, or raises InputError when strict."""

  def __init__(self, reference, strict=False, limit_db=GUARD_SHIFT_DB):
    self.reference = reference
    self.strict = strict
    self.limit_db = limit_db
    self.flagged = []

  def check(self, path, mel):
    """Checks one file's mel (frames, bands), or its patches; returns the shift in dB (or None)."""
    if self.reference is None:
      return None
    shift = shift_db(self.reference, mel)
    low, high = self.reference.get("song_shift_db", (0.0, 0.0))
    if shift is not None and max(low - shift, shift - high) > self.limit_db:
      message = (f"{path}: mel level {shift:+.1f} dB from the training mels (median over bands), "
                 f"more than {self.limit_db:.0f} dB outside the training songs' {low:+.1f} to "
                 f"{high:+.1f}: off-distribution input (another level convention?), embeddings "
                 "unreliable")
      if self.strict:
        raise InputError(message)
      logging.warning("%s", message)
      self.flagged.append((str(path), shift))
    return shift


def shard_band_statistics(tfrecord_dir, manifest, max_songs=200):
  """`band_statistics` of up to `max_songs` training songs, taken evenly from every training shard."""
  import os

  import tensorflow as tf

  from tfcmir import shards

  files = [os.path.join(tfrecord_dir, s["file"]) for s in manifest["shards"]
           if s["split"] == "train" and s["records"]]
  if not files:
    raise InputError(f"{tfrecord_dir}: no training shard to take the mels' level statistics from")
  schema = manifest["schema"]
  per_file = max(1, -(-max_songs // len(files)))
  mels = []
  for path in files:
    for serialized in tf.data.TFRecordDataset(path).take(per_file):
      mels.append(shards.parse_numpy(serialized, schema["max_genres"], schema["cf_dim"],
                                      schema["bands"])["mel"])
  stats = band_statistics(mels)
  stats["songs"] = len(mels)
  return stats
