"""Exports the audio encoder as an Essentia model: a frozen TensorFlow graph (.pb) and its JSON card.

Essentia runs TensorFlow models with `TensorflowPredict`. Its pip build (`essentia-tensorflow`) bundles
libtensorflow 2.5, which cannot load a SavedModel written by TensorFlow 2.21 (newer ops such as
`DisableCopyOnRead`), but does load a TF1-style frozen GraphDef: variables folded into constants, one
`Placeholder` in and named nodes out. `write_essentia_model` writes that graph beside the JSON metadata
file every Essentia model ships (https://essentia.upf.edu/models.html layout).

The graph, as Essentia sees it (checked against Essentia 2.1b6 in tests/test_export_essentia.py):
  * input node `mel`: float32 (batch, 256, 48), time-major mel patches in dB from the Melon front end
    (`tfcmir.audio.MelSpectrogram`, or the Essentia chain in `FRONT_END["essentia_chain"]`).
    Essentia's Pool only holds 4-D tensors, so the pool tensor is (batch, 1, 256, 48) and
    `TensorflowPredict`'s default `squeeze=True` drops the singleton axis, exactly as its own MusiCNN
    models take `model/Placeholder` (batch, 187, 96) from a (batch, 1, 187, 96) pool tensor.
    `squeeze=False` feeds the 4-D tensor as is and fails.
  * output node `embeddings`: float32 (batch, pre_head_dim), the flattened conv features (1024-d for
    the paper's encoder): what downstream tasks use, as the authors' `encode.py` saves.
  * output node `projection`: float32 (batch, embedding_dim), phi_a, the contrastive-space vector.
  Essentia returns both as 4-D (batch, 1, 1, D) pool tensors: squeeze them.

Example:
  pool = essentia.Pool()
  pool.set("mel", patches[:, None])  # (batch, 1, 256, 48) float32
  out = es.TensorflowPredict(graphFilename="tfcmir-audio.pb", inputs=["mel"],
                             outputs=["embeddings", "projection"])(pool)
  embeddings = out["embeddings"][:, 0, 0]  # (batch, pre_head_dim)
"""

from __future__ import annotations

import copy
import datetime
import json
import os

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfcmir import audio, safeio

INPUT_NODE = "mel"
EMBEDDINGS_NODE = "embeddings"
PROJECTION_NODE = "projection"

# The encoder's patch: 256 frames (~4.1 s at 16 kHz, hop 256) of 48 bands. Patches do not overlap, as
# the paper averages the embeddings "computed on non-overlapping frames" for a track.
PATCH_HOP = audio.PATCH_FRAMES  # non-overlapping

# The Melon front end (tfcmir/audio.py reproduces it to 0.01 dB), in the words Essentia's algorithms use.
ESSENTIA_CHAIN = (
    f"MonoLoader(sampleRate={audio.SAMPLE_RATE}) -> "
    f"FrameCutter(frameSize={audio.FRAME_SIZE}, hopSize={audio.HOP_SIZE}, startFromZero=False) -> "
    "Windowing(type='hann') -> "
    f"Spectrum(size={audio.FRAME_SIZE}) -> "
    f"MelBands(numberBands={audio.NUM_BANDS}, sampleRate={audio.SAMPLE_RATE}, "
    f"inputSize={audio.FRAME_SIZE // 2 + 1}, type='power', normalize='unit_tri', "
    f"warpingFormula='slaneyMel', weighting='linear', lowFrequencyBound=0, "
    f"highFrequencyBound={audio.SAMPLE_RATE // 2}) -> "
    "UnaryOperator(type='lin2db', scale=2) -> "
    f"stack frames to (frames, {audio.NUM_BANDS}) -> "
    f"non-overlapping patches of {audio.PATCH_FRAMES} frames (hop {PATCH_HOP}, the last partial patch dropped) "
    f"-> Pool tensor (batch, 1, {audio.PATCH_FRAMES}, {audio.NUM_BANDS}) -> "
    f"TensorflowPredict(inputs=['{INPUT_NODE}'], outputs=['{EMBEDDINGS_NODE}', '{PROJECTION_NODE}'])")

