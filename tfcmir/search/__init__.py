"""Search the shared space of an export: songs like this one, songs for genre words, playlist continuations.

A contrastive export puts audio and genres in one space (the `projection` of serving_default and the
`genres` signature). The same four operations as `python -m tfcmir.search` (tfcmir/search/cli.py):

    from tfcmir import search
    search.index("exports/demo/contr_cf_g", ["music/"], "music.index")  # embeds new or changed files
    search.similar("music.index", "music/rock/song.mp3", k=10)          # [Hit(rank, path, score)]
    search.genre("music.index", "rock|indie rock", k=10)                 # codes, or names via `names`
    search.continue_playlist("music.index", "road trip.m3u", k=10)       # `continue` is Python's word
    music = search.store.read("music.index")  # a large index read once: pass it instead of the folder
    search.write_m3u("next.m3u8", hits)

Every file goes through tfcmir.inference (the export's checksums, its level convention, the level
guard). Scores are cosines in the projection space (for `continue_playlist`: the share of the seeds
that retrieved the track). The index format is tfcmir/search/store.py.
"""

from __future__ import annotations

import collections
import csv
import difflib
import io
import os
import urllib.parse
import urllib.request

import numpy as np
from absl import logging

from tfcmir import audio, export_format, inference, safeio
from tfcmir.data.catalogue import read_m3u
from tfcmir.errors import InputError
from tfcmir.evaluate import continuation as continuation_lib
from tfcmir.search import store

Hit = collections.namedtuple("Hit", "rank path score")
GENRE_VOCAB = "genre_vocab.json"
WORD_SEPARATOR = "|"


def projection_encoder(export_dir, artifact="saved_model", strict=False):
  """The export's encoder of mel patches into the projection (contrastive) space.

  The SavedModel, the float TFLite and the ONNX mel models all have a `projection` output; a model
  without one (a hand-made or older file) is named here, before any file is embedded.
  """
  encoder = inference.Encoder(export_dir, artifact, strict=strict, output="projection")
  try:
    encoder(np.zeros((1, audio.PATCH_FRAMES, audio.NUM_BANDS), np.float32))
  except (KeyError, ValueError) as err:
    raise InputError(f"{export_dir}: its {artifact} model has no `projection` output ({err}); "
                     "search with --artifact=saved_model") from err
  return encoder


def embed(paths, encoder, progress=True):
  """Audio files -> (rows as inference.embed_files gives them, (files, D) unit vectors, skipped)."""
  rows, per_patch, skipped = inference.embed_files(paths, encoder, progress=progress)
  vectors = np.stack([store.track_vector(p) for p in per_patch]) if rows else None
  return rows, vectors, skipped


def _stat(path):
  try:
    stat = os.stat(path)
  except OSError:
    return None
  return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def index(export_dir, audio, index_dir, artifact="saved_model", strict=False, progress=True):
  """Adds the audio files (files or folders) to the index in `index_dir`, creating it if needed.

  Files already indexed with the same size and mtime are skipped; changed ones are embedded again.
  Returns {"tracks", "added", "updated", "unchanged", "skipped": [(path, reason)]}.
  """
  paths = inference.find_audio(audio)
  if not paths:
    raise InputError("no audio files given (pass files or folders)")
  safeio.check_ours(index_dir, (store.MANIFEST,), "search index (--index)")  # before any embedding
  manifest = export_format.read_manifest(export_dir)
  identity = store.export_identity(export_dir, manifest, artifact)
  old = store.read(index_dir) if os.path.isfile(os.path.join(index_dir, store.MANIFEST)) else None
  if old is not None:
    store.check_same_export(index_dir, old, identity)
  todo, stats, unchanged = [], {}, 0
  for path in dict.fromkeys(os.path.abspath(p) for p in paths):
    stats[path] = _stat(path)  # taken before embedding: a file changed meanwhile is redone next time
    row = old.row_of(path) if old is not None else None
    if row is not None and stats[path] == {k: old.tracks[row][k] for k in ("size", "mtime_ns")}:
      unchanged += 1
    else:
      todo.append(path)
  summary = {"tracks": len(old.tracks) if old else 0, "added": 0, "updated": 0,
             "unchanged": unchanged, "skipped": []}
  if not todo:
    return summary
  rows, vectors, skipped = embed(todo, projection_encoder(export_dir, artifact, strict), progress)
  summary["skipped"] = skipped
  if old is None:
    inference.check_some_read(todo, skipped)
  if not rows:
    return summary
  identity["projection_dim"] = int(vectors.shape[1])
  tracks = list(old.tracks) if old else []
  table = list(old.vectors) if old else []
  for row, vector in zip(rows, vectors):
    track = {"path": row["path"], **stats[row["path"]], "patches": row["patches"],
             "padded": row["padded"]}
    at = old.row_of(row["path"]) if old is not None else None
    if at is None:
      tracks.append(track)
      table.append(vector)
      summary["added"] += 1
    else:
      tracks[at], table[at] = track, vector
      summary["updated"] += 1
  store.write(index_dir, store.SearchIndex(identity, tracks, np.stack(table)))
  summary["tracks"] = len(tracks)
  return summary


