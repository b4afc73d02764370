"""Apache Beam paths (tfcmir/beam/): prepare and embed on the DirectRunner give the local paths' data;
bad input is reported as locally; a killed worker or a stuck run ends the command with a message."""

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("apache_beam")

import apache_beam as beam  # noqa: E402

from helpers import FAST_PREPARE, REAL_AUDIO, REAL_FILES, ROOT  # noqa: E402
from tfcmir.model import checkpoint as checkpoint_lib
from tfcmir import embeddings, inference, safeio, shards
from tfcmir.train import pipeline
from tfcmir.beam import options  # noqa: E402
from tfcmir.beam import embed as beam_embed  # noqa: E402
from tfcmir.beam import prepare as beam_prepare  # noqa: E402
from tfcmir.errors import InputError
from tfcmir.data.corpus import Corpus, Problems  # noqa: E402
from tfcmir.prepare import steps  # noqa: E402

FAST = FAST_PREPARE()
# The CLI flags that give FAST (tests/conftest.py), so a command-line run shares small_prepared's steps.
FAST_FLAGS = ["--cf_dim=32", "--genre_dim=16", "--warp_epochs=5", "--shard_mb=8", "--seed=0"]
GLOBAL_FILES = ("split.json", "genre_vectors.npy", "genre_vocab.json", "warp.npz")
MULTI_PROCESS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]

# Test-only: put on PYTHONPATH, this makes a Beam worker process (never the driver) that opens the
# file named by TFCMIR_TEST_KILL_ON_OPEN SIGKILL itself, as the out-of-memory killer would.
KILL_HOOK = '''
import os, signal, sys
_target = os.environ.get("TFCMIR_TEST_KILL_ON_OPEN")
def _hook(event, args):
  if event == "open" and args and str(args[0]) == _target and "sdk_worker_main" in " ".join(sys.argv):
    os.kill(os.getpid(), signal.SIGKILL)
if _target:
  sys.addaudithook(_hook)
'''
# Test-only: makes `import apache_beam` fail, as in the base install.
NO_BEAM_HOOK = "import sys\nsys.modules['apache_beam'] = None\n"


def _run(module, *args, env=None, timeout=180):
  """`python -m module args` as a user runs it, with extra environment variables."""
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT, env=dict(os.environ, **(env or {})))


def _with_global_steps_of(prepared_dir, out):
  """A folder holding `prepared_dir`'s split, Word2Vec and WARP but no shards: what a run resumes."""
  os.makedirs(out)
  for name in GLOBAL_FILES:
    shutil.copy(os.path.join(prepared_dir, name), out)
  with open(os.path.join(prepared_dir, steps.STATE), encoding="utf-8") as f:
    state = json.load(f)
  with open(os.path.join(out, steps.STATE), "w", encoding="utf-8") as f:
    json.dump(dict(state, complete=False), f)
  return str(out)


def _records(out):
  """{song_id: (serialized, parsed record, shard's split)} of a prepared folder."""
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    manifest = json.load(f)
  schema, found = manifest["schema"], {}
  for shard in manifest["shards"]:
    for serialized in tf.data.TFRecordDataset(os.path.join(out, shard["file"])):
      raw = serialized.numpy()
      rec = shards.parse_numpy(raw, schema["max_genres"], schema["cf_dim"], schema["bands"])
      assert int(rec["song_id"]) not in found, "a song written twice"
      found[int(rec["song_id"])] = (raw, rec, shard["split"])
  return manifest, found


def _assert_same_records(local_dir, beam_dir):
  local_manifest, local = _records(local_dir)
  beam_manifest, beamed = _records(beam_dir)
  assert sorted(beamed) == sorted(local)
  for song_id, (raw, rec, split) in local.items():
    beam_raw, beam_rec, beam_split = beamed[song_id]
    assert beam_rec["mel"].dtype == np.float16
    assert beam_rec["mel"].tobytes() == rec["mel"].tobytes()  # bit for bit
    assert beam_rec["cf"].tobytes() == rec["cf"].tobytes()
    np.testing.assert_array_equal(beam_rec["genres"], rec["genres"])
    assert beam_rec["split"] == rec["split"] == beam_split == split
    assert (beam_rec["has_cf"], beam_rec["frames"]) == (rec["has_cf"], rec["frames"])
    assert beam_raw == raw  # and nothing else differs
  return local_manifest, beam_manifest


