"""Your own music catalogue: a folder of audio files, a metadata CSV and playlists.

A catalogue is three things a music library can usually export:

    music/                          audio_dir: .wav .flac .ogg .mp3 .aiff files, in any sub-folders
      rock/The Band/song 1.mp3
      rock/The Band/song 2.flac
      jazz/Trio - Take 5.wav
    songs.csv                       metadata_csv: one row per song
    playlists/                      one .m3u or .m3u8 file per playlist, in any sub-folders
      road trip.m3u
      sunday.m3u8

songs.csv is UTF-8, comma-separated, with a header row (columns in any order):

    path,genres,title
    rock/The Band/song 1.mp3,Rock|Indie Rock,Song One
    rock/The Band/song 2.flac,rock,Song Two
    jazz/Trio - Take 5.wav,Jazz|Cool Jazz,"Take 5, live"

playlists/road trip.m3u lists one song a line, as a path relative to the playlist's own folder or an
absolute one; `#` lines (#EXTM3U, #EXTINF) and URLs are skipped:

    #EXTM3U
    #EXTINF:215,The Band - Song One
    ../music/rock/The Band/song 1.mp3
    /home/me/music/jazz/Trio - Take 5.wav

Read it with `read_catalogue('music', 'songs.csv', 'playlists')`. The columns:

  path     the audio file, relative to audio_dir or absolute. Without a path column each song's file is
           found by its id: a file named {id}.{extension} anywhere under audio_dir (music/12/12345.mp3).
  id       optional: a whole number >= 0, unique per song. Without an id column the songs are numbered
           0, 1, 2, ... in row order (blank lines skipped). Those ids name the songs in the prepared data
           and in trained models, so they stay valid only while you append rows; if you will reorder,
           insert or delete rows, give every song its own id.
  genres   genre names separated by `|`. Case and spacing do not count: 'Indie  Rock' and 'indie rock'
           are one genre, with code 'indie rock' and the name as first spelled. It may be empty: the
           song is still used for its audio and playlists.
  others   title, artist or any other column may be present; they are not used.

Instead of a folder, `playlists` may be one .m3u/.m3u8 file, or one JSON file in either form

    [{"name": "road trip", "songs": ["rock/The Band/song 1.mp3", 2]}]      {"road trip": [0, 2]}

whose entries are paths (relative to audio_dir, like the CSV's) or song ids. A song repeated in a
playlist counts once. .m3u8 files are UTF-8; .m3u files UTF-8 or else Latin-1.

Bad input is reported, counted and skipped (`--strict` stops at the first): a row whose audio file is
missing (missing_audio) or not a supported format (unsupported_audio), a bad id (bad_id), a row with
the wrong number of fields (bad_row), a row whose id or file an earlier row already has
(duplicate_song), two audio files for one id (ambiguous_audio; the first in name order is used), a
song without genres (no_genre; kept), a playlist entry that is no song of the CSV
(unknown_playlist_song), and an unreadable or malformed playlist file or JSON item (bad_playlist).
Counted but never fatal: audio files no row names (unlisted_audio), files in the playlists folder that
are neither playlists nor audio (not_a_playlist), and playlists left without a song that has audio
(empty_playlist; dropped). Playlists keep only songs with audio. Fatal, an InputError
naming the file: a missing folder or file, a CSV that is not UTF-8 or lacks a required column, a JSON
playlists file that does not parse, and a catalogue with no usable song or playlist. Whether the audio
decodes is checked later, when the prepare step computes the mels (bad_audio).
"""

from __future__ import annotations

import csv
import json
import os
import re
import unicodedata
import urllib.parse
import urllib.request

from absl import logging

from tfcmir.audio import AUDIO_EXTENSIONS
from tfcmir.errors import InputError, Problems
from tfcmir.data.corpus import Corpus, SongRecord, order_genres

PLAYLIST_EXTENSIONS = (".m3u", ".m3u8")
GENRE_SEPARATOR = "|"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_ID = re.compile(r"[0-9]+")
_MAX_ID = 2 ** 63 - 1  # ids are stored as int64


