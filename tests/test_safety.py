"""Nothing lost, nothing silently wrong: folders of others refused, --overwrite removes only ours,
damaged exports and shards named in one line."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from helpers import REAL_AUDIO, REAL_FILES
from tfcmir.model import checkpoint as checkpoint_lib
from tfcmir import embeddings, export_format, inference, safeio
from tfcmir.data import generator
from tfcmir.train import loop
from tfcmir.errors import InputError
from tfcmir.model import contrastive

TINY = dict(channels=[4, 4, 8, 8, 8, 8, 16], hidden_dim=32, embedding_dim=16)


def _config(mode, tfrecord_dir, manifest):
  from tfcmir.prepare import genres
  table = genres.GenreVectors.load(tfrecord_dir).table
  return contrastive.model_config(mode, table.shape, manifest["schema"]["cf_dim"], **TINY)


def _train(tfrecord_dir, model_dir, config, **kwargs):
  args = dict(epochs=1, batch_size=32, learning_rate=1e-3, weight_decay=0, steps_per_epoch=1,
              verbose=0)
  return loop.train(tfrecord_dir, model_dir, config, **{**args, **kwargs})


TINY_DEMO = generator.DemoConfig(seed=5, songs=40, playlists=12, seconds=3.0, gtzan_per_genre=2,
                            jamendo_tracks=10)


def test_demo_refuses_a_folder_of_others_and_keeps_their_files(tmp_path):
  out = tmp_path / "data"
  out.mkdir()
  (out / "thesis.tex").write_text("mine")
  with pytest.raises(InputError, match="did not write"):
    generator.generate(str(out), TINY_DEMO, workers=1)
  assert os.listdir(out) == ["thesis.tex"]
  os.remove(out / "thesis.tex")
  generator.generate(str(out), TINY_DEMO, workers=1)
  (out / "notes.txt").write_text("mine")
  generator.generate(str(out), TINY_DEMO, workers=1, overwrite=True)  # rebuilt, swapped in
  assert (out / "notes.txt").read_text() == "mine"
  assert sorted(os.listdir(tmp_path)) == ["data"]


def test_train_overwrite_removes_only_the_runs_files(small_prepared, tmp_path):
  _, tfrecord_dir, manifest = small_prepared
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "thesis.tex").write_text("mine")
  config = _config("contr_g", tfrecord_dir, manifest)
  with pytest.raises(InputError, match="thesis.tex"):
    _train(tfrecord_dir, str(model_dir), config, overwrite=True)
  os.remove(model_dir / "thesis.tex")
  _train(tfrecord_dir, str(model_dir), config)
  (model_dir / "notes.txt").write_text("mine")
  (model_dir / "checkpoints" / "stale").write_text("an old run's")
  _train(tfrecord_dir, str(model_dir), _config("contr_cf", tfrecord_dir, manifest), overwrite=True)
  assert (model_dir / "notes.txt").read_text() == "mine"
  assert not (model_dir / "checkpoints" / "stale").exists()
  assert json.loads((model_dir / "config.json").read_text())["model"]["mode"] == "contr_cf"


def _corrupted_copy(tfrecord_dir, tmp_path):
  """A copy of the prepared shards with one byte flipped half way through the last train shard (not
  in the first records, which train reads before fitting)."""
  copy = str(tmp_path / "tfrecords")
  shutil.copytree(tfrecord_dir, copy)
  manifest = safeio.read_json(os.path.join(copy, "manifest.json"))
  shard = [s for s in manifest["shards"] if s["split"] == "train"][-1]
  path = os.path.join(copy, shard["file"])
  with open(path, "r+b") as f:
    f.seek(shard["bytes"] // 2)
    byte = f.read(1)
    f.seek(shard["bytes"] // 2)
    f.write(bytes([byte[0] ^ 0xFF]))
  return copy, path


def test_a_corrupt_shard_is_named_before_or_during_training(small_prepared, tmp_path):
  _, tfrecord_dir, manifest = small_prepared
  copy, bad = _corrupted_copy(tfrecord_dir, tmp_path)
  config = _config("contr_g", copy, manifest)
  with pytest.raises(InputError, match=f"{bad}: shard checksum differs"):
    _train(copy, str(tmp_path / "a"), config, verify_shards="checksum")
  # The right size passes the default check; the read mid-epoch fails, and the shard is named.
  with pytest.raises(InputError, match=f"^{bad}: corrupt shard.*training stopped") as caught:
    _train(copy, str(tmp_path / "b"), config, epochs=2, steps_per_epoch=8, shuffle_buffer=64)
  assert "\n" not in str(caught.value)


# --- Exports: verified at load. ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checked_export(tmp_path_factory):
  """A small untrained tower saved as an export with the manifest's checksums (no TFLite)."""
  import keras

  from tfcmir import export

  keras.utils.set_random_seed(0)
  config = contrastive.model_config("bline_cf", (41, 16), 32, **TINY)
  model = contrastive.build_model(config)
  model.build_from_batch(checkpoint_lib.dummy_batch(config))
  tower = export.AudioTower(model)
  out = tmp_path_factory.mktemp("checked") / "export"
  tf.saved_model.save(tower, str(out / "saved_model" / "1"),
                      signatures={"serving_default": tower.serve_mel})
  files = {os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/"):
           safeio.sha256_file(os.path.join(d, f)) for d, _, names in os.walk(out) for f in names}
  safeio.write_json(out / "export_manifest.json", {"version": 1, "embedding_dim": 16, "files": files,
                                                   "written_by": "tfcmir"})
  return str(out)


