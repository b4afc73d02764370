"""Your own catalogue: audio folder + metadata CSV + playlists -> Corpus, and every bad input named."""

import json
import os
import re
import shutil
import unicodedata

import numpy as np
import pytest
import soundfile as sf

from helpers import REAL_AUDIO
from tfcmir.data.catalogue import genre_code, parse_genres, read_catalogue, read_m3u
from tfcmir.errors import InputError, Problems

CAFE = "Café Ñandú"  # Latin-1 characters only, so the same name can be written in a Latin-1 .m3u
CSV = f"""path,genres,title
rock/The Band/beach.wav,Rock|Indie  Rock,Beach
rock/The Band/awakening.ogg,rock|Post-Rock,"Awakening, live"
jazz/track5.mp3,Jazz,Track 5
{CAFE}/canción uno.flac, World | latin ,Canción
"""


def write(path, text, encoding="utf-8"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text)
  return str(path)


def tone(path, seconds=0.5):
  """A short 16 kHz sine wav or flac: the reader only checks existence, never decodes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t = np.arange(int(16000 * seconds)) / 16000
  sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
  return str(path)


def copy(name, dest):
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  shutil.copy(os.path.join(REAL_AUDIO, name), dest)
  return str(dest)


@pytest.fixture
def music(tmp_path):
  """music/ with real excerpts and a synthesised flac in nested folders, one with a non-ASCII name."""
  root = tmp_path / "music"
  copy("hedgewars_beach_3s_mono16k.wav", root / "rock" / "The Band" / "beach.wav")
  copy("singularity_awakening_stereo44k.ogg", root / "rock" / "The Band" / "awakening.ogg")
  copy("warzone2100_track5_mono22k.mp3", root / "jazz" / "track5.mp3")
  tone(str(root / CAFE / "canción uno.flac"))
  return root


@pytest.fixture
def catalogue(tmp_path, music):
  """The module docstring's example: path CSV and a folder of M3U playlists."""
  csv_path = write(tmp_path / "songs.csv", CSV)
  lists = tmp_path / "playlists"
  write(lists / "road trip.m3u", "\n".join([
      "#EXTM3U", "#EXTINF:3,The Band - Beach", "../music/rock/The Band/beach.wav", "",
      str(music / "jazz" / "track5.mp3"), "http://radio.example.com/stream.mp3",
      "../music/rock/The Band/beach.wav"]))  # a repeat counts once
  # Decomposed (NFD) spelling, as macOS writes names, and a Windows-style path.
  write(lists / "sub" / "sunday.m3u8", "\ufeff" + "\r\n".join([
      "#EXTM3U", unicodedata.normalize("NFD", f"../../music/{CAFE}/canción uno.flac"),
      "..\\..\\music\\rock\\The Band\\awakening.ogg"]))
  write(lists / "old player.m3u", f"../music/{CAFE}/canción uno.flac\nfile://{music}/jazz/track5.mp3\n",
        encoding="latin-1")
  return str(music), csv_path, str(lists)


def test_reads_the_documented_example(catalogue, music):
  problems = Problems()
  corpus = read_catalogue(*catalogue, problems=problems)
  assert corpus.name == "catalogue"
  assert [s.song_id for s in corpus.songs] == [0, 1, 2, 3]
  assert [s.audio_path for s in corpus.songs] == [
      str(music / "rock" / "The Band" / "beach.wav"), str(music / "rock" / "The Band" / "awakening.ogg"),
      str(music / "jazz" / "track5.mp3"), str(music / CAFE / "canción uno.flac")]
  assert all(s.mel_path is None for s in corpus.songs)
  assert [s.genres for s in corpus.songs] == [("indie rock", "rock"), ("post-rock", "rock"), ("jazz",),
                                              ("latin", "world")]
  assert corpus.genre_names == {"indie rock": "Indie Rock", "jazz": "Jazz", "latin": "latin",
                                "post-rock": "Post-Rock", "rock": "Rock", "world": "World"}
  # Sorted by file: old player.m3u, road trip.m3u, sub/sunday.m3u8.
  assert corpus.playlists == [[3, 2], [0, 2], [3, 1]]
  assert corpus.heldout_playlists == {}
  assert corpus.song_ids.tolist() == [0, 1, 2, 3]
  assert dict(problems.counts) == {}