def read_catalogue(audio_dir, metadata_csv, playlists, problems=None):
  """Reads your own catalogue into a Corpus (see the module docstring for the format).

  Args:
    audio_dir: the folder holding the audio files.
    metadata_csv: the CSV with a `genres` column and a `path` or an `id` column.
    playlists: a folder of .m3u/.m3u8 files, one such file, or a JSON playlists file.
    problems: where bad input is reported; a fresh non-strict `Problems` if None.

  Returns:
    Corpus(name='catalogue'): the songs whose audio file exists, in id order, their genres as codes;
    every playlist as a list of the ids of such songs (all playlists learn the CF factors; none are
    held out). As in the Melon reader, a playlist keeps only songs with audio: a song whose row had a
    problem is reported once, for the row, and not again for each playlist naming it.

  Raises:
    InputError: the fatal problems listed in the module docstring, or any problem when strict.
  """
  problems = Problems() if problems is None else problems
  audio_dir = os.path.abspath(os.fspath(audio_dir))
  metadata_csv = os.fspath(metadata_csv)
  if not os.path.isdir(audio_dir):
    raise InputError(f"{audio_dir}: audio folder not found")
  reader = _SongReader(audio_dir, metadata_csv, problems)
  songs = reader.read()
  if not songs:
    raise InputError(f"{metadata_csv}: no usable songs (every row had a problem; see the warnings)")
  lists = read_playlists(playlists, reader.index, problems)
  if not lists:
    raise InputError(f"{os.fspath(playlists)}: no usable playlists (see the warnings)")
  logging.info("catalogue: %d songs, %d genres, %d playlists from %s", len(songs),
               len(reader.genre_names), len(lists), metadata_csv)
  return Corpus(name="catalogue", songs=songs, genre_names=dict(sorted(reader.genre_names.items())),
                playlists=lists, problems=problems)


def genre_code(name):
  """A genre's code: lower case with single spaces ('Indie  Rock ' -> 'indie rock')."""
  return " ".join(name.split()).lower()


def parse_genres(field):
  """'Rock|indie  rock' -> [('rock', 'Rock'), ('indie rock', 'indie rock')]: (code, name) pairs."""
  names = (" ".join(part.split()) for part in (field or "").split(GENRE_SEPARATOR))
  return [(genre_code(name), name) for name in names if name]


def is_audio_file(path):
  """Whether `path` has one of the extensions tfcmir.audio decodes (any case)."""
  return os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS


def path_key(path):
  """One spelling per file, to match paths: absolute, symlinks resolved, Unicode NFC.

  NFC because macOS writes file names decomposed (NFD) while CSVs and playlists are usually NFC.
  """
  return unicodedata.normalize("NFC", os.path.normcase(os.path.realpath(path)))


def existing_file(path):
  """`path`, or its other Unicode spelling (NFC or NFD), whichever is a file; None if neither is."""
  for candidate in dict.fromkeys([path, unicodedata.normalize("NFC", path),
                                  unicodedata.normalize("NFD", path)]):
    if os.path.isfile(candidate):
      return candidate
  return None


def walk_files(root):
  """Every file under `root`, sorted; hidden files and folders (.git, macOS ._song.mp3) left out.

  Follows linked folders (a library on another disk linked in), visiting each real folder once.
  """
  found, seen = [], set()
  for folder, dirs, files in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:  # a link back up the tree, or a second link to one folder
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found.extend(os.path.join(folder, f) for f in files if not f.startswith("."))
  return sorted(found)


class SongIndex:
  """Finds the song a playlist entry names: by file (any spelling of its path) or by id.

  Holds every song the CSV defines, also those whose audio is missing, so that a playlist naming one
  is not reported a second time as an unknown song; `usable` are the ids of the songs with audio.
  """

  def __init__(self, audio_dir):
    self.audio_dir = audio_dir
    self.ids = set()
    self.usable = set()
    self.by_path = {}

  def add(self, song_id, paths=(), usable=True):
    self.ids.add(song_id)
    if usable:
      self.usable.add(song_id)
    for path in paths:
      self.by_path.setdefault(path_key(path), song_id)

  def find_path(self, text, base_dir):
    """A path entry (relative to `base_dir`, absolute, or a file:// URL) -> song id, or None."""
    if text.lower().startswith("file://"):
      text = urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    candidates = [text]
    if os.sep == "/" and "\\" in text:
      candidates.append(text.replace("\\", "/"))  # a playlist written on Windows
    for candidate in candidates:
      song = self.by_path.get(path_key(os.path.join(base_dir, os.path.expanduser(candidate))))
      if song is not None:
        return song
    return None

  def find(self, entry, base_dir):
    """A JSON entry: an id (a number, or digits in a string) or a path relative to `base_dir`."""
    if isinstance(entry, bool):
      return None
    if isinstance(entry, int):
      return entry if entry in self.ids else None
    if not isinstance(entry, str) or not entry.strip():
      return None
    song = self.find_path(entry.strip(), base_dir)
    if song is None and _ID.fullmatch(entry.strip()) and int(entry) in self.ids:
      song = int(entry)
    return song