FRONT_END = {
    "sample_rate": audio.SAMPLE_RATE,
    "frame_size": audio.FRAME_SIZE,
    "hop_size": audio.HOP_SIZE,
    "frame_cutter_start_from_zero": False,
    "window": "hann",
    "window_normalized": True,
    "number_bands": audio.NUM_BANDS,
    "low_frequency_bound": 0,
    "high_frequency_bound": audio.SAMPLE_RATE // 2,
    "warping_formula": "slaneyMel",
    "normalize": "unit_tri",
    "spectrum_type": "power",
    "weighting": "linear",
    "scale": "lin2db",
    "lin2db_scale": 2,
    "db_floor": audio.DB_FLOOR,
    "layout": "time-major (frames, bands)",
    "patch_size": audio.PATCH_FRAMES,
    "patch_hop_size": PATCH_HOP,
    "essentia_chain": ESSENTIA_CHAIN,
    "level": audio.DEFAULT_LEVEL,
}


def front_end(level=audio.DEFAULT_LEVEL):
  """FRONT_END for a level convention (tfcmir/levels.py): the window normalisation the mels used."""
  normalized = audio.LEVELS[audio.check_level(level)]
  chain = ESSENTIA_CHAIN.replace("Windowing(type='hann')",
                                 f"Windowing(type='hann', normalized={normalized})")
  return dict(FRONT_END, window_normalized=normalized, level=level, essentia_chain=chain)

# The venue (IEEE SPL 28, arXiv 2104.00437) is not in paper.txt: check it before a public release.
CITATION = """@article{ferraro2021enriched,
  title={Enriched Music Representations with Multiple Cross-modal Contrastive Learning},
  author={Ferraro, Andres and Favory, Xavier and Drossos, Konstantinos and Kim, Yuntae and Bogdanov, Dmitry},
  journal={IEEE Signal Processing Letters},
  volume={28},
  year={2021},
  eprint={2104.00437},
  archivePrefix={arXiv}
}"""

# As reference [23] of the paper gives it.
MELON_CITATION = """@inproceedings{ferraro2021melon,
  title={Melon Playlist Dataset: a public dataset for audio-based playlist generation and music tagging},
  author={Ferraro, A. and Kim, Y. and Lee, S. and Kim, B. and Jo, N. and Lim, S. and Lim, S. and
          Jang, J. and Kim, S. and Serra, X. and Bogdanov, D.},
  booktitle={International Conference on Acoustics, Speech and Signal Processing (ICASSP 2021)},
  year={2021}
}"""

DEFAULT_DATASET = {
    "name": "Melon Playlist Dataset",
    "citation": MELON_CITATION,
    "size": "649,091 tracks (mel-spectrograms), 148,826 playlists, 219 genres",
    "metrics": {},
}

REQUIRED_KEYS = ("name", "type", "link", "version", "description", "author", "email", "release_date",
                 "framework", "framework_version", "classes", "model_types", "dataset", "schema",
                 "citation", "inference")


