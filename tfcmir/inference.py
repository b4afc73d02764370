"""Inference with an export: audio files -> mel patches -> embeddings, one path for every user.

`embed` (local and Beam), `evaluate` and `search` all embed through here, so each of them gets the
same checks: the export's checksums are verified before anything is loaded, the mel is computed in the
level convention the model was trained on (the export manifest's `frontend`), and each file's mel is
compared with the training mels' level statistics (tfcmir/levels.py).

    encoder = inference.Encoder("exports/demo/contr_cf_g")          # saved_model, tflite, onnx
    rows, per_patch, skipped = inference.embed_files(paths, encoder)  # (patches, D) per readable file

Files are decoded, mixed to mono and resampled to 16 kHz, turned into the Melon mel by the project's
front end, and cut into non-overlapping 256-frame patches (a file shorter than one patch is padded with
silence and flagged); the patches go through the export in batches.
"""

from __future__ import annotations

import os

import numpy as np
from tqdm import tqdm

from tfcmir import audio, export_format, levels, runtime
from tfcmir.errors import InputError

# Patches per encoder call, measured on one Zen 5 core (benchmarks/embed.py): a batch of 64 paper-size
# patches has a 400 MB first activation, so it streams from memory; a few patches stay in cache.
SAVED_MODEL_CHUNK = 16
TFLITE_CHUNK = 4
ONNX_CHUNK = 16  # onnxruntime: 1 to 64 patches a call within 5 % (paper size, one shared core)