def _open(index_dir):
  """(SearchIndex, its folder) from a folder, or from an index already read (store.read): a notebook
  reads a large index once."""
  if isinstance(index_dir, store.SearchIndex):
    return index_dir, index_dir.folder
  return store.read(index_dir), index_dir


def _checked_export(index_dir, found, export_dir=None):
  """The export an index was made with, or `export_dir` once it is checked to be the same one."""
  export_dir = export_dir or found.export["path"]
  manifest = export_format.read_manifest(export_dir)
  store.check_same_export(index_dir, found,
                          store.export_identity(export_dir, manifest, found.export["artifact"]))
  return export_dir


def _checked_encoder(index_dir, found, export_dir=None, strict=False):
  return projection_encoder(_checked_export(index_dir, found, export_dir), found.export["artifact"],
                            strict)


def _hits(found, rows, scores):
  return [Hit(rank, found.tracks[row]["path"], float(score))
          for rank, (row, score) in enumerate(zip(rows, scores), 1) if row >= 0]


def similar(index_dir, query, k=10, export_dir=None, strict=False):
  """The k indexed tracks nearest `query` (an indexed path, or any audio file), the query excluded."""
  found, index_dir = _open(index_dir)
  if export_dir:  # named, it must be the index's own, even where the query needs no embedding
    _checked_export(index_dir, found, export_dir)
  row = found.row_of(query)
  if row is not None:
    vector, exclude = found.vectors[row], (row,)
  else:
    if not os.path.isfile(query):
      raise InputError(f"{query}: neither an indexed track of {index_dir} nor an audio file")
    rows, vectors, skipped = embed([query], _checked_encoder(index_dir, found, export_dir, strict),
                                   progress=False)
    if skipped:
      raise InputError(f"{query}: {skipped[0][1]}")
    vector, exclude = vectors[0], ()
  rows, scores = found.search(vector[None], k, exclude)
  return _hits(found, rows[0], scores[0])


def _word_key(text):
  """'Indie Rock', 'indie-rock' and 'indierock' are one word: case, spaces and punctuation ignored."""
  return "".join(ch for ch in text.casefold() if ch.isalnum())


def read_genre_names(path):
  """{code: name} from a JSON file such as Melon's genre_gn_all.json."""
  try:
    names = safeio.read_json(path)
  except (OSError, ValueError) as err:
    raise InputError(f"{path}: cannot read the genre names ({err})") from err
  if not isinstance(names, dict):
    raise InputError(f"{path}: not a JSON object of genre code -> name")
  return {str(code): str(name) for code, name in names.items()}


def match_genres(words, vocab, names=None, where=GENRE_VOCAB):
  """Genre words -> genre_ids rows (deduplicated, in order); InputError naming the closest known words.

  Args:
    words: "rock|indie rock" or a list of words; each is a genre code or (with `names`) a name,
      compared without case, spaces or punctuation. A name shared by several codes means all of them.
    vocab: {code: row} (an export's genre_vocab.json "codes").
    names: {code: name}, optional.
    where: the vocabulary's file, for the message.
  """
  if isinstance(words, str):
    words = words.split(WORD_SEPARATOR)
  words = [w.strip() for w in words if w.strip()]
  if not words:
    raise InputError("no genre words given (e.g. \"rock|indie rock\")")
  rows, labels = collections.defaultdict(list), {}
  for code, row in vocab.items():
    for text in ([code] + ([names[code]] if names and code in names else [])):
      key = _word_key(text)
      rows[key].append(int(row))
      labels.setdefault(key, text)
  ids = []
  for word in words:
    key = _word_key(word)
    if key not in rows:
      close = difflib.get_close_matches(key, list(rows), n=5, cutoff=0.6)
      hint = (f"closest known: {', '.join(labels[c] for c in close)}" if close
              else f"none is close; known ones include {', '.join(sorted(labels.values())[:8])}")
      codes_only = "" if names else " (codes only: --genre_names=FILE matches names too)"
      raise InputError(f"{where}: unknown genre {word!r}; {hint}{codes_only}")
    ids += [r for r in rows[key] if r not in ids]
  return ids


