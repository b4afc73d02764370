"""Data preparation: Melon reader, stratified split, genre Word2Vec, shards, manifest, reader."""

import dataclasses
import json
import os
import re
import shutil
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from helpers import FAST_PREPARE, run_module
from tfcmir.train import pipeline
from tfcmir import safeio, shards
from tfcmir.data import melon
from tfcmir.errors import InputError, Problems
from tfcmir.data.corpus import mel_file
from tfcmir.prepare import genres, split, steps

FAST = FAST_PREPARE()


@pytest.fixture(scope="module")
def prepared(small_prepared):
  return small_prepared


# --- Melon reader. -------------------------------------------------------------------------------------


def test_melon_reader_counts_songs_without_mels(small_demo):
  corpus = melon.read_melon(os.path.join(small_demo, "melon"))
  truth = json.load(open(os.path.join(small_demo, "truth", "melon.json")))
  assert [s.song_id for s in corpus.songs] == sorted(t["id"] for t in truth if t["has_mel"])
  assert corpus.problems.counts["missing_mel"] == sum(not t["has_mel"] for t in truth) > 0
  song = corpus.songs[0]
  assert song.mel_path == mel_file(os.path.join(small_demo, "melon"), song.song_id)
  # Main codes first, then detailed ones, each sorted.
  mains = [g for g in song.genres if g.endswith("00")]
  assert list(song.genres[:len(mains)]) == sorted(mains)
  usable = {s.song_id for s in corpus.songs}
  assert all(set(p) <= usable for p in corpus.playlists)
  assert set(corpus.heldout_playlists) == {"val", "test"}


# --- Split. --------------------------------------------------------------------------------------------


def test_split_is_80_10_10_stratified_and_seeded(prepared):
  corpus, _, _ = prepared
  vocab = sorted(corpus.genre_names)
  genre_lists = [s.genres for s in corpus.songs]
  a = split.stratified_split(genre_lists, vocab, seed=0)
  assert np.array_equal(a, split.stratified_split(genre_lists, vocab, seed=0))
  assert not np.array_equal(a, split.stratified_split(genre_lists, vocab, seed=1))
  n = len(a)
  for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
    assert np.mean(a == name) == pytest.approx(share, abs=0.01)
  # Stratified: every genre keeps its 80/10/10 shares within two songs, far tighter than a random
  # split manages.
  labels = split.multi_hot(genre_lists, vocab)
  rng = np.random.default_rng(0)
  random_split = rng.permutation(a)
  def worst(assign):
    off = [np.abs(labels[assign == name].sum(0) - share * labels.sum(0))
           for name, share in (("train", 0.8), ("val", 0.1), ("test", 0.1))]
    return np.max(off)
  assert worst(a) <= 2
  assert worst(random_split) > 2 * worst(a)
  assert n == len(corpus.songs)


def test_split_rejects_bad_fractions():
  with pytest.raises(ValueError, match="fractions"):
    split.stratified_split([("a",)] * 20, ["a"], fractions=(0.8, 0.3, 0.1))


# --- Genre Word2Vec. -----------------------------------------------------------------------------------


def test_word2vec_puts_genres_that_share_company_close(prepared):
  corpus, out, _ = prepared
  vectors = genres.GenreVectors.load(out)
  assert vectors.table.shape == (len(corpus.genre_names) + 1, FAST.genre_dim)
  assert not vectors.table[0].any()  # row 0: padding
  unit = vectors.table / np.maximum(np.linalg.norm(vectors.table, axis=1, keepdims=True), 1e-9)
  index = vectors.index
  sib, far = [], []
  detailed = [c for c in vectors.codes if not c.endswith("00")]
  for a in detailed:
    for b in detailed:
      if a < b:
        (sib if a[:4] == b[:4] else far).append(unit[index[a]] @ unit[index[b]])
  # Sibling sub-genres co-occur in songs and playlists and share their main genre.
  assert np.mean(sib) > np.mean(far) + 0.3
  np.testing.assert_array_equal(vectors.ids(("GN0100", "GN0101"), 4),
                                [index["GN0100"], index["GN0101"], 0, 0])


def test_word2vec_is_deterministic():
  songs = [("a", "b"), ("b", "c"), ("a", "c"), ("d", "e")] * 20
  one = genres.train_genre_vectors(songs, [], ["a", "b", "c", "d", "e"], dim=8, seed=3)
  two = genres.train_genre_vectors(songs, [], ["a", "b", "c", "d", "e"], dim=8, seed=3)
  np.testing.assert_array_equal(one.table, two.table)


