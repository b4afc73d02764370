"""Reader for the Melon Playlist Dataset, in its published layout.

    MELON_DIR/song_meta.json     [{id, song_gn_gnr_basket, song_gn_dtl_gnr_basket, ...}, ...]
    MELON_DIR/genre_gn_all.json  {"GN0100": name, "GN0101": name, ...}
    MELON_DIR/train.json, val.json, test.json   [{id, songs: [song ids], ...}, ...]
    MEL_DIR/{id // 1000}/{id}.npy  (48, T) mels (arena_mel_*.tar unpacked; MEL_DIR defaults to MELON_DIR)

Songs without a mel file (58,898 in the real dataset) are counted and left out; playlists keep only
songs that have one. Unknown genre codes and playlist entries naming songs not in song_meta.json are
reported (named) and dropped; malformed JSON stops the run with the file and position.
"""

from __future__ import annotations

import json
import os

from tfcmir.errors import InputError, Problems

from tfcmir.data.corpus import Corpus, SongRecord, mel_file, order_genres

PLAYLIST_FILES = ("train", "val", "test")


def load_json(path):
  """json.load with errors that name the file (and the line and column for bad syntax)."""
  if not os.path.exists(path):
    raise InputError(f"{path}: file not found")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as err:
    raise InputError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") \
        from err
  except UnicodeDecodeError as err:
    raise InputError(f"{path}: not UTF-8 text ({err})") from err


def _expect(path, value, kind):
  if not isinstance(value, kind):
    raise InputError(f"{path}: expected a JSON {kind.__name__} at the top level, "
                     f"found {type(value).__name__}")
  return value


def read_genres(path):
  codes = _expect(path, load_json(path), dict)
  return {str(code): str(name) for code, name in codes.items()}


def read_songs(path, genre_names, mel_dir, problems):
  """song_meta.json -> SongRecords of the songs that have a mel file."""
  songs, seen = [], set()
  for n, entry in enumerate(_expect(path, load_json(path), list)):
    try:
      song_id = int(entry["id"])
      main = list(entry.get("song_gn_gnr_basket") or [])
      detailed = list(entry.get("song_gn_dtl_gnr_basket") or [])
    except (KeyError, TypeError, ValueError) as err:
      problems.report("bad_song_meta", f"{path}: entry {n} is not a song record ({err!r})")
      continue
    if song_id in seen:
      problems.report("duplicate_song", f"{path}: song {song_id} appears twice; the first is kept")
      continue
    seen.add(song_id)
    unknown = [c for c in main + detailed if c not in genre_names]
    if unknown:
      problems.report("unknown_genre", f"{path}: song {song_id} has genre codes {unknown} not in "
                      "genre_gn_all.json; they are dropped (song kept)", outcome="dropped (song kept)")
    genres = order_genres([c for c in main if c in genre_names],
                          [c for c in detailed if c in genre_names])
    path_mel = mel_file(mel_dir, song_id)
    if not os.path.exists(path_mel):
      problems.note("missing_mel", f"song {song_id}: no mel file {path_mel}")
      continue
    songs.append(SongRecord(song_id, genres, mel_path=path_mel))
  songs.sort(key=lambda s: s.song_id)
  return songs, seen


def read_playlists(path, known_ids, usable_ids, problems):
  """A playlist file -> lists of song ids, keeping songs that exist and have a mel."""
  playlists = []
  for n, entry in enumerate(_expect(path, load_json(path), list)):
    try:
      pid = entry.get("id", n)
      ids = [int(s) for s in entry["songs"]]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
      problems.report("bad_playlist", f"{path}: entry {n} is not a playlist record ({err!r})")
      continue
    unknown = [s for s in ids if s not in known_ids]
    if unknown:
      problems.report("unknown_playlist_song", f"{path}: playlist {pid} names {len(unknown)} songs "
                      f"not in song_meta.json (e.g. {unknown[:3]}); they are dropped")
    kept = list(dict.fromkeys(s for s in ids if s in usable_ids))
    if kept:
      playlists.append(kept)
    else:
      problems.note("empty_playlist", f"{path}: playlist {pid} has no song with a mel file")
  return playlists


def read_melon(melon_dir, mel_dir=None, problems=None):
  """Reads a Melon-layout dataset into a Corpus (train.json playlists for CF; val/test held out)."""
  problems = problems or Problems()
  if not os.path.isdir(melon_dir):
    raise InputError(f"{melon_dir}: Melon dataset folder not found")
  mel_dir = mel_dir or melon_dir
  genre_names = read_genres(os.path.join(melon_dir, "genre_gn_all.json"))
  songs, known = read_songs(os.path.join(melon_dir, "song_meta.json"), genre_names, mel_dir, problems)
  if not songs:
    raise InputError(f"{mel_dir}: no song of song_meta.json has a mel file "
                     "({id // 1000}/{id}.npy); is the mel folder right?")
  usable = {s.song_id for s in songs}
  playlists = {name: read_playlists(os.path.join(melon_dir, f"{name}.json"), known, usable, problems)
               for name in PLAYLIST_FILES}
  return Corpus("melon", songs, genre_names, playlists["train"],
                {"val": playlists["val"], "test": playlists["test"]}, problems)
