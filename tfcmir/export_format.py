"""The format of an export folder: its file names, its manifest, and the checks made before loading.

tfcmir/export.py writes it; tfcmir/inference.py (and through it embed, Beam's embed, evaluate and
search) reads it. Like tfcmir/shards.py for a prepared folder and tfcmir/embeddings.py for an
embeddings folder, the names live here once, so writer and readers cannot drift apart.
"""

from __future__ import annotations

import os

from tfcmir import safeio
from tfcmir.errors import InputError

MANIFEST = "export_manifest.json"


def tflite_file(kind, suffix):
  """tflite/audio_{mel,waveform}_{float32,dynamic_range}.tflite, relative to the export."""
  return f"tflite/audio_{kind}_{suffix}.tflite"


def onnx_file(kind):
  """onnx/audio_{mel,waveform}.onnx, relative to the export."""
  return f"onnx/audio_{kind}.onnx"


# The mel-patch models a reader loads, by the name `--artifact` takes.
TFLITE_FILES = {"tflite": tflite_file("mel", "float32"),
                "tflite_quantized": tflite_file("mel", "dynamic_range")}
ONNX_FILE = onnx_file("mel")
ARTIFACTS = ("saved_model", *TFLITE_FILES, "onnx")


def read_manifest(export_dir):
  """An export's export_manifest.json (a dict); InputError if it is missing or damaged."""
  path = os.path.join(export_dir, MANIFEST)
  if not os.path.exists(path):
    raise InputError(f"{export_dir}: not an export (no {MANIFEST}); run tfcmir.export")
  try:
    manifest = safeio.read_json(path)
  except (OSError, UnicodeDecodeError, ValueError) as err:
    raise InputError(f"{path}: damaged, not the JSON tfcmir.export writes ({err}); export again") from err
  if not isinstance(manifest, dict) or "version" not in manifest:
    raise InputError(f"{path}: damaged, no export version in it; export again")
  return manifest


def artifact_files(manifest, artifact):
  """The manifest's paths (relative to the export) of the files `artifact` loads."""
  if artifact in TFLITE_FILES:
    return [TFLITE_FILES[artifact]]
  if artifact == "onnx":
    return [ONNX_FILE]
  prefix = f"saved_model/{manifest['version']}/"
  return [p for p in manifest.get("files", {}) if p.startswith(prefix)]


def verify(export_dir, manifest, artifact):
  """Checks the sha256 the manifest records for every file `artifact` loads (a few MB: ~10 ms).

  A changed byte in a model file gives wrong embeddings, not an error (a 4-byte change in the mel
  TFLite gives all -inf), so nothing is loaded unchecked. Exports without checksums (hand-made
  ones) are loaded as they are.
  """
  checksums = manifest.get("files")
  if not checksums:
    return
  for relative in artifact_files(manifest, artifact):
    path = os.path.join(export_dir, *relative.split("/"))
    if relative not in checksums:
      continue  # a TFLite or ONNX model this export did not ship: reported by the loader
    if not os.path.exists(path):
      raise InputError(f"{path}: missing from the export; export again")
    if safeio.sha256_file(path) != checksums[relative]:
      raise InputError(f"{path}: damaged (its sha256 differs from {MANIFEST}'s); export again")