# --- Shards and manifest. ------------------------------------------------------------------------------


def _records(out, manifest):
  schema = manifest["schema"]
  for shard in manifest["shards"]:
    for serialized in tf.data.TFRecordDataset(os.path.join(out, shard["file"])):
      yield shard, shards.parse_numpy(serialized.numpy(), schema["max_genres"], schema["cf_dim"],
                                       schema["bands"])


def test_shard_round_trip_is_bit_exact(prepared):
  corpus, out, manifest = prepared
  by_id = {s.song_id: s for s in corpus.songs}
  vectors = genres.GenreVectors.load(out)
  warp = np.load(os.path.join(out, "warp.npz"))
  cf_of = dict(zip(warp["song_ids"].tolist(), warp["cf"]))
  split_of = {i: name for name, ids in json.load(open(os.path.join(out, "split.json"))).items()
              for i in ids}
  seen = 0
  for shard, rec in _records(out, manifest):
    song = by_id[int(rec["song_id"])]
    expected = np.load(song.mel_path).T.astype(np.float16)
    assert rec["mel"].dtype == np.float16
    assert rec["mel"].tobytes() == expected.tobytes()  # bit for bit
    assert rec["frames"] == expected.shape[0]
    np.testing.assert_array_equal(rec["genres"], vectors.ids(song.genres, FAST.max_genres))
    assert rec["cf"].tobytes() == cf_of[song.song_id].tobytes()
    assert rec["split"] == split_of[song.song_id] == shard["split"]
    assert rec["has_cf"] == (rec["split"] != "test" and bool(np.any(rec["cf"])))
    seen += 1
  assert seen == len(corpus.songs) == sum(manifest["counts"]["songs"].values())


def test_manifest_describes_the_shards(prepared):
  corpus, out, manifest = prepared
  assert manifest["counts"]["songs"]["train"] > 7 * manifest["counts"]["songs"]["test"]
  assert manifest["counts"]["with_cf"]["test"] == 0  # cold start: test songs are not factorised
  assert manifest["schema"]["cf_dim"] == 32 and manifest["schema"]["max_genres"] == 10
  assert manifest["schema"]["mel"]["dtype"] == "float16"
  assert manifest["split"]["seed"] == 0 and manifest["split"]["fractions"] == [0.8, 0.1, 0.1]
  assert manifest["problems"]["counts"]["missing_mel"] > 0
  # Shards are bounded: 8 MiB here, so several per split.
  assert sum(s["split"] == "train" for s in manifest["shards"]) >= 2
  for shard in manifest["shards"]:
    path = os.path.join(out, shard["file"])
    assert os.path.getsize(path) == shard["bytes"] <= 8.5 * 2 ** 20
    assert safeio.sha256_file(path) == shard["sha256"]
  assert not [n for n in os.listdir(out) if n.endswith(".partial")]


def test_rerun_resumes_and_overwrite_redoes(prepared, tmp_path):
  corpus, out, manifest = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(out, copy)
  # A complete preparation is left as it is.
  assert steps.prepare(corpus, copy, FAST, workers=2, progress=False)["created"] == manifest["created"]
  # A killed run: the manifest never written, one shard lost, a half-written temporary left behind.
  state = json.load(open(os.path.join(copy, steps.STATE)))
  json.dump(dict(state, complete=False), open(os.path.join(copy, steps.STATE), "w"))
  os.remove(os.path.join(copy, shards.MANIFEST))
  lost = manifest["shards"][1]["file"]
  os.remove(os.path.join(copy, lost))
  open(os.path.join(copy, f".{lost}.partial"), "wb").write(b"half a shard")
  resumed = steps.prepare(corpus, copy, FAST, workers=2, progress=False)
  assert resumed["shards_reused"] == len(manifest["shards"]) - 1
  assert resumed["shards"] == manifest["shards"]  # same bytes: same checksums
  assert not os.path.exists(os.path.join(copy, f".{lost}.partial"))
  # Other settings in the same folder: refused unless --overwrite.
  other = steps.PrepareConfig(**{**FAST.__dict__, "seed": 1})
  with pytest.raises(InputError, match="another preparation"):
    steps.prepare(corpus, copy, other, workers=2, progress=False)
  redone = steps.prepare(corpus, copy, other, workers=2, progress=False, overwrite=True)
  assert redone["split"]["seed"] == 1 and redone["shards_reused"] == 0


