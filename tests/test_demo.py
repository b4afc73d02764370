"""The demo datasets: published layouts, determinism, and structure a model can learn."""

import collections
import glob
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from helpers import SMALL_DEMO, run_module
from tfcmir.data import generator
from tfcmir import shards
from tfcmir.data import structure
from tfcmir.data import synth

MELON_SONG_FIELDS = {"id", "album_id", "artist_id_basket", "artist_name_basket", "song_name",
                     "song_gn_gnr_basket", "song_gn_dtl_gnr_basket", "issue_date"}
PLAYLIST_FIELDS = {"id", "plylst_title", "tags", "songs", "like_cnt", "updt_date"}


def _json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_melon_layout(small_demo):
  melon = os.path.join(small_demo, "melon")
  meta = _json(os.path.join(melon, "song_meta.json"))
  codes = _json(os.path.join(melon, "genre_gn_all.json"))
  assert len(meta) == SMALL_DEMO["songs"]
  assert sum(c.endswith("00") for c in codes) == 10 and len(codes) == 40
  ids = [s["id"] for s in meta]
  assert len(set(ids)) == len(ids)
  with_mel = 0
  for song in meta:
    assert MELON_SONG_FIELDS <= set(song)
    assert 1 <= len(song["song_gn_dtl_gnr_basket"]) <= 3
    assert set(song["song_gn_dtl_gnr_basket"]) <= set(codes)
    # Main codes are exactly the GNxx00 parents of the detailed codes.
    assert sorted({c[:4] + "00" for c in song["song_gn_dtl_gnr_basket"]}) == song["song_gn_gnr_basket"]
    assert len(song["issue_date"]) == 8 and song["issue_date"].isdigit()
    path = os.path.join(melon, str(song["id"] // 1000), f"{song['id']}.npy")
    if os.path.exists(path):
      with_mel += 1
  frames = (int(SMALL_DEMO["seconds"] * 16000) + 256 + 255) // 256
  for path in glob.glob(os.path.join(melon, "*", "*.npy"))[:50]:
    mel = np.load(path)
    assert mel.shape == (48, frames) and mel.dtype == np.float32
    assert -200 <= mel.min() and mel.max() < 0 and mel.std() > 5
  # Some songs lack a mel file, as in the real dataset, and the manifest counts them.
  manifest = generator.read_manifest(small_demo)
  assert with_mel == manifest["counts"]["melon"]["songs_with_mel"] < len(meta)
  playlists = {name: _json(os.path.join(melon, f"{name}.json")) for name in ("train", "val", "test")}
  assert len(playlists["train"]) > 4 * len(playlists["val"])
  seen = set()
  for name, lists in playlists.items():
    for p in lists:
      assert PLAYLIST_FIELDS <= set(p)
      assert p["id"] not in seen
      seen.add(p["id"])
      assert set(p["songs"]) <= set(ids) and len(p["songs"]) == len(set(p["songs"])) >= 10


def test_gtzan_layout(small_demo):
  root = os.path.join(small_demo, "gtzan")
  assert sorted(os.listdir(root)) == sorted(list(synth.MAIN_GENRES) + [
      "train_filtered.txt", "valid_filtered.txt", "test_filtered.txt"])
  splits = {}
  for name in ("train", "valid", "test"):
    with open(os.path.join(root, f"{name}_filtered.txt")) as f:
      splits[name] = f.read().split("\n")[:-1]
  all_files = [r for rels in splits.values() for r in rels]
  assert len(all_files) == len(set(all_files)) == 10 * SMALL_DEMO["gtzan_per_genre"]
  assert len(splits["train"]) > len(splits["test"]) >= len(splits["valid"]) > 0  # 443 / 290 / 197
  for rel in all_files:
    genre, name = rel.split("/")
    assert name.startswith(genre + ".") and name.endswith(".wav")
  info = sf.info(os.path.join(root, all_files[0]))
  assert info.samplerate == 22050 and info.channels == 1
  assert info.duration == pytest.approx(SMALL_DEMO["seconds"], abs=0.01)


def test_mtg_jamendo_layout(small_demo):
  root = os.path.join(small_demo, "mtg-jamendo")
  for split in range(5):
    for category, prefix in (("genre", "genre---"), ("instrument", "instrument---"),
                             ("moodtheme", "mood/theme---")):
      tracks = {}
      for part in ("train", "validation", "test"):
        path = os.path.join(root, "data", "splits", f"split-{split}",
                            f"autotagging_{category}-{part}.tsv")
        with open(path, "rb") as f:
          raw = f.read()
        assert raw.count(b"\r\n") == raw.count(b"\n")  # CRLF, as the official files
        lines = raw.decode().split("\r\n")[:-1]
        assert lines[0] == "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"
        for line in lines[1:]:
          fields = line.split("\t")
          track, path_field, tags = fields[0], fields[3], fields[5:]
          assert track.startswith("track_") and tags
          assert all(t.startswith(prefix) for t in tags)
          number = int(track[len("track_"):])
          assert path_field == f"{number % 100:02d}/{number}.mp3"
          assert track not in tracks  # the three parts of a split are disjoint
          tracks[track] = path_field
      assert len(tracks) > 0.8 * SMALL_DEMO["jamendo_tracks"]
  some = os.path.join(root, "audio", next(iter(tracks.values())))
  assert sf.info(some).format == "MP3"


def test_demo_is_deterministic_and_worker_count_free(tmp_path):
  config = generator.DemoConfig(seed=5, songs=60, playlists=20, seconds=4.5, gtzan_per_genre=4,
                           jamendo_tracks=20)
  a = generator.generate(str(tmp_path / "a"), config, workers=1)
  generator.generate(str(tmp_path / "b"), config, workers=2)
  assert generator.digest(str(tmp_path / "a")) == generator.digest(str(tmp_path / "b"))
  other = generator.DemoConfig(**{**config.__dict__, "seed": 6})
  generator.generate(str(tmp_path / "c"), other, workers=2)
  assert generator.digest(str(tmp_path / "a")) != generator.digest(str(tmp_path / "c"))
  # A complete dataset with the same settings is left alone; a stale partial one is never used.
  stamp = os.path.getmtime(tmp_path / "a" / "melon" / "song_meta.json")
  assert generator.generate(str(tmp_path / "a"), config, workers=1) == a
  assert os.path.getmtime(tmp_path / "a" / "melon" / "song_meta.json") == stamp
  assert not os.path.exists(str(tmp_path / "a") + ".partial")


def test_genres_are_one_to_three_and_taxonomy_is_two_level(small_demo):
  truth = _json(os.path.join(small_demo, "truth", "melon.json"))
  sizes = collections.Counter(len(t["genres"]) for t in truth)
  assert set(sizes) <= {1, 2, 3} and sizes[1] > sizes[2] > sizes[3] > 0


@pytest.fixture(scope="module")
def found(small_demo):
  return structure.demo_structure(small_demo)


def test_demo_data_carries_learnable_structure(found):
  """If the generator lost its structure (genres not audible, playlists random), this fails."""
  report = found
  genre_acc, genre_chance = report["genre"]
  assert genre_acc >= 0.6 and genre_acc >= 3 * genre_chance
  assert report["gtzan"][0] >= 0.4  # a classifier fit on the Melon demo transfers to GTZAN
  assert report["energy"][0] >= 0.25  # the hidden mood is audible
  hit, random_hit = report["playlist"]
  assert hit >= 3 * random_hit  # playlists are predictable from co-membership...
  assert hit > report["playlist_genre_only"][0]  # ...beyond what genre explains


def test_structure_probes_can_fail(small_demo, found):
  """Negative control: with labels and memberships shuffled, the probes lose what they found."""
  report = structure.demo_structure(small_demo, shuffle_labels=True)
  assert report["genre"][0] < 0.3
  assert report["energy"][0] < 0.1
  # Shuffled memberships keep song popularity, which alone beats random a little.
  assert report["playlist"][0] < 0.6 * found["playlist"][0]


MAIN_JOB_EPOCHS = 20  # at 10 the held-out probe sat within its noise of the untrained encoder


@pytest.mark.slow
def test_main_job_runs_on_the_default_demo(tmp_path):
  """The README's first command: the whole pipeline on the default demo data, and the paper's tables.

  Training runs MAIN_JOB_EPOCHS instead of the flagfile's 40 epochs, which keeps the suite within its
  time budget on 2 cores (the full command takes ~7 minutes; the README's figures come from it).
  The trained contrastive encoder's embeddings of held-out songs must predict their genre better
  than the same encoder untrained, and it must beat chance clearly on all three downstream tasks
  (whether it beats the baseline is reported, not asserted).
  """
  out = str(tmp_path / "demo")
  result = run_module("tfcmir.demo", "--flagfile=configs/demo.flags", f"--demo_dir={out}",
                      f"--tfrecord_dir={tmp_path}/tfrecords", f"--model_dir={tmp_path}/runs",
                      f"--export_dir={tmp_path}/exports", f"--eval_dir={tmp_path}/reports",
                      f"--epochs={MAIN_JOB_EPOCHS}", timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "done: the whole pipeline ran on the demo data" in result.stdout
  # Quiet: progress bars and summaries, but no library or absl INFO lines (LiteRT's XNNPACK notice,
  # the WARP and export details that --verbosity=1 shows).
  logged = [line for line in (result.stdout + result.stderr).splitlines()
            if re.match(r"(I\d{4} \d\d:\d\d|INFO: )", line)]
  assert logged == [], logged
  manifest = generator.read_manifest(out)
  assert manifest["counts"]["melon"]["songs"] == 1500
  assert manifest["bytes"] < 500 * 2 ** 20
  prepared = shards.read_manifest(str(tmp_path / "tfrecords"))
  assert sum(prepared["counts"]["songs"].values()) == manifest["counts"]["melon"]["songs_with_mel"]
  line = next(l for l in result.stdout.splitlines() if l.startswith("held-out test songs"))
  trained, untrained, chance = (float(line.split(f"{k} ")[1].split(",")[0])
                                for k in ("trained", "untrained", "chance"))
  assert trained > untrained and trained > 4 * chance
  reports = tmp_path / "reports" / "demo"
  gtzan = json.load(open(reports / "gtzan.json"))["Contr_CF-G"]
  assert gtzan["accuracy_mean"] > 0.3  # 10 genres: chance 0.1
  jamendo = json.load(open(reports / "jamendo.json"))["Contr_CF-G"]
  assert all(jamendo[c]["roc_auc_mean"] > 0.6 for c in ("genre", "moodtheme", "instrument"))
  continuation = json.load(open(reports / "continuation.json"))["Contr_CF-G"]
  assert continuation["ndcg@20"] > 2 * continuation["random"]["ndcg@20"]  # demo: k = 20
  # Search: genre words find audio of that genre (precision@10 over twice chance) for most genres.
  search = (reports / "search.md").read_text().splitlines()
  row = next(line for line in search if line.startswith("| contr_cf_g |")).split(" | ")
  above, genres = map(int, row[-2].split("/"))
  assert above >= 0.6 * genres, "\n".join(search)
  assert next(line for line in search if line.startswith("| bline_cf_g |")).count("no shared space")
  for name in ("gtzan.md", "jamendo.md", "continuation.md", "gtzan_confusion_contr_cf_g.png",
               "gtzan_map_contr_cf_g.png"):
    assert (reports / name).exists(), name
  assert (tmp_path / "exports" / "demo" / "bline_cf_g" / "export_manifest.json").exists()
  print(result.stdout[-4000:])