def freeze_audio_encoder(audio_encoder):
  """Freezes `audio_encoder` in inference mode into a GraphDef Essentia's libtensorflow 2.5 loads.

  Args:
    audio_encoder: a built `tfcmir.model.encoders.AudioEncoder` taking (batch, 256, 48) mels. Any dtype
      policy: a mixed-precision encoder is exported through a float32 copy (Essentia runs on CPU, where
      float16 convolutions are slow or missing).

  Returns:
    (graph_def, dims): the pruned frozen `tf.compat.v1.GraphDef` with input `mel` (batch, 256, 48) and
    outputs `embeddings` (batch, dims["embeddings"]) and `projection` (batch, dims["projection"]).

  Raises:
    ValueError: the encoder is not built (it has no weights yet).
  """
  if not audio_encoder.built:
    raise ValueError("the AudioEncoder is not built: load or train its weights before exporting")
  encoder = _float32_encoder(audio_encoder)

  @tf.function(input_signature=[tf.TensorSpec([None, audio.PATCH_FRAMES, audio.NUM_BANDS], tf.float32,
                                              name=INPUT_NODE)])
  def serve(mel):
    pre_head, projection = encoder(mel, training=False, return_pre_head=True)
    # Named identities: Essentia addresses outputs by node name, and the function's own return nodes
    # would be called Identity / Identity_1.
    return (tf.identity(tf.cast(pre_head, tf.float32), name=EMBEDDINGS_NODE),
            tf.identity(tf.cast(projection, tf.float32), name=PROJECTION_NODE))

  concrete = serve.get_concrete_function()
  frozen = convert_variables_to_constants_v2(concrete)
  graph_def = frozen.graph.as_graph_def()
  graph_def = _prune(graph_def, [EMBEDDINGS_NODE, PROJECTION_NODE])
  _strip_default_attrs(graph_def)

  placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
  if placeholders != [INPUT_NODE]:
    raise RuntimeError(f"frozen graph must have exactly one input {INPUT_NODE!r}; has {placeholders}")
  # Static output widths, read from the traced graph rather than the encoder's attributes.
  dims = {EMBEDDINGS_NODE: int(frozen.outputs[0].shape[-1]),
          PROJECTION_NODE: int(frozen.outputs[1].shape[-1])}
  return graph_def, dims


def write_essentia_model(audio_encoder, out_dir, name, metadata=None, level=audio.DEFAULT_LEVEL):
  """Writes `<out_dir>/<name>.pb` (frozen graph) and `<out_dir>/<name>.json` (Essentia model card).

  Args:
    audio_encoder: a built `AudioEncoder` on (batch, 256, 48) mels.
    out_dir: directory, created if missing.
    name: file stem (no path separators), also the card's default `name`.
    metadata: optional dict of overrides for the card's top-level keys (e.g. `name`, `version`,
      `description`, `link`, `author`, `email`, `release_date`); `dataset` is merged key by key
      (`name`, `citation`, `size`, `metrics`), so `{"dataset": {"metrics": {...}}}` keeps the rest.
      `schema`, `framework`, `framework_version`, `model_types` and `front_end` describe the written
      graph and cannot be overridden.
    level: the mel level convention the encoder was trained on ("essentia" or "authors"); the card's
      `front_end` says which window normalisation to compute its input with.

  Returns:
    (pb_path, json_path). Both files are replaced atomically: a reader never sees a partial file.
  """
  if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
    raise ValueError(f"name must be a plain file stem, got {name!r}")
  metadata = dict(metadata or {})
  protected = {"schema", "framework", "framework_version", "model_types", "front_end"} & set(metadata)
  if protected:
    raise ValueError(f"metadata cannot override {sorted(protected)}: they describe the written graph")

  graph_def, dims = freeze_audio_encoder(audio_encoder)
  card = model_card(name, dims, metadata, level)

  os.makedirs(out_dir, exist_ok=True)
  pb_path = os.path.join(out_dir, f"{name}.pb")
  json_path = os.path.join(out_dir, f"{name}.json")
  # deterministic: protobuf map fields (node attributes) otherwise serialise in a varying order.
  _atomic_write(pb_path, graph_def.SerializeToString(deterministic=True))
  _atomic_write(json_path, (json.dumps(card, indent=4, ensure_ascii=False) + "\n").encode("utf-8"))
  return pb_path, json_path