# --- Beam preparation. ---------------------------------------------------------------------------------


def test_beam_prepare_command_writes_the_local_records(small_demo, small_prepared, tmp_path):
  corpus, local_dir, _ = small_prepared
  out = _with_global_steps_of(local_dir, tmp_path / "beam")
  result = _run("tfcmir.prepare", f"--melon_dir={os.path.join(small_demo, 'melon')}",
                f"--tfrecord_dir={out}", *FAST_FLAGS, "--runner=DirectRunner", *MULTI_PROCESS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| train |" in result.stdout
  local_manifest, manifest = _assert_same_records(local_dir, out)
  for key in ("counts", "problems", "schema", "fingerprint", "split", "genres"):
    assert manifest[key] == local_manifest[key], key
  assert manifest["flags"]["runner"] == "DirectRunner"
  # Same shard names and count per split as the local writer; sizes, bytes and checksums are true.
  assert [s["file"] for s in manifest["shards"]] == [s["file"] for s in local_manifest["shards"]]
  for shard in manifest["shards"]:
    path = os.path.join(out, shard["file"])
    assert os.path.getsize(path) == shard["bytes"]
    assert safeio.sha256_file(path) == shard["sha256"]
  shards.verify_shards(out, manifest, level="records")
  assert not [n for n in os.listdir(out) if n.startswith((".", "beam-temp"))]  # nothing left over
  # The training reader takes it unchanged.
  batch = next(iter(pipeline.dataset(out, "train", batch_size=8, training=True, seed=0,
                                     verify="checksum")))
  assert batch["mel"].shape == (8, FAST.crop_frames, FAST.bands)


def _small_corpus(corpus, tmp_path, songs=40):
  """The first `songs` songs, one with a corrupt mel file and one with a mel shorter than a crop."""
  chosen = list(corpus.songs[:songs])
  corrupt, short = tmp_path / "corrupt.npy", tmp_path / "short.npy"
  corrupt.write_bytes(b"\x93NUMPY this is not a mel")
  np.save(short, np.load(chosen[5].mel_path)[:, :100])
  chosen[3] = dataclasses.replace(chosen[3], mel_path=str(corrupt))
  chosen[5] = dataclasses.replace(chosen[5], mel_path=str(short))
  keep = {s.song_id for s in chosen}
  playlists = [kept for kept in ([s for s in p if s in keep] for p in corpus.playlists) if kept]

  def fresh():  # steps.prepare adds to corpus.problems: a new corpus for each run
    return Corpus(corpus.name, chosen, corpus.genre_names, playlists, problems=Problems())
  return fresh, str(corrupt)


def test_beam_prepare_reports_bad_and_short_mels_as_locally(small_prepared, tmp_path):
  corpus, _, _ = small_prepared
  fresh, corrupt = _small_corpus(corpus, tmp_path)
  local_dir = str(tmp_path / "local")
  local = steps.prepare(fresh(), local_dir, FAST, workers=1, progress=False)
  writer = beam_prepare.BeamShardWriter(options.pipeline_options("DirectRunner", []), progress=False)
  beam_dir = _with_global_steps_of(local_dir, tmp_path / "beam")
  beamed = steps.prepare(fresh(), beam_dir, FAST, progress=False, shard_writer=writer)
  _assert_same_records(local_dir, beam_dir)
  assert local["problems"]["counts"]["bad_mel"] == 1
  assert local["counts"]["short_mel"] == 1
  assert beamed["problems"] == local["problems"]  # counts and messages, e.g. the corrupt file's
  assert any(corrupt in m for m in beamed["problems"]["examples"]["bad_mel"])
  assert beamed["counts"] == local["counts"]

  # --strict: the first bad song fails the run, with the message naming the file.
  strict_dir = _with_global_steps_of(local_dir, tmp_path / "strict")
  with pytest.raises(InputError, match=f"^{re.escape(corrupt)}: cannot read the mel file"):
    steps.prepare(fresh(), strict_dir, FAST, strict=True, progress=False, shard_writer=writer)
  assert not os.path.exists(os.path.join(strict_dir, "manifest.json"))


def _run_processes(marker):
  """PIDs of live processes whose environment holds `marker` (this test's runs and their workers)."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        if marker.encode() in f.read():
          with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            if stat.read().split(") ")[-1][0] != "Z":  # zombies are already dead
              found.append(int(pid))
    except OSError:
      continue
  return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_ends_the_run_with_a_message(small_demo, small_prepared, tmp_path):
  corpus, local_dir, _ = small_prepared
  out = _with_global_steps_of(local_dir, tmp_path / "beam")
  hook = tmp_path / "hook"
  hook.mkdir()
  (hook / "sitecustomize.py").write_text(KILL_HOOK)
  victim = corpus.songs[len(corpus.songs) // 2].mel_path
  env = {"PYTHONPATH": os.pathsep.join([str(hook), ROOT]), "TFCMIR_TEST_KILL_ON_OPEN": victim}
  started = time.time()
  result = _run("tfcmir.prepare", f"--melon_dir={os.path.join(small_demo, 'melon')}",
                f"--tfrecord_dir={out}", *FAST_FLAGS, "--runner=DirectRunner", *MULTI_PROCESS,
                env=env, timeout=150)
  elapsed = time.time() - started
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: a Beam worker process killed by SIGKILL"), result.stderr[-3000:]
  assert "run the command again" in last
  assert elapsed < 90  # not a hang: Beam alone would wait forever
  assert not os.path.exists(os.path.join(out, "manifest.json"))
  # The other worker does not outlive the run.
  deadline = time.time() + 15
  while _run_processes(str(hook)) and time.time() < deadline:
    time.sleep(0.5)
  assert not _run_processes(str(hook))


_release = threading.Event()


class _Stuck(beam.DoFn):
  def process(self, element):
    _release.wait(60)  # a worker that never answers, until the test lets it go
    yield element


def test_a_stuck_run_stops_at_the_timeout():
  _release.clear()
  p = beam.Pipeline(options=options.pipeline_options("DirectRunner", []))
  _ = p | beam.Create([1, 2]) | beam.ParDo(_Stuck())
  started = time.time()
  try:
    with pytest.raises(options.PipelineFailed, match="did not finish within --beam_timeout_s=2 s"):
      options.run(p, timeout_s=2)
  finally:
    _release.set()
  assert time.time() - started < 10


# --- Beam embedding. -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
  """An export as tfcmir.inference.Encoder reads it (manifest + SavedModel), of an untrained small tower."""
  import keras

  from tfcmir import export
  from tfcmir.model import contrastive

  keras.utils.set_random_seed(0)
  config = contrastive.model_config("bline_cf", (41, 16), 32, channels=[8, 8, 16, 16, 16, 16, 32],
                                    hidden_dim=64, embedding_dim=32)
  model = contrastive.build_model(config)
  model.build_from_batch(checkpoint_lib.dummy_batch(config))
  tower = export.AudioTower(model)
  out = tmp_path_factory.mktemp("tiny_export")
  tf.saved_model.save(tower, str(out / "saved_model" / "1"),
                      signatures={"serving_default": tower.serve_mel})
  dim = tower.serve_mel(tf.zeros([1, 256, 48]))["embedding"].shape[-1]
  (out / "export_manifest.json").write_text(json.dumps({"version": 1, "embedding_dim": int(dim)}))
  return str(out)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
  """The real excerpts (wav, flac, ogg, mp3; one shorter than a patch) and an undecodable file."""
  folder = tmp_path_factory.mktemp("audio")
  for name in REAL_FILES:
    shutil.copy(os.path.join(REAL_AUDIO, name), folder)
  (folder / "broken.wav").write_bytes(b"RIFF not audio")
  return inference.find_audio([str(folder)])


@pytest.fixture(scope="module")
def local_embeddings(tiny_export, audio_files):
  rows, per_patch, skipped = inference.embed_files(audio_files, inference.Encoder(tiny_export), progress=False)
  return rows, per_patch, skipped


def _assert_matches_local(got, local, skipped_csv):
  rows, per_patch, skipped = local
  assert list(got["paths"]) == [r["path"] for r in rows]  # input order, the broken file left out
  means = np.stack([p.mean(0) for p in per_patch])
  np.testing.assert_allclose(got["embeddings"], means, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["patch_embeddings"], np.concatenate(per_patch), rtol=1e-5, atol=1e-6)
  assert list(got["patches"]) == [r["patches"] for r in rows]
  assert list(got["padded"]) == [r["padded"] for r in rows] and sum(got["padded"]) == 1
  np.testing.assert_allclose(got["seconds"], [r["seconds"] for r in rows], rtol=1e-6)
  with open(skipped_csv, encoding="utf-8", newline="") as f:
    assert [tuple(r) for r in csv.reader(f)][1:] == list(skipped)
  assert [os.path.basename(p) for p, _ in skipped] == ["broken.wav"]


def test_beam_embed_command_matches_the_local_embed(tiny_export, audio_files, local_embeddings,
                                                   tmp_path):
  out = str(tmp_path / "parquet")
  folder = os.path.dirname(audio_files[0])
  result = _run("tfcmir.embed", "--runner=DirectRunner", f"--embed_model={tiny_export}",
                f"--out={out}", "--per_patch", "--beam_output=parquet", "--beam_shards=2", folder)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"skipped {os.path.join(folder, 'broken.wav')}: cannot be decoded" in result.stdout
  assert sorted(n for n in os.listdir(out) if n.endswith(".parquet")) == [
      "embeddings-00000-of-00002.parquet", "embeddings-00001-of-00002.parquet"]
  _assert_matches_local(embeddings.read_embeddings(out), local_embeddings,
                        os.path.join(out, embeddings.SKIPPED))


def test_beam_embed_tfrecord_outputs_match_the_local_embed(tiny_export, audio_files,
                                                         local_embeddings, tmp_path):
  out = str(tmp_path / "tfrecord")
  os.makedirs(out)
  stale = os.path.join(out, "embeddings-00000-of-00009.tfrecord")  # an earlier run's shard
  open(stale, "wb").close()
  manifest = beam_embed.run(audio_files, tiny_export, out, options.pipeline_options("DirectRunner", []),
                            batch_patches=3, per_patch=True)
  assert manifest["embedded"] == len(REAL_FILES) and manifest["skipped"] == 1
  assert not os.path.exists(stale)
  _assert_matches_local(embeddings.read_embeddings(out), local_embeddings,
                        os.path.join(out, embeddings.SKIPPED))


# --- Options, flags, install. --------------------------------------------------------------------------


def test_pipeline_options_pass_through_and_typos_are_errors():
  opts = options.pipeline_options("DirectRunner", MULTI_PROCESS).get_all_options()
  assert (opts["runner"], opts["direct_num_workers"], opts["direct_running_mode"]) == (
      "DirectRunner", 2, "multi_processing")
  with pytest.raises(InputError, match="--direct_num_workerz: neither a tfcmir flag nor"):
    options.pipeline_options("DirectRunner", ["--direct_num_workerz=2"])
  with pytest.raises(InputError, match="--runner=NoSuchRunner: Unexpected pipeline runner"):
    options.pipeline_options("NoSuchRunner", [])


def test_beam_flags_need_runner_and_beam(tmp_path):
  # Without --runner, a Beam option is an unknown flag, as any other.
  result = _run("tfcmir.prepare", "--direct_num_workers=2")
  assert result.returncode != 0
  assert "Unknown command line flag 'direct_num_workers'" in result.stderr
  # Without Beam installed, --runner says how to install it, in one line.
  (tmp_path / "sitecustomize.py").write_text(NO_BEAM_HOOK)
  result = _run("tfcmir.prepare", "--runner=DirectRunner", f"--tfrecord_dir={tmp_path / 'out'}",
                env={"PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])})
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --runner needs Apache Beam, which is not installed: install it with "
      "pip install -e '.[beam]'")


def test_setup_keeps_beam_out_of_the_base_install(monkeypatch):
  import runpy

  import setuptools

  captured = {}
  monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
  monkeypatch.chdir(ROOT)
  runpy.run_path(os.path.join(ROOT, "setup.py"))
  def beam_in(requirements):
    return any(r.startswith("apache-beam") for r in requirements)
  assert not beam_in(captured["install_requires"])
  assert beam_in(captured["extras_require"]["beam"]) and beam_in(captured["extras_require"]["test"])


def test_beam_embed_with_no_readable_input_fails(tiny_export, tmp_path):
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF not audio")
  with pytest.raises(InputError, match=f"none of the 1 input files could be read \\(e.g. {broken}"):
    beam_embed.run([str(broken)], tiny_export, str(tmp_path / "out"),
                   options.pipeline_options("DirectRunner", []))