def test_genre_codes():
  assert genre_code("  Indie   Rock ") == "indie rock"
  assert parse_genres("Rock| |indie  rock|") == [("rock", "Rock"), ("indie rock", "indie rock")]
  assert parse_genres("") == []


def test_id_column_and_json_playlists(tmp_path, music):
  csv_path = write(tmp_path / "songs.csv", "\ufeffID,Path,Genres,Artist\n"  # BOM, capitalised header
                   "100,rock/The Band/beach.wav,Rock,The Band\n"
                   f"7,{music}/jazz/track5.mp3,Jazz,Trio\n"  # absolute path
                   f"42,{CAFE}/canción uno.flac,World,Nobody\n")
  lists = write(tmp_path / "playlists.json", json.dumps([
      {"name": "mixed", "songs": [42, "rock/The Band/beach.wav", "7"]},
      {"name": "absolute", "songs": [str(music / "jazz" / "track5.mp3"), 100]}]))
  corpus = read_catalogue(str(music), csv_path, lists)
  assert [s.song_id for s in corpus.songs] == [7, 42, 100]
  assert corpus.playlists == [[42, 100, 7], [7, 100]]
  write(lists, json.dumps({"b": [7, 42], "a": [100]}))  # the name -> songs form keeps its order
  assert read_catalogue(str(music), csv_path, lists).playlists == [[7, 42], [100]]


def test_id_column_without_path_finds_files_by_id(tmp_path):
  root = tmp_path / "audio"
  tone(str(root / "0" / "12.wav"))
  tone(str(root / "1" / "1005.flac"))
  tone(str(root / "5.flac"))
  tone(str(root / "5.wav"))  # two files for id 5
  write(root / "9.m4a", "not audio we read")
  csv_path = write(tmp_path / "songs.csv", "id,genres\n12,pop\n1005,rock\n5,jazz\n9,folk\n3,pop\n")
  lists = write(tmp_path / "one.m3u8", "audio/0/12.wav\naudio/5.wav\n")
  problems = Problems()
  corpus = read_catalogue(str(root), csv_path, lists, problems)
  assert [(s.song_id, os.path.basename(s.audio_path)) for s in corpus.songs] == [
      (5, "5.flac"), (12, "12.wav"), (1005, "1005.flac")]
  assert corpus.playlists == [[12, 5]]  # 5.wav is id 5's second file: still id 5
  assert problems.counts == {"ambiguous_audio": 1, "unsupported_audio": 1, "missing_audio": 1}
  assert "using" in problems.examples["ambiguous_audio"][0]
  assert "9.m4a" in problems.examples["unsupported_audio"][0]
  assert "3.*" in problems.examples["missing_audio"][0]


def test_rows_without_ids_are_numbered_in_row_order(tmp_path, music):
  csv_path = write(tmp_path / "songs.csv", "path,genres\n\njazz/track5.mp3,Jazz\nnope.wav,Jazz\n"
                   "rock/The Band/beach.wav,Rock\n")
  lists = write(tmp_path / "p.m3u", "music/rock/The Band/beach.wav\nmusic/jazz/track5.mp3\n")
  corpus = read_catalogue(str(music), csv_path, lists)
  # The blank line is not a row; the missing file's row still takes id 1, so later ids do not shift.
  assert [s.song_id for s in corpus.songs] == [0, 2]
  assert corpus.playlists == [[2, 0]]


# --------------------------------------------------------------------------------------------------
# Bad input: each reported once, naming the file, and the rest read.


def read_bad(tmp_path, music, rows, playlist="../music/jazz/track5.mp3\n", header="path,genres"):
  """Reads a catalogue with the good track5 row plus `rows`; returns (corpus, problems, csv path)."""
  csv_path = write(tmp_path / "songs.csv", f"{header}\njazz/track5.mp3,Jazz\n{rows}")
  write(tmp_path / "lists" / "p.m3u", playlist)
  problems = Problems()
  return read_catalogue(str(music), csv_path, str(tmp_path / "lists"), problems), problems, csv_path


def only(problems, kind):
  """The one message of `kind`, after checking it is the only problem (bar the unused fixture files)."""
  counts = {k: n for k, n in problems.counts.items() if k != "unlisted_audio"}
  assert counts == {kind: 1}, problems.to_json()
  return problems.examples[kind][0]


