"""benchmarks/devset.py on a generated tree shaped like unpacked .deb packages: no network.

The clips, the split by track, the playlists and the licences, checked against the catalogue reader
and against figures worked out by hand.
"""

import csv
import importlib.util
import os
import types

import numpy as np
import pytest
import soundfile as sf

from helpers import ROOT
from tfcmir.data.catalogue import read_catalogue

_SPEC = importlib.util.spec_from_file_location("devset", os.path.join(ROOT, "benchmarks", "devset.py"))
devset = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(devset)


def tone_package(root, name, style, seconds, base, licence_stanzas):
  """A fake unpacked package: music/{sub}/song{k}.wav of the given lengths, and its copyright file."""
  for k, length in enumerate(seconds):
    path = os.path.join(root, name, "usr/share/games", name, "music", ("calm", "busy")[k % 2],
                        f"song{k}.wav")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    t = np.arange(int(length * 8000)) / 8000
    sf.write(path, (0.3 * np.sin(2 * np.pi * base * (1 + 0.05 * k) * t)).astype(np.float32), 8000)
  doc = os.path.join(root, name, "usr/share/doc", name)
  os.makedirs(doc, exist_ok=True)
  with open(os.path.join(doc, "copyright"), "w", encoding="utf-8") as f:
    f.write("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            + "\n\n".join(licence_stanzas) + "\n")
  pattern = rf"usr/share/games/{name}/music/(?P<track>(?P<fine>[^/]+)/[^/]+)\.wav"
  return devset.Package(name, style, pattern, (f"usr/share/games/{name}/", "data/"), None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("debs"))
  # Lengths: 20 s (too short: no clip), 40 s (1 clip), 65 s (2), 100 s (3), 130 s (3, the cap).
  low = tone_package(root, "low-data", "Low", [20, 40, 65, 100, 130], 200.0,
                     ["Files: *\nCopyright: A\nLicense: GPL-2+",
                      "Files: data/music/busy/*\nCopyright: B\nLicense: CC-BY-SA-3.0"])
  high = tone_package(root, "high-music", "High", [40, 40, 40, 65], 900.0,
                      ["Files: *\nCopyright: C\nLicense: CC0-1.0"])
  packages = [(low, "1.0-1"), (high, "2:3-4")]
  roots = {p.name: os.path.join(root, p.name) for p, _ in packages}
  out = str(tmp_path_factory.mktemp("devset"))
  summary = devset.build(packages, roots, out, clips_per_track=3, test_fraction=0.25, playlists=8,
                         seed=0)
  return types.SimpleNamespace(out=out, summary=summary, packages=packages, roots=roots)


def rows(path):
  with open(path, encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def test_clip_starts_are_evenly_spaced():
  assert devset.clip_starts(20) == []  # shorter than MIN_TRACK_SECONDS
  assert devset.clip_starts(40) == [5.0]  # one clip, 5 s on either side
  assert devset.clip_starts(100) == pytest.approx([10 / 4, 2 * 10 / 4 + 30, 3 * 10 / 4 + 60])
  assert devset.clip_starts(300, max_clips=2) == pytest.approx([80.0, 190.0])


def test_clips_are_30_seconds_at_16_khz_with_two_level_genres(built):
  songs = rows(os.path.join(built.out, "songs.csv"))
  # 0 + 1 + 2 + 3 + 3 clips of low-data, 1 + 1 + 1 + 2 of high-music.
  assert len(songs) == 14
  assert {r["package"]: 0 for r in songs} == {"low-data": 0, "high-music": 0}
  for row in songs:
    info = sf.info(os.path.join(built.out, "music", row["path"]))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 30 * 16000)
    style, fine = row["genres"].split("|")
    assert fine == f"{style} {row['track'].split('/')[1]}"  # the sub-folder is the finer genre
  assert "low-data/calm/song0" not in {r["track"] for r in songs}  # 20 s: no clip


def test_split_is_by_track_and_held_out_tracks_are_absent_from_train(built):
  songs = rows(os.path.join(built.out, "songs.csv"))
  split_of = {}
  for row in songs:
    assert split_of.setdefault(row["track"], row["split"]) == row["split"]
  held = {t for t, s in split_of.items() if s == "test"}
  # round(0.25 * 4 tracks) = 1 per style.
  assert sorted(t.split("/")[0] for t in held) == ["high-music", "low-data"]
  train_rows = rows(os.path.join(built.out, "train", "songs.csv"))
  assert {r["track"] for r in train_rows} == set(split_of) - held
  # What tfcmir.prepare reads: the training folder alone, every file listed, no held-out clip.
  corpus = read_catalogue(os.path.join(built.out, "music", "train"),
                          os.path.join(built.out, "train", "songs.csv"),
                          os.path.join(built.out, "train", "playlists"))
  assert not corpus.problems.counts
  assert len(corpus.songs) == len(train_rows)
  heard = {os.path.relpath(s.audio_path, os.path.join(built.out, "music")) for s in corpus.songs}
  assert heard == {r["path"] for r in songs if r["track"] not in held}
  assert all(r["path"].startswith(f"{r['split']}/") for r in songs)
  full = read_catalogue(os.path.join(built.out, "music"), os.path.join(built.out, "songs.csv"),
                        os.path.join(built.out, "playlists"))
  assert not full.problems.counts and len(full.songs) == len(songs)


def test_every_track_is_in_a_playlist_and_playlists_list_whole_tracks(built):
  songs = rows(os.path.join(built.out, "songs.csv"))
  track_of = {r["path"]: r["track"] for r in songs}
  listed = set()
  folder = os.path.join(built.out, "playlists")
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
      paths = [os.path.relpath(os.path.normpath(os.path.join(folder, line.strip())),
                               os.path.join(built.out, "music"))
               for line in f if line.strip() and not line.startswith("#")]
    tracks = {track_of[p] for p in paths}
    assert len(tracks) >= 2
    # every clip of each listed track
    assert sorted(paths) == sorted(r["path"] for r in songs if r["track"] in tracks)
    listed |= tracks
  assert listed == set(track_of.values())


def test_playlists_are_drawn_mostly_within_a_style():
  tracks = [devset.Track(f"{s}/{k}", s, s, None, "", "", ("", "")) for s in "ABCD" for k in range(30)]
  lists = devset.make_playlists(tracks, 80, seed=1)
  same = [max(sum(t.startswith(s) for t in p) for s in "ABCD") / len(p) for p in lists]
  assert 0.7 < np.mean(same) < 0.95  # within_style=0.8, plus the coverage top-ups of the home style
  assert {t for p in lists for t in p} == {t.track_id for t in tracks}
  assert lists == devset.make_playlists(tracks, 80, seed=1)
  assert lists != devset.make_playlists(tracks, 80, seed=2)


def test_licences_follow_the_last_matching_stanza(built):
  text = open(os.path.join(built.out, "LICENSES.md"), encoding="utf-8").read()
  # busy/ tracks (song1, song3) have their own stanza: source path data/music/busy/*.
  assert "| usr/share/games/low-data/music/busy/song1.wav | CC-BY-SA-3.0 | B |" in text
  assert "| usr/share/games/low-data/music/calm/song2.wav | GPL-2+ | A |" in text
  assert "## high-music 2:3-4" in text and "CC0-1.0 (4 tracks)" in text
  assert os.path.exists(os.path.join(built.out, "licenses", "low-data.copyright"))


def test_rebuilding_gives_the_same_files(built, tmp_path):
  again = str(tmp_path / "again")
  devset.build(built.packages, built.roots, again, clips_per_track=3, test_fraction=0.25,
               playlists=8, seed=0)
  for name in ("songs.csv", "train/songs.csv", "LICENSES.md", "devset.json"):
    assert open(os.path.join(again, name), "rb").read() == open(os.path.join(built.out, name),
                                                                 "rb").read(), name
  first = rows(os.path.join(built.out, "songs.csv"))[0]["path"]
  assert (open(os.path.join(again, "music", first), "rb").read()
          == open(os.path.join(built.out, "music", first), "rb").read())
  assert sorted(os.listdir(os.path.join(again, "playlists"))) == sorted(
      os.listdir(os.path.join(built.out, "playlists")))