class GenreTower:
  """An export's genre tower: genre words -> a unit query in the projection space.

  Raises InputError for a baseline export (no shared space) or one without a genre vocabulary.
  """

  def __init__(self, export_dir, names=None):
    manifest = export_format.read_manifest(export_dir)
    mode = str(manifest.get("mode") or "")
    signatures = manifest.get("signatures")
    if mode.startswith("bline") or (signatures is not None and "genres" not in signatures):
      raise InputError(_no_shared_space(export_dir, mode))
    self.where = os.path.join(export_dir, GENRE_VOCAB)
    try:
      self.vocab = safeio.read_json(self.where)["codes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
      raise InputError(f"{self.where}: missing or damaged ({err}); the genre tower's words are "
                       "unknown: export again from a run whose data folder holds it") from err
    self.names = read_genre_names(names) if isinstance(names, str) else names
    export_format.verify(export_dir, manifest, "saved_model")
    import tensorflow as tf
    loaded = tf.saved_model.load(os.path.join(export_dir, "saved_model", str(manifest["version"])))
    if "genres" not in loaded.signatures:
      raise InputError(_no_shared_space(export_dir, mode))
    self._fn, self._tf = loaded.signatures["genres"], tf

  def query(self, words):
    ids = match_genres(words, self.vocab, self.names, self.where)
    out = self._fn(genre_ids=self._tf.constant([ids], self._tf.int64))["genre_projection"]
    return store.unit(out.numpy())[0]


def _no_shared_space(export_dir, mode):
  return (f"{export_dir}: a baseline export ({mode or 'no genre tower'}) has no shared space: its audio "
          "was not trained against a genre tower, so genre words cannot be searched; use `similar` "
          "or `continue`, or a contrastive export (contr_*)")


def genre(index_dir, words, k=10, export_dir=None, names=None):
  """The k indexed tracks nearest the genre tower's projection of `words` ("rock|indie rock").

  `names`: {code: name} or a JSON file of it (Melon's genre_gn_all.json); without it, words match the
  export's genre codes only (a catalogue's codes are its genre words in lower case).
  """
  found, index_dir = _open(index_dir)
  vector = GenreTower(_checked_export(index_dir, found, export_dir), names).query(words)
  rows, scores = found.search(vector[None], k)
  return _hits(found, rows[0], scores[0])


def playlist_paths(playlist):
  """The files an .m3u/.m3u8 lists, absolute (relative lines are relative to the playlist's folder)."""
  base = os.path.dirname(os.path.abspath(playlist))
  paths = []
  for _, text in read_m3u(playlist):
    if text.lower().startswith("file://"):
      text = urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    paths.append(os.path.normpath(os.path.join(base, text)))
  return list(dict.fromkeys(paths))


def continue_playlist(index_dir, playlist, k=10, export_dir=None, strict=False):
  """The paper's continuation: each seed's k nearest indexed tracks, then the k found most often.

  `playlist`: an .m3u/.m3u8 file or a list of paths. Seeds never appear in the answer; seeds that are
  not indexed are embedded on the fly (unreadable ones are skipped with a warning). Ties go to the
  smaller summed rank (tfcmir.evaluate.continuation.continuation).
  """
  found, index_dir = _open(index_dir)
  seeds = playlist_paths(playlist) if isinstance(playlist, str) else list(playlist)
  if not seeds:
    raise InputError(f"{playlist}: no songs in the playlist")
  rows = [found.row_of(p) for p in seeds]
  indexed = [r for r in rows if r is not None]
  vectors = [found.vectors[indexed]] if indexed else []
  others = [p for p, r in zip(seeds, rows) if r is None]
  if others:
    _, extra, skipped = embed(others, _checked_encoder(index_dir, found, export_dir, strict),
                              progress=False)
    for path, reason in skipped:
      logging.warning("seed %s skipped: %s", path, reason)
    if extra is not None:
      vectors.append(extra)
  if not vectors:
    raise InputError(f"{playlist}: none of its {len(seeds)} songs is indexed or readable")
  queries = np.concatenate(vectors)
  neighbours, _ = found.search(queries, k, exclude=indexed)
  order = continuation_lib.continuation(neighbours, k)
  counts = collections.Counter(neighbours[neighbours >= 0].tolist())
  return [Hit(rank, found.tracks[row]["path"], counts[int(row)] / len(queries))
          for rank, row in enumerate(order, 1)]


def csv_text(hits):
  """`rank,path,score` lines with a header."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(Hit._fields)
  writer.writerows((h.rank, h.path, f"{h.score:.4f}") for h in hits)
  return out.getvalue()


def write_m3u(path, hits):
  """An extended M3U (UTF-8, absolute paths) a media player opens; written atomically."""
  lines = ["#EXTM3U"]
  for hit in hits:
    title = os.path.splitext(os.path.basename(hit.path))[0]
    lines += [f"#EXTINF:-1,{title}", hit.path]
  safeio.write_text(path, "\n".join(lines) + "\n")