class _SongReader:
  """Reads the CSV row by row into songs, the genre vocabulary and the SongIndex."""

  def __init__(self, audio_dir, csv_path, problems):
    self.audio_dir = audio_dir
    self.csv_path = csv_path
    self.problems = problems
    self.index = SongIndex(audio_dir)
    self.genre_names = {}
    self.files = walk_files(audio_dir)
    self.lines = {}  # song id -> the CSV line(s) that defined it, for the duplicate messages
    self.named = set()  # path keys of every file a row names, usable or not
    self.by_stem = None  # {id text: [files]}, built only when the CSV has no path column

  def read(self):
    columns, rows = read_csv(self.csv_path)
    if "path" not in columns:
      self.by_stem = {}
      for path in self.files:
        stem = unicodedata.normalize("NFC", os.path.splitext(os.path.basename(path))[0])
        self.by_stem.setdefault(stem, []).append(path)
    songs = []
    for number, (lines, cells) in enumerate(rows):
      if len(cells) != len(columns):
        self.problems.report("bad_row", f"{self.csv_path}: {lines}: {len(cells)} fields, the header "
                             f"has {len(columns)} (a comma inside a value needs \"quotes\"; an "
                             "unclosed quote joins lines)")
        continue
      row = dict(zip(columns, cells))
      if self._row_path(row):  # named, even if the row turns out unusable: not an unlisted file
        self.named.add(path_key(self._row_path(row)))
      song = self._song(row, number, lines)
      if song is not None:
        songs.append(song)
    self._note_unlisted()
    return sorted(songs, key=lambda s: s.song_id)

  def _song(self, row, number, lines):
    """One row (the `number`th, at `lines`) -> SongRecord, or None after reporting why it is unusable."""
    where = f"{self.csv_path}: {lines}"
    song_id = number if "id" not in row else self._parse_id(row["id"], where)
    if song_id is None:
      return None
    if song_id in self.index.ids:
      self.problems.report("duplicate_song", f"{where}: id {song_id} is already that of "
                           f"{self.lines[song_id]}")
      return None
    paths, problem = self._audio(row, song_id, where)
    keys = [path_key(p) for p in paths]
    self.named.update(keys)  # files found by id
    owner = next((self.index.by_path[k] for k in keys if k in self.index.by_path), None)
    if owner is not None:
      self.problems.report("duplicate_song", f"{where}: audio file {paths[0]} is already song "
                           f"{owner}'s ({self.lines[owner]})")
      return None
    self.index.add(song_id, paths, usable=not problem)  # known even without audio: playlists name it
    self.lines[song_id] = lines
    if problem:
      self.problems.report(*problem)
      return None
    return self._record(song_id, row["genres"], paths[0], where)

  def _record(self, song_id, genre_field, path, where):
    """The SongRecord of a usable row; its genres join the vocabulary."""
    genres = parse_genres(genre_field)
    if not genres:
      self.problems.report("no_genre", f"{where}: no genres; song {song_id} is kept for its audio "
                           "and playlists", outcome="song kept")
    for code, name in genres:
      self.genre_names.setdefault(code, name)
    return SongRecord(song_id=song_id, genres=order_genres([code for code, _ in genres]),
                      audio_path=os.path.abspath(path))

  def _parse_id(self, text, where):
    text = text.strip()
    if _ID.fullmatch(text) and int(text) <= _MAX_ID:
      return int(text)
    self.problems.report("bad_id", f"{where}: id {text!r} is not a whole number >= 0")
    return None

  def _audio(self, row, song_id, where):
    """The row's audio file(s), first the one to use, and the problem ((kind, message)) or None."""
    if self.by_stem is not None:
      return self._audio_by_id(song_id, where)
    path = self._row_path(row)
    if not path:
      return [], ("missing_audio", f"{where}: the path is empty")
    if not is_audio_file(path):
      return [path], ("unsupported_audio", f"{where}: audio file {path} is not one of "
                      f"{', '.join(AUDIO_EXTENSIONS)}")
    found = existing_file(path)
    if found is None:
      return [path], ("missing_audio", f"{where}: audio file {path} not found")
    return [found], None

  def _row_path(self, row):
    """The path column's file made absolute, or None without one."""
    text = row.get("path", "").strip()
    return os.path.join(self.audio_dir, os.path.expanduser(text)) if text else None

  def _audio_by_id(self, song_id, where):
    """Without a path column: the file {song_id}.{extension} under audio_dir."""
    named = self.by_stem.get(str(song_id), [])
    audio = [p for p in named if is_audio_file(p)]
    if not audio:
      if named:
        return named, ("unsupported_audio", f"{where}: {named[0]} is not one of "
                       f"{', '.join(AUDIO_EXTENSIONS)}")
      return [], ("missing_audio", f"{where}: no audio file named {song_id}.* under {self.audio_dir}")
    if len(audio) > 1:
      self.problems.report("ambiguous_audio", f"{where}: {len(audio)} audio files for id {song_id}; "
                           f"using {audio[0]}, not {', '.join(audio[1:])}")
    return audio, None

  def _note_unlisted(self):
    """Counts audio files no row names: maybe on purpose, so never fatal, but never unmentioned."""
    unlisted = [p for p in self.files if is_audio_file(p) and path_key(p) not in self.named]
    for path in unlisted:
      self.problems.note("unlisted_audio", f"{path}: audio file not in {self.csv_path}; not used")
    if unlisted:
      logging.warning("%d audio files under %s are not in %s and are not used, e.g. %s", len(unlisted),
                      self.audio_dir, self.csv_path, unlisted[0])


