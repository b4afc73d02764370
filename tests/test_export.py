"""Export: SavedModel (TF Serving contract), TFLite and ONNX without TensorFlow, atomic exports, embed."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from helpers import HERE, REAL_AUDIO, REAL_FILES, run_module
from tfcmir.model import checkpoint as checkpoint_lib
from tfcmir import audio, export, inference, safeio
from tfcmir.train import loop
from tfcmir.errors import InputError
from tfcmir.model import contrastive
from tfcmir.prepare import genres


@pytest.fixture(scope="module")
def exported(small_prepared, tmp_path_factory):
  """A small contr_cf_g model trained briefly on the small demo, then exported."""
  _, tfrecord_dir, manifest = small_prepared
  root = tmp_path_factory.mktemp("export")
  table = genres.GenreVectors.load(tfrecord_dir).table
  config = contrastive.model_config("contr_cf_g", table.shape, manifest["schema"]["cf_dim"],
                                    channels=[8, 8, 16, 16, 16, 16, 32], hidden_dim=64,
                                    embedding_dim=32)
  run_dir = str(root / "run")
  loop.train(tfrecord_dir, run_dir, config, epochs=3, batch_size=32, learning_rate=1e-3,
              weight_decay=1e-4, steps_per_epoch=8, verbose=0)
  out = str(root / "demo_model")
  manifest = export.export(run_dir, out, tfrecord_dir=tfrecord_dir)
  return run_dir, out, manifest


def _rest(instances):
  """What TF Serving does with a REST body {"instances": [...]}: JSON -> batched tensors."""
  body = json.loads(json.dumps({"instances": instances}))
  keys = body["instances"][0].keys()
  return {k: np.array([row[k] for row in body["instances"]]) for k in keys}


def test_saved_model_serves_the_rest_contract(exported):
  run_dir, out, manifest = exported
  model, _, _ = checkpoint_lib.load_trained(run_dir)
  loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
  assert set(loaded.signatures) == {"serving_default", "from_waveform", "genres"}
  rng = np.random.default_rng(0)
  mel = rng.normal(-80, 15, (3, 256, 48)).astype(np.float32)
  request = _rest([{"mel": m.tolist()} for m in mel])
  outputs = loaded.signatures["serving_default"](mel=tf.constant(request["mel"], tf.float32))
  assert set(outputs) == {"embedding", "projection"}
  pre, proj = model.audio_encoder(mel, training=False, return_pre_head=True)
  assert outputs["embedding"].shape == (3, manifest["embedding_dim"]) == pre.shape
  assert export.relative_error(outputs["embedding"], pre) < 1e-5
  assert export.relative_error(outputs["projection"], proj) < 1e-5
  # from_waveform: the front end in the graph, non-overlapping 256-frame patches and their mean.
  wave = audio.load_audio(os.path.join(REAL_AUDIO, "hedgewars_castle_mono16k.wav"))
  request = _rest([{"waveform": wave.tolist()}])
  got = loaded.signatures["from_waveform"](waveform=tf.constant(request["waveform"], tf.float32))
  patches = np.asarray(audio.split_patches(audio.mel_spectrogram(wave)[None]))[0]
  assert got["patch_embeddings"].shape == (1, len(patches), manifest["embedding_dim"])
  expected = np.asarray(model.audio_encoder(patches, training=False, return_pre_head=True)[0])
  assert export.relative_error(got["patch_embeddings"][0], expected) < 1e-4
  np.testing.assert_allclose(got["embedding"][0], expected.mean(0), rtol=1e-4, atol=1e-5)
  # The genre tower maps genre_vocab rows into the space of `projection`.
  vocab = json.load(open(os.path.join(out, "genre_vocab.json")))["codes"]
  ids = tf.constant([[vocab["GN0100"], vocab["GN0101"], 0]], tf.int64)
  g = loaded.signatures["genres"](genre_ids=ids)["genre_projection"]
  assert g.shape == (1, manifest["projection_dim"]) and np.all(np.isfinite(g))


def test_warmup_requests_parse_back(exported):
  from tensorflow_serving.apis import prediction_log_pb2
  _, out, _ = exported
  path = os.path.join(out, "saved_model", "1", "assets.extra", "tf_serving_warmup_requests")
  logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(path)]
  names = {log.predict_log.request.model_spec.signature_name for log in logs}
  assert names == {"serving_default", "from_waveform", "genres"}
  mel = next(l for l in logs if l.predict_log.request.model_spec.signature_name == "serving_default")
  assert tf.make_ndarray(mel.predict_log.request.inputs["mel"]).shape == (1, 256, 48)


def test_tflite_runs_without_tensorflow_and_matches(exported, tmp_path):
  _, out, manifest = exported
  rng = np.random.default_rng(1)
  mel = rng.normal(-80, 15, (4, 256, 48)).astype(np.float32)
  np.save(tmp_path / "mel.npy", mel)
  wave = (0.2 * rng.standard_normal((1, 16000 * 6))).astype(np.float32)
  np.save(tmp_path / "waveform.npy", wave)
  loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
  reference = {"mel": loaded.signatures["serving_default"](mel=tf.constant(mel))["embedding"].numpy(),
               "waveform": loaded.signatures["from_waveform"](
                   waveform=tf.constant(wave))["patch_embeddings"].numpy()}
  for name in sorted(os.listdir(os.path.join(out, "tflite"))):
    kind = "mel" if name.startswith("audio_mel") else "waveform"
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "tools", "litert_run.py"),
         os.path.join(out, "tflite", name), kind, str(tmp_path / f"{kind}.npy"),
         str(tmp_path / f"{name}.out.npy")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = np.load(tmp_path / f"{name}.out.npy")
    if "float32" in name:
      assert export.relative_error(got, reference[kind]) <= 1e-4, name
    else:
      assert export.cosine(got, reference[kind]) > 0.99, name
  assert manifest["tflite"]["mel_dynamic_range"]  # the quantised mel model is shipped
  # A quantised model that fails its check is named in the manifest, with the reason, and absent.
  for name, reason in manifest["tflite_not_written"].items():
    assert reason.startswith("cosine ") and not os.path.exists(os.path.join(out, "tflite", name))
  written = {os.path.basename(p) for p in manifest["tflite"].values()}
  assert written | set(manifest["tflite_not_written"]) == {
      f"audio_{k}_{s}.tflite" for k in ("mel", "waveform") for s in ("float32", "dynamic_range")}


def test_onnx_runs_without_tensorflow_and_matches(exported, tmp_path):
  """Both ONNX models in onnxruntime alone = the SavedModel within 1e-5, waveforms of any length."""
  _, out, manifest = exported
  assert manifest["onnx"] == {"mel": "onnx/audio_mel.onnx", "waveform": "onnx/audio_waveform.onnx"}
  assert not manifest["onnx_not_written"]
  rng = np.random.default_rng(3)
  inputs = {"mel": [rng.normal(-80, 15, (3, 256, 48)).astype(np.float32)],
            # A batch of two 6 s waveforms (one patch each), one of 17.3 s (4 patches), one of
            # 0.2 s (padded to one patch): the input length is dynamic.
            "waveform": [(0.2 * rng.standard_normal(shape)).astype(np.float32)
                         for shape in ((2, 16000 * 6), (1, 276_817), (1, 3_200))]}
  loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
  signature = {"mel": "serving_default", "waveform": "from_waveform"}
  for kind, arrays in inputs.items():
    paths = []
    for i, x in enumerate(arrays):
      paths.append(str(tmp_path / f"{kind}_{i}.npy"))
      np.save(paths[-1], x)
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "tools", "onnx_run.py"),
         os.path.join(out, manifest["onnx"][kind]), str(tmp_path / f"{kind}.npz"), *paths],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = np.load(tmp_path / f"{kind}.npz")
    assert list(got["input_shape"]) == (["batch", "256", "48"] if kind == "mel" else ["batch", "samples"])
    for i, x in enumerate(arrays):
      reference = loaded.signatures[signature[kind]](**{kind: tf.constant(x)})
      assert set(reference) == {n.rsplit("_", 1)[0] for n in got.files if n.endswith(f"_{i}")}
      for name, value in reference.items():
        assert got[f"{name}_{i}"].shape == value.shape, (kind, i, name)
        assert export.relative_error(got[f"{name}_{i}"], value) <= 1e-5, (kind, i, name)
  assert [got[f"patch_embeddings_{i}"].shape[:2] for i in range(3)] == [(2, 1), (1, 4), (1, 1)]


def test_onnx_conversion_names_the_op_tf2onnx_cannot_convert(exported):
  """Why the ONNX waveform model computes its DFT by a matrix product: with tf.signal.rfft, tf2onnx
  (which only logs such failures) leaves a ComplexAbs node that no runtime has. If a tf2onnx release
  converts it, this fails, and the plain front end can go back in."""
  run_dir, _, _ = exported
  model, _, _ = checkpoint_lib.load_trained(run_dir)
  tower = export.AudioTower(model, dft="fft")  # held: a tf.function method keeps only a weak reference
  with pytest.raises(RuntimeError, match="graph of from_waveform: ComplexAbs$"):
    export.convert_onnx(tower.from_waveform)


def test_export_manifest_checksums_and_atomicity(exported, monkeypatch, tmp_path):
  run_dir, out, manifest = exported
  on_disk = json.load(open(os.path.join(out, "export_manifest.json")))
  assert on_disk["versions"]["tensorflow"] == tf.__version__
  for rel, digest in on_disk["files"].items():
    assert safeio.sha256_file(os.path.join(out, rel)) == digest
  assert on_disk["verification"]["saved_model_vs_keras"] < 1e-5
  assert {"onnx/audio_mel.onnx", "onnx/audio_waveform.onnx"} <= set(on_disk["files"])
  assert on_disk["verification"]["onnx_mel_vs_saved_model"] <= 1e-5
  assert on_disk["verification"]["onnx_waveform_vs_saved_model"] <= 1e-5
  with pytest.raises(InputError, match="already exists"):
    export.export(run_dir, out)
  # A failure half way leaves neither the export nor a partial folder behind.
  def broken(*args, **kwargs):
    raise RuntimeError("converter crashed")
  monkeypatch.setattr(export, "convert_tflite", broken)
  target = str(tmp_path / "never")
  with pytest.raises(RuntimeError, match="converter crashed"):
    export.export(run_dir, target, essentia=False)
  assert not os.path.exists(target)
  assert not [n for n in os.listdir(tmp_path) if ".partial" in n]


def test_embed_real_excerpts_same_from_saved_model_tflite_and_onnx(exported, tmp_path):
  _, out, manifest = exported
  results = {}
  for artifact in ("saved_model", "tflite", "onnx"):
    target = str(tmp_path / artifact)
    result = run_module("tfcmir.embed", f"--embed_model={out}", f"--artifact={artifact}",
                        f"--out={target}", "--per_patch", REAL_AUDIO)
    assert result.returncode == 0, result.stderr[-3000:]
    # Quiet: stderr holds the progress bar and nothing else (LiteRT's XNNPACK line is dropped).
    assert [line for line in re.split(r"[\r\n]+", result.stderr)
            if line.strip() and not line.startswith("embed:")] == [], result.stderr[-3000:]
    rows = list(csv.DictReader(open(os.path.join(target, "index.csv"))))
    assert [os.path.basename(r["path"]) for r in rows] == REAL_FILES  # every format, one row each
    short = [r for r in rows if r["padded"] == "1"]
    assert [os.path.basename(r["path"]) for r in short] == ["hedgewars_beach_3s_mono16k.wav"]
    embeddings = np.load(os.path.join(target, "embeddings.npy"))
    assert embeddings.shape == (len(REAL_FILES), manifest["embedding_dim"])
    assert np.all(np.isfinite(embeddings))
    patches = np.load(os.path.join(target, "patch_embeddings.npy"))
    assert len(patches) == sum(int(r["patches"]) for r in rows)
    results[artifact] = embeddings
  assert export.relative_error(results["tflite"], results["saved_model"]) < 1e-4
  assert export.relative_error(results["onnx"], results["saved_model"]) <= 1e-5


def test_embed_neighbours_share_genre(exported, small_demo, tmp_path):
  _, out, _ = exported
  gtzan = os.path.join(small_demo, "gtzan")
  encoder = inference.Encoder(out)
  paths = inference.find_audio([gtzan])
  rows, per_patch, skipped = inference.embed_files(paths, encoder, progress=False)
  assert not skipped and len(rows) == len(paths)
  x = np.stack([p.mean(0) for p in per_patch])
  x = (x - x.mean(0)) / (x.std(0) + 1e-9)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  labels = np.array([os.path.basename(os.path.dirname(r["path"])) for r in rows])
  sims = x @ x.T
  np.fill_diagonal(sims, -np.inf)
  agreement = np.mean(labels[np.argmax(sims, axis=1)] == labels)
  # 10 genres: chance is 0.1 (+-0.034 over 80 tracks); the briefly trained demo encoder reaches 0.4-0.5,
  # and embeddings out of step with their paths, or constant ones, fall back to chance.
  print(f"nearest-neighbour genre agreement {agreement:.3f}")
  assert agreement > 0.25


def test_embed_skips_unreadable_files_and_reports_them(exported, tmp_path):
  _, out, _ = exported
  bad = tmp_path / "broken.wav"
  bad.write_bytes(b"RIFF not audio")
  result = run_module("tfcmir.embed", f"--embed_model={out}", f"--out={tmp_path / 'e'}",
                      "--embed_format=npz", str(bad), os.path.join(REAL_AUDIO, REAL_FILES[1]))
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"skipped {bad}: cannot be decoded" in result.stdout
  data = np.load(tmp_path / "e" / "embeddings.npz")
  assert data["embeddings"].shape[0] == 1 and list(data["paths"]) == [
      os.path.join(REAL_AUDIO, REAL_FILES[1])]


def test_essentia_graph_matches_the_saved_model(exported, tmp_path):
  """The exported .pb in Essentia's TensorflowPredict (own process) = the SavedModel's embeddings."""
  _, out, manifest = exported
  graph = os.path.join(out, manifest["essentia"]["graph"])
  card = json.load(open(os.path.join(out, manifest["essentia"]["metadata"])))
  assert [o["output_purpose"] for o in card["schema"]["outputs"]] == ["embeddings", "embeddings"]
  mel = np.random.default_rng(2).normal(-80, 15, (5, 256, 48)).astype(np.float32)
  np.save(tmp_path / "mel.npy", mel)
  result = subprocess.run([sys.executable, os.path.join(HERE, "tools", "essentia_predict.py"),
                           "patches", graph, str(tmp_path / "mel.npy"), str(tmp_path / "emb.npy"),
                           str(tmp_path / "proj.npy")], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
  reference = loaded.signatures["serving_default"](mel=tf.constant(mel))
  assert export.relative_error(np.load(tmp_path / "emb.npy"), reference["embedding"]) <= 1e-4
  assert export.relative_error(np.load(tmp_path / "proj.npy"), reference["projection"]) <= 1e-4


def test_baselines_export_without_a_genre_tower(small_prepared, tmp_path, monkeypatch):
  _, tfrecord_dir, manifest = small_prepared
  table = genres.GenreVectors.load(tfrecord_dir).table
  config = contrastive.model_config("bline_cf_g", table.shape, manifest["schema"]["cf_dim"],
                                    channels=[4, 4, 8, 8, 8, 8, 16], hidden_dim=32, embedding_dim=16)
  run_dir = str(tmp_path / "run")
  loop.train(tfrecord_dir, run_dir, config, epochs=1, batch_size=32, learning_rate=1e-3,
              weight_decay=0, steps_per_epoch=1, verbose=0)
  # Without the converter (the [onnx] extra) the export goes on, and says what it did not write.
  monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` raises ImportError
  exported = export.export(run_dir, str(tmp_path / "bline"), essentia=False)
  assert exported["signatures"] == ["from_waveform", "serving_default"]
  assert exported["onnx"] == {} and not os.path.exists(tmp_path / "bline" / "onnx")
  assert exported["onnx_not_written"] == {
      f"audio_{kind}.onnx": "tf2onnx is not installed (pip install -e '.[onnx]')"
      for kind in ("mel", "waveform")}
  with pytest.raises(InputError, match="has no ONNX model"):
    inference.Encoder(str(tmp_path / "bline"), "onnx")
  from tfcmir.beam import embed as beam_embed
  with pytest.raises(InputError, match="onnx/audio_mel.onnx: this export has no such ONNX model"):
    beam_embed._check_export(str(tmp_path / "bline"), "onnx")  # before any Beam worker starts
  loaded = tf.saved_model.load(str(tmp_path / "bline" / "saved_model" / "1"))
  assert set(loaded.signatures) == {"serving_default", "from_waveform"}


def test_a_changed_tflite_byte_is_named_at_load(exported, tmp_path):
  """Four changed bytes in the mel TFLite used to give all -inf embeddings with exit code 0."""
  import shutil
  _, out, _ = exported
  copy = str(tmp_path / "export")
  shutil.copytree(out, copy)
  for artifact, rel in (("tflite", "tflite/audio_mel_float32.tflite"), ("onnx", "onnx/audio_mel.onnx")):
    path = os.path.join(copy, rel)
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(b"\xff\xff\xff\x7f")
    with pytest.raises(InputError, match=f"^{path}: damaged"):
      inference.Encoder(copy, artifact)
    inference.Encoder(copy, "saved_model")  # the other artifact is intact and loads