# --- Reader. -------------------------------------------------------------------------------------------


def test_reader_yields_random_training_crops_and_centre_eval_crops(prepared):
  corpus, out, manifest = prepared
  ds = pipeline.dataset(out, "train", batch_size=16, training=True, seed=1)
  batch = next(iter(ds))
  assert batch["mel"].shape == (16, 256, 48) and batch["mel"].dtype == tf.float32
  assert batch["genres"].shape == (16, 10) and batch["cf"].shape == (16, 32)
  assert batch["has_cf"].shape == (16,) and batch["song_id"].shape == (16,)
  total = sum(int(b["mel"].shape[0]) for b in ds)
  assert total == manifest["counts"]["songs"]["train"] // 16 * 16  # drop_remainder when training
  # Eval: centre crops of the stored mel, all songs, in file order, deterministic.
  ev = pipeline.dataset(out, "test", batch_size=8, training=False)
  first = next(iter(ev))
  song = {s.song_id: s for s in corpus.songs}[int(first["song_id"][0])]
  full = np.load(song.mel_path).T.astype(np.float16).astype(np.float32)
  start = (full.shape[0] - 256) // 2
  np.testing.assert_array_equal(first["mel"][0].numpy(), full[start:start + 256])
  assert sum(int(b["mel"].shape[0]) for b in ev) == manifest["counts"]["songs"]["test"]
  # Training crops of the same song differ between draws.
  mel = tf.constant(full)
  crops = {int(np.argmax(np.all(full == pipeline.crop(mel, 256, True).numpy()[0], axis=1)))
           for _ in range(8)}
  assert len(crops) > 1


def test_short_mels_are_padded_with_the_floor():
  mel = tf.constant(np.full((100, 48), -50.0, np.float32))
  for training in (True, False):
    out = pipeline.crop(mel, 256, training).numpy()
    assert out.shape == (256, 48)
    assert np.all(out[:100] == -50) and np.all(out[100:] == -200)