def test_missing_audio(tmp_path, music):
  corpus, problems, csv_path = read_bad(tmp_path, music, "rock/gone.wav,Rock\n",
                                        "../music/jazz/track5.mp3\n../music/rock/gone.wav\n")
  message = only(problems, "missing_audio")
  assert message.startswith(f"{csv_path}: line 3:") and "gone.wav not found" in message
  assert [s.song_id for s in corpus.songs] == [0]
  assert corpus.playlists == [[0]]  # the row's song is known: not reported again as unknown


def test_unsupported_extension(tmp_path, music):
  write(music / "rock" / "song.m4a", "aac")
  _, problems, csv_path = read_bad(tmp_path, music, "rock/song.m4a,Rock\n")
  message = only(problems, "unsupported_audio")
  assert csv_path in message and "song.m4a" in message and ".flac" in message


def test_duplicate_id(tmp_path, music):
  csv_path = write(tmp_path / "songs.csv", "id,path,genres\n1,jazz/track5.mp3,Jazz\n"
                   "1,rock/The Band/beach.wav,Rock\n")
  lists = write(tmp_path / "p.m3u", "music/jazz/track5.mp3\nmusic/rock/The Band/beach.wav\n")
  problems = Problems()
  corpus = read_catalogue(str(music), csv_path, lists, problems)
  assert problems.counts == {"duplicate_song": 1, "unknown_playlist_song": 1, "unlisted_audio": 2}
  message = problems.examples["duplicate_song"][0]
  assert message == f"{csv_path}: line 3: id 1 is already that of line 2"
  assert [os.path.basename(s.audio_path) for s in corpus.songs] == ["track5.mp3"]  # the first row wins
  # The second row's file belongs to no song: its playlist entry is unknown, and said so.
  assert "beach.wav" in problems.examples["unknown_playlist_song"][0]


def test_duplicate_path(tmp_path, music):
  corpus, problems, csv_path = read_bad(tmp_path, music, "./jazz/../jazz/track5.mp3,Jazz\n")
  message = only(problems, "duplicate_song")
  assert message.startswith(f"{csv_path}: line 3:") and "already song 0" in message
  assert [s.song_id for s in corpus.songs] == [0]


@pytest.mark.parametrize("bad_id", ["abc", "-3", "1.5", ""])
def test_bad_id(tmp_path, music, bad_id):
  csv_path = write(tmp_path / "songs.csv", f"id,path,genres\n4,jazz/track5.mp3,Jazz\n"
                   f"{bad_id},rock/The Band/beach.wav,Rock\n")
  lists = write(tmp_path / "p.m3u", "music/jazz/track5.mp3\n")
  problems = Problems()
  corpus = read_catalogue(str(music), csv_path, lists, problems)
  assert only(problems, "bad_id").startswith(f"{csv_path}: line 3: id {bad_id!r}")
  # The beach file has no row now: counted as unlisted, never fatal (note), never silent.
  assert [s.song_id for s in corpus.songs] == [4]


def test_row_with_an_unquoted_comma(tmp_path, music):
  corpus, problems, csv_path = read_bad(tmp_path, music, "rock/The Band/beach.wav,Rock,Pop\n")
  assert problems.counts == {"bad_row": 1, "unlisted_audio": 3}
  assert problems.examples["bad_row"][0].startswith(f"{csv_path}: line 3: 3 fields, the header has 2")
  assert len(corpus.songs) == 1


def test_unclosed_quote_names_the_lines_it_swallowed(tmp_path, music):
  corpus, problems, csv_path = read_bad(tmp_path, music, "\"rock/The Band/beach.wav,Rock\n"
                                        "rock/The Band/awakening.ogg,Rock\n")
  assert problems.examples["bad_row"][0].startswith(f"{csv_path}: lines 3-4: 1 fields")
  assert len(corpus.songs) == 1


def test_no_genre_is_kept(tmp_path, music):
  corpus, problems, csv_path = read_bad(tmp_path, music, "rock/The Band/beach.wav, | \n",
                                        "../music/rock/The Band/beach.wav\n")
  assert only(problems, "no_genre").startswith(f"{csv_path}: line 3: no genres")
  assert corpus.songs[1].genres == ()
  assert corpus.playlists == [[1]]
  assert corpus.genre_names == {"jazz": "Jazz"}