def model_card(name, dims, metadata=None, level=audio.DEFAULT_LEVEL):
  """The Essentia JSON model card for an exported encoder.

  Args:
    name: default model name.
    dims: {"embeddings": pre_head_dim, "projection": embedding_dim}.
    metadata: overrides, see `write_essentia_model`.

  Returns:
    dict, JSON-serialisable.
  """
  metadata = copy.deepcopy(dict(metadata or {}))
  dataset = dict(DEFAULT_DATASET, **metadata.pop("dataset", {}))
  batch = "batch"  # The graph takes any batch size; Essentia cards give the batch axis first.
  card = {
      "name": name,
      "type": "audio embedding",
      "link": "",
      "version": "1",
      "description": ("Audio embeddings from the audio encoder of 'Enriched Music Representations with "
                      "Multiple Cross-modal Contrastive Learning' (Ferraro et al. 2021), trained to align "
                      "audio with genre and playlist (collaborative filtering) representations. Use the "
                      "'embeddings' output (pre-head conv features) for downstream tasks; 'projection' "
                      "is the contrastive-space vector. Average the per-patch outputs for a track."),
      "author": "",
      "email": "",
      "release_date": datetime.date.today().isoformat(),
      "framework": "tensorflow",
      "framework_version": tf.__version__,
      "classes": [],
      "model_types": ["frozen_model"],
      "dataset": dataset,
      "schema": {
          "inputs": [{"name": INPUT_NODE, "type": "float",
                      "shape": [batch, audio.PATCH_FRAMES, audio.NUM_BANDS]}],
          "outputs": [
              {"name": EMBEDDINGS_NODE, "type": "float", "shape": [batch, dims[EMBEDDINGS_NODE]],
               "op": "Flatten", "output_purpose": "embeddings"},
              {"name": PROJECTION_NODE, "type": "float", "shape": [batch, dims[PROJECTION_NODE]],
               "op": "LayerNormalization", "output_purpose": "embeddings"},
          ],
      },
      "citation": CITATION,
      "inference": {
          "sample_rate": audio.SAMPLE_RATE,
          "algorithm": "TensorflowPredict",
          # Essentia's Pool holds 4-D tensors; TensorflowPredict(squeeze=True) drops the singleton axis.
          "input_pool_shape": [batch, 1, audio.PATCH_FRAMES, audio.NUM_BANDS],
          "squeeze": True,
      },
      "front_end": front_end(level),
  }
  card.update(metadata)
  missing = [k for k in REQUIRED_KEYS if k not in card]
  if missing:
    raise ValueError(f"model card lacks {missing}")
  return card


def _float32_encoder(audio_encoder):
  """The encoder itself when it computes in float32, else a float32 copy with the same weights."""
  if audio_encoder.compute_dtype == "float32":
    return audio_encoder
  config = audio_encoder.get_config()
  config["dtype"] = "float32"
  clone = type(audio_encoder).from_config(config)
  clone(np.zeros((1, audio.PATCH_FRAMES, audio.NUM_BANDS), np.float32))
  clone.set_weights([np.asarray(w, np.float32) for w in audio_encoder.get_weights()])
  return clone


def _prune(graph_def, outputs):
  """Keeps only the nodes `outputs` depend on (drops the function's own Identity/NoOp return nodes)."""
  nodes = {node.name: node for node in graph_def.node}
  keep, stack = set(), list(outputs)
  while stack:
    name = stack.pop()
    if name in keep:
      continue
    keep.add(name)
    for inp in nodes[name].input:
      stack.append(inp.lstrip("^").split(":")[0])
  pruned = tf.compat.v1.GraphDef()
  pruned.versions.CopyFrom(graph_def.versions)
  pruned.library.CopyFrom(graph_def.library)
  # Sorted by name: tracing emits the weight constants in a varying order, and a sorted graph makes the
  # .pb byte-identical for the same weights (TensorFlow accepts nodes in any order).
  pruned.node.extend(sorted((node for node in graph_def.node if node.name in keep), key=lambda n: n.name))
  return pruned


def _strip_default_attrs(graph_def):
  """Drops attributes equal to their op's default, in place.

  Attributes added after TF 2.5 (e.g. MatMul's `grad_a` / `grad_b`) come with defaults; removing those
  left at their defaults gives a graph an older runtime reads without "NodeDef mentions attribute"
  errors. Same mechanism as SavedModel's `strip_default_attrs`.
  """
  for node in graph_def.node:
    op_def = op_def_registry.get(node.op)
    if op_def is None:
      continue
    for attr_def in op_def.attr:
      if (attr_def.HasField("default_value") and attr_def.name in node.attr
          and node.attr[attr_def.name] == attr_def.default_value):
        del node.attr[attr_def.name]


def _atomic_write(path, data):
  """Writes bytes to `path` atomically, readable by all: a model file is meant to be shared."""
  safeio.write_bytes(path, data)