def test_truncated_or_corrupt_shard_is_named(prepared, tmp_path):
  _, out, manifest = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(out, copy)
  victim = manifest["shards"][0]["file"]
  path = os.path.join(copy, victim)
  data = bytearray(open(path, "rb").read())
  open(path, "wb").write(data[:len(data) // 2])
  with pytest.raises(InputError, match=f"{victim}.*truncated"):
    pipeline.dataset(copy, "train", batch_size=8)
  data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
  open(path, "wb").write(data)
  with pytest.raises(InputError, match=f"{victim}.*checksum"):
    pipeline.dataset(copy, "train", batch_size=8, verify="checksum")
  with pytest.raises(InputError, match=f"{victim}.*corrupt"):
    pipeline.dataset(copy, "train", batch_size=8, verify="records")
  assert [victim in m for m in shards.find_corrupt_shards(copy)] == [True]


def test_reader_needs_a_manifest(tmp_path):
  with pytest.raises(InputError, match="no manifest"):
    pipeline.dataset(str(tmp_path), "train", batch_size=8)


# --- Bad input. ----------------------------------------------------------------------------------------


def _tiny_melon(root, songs=40, frames=300):
  """A hand-made Melon-layout corpus: songs 0..songs-1, two main genres, one playlist each 10 songs."""
  os.makedirs(root)
  rng = np.random.default_rng(0)
  codes = {"GN0100": "ballad", "GN0101": "ballad/a", "GN0200": "dance", "GN0201": "dance/b"}
  meta = []
  for i in range(songs):
    main = "GN0100" if i % 2 else "GN0200"
    meta.append({"id": i, "song_gn_gnr_basket": [main], "song_gn_dtl_gnr_basket": [main[:4] + "01"],
                 "album_id": 0, "artist_id_basket": [0], "artist_name_basket": ["x"],
                 "song_name": "s", "issue_date": "20200101"})
    path = mel_file(root, i)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, rng.normal(-80, 10, (48, frames)).astype(np.float32))
  playlists = [{"id": p, "songs": list(range(p * 10, p * 10 + 10)), "tags": [], "plylst_title": "",
                "like_cnt": 0, "updt_date": ""} for p in range(songs // 10)]
  for name, obj in (("song_meta", meta), ("genre_gn_all", codes), ("train", playlists),
                    ("val", []), ("test", [])):
    json.dump(obj, open(os.path.join(root, f"{name}.json"), "w"))
  return meta, playlists


def test_malformed_json_names_file_and_position(tmp_path):
  root = str(tmp_path / "melon")
  _tiny_melon(root)
  with open(os.path.join(root, "song_meta.json"), "a") as f:
    f.write("}")
  with pytest.raises(InputError, match=r"song_meta.json: malformed JSON at line 1, column \d+"):
    melon.read_melon(root)


def test_unknown_genres_and_playlist_songs_are_counted_and_named(tmp_path):
  root = str(tmp_path / "melon")
  meta, playlists = _tiny_melon(root)
  meta[3]["song_gn_dtl_gnr_basket"].append("GN9999")
  playlists[0]["songs"] += [123456, 654321]
  json.dump(meta, open(os.path.join(root, "song_meta.json"), "w"))
  json.dump(playlists, open(os.path.join(root, "train.json"), "w"))
  problems = Problems()
  corpus = melon.read_melon(root, problems=problems)
  assert problems.counts["unknown_genre"] == 1 and "song 3" in problems.examples["unknown_genre"][0]
  assert problems.examples["unknown_genre"][0].endswith("dropped (song kept)")
  assert "GN9999" not in corpus.songs[3].genres
  assert problems.counts["unknown_playlist_song"] == 1
  assert "train.json: playlist 0" in problems.examples["unknown_playlist_song"][0]
  with pytest.raises(InputError, match="GN9999"):
    melon.read_melon(root, problems=Problems(strict=True))


# One song of each defect (song id: (defect, the message that names it)); one preparation meets them all.
BAD_MELS = {
    7: ("shape", "mel has shape (40, 300), expected (48, frames)"),
    8: ("nan", "NaN or Inf"),
    9: ("garbage", "cannot read the mel file"),
    10: ("empty", "cannot read the mel file"),  # a zero-byte .npy among the songs that size the shards
    11: ("one_d", "mel has shape (14400,), expected (48, frames)"),  # flattened
    12: ("huge", "beyond float16's"),  # -1e5 would be -inf in a float16 shard
}


def _spoil(path, defect):
  if defect == "shape":
    np.save(path, np.zeros((40, 300), np.float32))
  elif defect in ("nan", "huge"):
    mel = np.load(path)
    mel[5, 5] = np.nan if defect == "nan" else -1e5
    np.save(path, mel)
  elif defect == "empty":
    open(path, "wb").close()
  elif defect == "one_d":
    np.save(path, np.zeros(48 * 300, np.float32))
  else:
    open(path, "wb").write(b"not numpy")


def test_bad_mel_files_are_named_counted_and_skipped(tmp_path):
  root = str(tmp_path / "melon")
  _tiny_melon(root)
  for song_id, (defect, _) in BAD_MELS.items():
    _spoil(mel_file(root, song_id), defect)
  corpus = melon.read_melon(root)
  # Only well-formed mels size the shards (a 1-D one used to make one-song shards).
  assert steps.songs_per_shard(corpus, FAST) == steps.songs_per_shard(
      dataclasses.replace(corpus, songs=[s for s in corpus.songs if s.song_id not in BAD_MELS]), FAST)
  manifest = steps.prepare(corpus, str(tmp_path / "tfr"), FAST, workers=1, progress=False)
  assert manifest["problems"]["counts"]["bad_mel"] == len(BAD_MELS)
  examples = manifest["problems"]["examples"]["bad_mel"]
  for song_id, (defect, message) in BAD_MELS.items():
    named = [e for e in examples if mel_file(root, song_id) in e]
    assert len(named) == 1 and message in named[0], (defect, examples)
  assert sum(manifest["counts"]["songs"].values()) == len(corpus.songs) - len(BAD_MELS)
  # Strict: the first bad song met stops the preparation, named with its own message.
  with pytest.raises(InputError, match="|".join(re.escape(m) for _, m in BAD_MELS.values())):
    steps.prepare(corpus, str(tmp_path / "strict"), FAST, workers=1, progress=False, strict=True)


@pytest.mark.slow
def test_prepare_command_on_the_demo_corpus(small_demo, tmp_path):
  """The command as a user runs it, with a flagfile; and a bad input as one clear line."""
  out = str(tmp_path / "tfr")
  args = ["--flagfile=configs/demo.flags", f"--melon_dir={small_demo}/melon", f"--tfrecord_dir={out}",
          "--cf_dim=32", "--warp_epochs=5"]
  result = run_module("tfcmir.prepare", *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| train |" in result.stdout and "input problems: missing_mel" in result.stdout
  manifest = shards.read_manifest(out)
  assert manifest["flags"]["cf_dim"] == 32 and manifest["flags"]["seed"] == 0
  again = run_module("tfcmir.prepare", *args)
  assert again.returncode == 0 and json.load(open(os.path.join(out, "manifest.json"))) == manifest
  missing = run_module("tfcmir.prepare", "--flagfile=configs/demo.flags",
                       f"--melon_dir={tmp_path}/nowhere", f"--tfrecord_dir={out}")
  assert missing.returncode == 1
  assert "nowhere: Melon dataset folder not found" in missing.stderr
  assert "Traceback" not in missing.stderr


def test_your_own_catalogue_prepares_from_audio(small_demo, tmp_path):
  """Audio files + CSV + M3U playlists -> shards whose mels are the project's front end's."""
  from tfcmir import audio
  from tfcmir.data import catalogue

  gtzan = os.path.join(small_demo, "gtzan")
  music = tmp_path / "music"
  rows, by_genre = ["path,genres"], {}
  for genre in ("blues", "jazz", "metal", "pop", "rock"):
    for name in sorted(os.listdir(os.path.join(gtzan, genre)))[:5]:
      (music / genre).mkdir(parents=True, exist_ok=True)
      shutil.copy(os.path.join(gtzan, genre, name), music / genre / name)
      rows.append(f"{genre}/{name},{genre.title()}|Demo {genre}")
      by_genre.setdefault(genre, []).append(f"../music/{genre}/{name}")
  (tmp_path / "songs.csv").write_text("\n".join(rows) + "\n")
  (tmp_path / "playlists").mkdir()
  for k, (genre, paths) in enumerate(by_genre.items()):
    other = list(by_genre.values())[(k + 1) % len(by_genre)][:2]
    (tmp_path / "playlists" / f"{genre}.m3u").write_text("#EXTM3U\n" + "\n".join(paths + other) + "\n")
  corpus = catalogue.read_catalogue(str(music), str(tmp_path / "songs.csv"),
                                    str(tmp_path / "playlists"))
  assert len(corpus.songs) == 25 and len(corpus.playlists) == 5
  out = str(tmp_path / "tfr")
  manifest = steps.prepare(corpus, out, FAST, workers=2, progress=False)
  assert sum(manifest["counts"]["songs"].values()) == 25
  by_id = {s.song_id: s for s in corpus.songs}
  shard, rec = next(_records(out, manifest))
  expected = audio.file_to_mel(by_id[int(rec["song_id"])].audio_path).astype(np.float16)
  assert rec["mel"].tobytes() == expected.tobytes()
  batch = next(iter(pipeline.dataset(out, "train", batch_size=4)))
  assert batch["mel"].shape == (4, 256, 48)


def test_cf_backend_lightfm_fits_the_same_shapes_and_changes_the_fingerprint(monkeypatch):
  from tfcmir.prepare import warp
  matrix = warp.synthetic_playlists(120, 60, mean_length=10, n_clusters=4, seed=0)
  lightfm_config = dataclasses.replace(FAST, cf_backend="lightfm", warp_epochs=2)
  corpus = types.SimpleNamespace(songs=[], playlists=[[1, 2]], genre_names={"GN0100"})
  assert steps.fingerprint(corpus, lightfm_config) != steps.fingerprint(corpus, FAST)
  try:
    import lightfm  # noqa: F401
  except ImportError:
    with pytest.raises(InputError, match="--cf_backend=lightfm needs lightfm"):
      steps.fit_cf(matrix, lightfm_config, progress=False)
    return
  ours = steps.fit_cf(matrix, dataclasses.replace(lightfm_config, cf_backend="tf"), progress=False)
  theirs = steps.fit_cf(matrix, lightfm_config, progress=False)
  for field in ("item_factors", "item_bias", "user_factors", "user_bias"):
    assert getattr(theirs, field).shape == getattr(ours, field).shape
    assert getattr(theirs, field).dtype == np.float32
  assert np.abs(theirs.item_factors).max() > 0
  # Without lightfm installed, a one-line InputError names the extra to install.
  monkeypatch.setitem(sys.modules, "lightfm", None)
  with pytest.raises(InputError, match=r"pip install 'tfcmir\[lightfm\]'"):
    steps.fit_cf(matrix, lightfm_config, progress=False)