def read_csv(csv_path):
  """The header's column names (stripped, lower case) and the non-blank rows as (lines, cells).

  Raises:
    InputError: missing or unreadable file, not UTF-8, malformed CSV, or a required column missing.
  """
  try:
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
      reader = csv.reader(f)
      try:
        header = next(reader, None)
        rows = _rows(reader)
      except csv.Error as err:
        raise InputError(f"{csv_path}: line {reader.line_num}: malformed CSV ({err})") from err
  except FileNotFoundError as err:
    raise InputError(f"{csv_path}: metadata CSV not found") from err
  except UnicodeDecodeError as err:
    raise InputError(f"{csv_path}: not UTF-8 text ({err}); save the CSV as UTF-8") from err
  except OSError as err:
    raise InputError(f"{csv_path}: cannot read the CSV ({err})") from err
  columns = [c.strip().lower() for c in header or []]
  _check_columns(csv_path, columns)
  return columns, rows


def _rows(reader):
  """The non-blank rows as ('line N' or 'lines N-M', cells): a quoted value may span lines."""
  rows = []
  while True:
    start = reader.line_num + 1
    cells = next(reader, None)
    if cells is None:
      return rows
    if any(c.strip() for c in cells):
      end = reader.line_num
      rows.append((f"line {start}" if end == start else f"lines {start}-{end}", cells))


def _check_columns(csv_path, columns):
  """Raises InputError unless the header has `genres` and `path` or `id`, each once."""
  shown = ", ".join(columns) or "nothing"
  hint = ""
  if len(columns) == 1 and any(sep in columns[0] for sep in ";\t"):
    hint = "; the file must be comma-separated"
  duplicated = sorted({c for c in columns if columns.count(c) > 1 and c})
  if duplicated:
    raise InputError(f"{csv_path}: column {duplicated[0]!r} appears twice in the header")
  if "genres" not in columns:
    raise InputError(f"{csv_path}: missing column 'genres' (the header has: {shown}){hint}")
  if "path" not in columns and "id" not in columns:
    raise InputError(f"{csv_path}: missing column 'path' (or 'id'; the header has: {shown}){hint}")


def read_playlists(source, index, problems):
  """Playlists as lists of ids of songs with audio, in a fixed order (file names sorted, or the JSON's).

  Args:
    source: a folder of .m3u/.m3u8 files, one such file, or a JSON playlists file.
    index: the SongIndex of the catalogue's songs.
    problems: where bad and unknown entries and empty playlists are reported.

  Raises:
    InputError: `source` missing, a folder without playlists, a JSON file that does not parse.
  """
  source = os.fspath(source)
  lists = []
  for label, entries, base_dir in _playlist_sources(source, problems):
    ids = {}  # a dict keeps the first position of each song: repeats count once
    for where, entry in entries:
      # JSON entries (no base folder) may be ids or audio_dir-relative paths; M3U lines are paths only.
      song = index.find(entry, index.audio_dir) if base_dir is None else index.find_path(entry, base_dir)
      if song is None:
        problems.report("unknown_playlist_song", f"{where}: {entry!r} is not a song of the catalogue")
      elif song in index.usable:  # the others' rows were reported already
        ids.setdefault(song, None)
    if ids:
      lists.append(list(ids))
    else:  # an expected gap, as in the Melon reader: counted, never fatal
      problems.note("empty_playlist", f"{label}: no song of the catalogue with audio; dropped")
  return lists


