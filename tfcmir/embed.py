"""`python -m tfcmir.embed --embed_model=exports/NAME --out=DIR AUDIO [AUDIO ...]`: audio -> embeddings.

AUDIO are files or folders (searched recursively for wav, flac, ogg, mp3). Every file goes through the
export as tfcmir/inference.py says (decode, 16 kHz mono, the model's mel, 256-frame patches, the level
guard: a file more than 20 dB off the training mels is named in a warning, an error with --strict).

  --artifact=saved_model        saved_model/<version>/ (serving_default)
  --artifact=tflite             tflite/audio_mel_float32.tflite (LiteRT)
  --artifact=tflite_quantized   tflite/audio_mel_dynamic_range.tflite
  --artifact=onnx               onnx/audio_mel.onnx (onnxruntime, the [onnx] extra)

Writes to DIR (tfcmir/embeddings.py): embeddings.npy (files, D), the mean of each file's patch
embeddings; index.csv (row, path, patches, first_patch, padded); with --per_patch,
patch_embeddings.npy (all patches, D). Or, with --embed_format=npz, the same arrays in one
embeddings.npz. Unreadable files are skipped and listed. With --runner, the same work runs as an
Apache Beam pipeline (tfcmir/beam/embed.py). From Python, the local work is
`tfcmir.embed.embed(export_dir, paths, out)`.
"""

from __future__ import annotations

import time

from absl import flags

from tfcmir import embeddings, inference
from tfcmir import flags as tfcmir_flags
from tfcmir.errors import InputError

FLAGS = flags.FLAGS


def embed(export_dir, paths, out, artifact="saved_model", batch_patches=64, strict=False,
          per_patch=False, fmt="npy", progress=True):
  """Audio files -> an embeddings folder `out` (tfcmir/embeddings.py), on this machine.

  Returns (rows, skipped [(path, reason)], the encoder: its guard lists off-distribution files).
  """
  encoder = inference.Encoder(export_dir, artifact, strict=strict)
  rows, patch_embeddings, skipped = inference.embed_files(paths, encoder, batch_patches, progress)
  inference.check_some_read(paths, skipped)
  embeddings.write_outputs(out, rows, patch_embeddings, per_patch, fmt)
  return rows, skipped, encoder


def main(argv):
  if not FLAGS.embed_model:
    raise InputError("--embed_model is required (an export folder, e.g. exports/contr_cf_g)")
  if not FLAGS.out:
    raise InputError("--out is required (where the embeddings go)")
  # With --runner, the flags left in argv are Beam pipeline options (tfcmir.flags.run_main).
  paths = inference.find_audio([a for a in argv[1:] if not a.startswith("-")])
  if not paths:
    raise InputError("no audio files given (pass files or folders after the flags)")
  if FLAGS.runner:  # the same work as an Apache Beam pipeline: tfcmir/beam/embed.py
    from tfcmir import beam
    if FLAGS["embed_format"].present:
      raise InputError("--embed_format is for the local embed; with --runner use --beam_output")
    print(beam.run_embed(FLAGS.runner, [a for a in argv[1:] if a.startswith("-")], paths,
                         FLAGS.embed_model, FLAGS.out, FLAGS.artifact, FLAGS.embed_batch,
                         FLAGS.per_patch, FLAGS.beam_output, FLAGS.beam_shards,
                         FLAGS.beam_timeout_s))
    return
  started = time.time()
  rows, skipped, encoder = embed(FLAGS.embed_model, paths, FLAGS.out, FLAGS.artifact, FLAGS.embed_batch,
                                 FLAGS.strict, FLAGS.per_patch, FLAGS.embed_format)
  elapsed = time.time() - started
  audio_seconds = sum(r["seconds"] for r in rows)
  print(f"embedded {len(rows)} files ({sum(r['patches'] for r in rows)} patches, "
        f"{audio_seconds:.0f} s of audio) with {FLAGS.artifact} in {elapsed:.1f} s "
        f"({audio_seconds / max(elapsed, 1e-9):.0f}x real time) -> {FLAGS.out}")
  padded = [r["path"] for r in rows if r["padded"]]
  if padded:
    print(f"shorter than one patch, padded with silence: {len(padded)} ({', '.join(padded[:5])})")
  for path, reason in skipped:
    print(f"skipped {path}: {reason}")
  for path, shift in encoder.guard.flagged:
    print(f"off-distribution (mel level {shift:+.1f} dB from the training mels): {path}")


if __name__ == "__main__":
  tfcmir_flags.run_main(main, allow_args=True, pipeline_options=True)