def find_audio(paths):
  """Files and folders -> the audio files, folders walked recursively, in sorted order."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      for folder, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files)
                  if f.lower().endswith(audio.AUDIO_EXTENSIONS)]
    else:
      found.append(path)  # a missing or odd file is reported when it is read
  return found


class Encoder:
  """The mel-patch encoder of an export: SavedModel or TFLite, one `__call__` for both.

  Args:
    export_dir: an export folder (tfcmir.export).
    artifact: saved_model, tflite, tflite_quantized or onnx.
    threads: threads of the TFLite interpreter or the onnxruntime session (default: the usable
      cores; LiteRT alone would take one). The SavedModel uses TensorFlow's own thread pools.
    strict: the level guard stops at an off-distribution file instead of warning.
    output: "embedding" (the pre-head vector the downstream tasks use) or "projection" (the contrastive
      space shared with the genre tower: what tfcmir.search indexes). Every artifact has both.

  `frontend` holds the front-end kwargs (tfcmir.audio) the model's mels need; `guard` checks inputs
  against the training mels' level statistics.
  """

  def __init__(self, export_dir, artifact="saved_model", threads=None, strict=False,
               output="embedding"):
    if output not in ("embedding", "projection"):
      raise ValueError(f"output must be embedding or projection, got {output}")
    self.manifest = export_format.read_manifest(export_dir)
    self.artifact = artifact
    export_format.verify(export_dir, self.manifest, artifact)
    # Exports from before the level was recorded were made from the front end's default.
    self.frontend = dict({"level": audio.DEFAULT_LEVEL}, **self.manifest.get("frontend", {}))
    self.guard = levels.Guard(self.manifest.get("level_statistics"), strict)
    if artifact == "saved_model":
      import tensorflow as tf
      path = os.path.join(export_dir, "saved_model", str(self.manifest["version"]))
      self._fn = tf.saved_model.load(path).signatures["serving_default"]
      self._run = lambda x: self._fn(mel=tf.constant(x))[output].numpy()
      self._chunk = SAVED_MODEL_CHUNK
    elif artifact in export_format.TFLITE_FILES:
      path = os.path.join(export_dir, *export_format.TFLITE_FILES[artifact].split("/"))
      if not os.path.exists(path):
        raise InputError(f"{path}: this export has no such TFLite model")
      from ai_edge_litert.interpreter import Interpreter
      self._interpreter = Interpreter(model_path=path, num_threads=threads or _usable_cores())
      with runtime.quiet_native_lines():
        self._interpreter.allocate_tensors()
      # The runner resizes the input itself when a call brings another batch size.
      runner = self._interpreter.get_signature_runner()
      self._run = lambda x: runner(mel=x)[output]
      self._chunk = TFLITE_CHUNK
    elif artifact == "onnx":
      self._run = _onnx_runner(export_dir, threads or _usable_cores(), output)
      self._chunk = ONNX_CHUNK
    else:
      raise InputError(f"--artifact must be saved_model, tflite, tflite_quantized or onnx, got {artifact}")

  def __call__(self, patches):
    """float32 (n, 256, 48) mel patches -> (n, D) embeddings, computed `_chunk` patches at a time."""
    patches = np.ascontiguousarray(patches, np.float32)
    if len(patches) <= self._chunk:
      return np.asarray(self._run(patches))
    return np.concatenate([np.asarray(self._run(patches[i:i + self._chunk]))
                           for i in range(0, len(patches), self._chunk)])


def _onnx_runner(export_dir, threads, output="embedding"):
  """onnx/audio_mel.onnx in an onnxruntime session -> a function of mel patches to embeddings."""
  path = os.path.join(export_dir, *export_format.ONNX_FILE.split("/"))
  if not os.path.exists(path):
    raise InputError(f"{path}: this export has no ONNX model (export_manifest.json's onnx_not_written "
                     "says why)")
  try:
    import onnxruntime as ort
  except ImportError as err:
    raise InputError("--artifact=onnx needs onnxruntime: pip install -e '.[onnx]'") from err
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1  # one chain of ops: a second pool would only compete for the cores
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  return lambda x: session.run([output], {"mel": x})[0]


def _usable_cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


# The mel is computed this many patches at a time (~65 s of audio): memory holds one chunk of audio
# and its frames (the front end's intermediates are ~40 KB a frame), plus the file's patches (~0.7 MB
# a minute), whatever the file's length. benchmarks/long_audio.py measures it.
CHUNK_PATCHES = 16


def file_patches(path, **frontend):
  """One file -> ((patches, 256, 48) mel patches, padded: bool, seconds of audio).

  `frontend`: MelSpectrogram arguments beyond its defaults (an export's `Encoder.frontend`: the level
  convention its training mels had).

  Consecutive 256-frame patches of the whole-file mel, the incomplete tail dropped; a file shorter
  than one patch is padded with silence to one patch (audio.split_patches).
  """
  stats, parts, tail = {}, [], None
  for mel in audio.mel_chunks(path, CHUNK_PATCHES * audio.PATCH_FRAMES, stats=stats, **frontend):
    if tail is not None and len(tail):
      mel = np.concatenate([tail, mel])
    whole = len(mel) // audio.PATCH_FRAMES * audio.PATCH_FRAMES
    if whole:
      parts.append(mel[:whole].reshape(-1, audio.PATCH_FRAMES, mel.shape[1]))
    tail = mel[whole:]
  padded = not parts
  patches = (np.asarray(audio.split_patches(tail[None], audio.PATCH_FRAMES))[0] if padded
             else np.concatenate(parts))
  return patches.astype(np.float32, copy=False), padded, stats["samples"] / stats["sample_rate"]


def embed_files(paths, encoder, batch_patches=64, progress=True):
  """Embeds every readable file; returns (rows, patch embeddings list, skipped [(path, reason)])."""
  rows, per_patch, skipped = [], [], []
  pending, pending_rows = [], []

  def flush():
    if not pending:
      return
    out = encoder(pending[0] if len(pending) == 1 else np.concatenate(pending))  # a long file: no copy
    start = 0
    for row in pending_rows:
      per_patch.append(out[start:start + row["patches"]])
      start += row["patches"]
    pending.clear()
    pending_rows.clear()

  for path in tqdm(paths, desc="embed", unit="file", disable=not progress):
    try:
      patches, padded, seconds = file_patches(path, **encoder.frontend)
    except audio.AudioError as err:
      skipped.append((path, err.problem))
      continue
    encoder.guard.check(path, patches)
    row = {"path": path, "patches": len(patches), "padded": padded, "seconds": seconds}
    rows.append(row)
    pending.append(patches)
    pending_rows.append(row)
    if sum(len(p) for p in pending) >= batch_patches:
      flush()
  flush()
  return rows, per_patch, skipped


def check_some_read(paths, skipped):
  """InputError when not one input could be read: an empty result is no success."""
  if paths and len(skipped) >= len(paths):
    path, reason = skipped[0]
    raise InputError(f"none of the {len(paths)} input files could be read (e.g. {path}: {reason})")