@pytest.mark.parametrize("damage", ["saved_model.pb", "variables.data", "manifest"])
def test_a_damaged_export_is_named_at_load(checked_export, tmp_path, damage):
  export_dir = str(tmp_path / "export")
  shutil.copytree(checked_export, export_dir)
  inference.Encoder(export_dir)  # intact: loads
  if damage == "manifest":
    path = os.path.join(export_dir, "export_manifest.json")
    with open(path, "r+b") as f:
      f.truncate(40)
    expected = f"{path}: damaged"
  else:
    folder = os.path.join(export_dir, "saved_model", "1")
    path = (os.path.join(folder, "saved_model.pb") if damage == "saved_model.pb" else
            os.path.join(folder, "variables", "variables.data-00000-of-00001"))
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(b"\0\1\2\3")
    expected = f"{path}: damaged"
  with pytest.raises(InputError, match=f"^{expected}"):
    inference.Encoder(export_dir)


def test_verification_is_cheap(checked_export):
  import time
  manifest = export_format.read_manifest(checked_export)
  started = time.perf_counter()
  export_format.verify(checked_export, manifest, "saved_model")
  assert time.perf_counter() - started < 0.5


# --- Embed outputs. ------------------------------------------------------------------------------------


def test_embed_rerun_removes_its_own_stale_files_only(tmp_path):
  out = tmp_path / "emb"
  rows = [{"path": "a.wav", "patches": 2, "padded": False, "seconds": 8.0}]
  per_patch = [np.ones((2, 4), np.float32)]
  embeddings.write_outputs(str(out), rows, per_patch, per_patch_out=True)
  (out / "notes.txt").write_text("mine")
  assert (out / "patch_embeddings.npy").exists()
  embeddings.write_outputs(str(out), rows, per_patch)  # no --per_patch this time
  assert sorted(os.listdir(out)) == ["embeddings.npy", "embeddings_manifest.json", "index.csv",
                                     "notes.txt"]
  embeddings.write_outputs(str(out), rows, per_patch, fmt="npz")
  assert sorted(os.listdir(out)) == ["embeddings.npz", "embeddings_manifest.json", "notes.txt"]


def test_embed_with_no_readable_input_exits_non_zero(checked_export, tmp_path):
  from helpers import run_module
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF not audio")
  result = run_module("tfcmir.embed", f"--embed_model={checked_export}", f"--out={tmp_path / 'out'}",
                      str(broken), timeout=300)
  assert result.returncode == 1
  assert f"none of the 1 input files could be read (e.g. {broken}" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "out" / "embeddings.npy").exists()


# --- Long audio in bounded memory. ---------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_FILES)
def test_streamed_audio_and_chunked_mels_equal_the_whole_file(name):
  from tfcmir import audio
  path = os.path.join(REAL_AUDIO, name)
  whole = audio.load_audio(path)
  streamed = np.concatenate(list(audio.stream_audio(path, block_seconds=1.3)))
  mel = np.asarray(audio.mel_spectrogram(whole))
  chunks = list(audio.mel_chunks(path, 256))
  assert all(len(c) == 256 for c in chunks[:-1])
  if name.endswith(".mp3"):  # the decoder's block boundaries move a few samples by 1e-7
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(chunks), mel, atol=1e-2)
  else:
    np.testing.assert_array_equal(streamed, whole)
    np.testing.assert_allclose(np.concatenate(chunks), mel, atol=1e-4)