def test_unlisted_audio_is_counted_not_fatal(tmp_path, music):
  problems = Problems(strict=True)
  csv_path = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\n")
  lists = write(tmp_path / "p.m3u", "music/jazz/track5.mp3\n")
  read_catalogue(str(music), csv_path, lists, problems)
  assert problems.counts == {"unlisted_audio": 3}
  assert all(csv_path in m for m in problems.examples["unlisted_audio"])


def test_unknown_playlist_song(tmp_path, music):
  corpus, problems, _ = read_bad(tmp_path, music, "", "../music/jazz/track5.mp3\n#x\nother.mp3\n")
  playlist = str(tmp_path / "lists" / "p.m3u")
  assert problems.counts["unknown_playlist_song"] == 1
  assert problems.examples["unknown_playlist_song"][0] == (
      f"{playlist}: line 3: 'other.mp3' is not a song of the catalogue")
  assert corpus.playlists == [[0]]


def test_unknown_json_entries(tmp_path, music):
  csv_path = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\n")
  lists = write(tmp_path / "p.json", json.dumps({"mine": [0, 5, "nope.mp3", None, True]}))
  problems = Problems()
  corpus = read_catalogue(str(music), csv_path, lists, problems)
  assert problems.counts["unknown_playlist_song"] == 4
  messages = problems.examples["unknown_playlist_song"]
  assert all(m.startswith(f"{lists}: playlist 'mine': ") for m in messages)
  assert corpus.playlists == [[0]]


def test_undecodable_and_foreign_playlist_files(tmp_path, music):
  lists = tmp_path / "lists"
  lists.mkdir()
  (lists / "bad utf8.m3u8").write_bytes(b"music/jazz/track5.mp3\n\xff\xfe broken\n")
  (lists / "binary.m3u").write_bytes("music/jazz/track5.mp3\n".encode("utf-16"))
  write(lists / "notes.txt", "not a playlist")
  write(lists / ".hidden", "ignored")
  tone(str(lists / "song.wav"))  # a playlists folder may hold the music too
  corpus, problems, _ = read_bad(tmp_path, music, "")
  assert problems.counts == {"bad_playlist": 2, "not_a_playlist": 1, "unlisted_audio": 3}
  messages = sorted(problems.examples["bad_playlist"])
  assert messages[0].startswith(str(lists / "bad utf8.m3u8") + ": not UTF-8")
  assert messages[1].startswith(str(lists / "binary.m3u") + ": not a text playlist")
  assert problems.examples["not_a_playlist"][0].startswith(str(lists / "notes.txt") + ": not an .m3u")
  assert corpus.playlists == [[0]]


def test_read_m3u_skips_comments_blanks_and_urls(tmp_path):
  path = write(tmp_path / "x.m3u", "#EXTM3U\r\n\r\n  a.mp3  \r\nhttps://x.org/s.mp3\r\nfile:///b.mp3\r\n"
               "caf\xe9.mp3\r\n", encoding="latin-1")
  assert read_m3u(path) == [(3, "a.mp3"), (5, "file:///b.mp3"), (6, "café.mp3")]


def test_malformed_json_items_are_reported(tmp_path, music):
  csv_path = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\n")
  lists = write(tmp_path / "p.json", json.dumps([{"name": "ok", "songs": [0]}, {"name": "no songs"},
                                                 ["a list"], {"name": "str", "songs": "0"}]))
  problems = Problems()
  corpus = read_catalogue(str(music), csv_path, lists, problems)
  assert problems.counts["bad_playlist"] == 3
  assert all(m.startswith(lists) for m in problems.examples["bad_playlist"])
  assert corpus.playlists == [[0]]


@pytest.mark.parametrize("text, expected", [("[{\"songs\": [0]", "cannot read the playlists JSON"),
                                            ("\"a string\"", "expected a list")])
def test_malformed_json_file_is_fatal(tmp_path, music, text, expected):
  csv_path = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\n")
  lists = write(tmp_path / "p.json", text)
  with pytest.raises(InputError, match=f"^{lists}: {expected}"):
    read_catalogue(str(music), csv_path, lists)


