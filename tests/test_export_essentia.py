"""The Essentia export: a frozen graph Essentia 2.1b6 itself runs, and its JSON model card.

Essentia runs in its own process (tests/tools/essentia_predict.py): its bundled libtensorflow 2.5 aborts
when TensorFlow was imported first.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import HERE, REAL_AUDIO
from tfcmir import audio, export_essentia
from tfcmir.model.encoders import AudioEncoder

# Same graph, same float32 arithmetic, two TensorFlow builds: only kernel rounding differs (~1e-7).
SAME_INPUT_REL_TOL = 1e-4
# Essentia's front end vs tfcmir.audio differ by <= 0.0034 dB (tests/test_audio.py); through the
# encoder that stays well below this.
END_TO_END_REL_TOL = 1e-3
SMALL = dict(channels=(4, 4, 8, 8, 8, 8, 16), hidden_dim=32, embedding_dim=16)
EXCERPT = os.path.join(REAL_AUDIO, "hedgewars_castle_mono16k.wav")


def _rel(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _calibrate_batch_norms(encoder, seed=0):
  """Data-like moving statistics and random affine parameters, so inference-mode BN is exercised.

  Random statistics alone (mean 0, variance 1 per channel) leave a random-weight encoder nearly blind
  to its input (patches 0.01 % apart), and an end-to-end comparison would pass on a constant. So: run
  training-mode passes on mel-like patches (-110 and -80 dB, as music sits) until the moving statistics
  are those of the data (momentum 0.9: 0.9^40 = 1.5 % of the start left), then randomise gamma/beta.
  """
  rng = np.random.default_rng(seed)
  data = np.concatenate([rng.normal(-110, 25, (6, 256, 48)), rng.normal(-80, 15, (6, 256, 48))])
  data = data.astype(np.float32)
  for _ in range(40):
    encoder(data, training=True)
  for norm in [encoder.input_norm, *encoder.conv_norms, encoder.hidden_norm]:
    shape = norm.gamma.shape
    norm.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    norm.beta.assign(rng.normal(0, 0.2, shape).astype(np.float32))


def _small_encoder(seed=0, **kwargs):
  keras.utils.set_random_seed(seed)
  encoder = AudioEncoder(**SMALL, **kwargs)
  encoder(np.zeros((1, 256, 48), np.float32))
  _calibrate_batch_norms(encoder, seed)
  return encoder


def _keras_outputs(encoder, patches):
  pre_head, projection = encoder(patches, training=False, return_pre_head=True)
  return np.asarray(pre_head), np.asarray(projection)


def _essentia(tmp, mode, graph, src, mel_out=None):
  """Runs tests/tools/essentia_predict.py: ((embeddings, projection), stderr)."""
  emb, proj = str(tmp / f"{mode}.emb.npy"), str(tmp / f"{mode}.proj.npy")
  args = [sys.executable, os.path.join(HERE, "tools", "essentia_predict.py"), mode, graph, src, emb, proj]
  result = subprocess.run(args + ([mel_out] if mel_out else []), capture_output=True, text=True,
                          timeout=300)
  if result.returncode:
    raise RuntimeError(f"essentia_predict.py failed:\n{result.stderr[-3000:]}")
  return (np.load(emb), np.load(proj)), result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("essentia_export")
  encoder = _small_encoder()
  metadata = {"version": "2", "dataset": {"metrics": {"GTZAN accuracy": 0.75}}, "author": "tester"}
  pb, card = export_essentia.write_essentia_model(encoder, str(tmp / "model"), "tfcmir-test", metadata)
  return encoder, pb, card, tmp


def _load_frozen(pb):
  """The .pb imported back into TensorFlow 2.21: a function mel -> (embeddings, projection)."""
  graph_def = tf.compat.v1.GraphDef()
  with open(pb, "rb") as f:
    graph_def.ParseFromString(f.read())
  return graph_def, _runner(graph_def)


def _runner(graph_def):
  # import_graph_def fills in default attributes in place: give it a copy.
  fn = tf.compat.v1.wrap_function(
      lambda: tf.compat.v1.import_graph_def(tf.compat.v1.GraphDef.FromString(
          graph_def.SerializeToString()), name=""), [])
  return fn.prune("mel:0", ["embeddings:0", "projection:0"])


def test_graph_has_the_named_nodes_and_only_old_ops(exported):
  encoder, pb, _, _ = exported
  graph_def, run = _load_frozen(pb)
  nodes = {n.name: n for n in graph_def.node}
  assert [n.name for n in graph_def.node if n.op == "Placeholder"] == ["mel"]
  assert [d.size for d in nodes["mel"].attr["shape"].shape.dim] == [-1, 256, 48]
  assert nodes["embeddings"].op == nodes["projection"].op == "Identity"
  # Frozen: no variables, and nothing that libtensorflow 2.5 lacks (TF 2.21 SavedModels need
  # DisableCopyOnRead, VarHandleOp reads, ...); MatMul's newer grad_a/grad_b attributes are stripped.
  ops = {n.op for n in graph_def.node}
  assert not ops & {"VarHandleOp", "ReadVariableOp", "DisableCopyOnRead", "PartitionedCall",
                    "StatefulPartitionedCall", "VariableV2"}
  assert not any("grad_a" in n.attr or "grad_b" in n.attr for n in graph_def.node)
  assert all(n.attr["T"].type != tf.float16.as_datatype_enum for n in graph_def.node if "T" in n.attr)
  # The reloaded graph is the Keras layer in inference mode, bit for bit up to kernel rounding.
  patches = np.random.default_rng(1).normal(-70, 20, (3, 256, 48)).astype(np.float32)
  got = [np.asarray(t) for t in run(tf.constant(patches))]
  for g, want in zip(got, _keras_outputs(encoder, patches)):
    assert _rel(g, want) <= 1e-6


@pytest.mark.parametrize("batch", [1, 5])
def test_essentia_runs_the_graph_like_keras(exported, batch):
  encoder, pb, _, tmp = exported
  patches = np.random.default_rng(batch).normal(-70, 20, (batch, 256, 48)).astype(np.float32)
  np.save(tmp / f"patches{batch}.npy", patches)
  (emb, proj), stderr = _essentia(tmp, "patches", pb, str(tmp / f"patches{batch}.npy"))
  want_emb, want_proj = _keras_outputs(encoder, patches)
  assert abs(float(encoder.input_norm.moving_mean[0])) > 50  # non-trivial statistics (dB scale)
  # Training-mode BN would give other numbers: the comparison means inference mode is what ran.
  # (training=True also moves the BN statistics of the shared encoder: put them back.)
  weights = encoder.get_weights()
  train_emb, _ = encoder(patches, training=True, return_pre_head=True)
  encoder.set_weights(weights)
  assert batch == 1 or _rel(np.asarray(train_emb), want_emb) > 1e-2
  assert emb.shape == want_emb.shape == (batch, encoder.pre_head_dim)
  assert proj.shape == want_proj.shape == (batch, 16)
  assert _rel(emb, want_emb) <= SAME_INPUT_REL_TOL
  assert _rel(proj, want_proj) <= SAME_INPUT_REL_TOL
  assert "not in the op definition" not in stderr  # every attribute known to libtensorflow 2.5
  assert "Op type not registered" not in stderr


def test_essentia_front_end_end_to_end_matches_keras_on_tfcmir_mels(exported):
  """MonoLoader -> Essentia mel chain -> patches -> TensorflowPredict vs file_to_mel -> Keras."""
  encoder, pb, _, tmp = exported
  (emb, proj), _ = _essentia(tmp, "audio", pb, EXCERPT, str(tmp / "essentia_mel.npy"))
  mel = audio.file_to_mel(EXCERPT)
  count = len(mel) // 256
  assert count >= 2 and emb.shape == (count, encoder.pre_head_dim) and proj.shape == (count, 16)
  assert np.max(np.abs(np.load(tmp / "essentia_mel.npy") - mel)) <= 0.01  # the front ends agree
  want_emb, want_proj = _keras_outputs(encoder, mel[:count * 256].reshape(count, 256, 48))
  for i in range(count):
    assert _rel(emb[i], want_emb[i]) <= END_TO_END_REL_TOL, i
    assert _rel(proj[i], want_proj[i]) <= END_TO_END_REL_TOL, i
  # Distinct patches give distinct outputs, far more apart than the tolerance: the check is not passing
  # on an encoder blind to its input.
  assert _rel(want_emb[1], want_emb[0]) > 0.02 and _rel(want_proj[1], want_proj[0]) > 0.05


def test_model_card_describes_the_graph(exported):
  encoder, pb, card_path, _ = exported
  assert os.path.basename(pb) == "tfcmir-test.pb" and os.path.dirname(card_path) == os.path.dirname(pb)
  with open(card_path) as f:
    card = json.load(f)
  for key in export_essentia.REQUIRED_KEYS:
    assert key in card, key
  assert card["name"] == "tfcmir-test" and card["version"] == "2" and card["author"] == "tester"
  assert card["type"] == "audio embedding" and card["classes"] == []
  assert card["framework"] == "tensorflow" and card["framework_version"] == tf.__version__
  assert card["model_types"] == ["frozen_model"]
  # Overriding one dataset field keeps the others.
  assert card["dataset"]["metrics"] == {"GTZAN accuracy": 0.75}
  assert card["dataset"]["name"] == "Melon Playlist Dataset"
  assert set(card["dataset"]) >= {"name", "citation", "size", "metrics"}
  assert card["citation"].startswith("@article{") and "Contrastive" in card["citation"]
  assert card["inference"]["sample_rate"] == 16000
  assert card["inference"]["algorithm"] == "TensorflowPredict"

  inputs, outputs = card["schema"]["inputs"], card["schema"]["outputs"]
  assert inputs == [{"name": "mel", "type": "float", "shape": ["batch", 256, 48]}]
  assert [o["name"] for o in outputs] == ["embeddings", "projection"]
  assert [o["shape"] for o in outputs] == [["batch", encoder.pre_head_dim], ["batch", 16]]
  assert all(o["output_purpose"] == "embeddings" and o["type"] == "float" and o["op"] for o in outputs)
  assert encoder.pre_head_dim == 2 * 1 * 16  # the authors' pools on 256 x 48: 2 x 1 x channels

  front = card["front_end"]
  assert (front["sample_rate"], front["frame_size"], front["hop_size"]) == (16000, 512, 256)
  assert (front["number_bands"], front["warping_formula"], front["normalize"]) == (48, "slaneyMel",
                                                                                    "unit_tri")
  assert (front["window"], front["spectrum_type"], front["scale"], front["lin2db_scale"]) == (
      "hann", "power", "lin2db", 2)
  assert (front["patch_size"], front["patch_hop_size"]) == (256, 256)
  for algorithm in ("MonoLoader", "FrameCutter", "Windowing", "Spectrum", "MelBands", "UnaryOperator",
                    "TensorflowPredict"):
    assert algorithm in front["essentia_chain"]


def test_rewrite_is_atomic_and_leaves_no_temporary_files(exported, tmp_path):
  encoder = exported[0]
  out = tmp_path / "out"
  pb, card = export_essentia.write_essentia_model(encoder, str(out), "m", {"release_date": "2021-04-01"})
  first = open(pb, "rb").read()
  pb2, card2 = export_essentia.write_essentia_model(encoder, str(out), "m", {"release_date": "2021-04-01"})
  assert (pb2, card2) == (pb, card)
  assert open(pb, "rb").read() == first  # deterministic for the same weights
  assert sorted(os.listdir(out)) == ["m.json", "m.pb"]
  assert oct(os.stat(pb).st_mode & 0o777) == oct(0o644)


def test_mixed_precision_encoder_exports_in_float32():
  encoder = _small_encoder(seed=2, dtype="mixed_float16")
  graph_def, dims = export_essentia.freeze_audio_encoder(encoder)
  assert dims == {"embeddings": encoder.pre_head_dim, "projection": 16}
  half = tf.float16.as_datatype_enum
  assert not any(a.type == half for n in graph_def.node for a in n.attr.values())
  patches = np.random.default_rng(3).normal(-70, 20, (2, 256, 48)).astype(np.float32)
  got = _runner(graph_def)(tf.constant(patches))
  for g, want in zip(got, _keras_outputs(encoder, patches)):
    assert _rel(np.asarray(g), want) <= 2e-2  # float16 arithmetic in Keras vs float32 in the graph


@pytest.mark.parametrize("name, metadata, problem", [
    ("a/b", None, "plain file stem"),
    ("", None, "plain file stem"),
    ("m", {"schema": {}}, "cannot override"),
    ("m", {"framework_version": "1.0"}, "cannot override"),
])
def test_bad_arguments_are_refused(exported, tmp_path, name, metadata, problem):
  with pytest.raises(ValueError, match=problem):
    export_essentia.write_essentia_model(exported[0], str(tmp_path), name, metadata)
  assert os.listdir(tmp_path) == []


def test_unbuilt_encoder_is_refused(tmp_path):
  with pytest.raises(ValueError, match="not built"):
    export_essentia.write_essentia_model(AudioEncoder(**SMALL), str(tmp_path), "m")