def test_chunked_embeddings_equal_whole_file_ones(checked_export, tmp_path, monkeypatch):
  """Three minutes of 44.1 kHz stereo, embedded 2 patches (8 s) at a time vs the whole file at once."""
  import soundfile as sf

  from tfcmir import audio
  rng = np.random.default_rng(0)
  t = np.arange(44100 * 180) / 44100
  tones = sum(np.sin(2 * np.pi * f * t * (1 + 0.01 * np.sin(t / 7))) for f in (110, 330, 880))
  noise = 0.05 * rng.standard_normal((len(t), 2))
  path = str(tmp_path / "long.flac")
  sf.write(path, (0.2 * tones[:, None] + noise).astype(np.float32), 44100, subtype="PCM_16")
  monkeypatch.setattr(inference, "CHUNK_PATCHES", 2)
  patches, padded, seconds = inference.file_patches(path)
  whole = np.asarray(audio.split_patches(audio.mel_spectrogram(audio.load_audio(path))[None], 256))[0]
  assert patches.shape == whole.shape and not padded and abs(seconds - 180) < 1e-3
  encoder = inference.Encoder(checked_export)
  a, b = encoder(patches), encoder(whole)
  cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  assert cosine.min() > 0.9999


# --- Every command: files of others survive. -----------------------------------------------------------


@pytest.mark.slow
def test_a_foreign_file_in_every_output_folder_survives(small_demo, small_prepared, checked_export,
                                                        tmp_path):
  """demo, prepare, train, export, embed and evaluate write (and re-write with --overwrite) into
  folders that hold a file of someone else's; it is there, unchanged, afterwards (~90 s)."""
  from helpers import FAST_PREPARE
  from tfcmir import export
  from tfcmir.data import melon
  from tfcmir.evaluate import cli as evaluate_cli
  from tfcmir.prepare import steps

  def plant(folder):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "mine.txt")
    with open(path, "w") as f:
      f.write(f"not tfcmir's: {folder}")
    return path

  def survived(path):
    with open(path) as f:
      return f.read() == f"not tfcmir's: {os.path.dirname(path)}"

  planted = []
  data = str(tmp_path / "demo")
  generator.generate(data, TINY_DEMO, workers=1)
  planted.append(plant(data))
  generator.generate(data, TINY_DEMO, workers=1, overwrite=True)

  corpus = melon.read_melon(os.path.join(data, "melon"))
  tfrecords = str(tmp_path / "tfrecords")
  planted.append(plant(tfrecords))
  config = FAST_PREPARE()
  steps.prepare(corpus, tfrecords, config, workers=1, progress=False)
  steps.prepare(corpus, tfrecords, config, workers=1, progress=False, overwrite=True)

  _, prepared, manifest = small_prepared
  run = str(tmp_path / "run")
  _train(prepared, run, _config("contr_cf_g", prepared, manifest))
  planted.append(plant(run))
  _train(prepared, run, _config("contr_cf_g", prepared, manifest), overwrite=True)

  out = str(tmp_path / "export")
  export.export(run, out, essentia=False)
  planted.append(plant(out))
  export.export(run, out, overwrite=True, essentia=False)
  inference.Encoder(out)  # the swapped-in export verifies

  embed_dir = str(tmp_path / "embeddings")
  planted.append(plant(embed_dir))
  files = [os.path.join(REAL_AUDIO, n) for n in REAL_FILES[:2]]
  for per_patch in (True, False):
    rows, per, _ = inference.embed_files(files, inference.Encoder(checked_export), progress=False)
    embeddings.write_outputs(embed_dir, rows, per, per_patch_out=per_patch)

  reports = str(tmp_path / "eval")
  planted.append(plant(reports))
  evaluate_cli.evaluate(["gtzan"], [checked_export], reports, os.path.join(small_demo, "gtzan"),
                        repetitions=1)
  assert all(survived(p) for p in planted), [p for p in planted if not survived(p)]
  assert not [n for n in os.listdir(tmp_path) if ".partial-" in n or ".old-" in n]