def _playlist_sources(source, problems):
  """(label, [(where, entry)], base folder) per playlist; the base is None for JSON (see `find`)."""
  if os.path.isdir(source):
    return _m3u_folder(source, problems)
  if not os.path.isfile(source):
    raise InputError(f"{source}: playlists folder or file not found")
  extension = os.path.splitext(source)[1].lower()
  if extension == ".json":
    return read_json_playlists(source, problems)
  if extension in PLAYLIST_EXTENSIONS:
    return _m3u_folder(source, problems, files=[source])
  raise InputError(f"{source}: playlists must be a folder of .m3u/.m3u8 files, one such file, or a "
                   ".json file")


def _m3u_folder(folder, problems, files=None):
  """The playlists of a folder's .m3u/.m3u8 files (or of `files`); unreadable ones are reported."""
  playlists = []
  for path in files or walk_files(folder):
    if is_audio_file(path):  # the playlists may sit in the music folder itself
      continue
    if os.path.splitext(path)[1].lower() not in PLAYLIST_EXTENSIONS:
      problems.note("not_a_playlist", f"{path}: not an .m3u or .m3u8 playlist; skipped")
      continue
    try:
      lines = read_m3u(path)
    except InputError as err:
      problems.report("bad_playlist", str(err))
      continue
    entries = [(f"{path}: line {n}", text) for n, text in lines]
    playlists.append((path, entries, os.path.dirname(os.path.abspath(path))))
  if not playlists and files is None:
    raise InputError(f"{folder}: no readable .m3u or .m3u8 playlists found")
  return playlists


def read_m3u(path):
  """The song lines of an .m3u/.m3u8 playlist as (line number, text); comments and URLs left out.

  Raises:
    InputError: the file cannot be read, is binary, or (.m3u8) is not UTF-8.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as err:
    raise InputError(f"{path}: cannot read the playlist ({err})") from err
  if b"\0" in data:  # binary, or UTF-16 (some Windows players): not an M3U text
    raise InputError(f"{path}: not a text playlist (binary or UTF-16)")
  # .m3u8 means UTF-8; a plain .m3u from an older player is often Latin-1, which always decodes.
  encodings = ("utf-8-sig",) if path.lower().endswith(".m3u8") else ("utf-8-sig", "latin-1")
  for encoding in encodings:
    try:
      text = data.decode(encoding)
      break
    except UnicodeDecodeError as err:
      error = err
  else:
    raise InputError(f"{path}: not UTF-8 text ({error})")
  lines = []
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    is_url = _URL.match(line) and not line.lower().startswith("file://")
    if line and not line.startswith("#") and not is_url:
      lines.append((number, line))
  return lines


def read_json_playlists(path, problems):
  """A JSON playlists file: [{"name": ..., "songs": [...]}, ...] or {name: [...], ...}.

  Returns:
    (label, [(where, entry)], audio folder) per well-formed playlist; malformed ones are reported.

  Raises:
    InputError: the file does not parse as JSON, or is neither a list nor an object.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise InputError(f"{path}: cannot read the playlists JSON ({err})") from err
  if isinstance(data, dict):
    named = list(data.items())
  elif isinstance(data, list):
    named = [_json_item(path, i, item, problems) for i, item in enumerate(data)]
  else:
    raise InputError(f"{path}: expected a list of {{\"name\": ..., \"songs\": [...]}} objects or an "
                     f"object name -> songs, not a {type(data).__name__}")
  playlists = []
  for name, songs in filter(None, named):
    label = f"{path}: playlist {name!r}"
    if not isinstance(songs, list):
      problems.report("bad_playlist", f"{label}: songs must be a list, not a {type(songs).__name__}")
      continue
    playlists.append((label, [(label, entry) for entry in songs], None))
  return playlists


def _json_item(path, position, item, problems):
  """A list item -> (name, songs), or None after reporting it."""
  if isinstance(item, dict) and "songs" in item:
    return item.get("name", f"#{position}"), item["songs"]
  problems.report("bad_playlist", f"{path}: playlist #{position}: expected {{\"name\": ..., "
                  f"\"songs\": [...]}}, got {str(item)[:80]}")
  return None