def test_empty_playlists_are_dropped_and_counted(tmp_path, music):
  write(tmp_path / "lists" / "empty.m3u", "#EXTM3U\n")
  write(tmp_path / "lists" / "only missing.m3u", "../music/rock/gone.wav\n")
  corpus, problems, _ = read_bad(tmp_path, music, "rock/gone.wav,Rock\n")
  assert problems.counts["empty_playlist"] == 2 and problems.counts["missing_audio"] == 1
  assert "unknown_playlist_song" not in problems.counts
  assert str(tmp_path / "lists" / "empty.m3u") in problems.examples["empty_playlist"][0]
  assert corpus.playlists == [[0]]


def test_strict_stops_at_the_first_problem(tmp_path, music):
  csv_path = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\nrock/gone.wav,Rock\n")
  lists = write(tmp_path / "p.m3u", "music/jazz/track5.mp3\n")
  with pytest.raises(InputError, match=f"^{csv_path}: line 3: audio file .*gone.wav not found"):
    read_catalogue(str(music), csv_path, lists, Problems(strict=True))


@pytest.mark.parametrize("header, missing", [
    ("path,title", "'genres'"), ("title,genres", "'path' (or 'id'"), ("path;genres", "'genres'"),
    ("", "'genres'")])
def test_missing_column_is_fatal(tmp_path, music, header, missing):
  csv_path = write(tmp_path / "songs.csv", f"{header}\n" if header else "")
  with pytest.raises(InputError, match=re.escape(f"{csv_path}: missing column {missing}")) as err:
    read_catalogue(str(music), csv_path, str(tmp_path))
  if ";" in header:
    assert "comma-separated" in str(err.value)


def test_fatal_inputs_name_the_file(tmp_path, music):
  good_csv = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\n")
  lists = write(tmp_path / "p.m3u", "music/jazz/track5.mp3\n")
  latin = tmp_path / "latin.csv"
  latin.write_bytes("path,genres\njazz/track5.mp3,Música\n".encode("latin-1"))
  cases = [((str(tmp_path / "nowhere"), good_csv, lists), "audio folder not found"),
           ((str(music), str(tmp_path / "none.csv"), lists), "metadata CSV not found"),
           ((str(music), str(latin), lists), "not UTF-8"),
           ((str(music), good_csv, str(tmp_path / "none")), "playlists folder or file not found"),
           ((str(music), good_csv, str(tmp_path / "music" / "jazz")), "no readable .m3u"),
           ((str(music), good_csv, good_csv), "playlists must be")]
  for args, expected in cases:
    with pytest.raises(InputError, match=expected) as err:
      read_catalogue(*args)
    assert str(err.value).startswith(tuple(args)), err.value


def test_no_usable_song_or_playlist_is_fatal(tmp_path, music):
  lists = write(tmp_path / "p.m3u", "music/jazz/track5.mp3\n")
  none = write(tmp_path / "none.csv", "path,genres\nrock/gone.wav,Rock\n")
  with pytest.raises(InputError, match=f"^{none}: no usable songs"):
    read_catalogue(str(music), none, lists)
  good = write(tmp_path / "songs.csv", "path,genres\njazz/track5.mp3,Jazz\n")
  empty = write(tmp_path / "empty.m3u", "#EXTM3U\n")
  with pytest.raises(InputError, match=f"^{empty}: no usable playlists"):
    read_catalogue(str(music), good, empty)


def test_decomposed_file_names_and_linked_folders(tmp_path):
  """A file named in NFD (as macOS writes it) matches an NFC CSV; a link loop is walked once."""
  root = tmp_path / "audio"
  nfd = tone(str(root / unicodedata.normalize("NFD", "Beyoncé.wav")))
  os.symlink(root, root / "loop")  # audio/loop/loop/... must not recurse forever
  tone(str(tmp_path / "elsewhere" / "linked.wav"))
  os.symlink(tmp_path / "elsewhere", root / "linked")
  csv_path = write(tmp_path / "songs.csv", "path,genres\nBeyoncé.wav,Pop\n")
  lists = write(tmp_path / "p.m3u8", "audio/Beyoncé.wav\n")
  problems = Problems()
  corpus = read_catalogue(str(root), csv_path, lists, problems)
  assert corpus.songs[0].audio_path == nfd and corpus.playlists == [[0]]
  assert problems.counts == {"unlisted_audio": 1}  # the linked-in file, seen once despite the loop
  assert problems.examples["unlisted_audio"][0].startswith(str(root / "linked" / "linked.wav"))
