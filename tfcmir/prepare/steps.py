"""Corpus -> everything training needs (paper sections 2.1 and 3.1), resumable.

    split (stratified on genres) -> genre Word2Vec -> WARP factors -> TFRecord shards -> manifest.json

The global steps are cheap to check and expensive to redo, so their outputs (split.json,
genre_vectors.npy + genre_vocab.json, warp.npz) are saved with a fingerprint of the corpus and the
settings; a re-run with the same fingerprint reuses them and writes only the missing shards. A different
fingerprint in the same folder stops the run unless `overwrite` is set.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time

import numpy as np
import scipy.sparse
from absl import logging

from tfcmir import __version__, audio, safeio, shards
from tfcmir.errors import InputError
from tfcmir.prepare import genres as genres_lib
from tfcmir.prepare import sharding
from tfcmir.prepare import split as split_lib

STATE = "state.json"
FORMAT_VERSION = 1
ARTIFACTS = ("split.json", shards.GENRE_VECTORS, shards.GENRE_VOCAB, "warp.npz", STATE, shards.MANIFEST)


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  seed: int = 0
  fractions: tuple = (0.8, 0.1, 0.1)
  genre_dim: int = 200
  max_genres: int = 10
  w2v_epochs: int = 5
  cf_dim: int = 300
  warp_epochs: int = 50
  warp_negatives: int = 40
  warp_learning_rate: float = 0.05
  cf_backend: str = "tf"  # fit_warp (TensorFlow) or "lightfm" (warp.fit_lightfm)
  shard_mb: int = 128
  bands: int = audio.NUM_BANDS
  crop_frames: int = audio.PATCH_FRAMES
  mel_level: str = "essentia"  # the level convention of the mels (tfcmir/levels.py); set by prepare


def fingerprint(corpus, config):
  """sha256 of what the outputs depend on: songs, genres, playlists and settings."""
  settings = dataclasses.asdict(config)
  if settings["mel_level"] == "essentia":  # what every preparation before the level was recorded had
    del settings["mel_level"]
  if settings["cf_backend"] == "tf":  # likewise: every preparation before LightFM was offered
    del settings["cf_backend"]

  def parts():
    yield json.dumps(settings, sort_keys=True)
    for s in corpus.songs:
      yield f"{s.song_id}|{','.join(s.genres)}|{s.mel_path}|{s.audio_path}\n"
    for p in corpus.playlists:
      yield ",".join(map(str, p)) + "\n"
    yield json.dumps(sorted(corpus.genre_names))
  return safeio.sha256_chunks(parts())


def _load_json(path):
  return safeio.read_json(path)


def _save_json(path, obj):
  safeio.write_json(path, obj, ensure_ascii=False)


def _clear(out_dir):
  for name in os.listdir(out_dir):
    path = os.path.join(out_dir, name)
    if shards.SHARD_FILE.match(name) or name in ARTIFACTS:
      os.remove(path)
    elif name.startswith(".") and name.endswith(".partial"):
      os.remove(path)
    elif name == sharding.PROGRESS_DIR:
      shutil.rmtree(path)


def playlist_matrix(song_ids, playlists, usable):
  """Binary (songs, playlists) CSR matrix; songs where `usable` is False get no entries (cold start)."""
  row_of = {int(s): i for i, s in enumerate(song_ids)}
  rows, cols = [], []
  for col, playlist in enumerate(playlists):
    for song in playlist:
      row = row_of.get(int(song))
      if row is not None and usable[row]:
        rows.append(row)
        cols.append(col)
  data = np.ones(len(rows), np.float32)
  matrix = scipy.sparse.csr_matrix((data, (rows, cols)), shape=(len(song_ids), len(playlists)))
  matrix.sum_duplicates()
  matrix.data[:] = 1.0
  return matrix


def fit_cf(matrix, config, progress=True):
  """WARP factors of the song x playlist matrix with config.cf_backend (the same settings either way)."""
  from tfcmir.prepare import warp  # TensorFlow, only when factorising

  settings = dict(dim=config.cf_dim, epochs=config.warp_epochs, max_sampled=config.warp_negatives,
                  learning_rate=config.warp_learning_rate, seed=config.seed)
  if config.cf_backend == "tf":
    return warp.fit_warp(matrix, progress=progress, **settings)
  try:
    import lightfm  # noqa: F401
  except ImportError:
    raise InputError("--cf_backend=lightfm needs lightfm: pip install 'tfcmir[lightfm]' "
                     "(lightfm-next==1.19.0, built from source: needs a C compiler)") from None
  return warp.fit_lightfm(matrix, threads=len(os.sched_getaffinity(0)), **settings)


def global_steps(corpus, config, out_dir, progress=True):
  """Split, genre vectors and WARP factors: computed, saved, and timed."""
  timings = {}
  ids = corpus.song_ids
  vocabulary = sorted(corpus.genre_names)
  song_genres = [s.genres for s in corpus.songs]

  started = time.time()
  assignment = split_lib.stratified_split(song_genres, vocabulary, config.fractions, config.seed)
  _save_json(os.path.join(out_dir, "split.json"),
             {name: ids[assignment == name].tolist() for name in shards.SPLITS})
  timings["split"] = time.time() - started

  started = time.time()
  genre_of = {s.song_id: s.genres for s in corpus.songs}
  playlist_genres = [[g for song in p for g in genre_of.get(song, ())] for p in corpus.playlists]
  vectors = genres_lib.train_genre_vectors(song_genres, playlist_genres, vocabulary,
                                           config.genre_dim, config.w2v_epochs, config.seed)
  vectors.save(out_dir)
  timings["word2vec"] = time.time() - started

  started = time.time()
  matrix = playlist_matrix(ids, corpus.playlists, assignment != "test")
  has_cf = np.asarray(matrix.sum(axis=1)).ravel() > 0
  if matrix.nnz == 0:
    raise InputError("no playlist contains a train or validation song with a mel: nothing to "
                     "factorise (check the playlists)")
  factors = fit_cf(matrix, config, progress)
  cf = np.where(has_cf[:, None], factors.item_factors, 0.0).astype(np.float32)
  safeio.atomic_write(os.path.join(out_dir, "warp.npz"), lambda f: np.savez(
      f, song_ids=ids, cf=cf, has_cf=has_cf, item_bias=factors.item_bias,
      playlist_factors=factors.user_factors, playlist_bias=factors.user_bias))
  timings["warp"] = time.time() - started
  warp_stats = {"songs_in_matrix": int(has_cf.sum()), "playlists": int(matrix.shape[1]),
                "memberships": int(matrix.nnz)}
  return assignment, vectors, cf, has_cf, timings, warp_stats


def _load_global(out_dir, corpus):
  split_ids = _load_json(os.path.join(out_dir, "split.json"))
  split_of = {i: name for name, ids in split_ids.items() for i in ids}
  assignment = np.array([split_of[s.song_id] for s in corpus.songs])
  vectors = genres_lib.GenreVectors.load(out_dir)
  warp_file = np.load(os.path.join(out_dir, "warp.npz"))
  return assignment, vectors, warp_file["cf"], warp_file["has_cf"]


def songs_per_shard(corpus, config):
  """How many songs keep a shard under config.shard_mb, from the first songs' mel sizes."""
  frames = []
  for song in corpus.songs[:20]:
    if song.mel_path:
      # Only well-formed mels size the shards; the others are reported, by name, when written.
      try:
        shape = np.load(song.mel_path, mmap_mode="r").shape
      except (OSError, ValueError, EOFError):  # EOFError: an empty .npy
        continue
      if len(shape) == 2 and shape[0] == config.bands and shape[1] >= 1:
        frames.append(shape[1])
    elif song.audio_path:
      import soundfile as sf
      try:
        frames.append(int(sf.info(song.audio_path).duration * audio.SAMPLE_RATE / audio.HOP_SIZE) + 1)
      except (RuntimeError, sf.LibsndfileError):
        continue
  per_song = (max(frames) if frames else 1876) * config.bands * 2 + 4 * config.cf_dim + 200
  return max(1, int(config.shard_mb * 2 ** 20 // per_song))


LEVEL_SAMPLE = 24  # mel files measured to detect the level convention


def mel_level(corpus, requested="auto", bands=audio.NUM_BANDS):
  """The corpus's level convention: (level, how it was chosen, statistics or None). See levels.py.

  Measures up to LEVEL_SAMPLE mel files spread over the corpus; unreadable ones are left to the
  shard writers, which report them.
  """
  from tfcmir import levels
  from tfcmir.data.corpus import load_mel

  with_mel = [s.mel_path for s in corpus.songs if s.mel_path]
  picked = with_mel[::max(1, len(with_mel) // LEVEL_SAMPLE)][:LEVEL_SAMPLE]
  mels = []
  for path in picked:
    try:
      mels.append(load_mel(path, bands))
    except InputError:
      continue
  return levels.resolve(requested, mels, f"{corpus.name} mels ({len(mels)} files measured)")


def prepare(corpus, out_dir, config=PrepareConfig(), workers=2, overwrite=False, strict=False,
            progress=True, flags_used=None, source=None, shard_writer=None, mel_level_flag="auto"):
  """Prepares `corpus` into `out_dir`; returns the manifest (a dict).

  `shard_writer`, if given, writes the shards instead of this module's worker pool (e.g.
  tfcmir.beam.prepare.BeamShardWriter): called as `shard_writer(entries, songs_per_shard, out_dir,
  config, strict, problems)`, it writes the records of `sharding.song_example`, adds the song-level
  problems to `problems`, and returns (shard records, shards reused) as `sharding.write_all` does.

  `mel_level_flag`: auto (detect the level convention from the corpus's mels), essentia or authors;
  the result goes into `config.mel_level` (so into the fingerprint) and the manifest.
  """
  level, level_how, level_stats = mel_level(corpus, mel_level_flag, config.bands)
  config = dataclasses.replace(config, mel_level=level)
  os.makedirs(out_dir, exist_ok=True)
  key = fingerprint(corpus, config)
  state_path = os.path.join(out_dir, STATE)
  state = _load_json(state_path) if os.path.exists(state_path) else None
  if overwrite:
    _clear(out_dir)
    state = None
  elif state and state.get("fingerprint") != key:
    raise InputError(f"{out_dir}: holds shards of another preparation (other data or settings); "
                     "use --overwrite to replace them, or another --tfrecord_dir")
  manifest_path = os.path.join(out_dir, shards.MANIFEST)
  if state and state.get("complete") and os.path.exists(manifest_path):
    logging.info("%s is already prepared (use --overwrite to redo it)", out_dir)
    return _load_json(manifest_path)
  if state is None and any(n.endswith(".tfrecord") for n in os.listdir(out_dir)):
    raise InputError(f"{out_dir}: holds shards without a preparation state; use --overwrite")

  started = time.time()
  if state and state.get("global_done"):
    assignment, vectors, cf, has_cf = _load_global(out_dir, corpus)
    timings, warp_stats = state["timings"], state["warp"]
  else:
    _save_json(state_path, {"fingerprint": key, "global_done": False, "complete": False})
    assignment, vectors, cf, has_cf, timings, warp_stats = global_steps(corpus, config, out_dir,
                                                                        progress)
    _save_json(state_path, {"fingerprint": key, "global_done": True, "complete": False,
                            "timings": timings, "warp": warp_stats})

  entries = [sharding.Entry(s.song_id, str(a), vectors.ids(s.genres, config.max_genres), cf[i],
                          bool(has_cf[i]), s.mel_path, s.audio_path)
             for i, (s, a) in enumerate(zip(corpus.songs, assignment))]
  shard_started = time.time()
  if shard_writer is None:
    tasks = sharding.plan(entries, songs_per_shard(corpus, config), out_dir, config.bands,
                        config.crop_frames, strict, config.mel_level)
    written, skipped = sharding.write_all(tasks, workers, progress)
  else:
    written, skipped = shard_writer(entries, songs_per_shard(corpus, config), out_dir, config, strict,
                                    corpus.problems)
  timings = dict(timings, shards=time.time() - shard_started)

  problems = corpus.problems
  for record in written:
    problems.merge(record["problems"]["counts"], record["problems"]["examples"])
  counts = {name: sum(r["records"] for r in written if r["split"] == name)
            for name in shards.SPLITS}
  with_cf = {name: int(sum(has_cf[i] for i, a in enumerate(assignment) if a == name))
             for name in shards.SPLITS}
  manifest = {
      "format_version": FORMAT_VERSION,
      "tfcmir_version": __version__,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "source": source or {"name": corpus.name},
      "fingerprint": key,
      "config": dataclasses.asdict(config),
      "flags": flags_used or {},
      "mel_level": {"level": level, "how": level_how, "statistics": level_stats},
      "schema": {"mel": {"dtype": "float16", "layout": "frames x bands (time-major)",
                         "level": level},
                 "bands": config.bands, "max_genres": config.max_genres, "cf_dim": config.cf_dim,
                 "genres": {"dtype": "int64", "shape": [config.max_genres], "pad": shards.GENRE_PAD},
                 "cf": {"dtype": "float32", "shape": [config.cf_dim]}},
      "counts": {"songs": counts, "with_cf": with_cf,
                 "short_mel": int(sum(r["short_mel"] for r in written)),
                 "corpus_songs": len(corpus.songs),
                 "playlists": {"factorised": len(corpus.playlists),
                               **{k: len(v) for k, v in corpus.heldout_playlists.items()}}},
      "split": {"seed": config.seed, "fractions": list(config.fractions), "file": "split.json",
                "method": "iterative stratification on genres (Sechidis et al. 2011)"},
      "genres": {"vocabulary": len(vectors.codes), "dim": config.genre_dim,
                 "table": "genre_vectors.npy", "vocab": "genre_vocab.json"},
      "warp": dict(warp_stats, dim=config.cf_dim, epochs=config.warp_epochs,
                   negatives=config.warp_negatives, backend=config.cf_backend, file="warp.npz"),
      "problems": problems.to_json(),
      "shards": [{k: r[k] for k in ("file", "split", "records", "bytes", "sha256")} for r in written],
      "shards_reused": skipped,
      "seconds": {k: round(v, 2) for k, v in dict(timings, total=time.time() - started).items()},
  }
  _save_json(manifest_path, manifest)
  state = _load_json(state_path)
  _save_json(state_path, dict(state, complete=True))
  return manifest
