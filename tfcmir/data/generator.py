"""Deterministic demo datasets in the real datasets' published layouts.

    python -m tfcmir.data.generator --out DIR --seed N [--flagfile=configs/demo.flags]

writes, from one generative process (tfcmir/data/synth.py):

    DIR/melon/          song_meta.json, genre_gn_all.json, train.json, val.json, test.json,
                        {id // 1000}/{id}.npy mels (48, T) float32 dB, computed from synthesised audio
                        through tfcmir.audio.MelSpectrogram; a few songs have no mel file, as in Melon
    DIR/gtzan/          {genre}/{genre}.000NN.wav (22,050 Hz mono), train/valid/test_filtered.txt
    DIR/mtg-jamendo/    audio/NN/ID.mp3 and data/splits/split-{0..4}/autotagging_{genre,instrument,
                        moodtheme}-{train,validation,test}.tsv (official format, CRLF line ends)
    DIR/truth/melon.json  the hidden factors of every Melon song (genres, mood, artist), for tests
    DIR/demo_manifest.json  the settings, counts, sizes and time of the run

The same seed and settings give byte-identical files. A run writes into DIR.partial and renames it to
DIR when complete, so a killed run leaves no half-written dataset; re-running with the same settings on
a complete DIR does nothing (use --overwrite to rebuild).
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
import multiprocessing
import os
import time

import numpy as np
import soundfile as sf
from absl import app, flags
from tqdm import tqdm

from tfcmir import flags as tfcmir_flags  # noqa: F401  (defines the shared flags)
from tfcmir import safeio
from tfcmir.data import synth

GTZAN_RATE = 22050
JAMENDO_RATE = 22050
# GTZAN's fault-filtered split sizes (Kereliuk and Sturm): 443 / 197 / 290 of 930 tracks.
GTZAN_SPLIT = {"train": 443, "valid": 197, "test": 290}
JAMENDO_CATEGORIES = ("genre", "instrument", "moodtheme")
JAMENDO_SPLITS = 5
MANIFEST = "demo_manifest.json"
DATASET_NAMES = ("melon", "gtzan", "mtg-jamendo", "truth", MANIFEST)  # what generate writes into --out
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  seed: int = 0
  songs: int = 1500
  playlists: int = 600
  seconds: float = 10.0
  missing_mel: float = 0.03
  gtzan_per_genre: int = 20
  jamendo_tracks: int = 300


# --------------------------------------------------------------------------------------------------
# Worker side: synthesis only (no TensorFlow), so spawned workers start fast.


def _render_task(task):
  song, seconds, rate, path = task
  wave = synth.render(song, seconds, rate)
  if path is None:
    return wave
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith(".mp3"):
    sf.write(path, wave, rate, format="MP3")
  else:
    sf.write(path, wave, rate, subtype="PCM_16")
  return None


def _keep_temporaries_on_the_heap():
  """Lets glibc reuse the synthesis' ~1 MB temporaries instead of mapping fresh pages for each.

  By default every array over 128 kB is mmap-ed and unmapped again, so each new one page-faults in
  zeroed memory: that was 60 % of the render time (65 -> 26 ms a song when kept on the heap).
  """
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:  # not glibc: nothing to tune
    return
  m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
  libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed value
  libc.mallopt(m_trim_threshold, 128 << 20)
  libc.mallopt(m_top_pad, 16 << 20)


def _pool(workers):
  # 'spawn': the parent holds TensorFlow's threads, which do not survive a fork.
  if workers <= 1:
    return None
  return multiprocessing.get_context("spawn").Pool(workers, initializer=_keep_temporaries_on_the_heap)


def _imap(pool, tasks):
  return pool.imap(_render_task, tasks, chunksize=4) if pool else map(_render_task, tasks)


# --------------------------------------------------------------------------------------------------
# Melon.


def _date(rng, start_year, end_year):
  day = datetime.date(start_year, 1, 1) + datetime.timedelta(
      days=int(rng.integers((end_year - start_year) * 365)))
  return day


def _mood_words(energy, valence):
  words = []
  if energy > 0.35:
    words.append("energetic")
  elif energy < -0.35:
    words.append("calm")
  if valence > 0.35:
    words.append("happy")
  elif valence < -0.35:
    words.append("sad")
  return words


def sample_melon(rng, config):
  """Artists, songs and playlists of the demo Melon corpus (metadata only)."""
  n_artists = max(10, config.songs // 8)
  artists = [synth.sample_artist(rng, i) for i in range(n_artists)]
  artist_weight = rng.dirichlet(np.full(n_artists, 2.0))
  song_artist = rng.choice(n_artists, size=config.songs, p=artist_weight)
  songs = [synth.sample_song(rng, artists[a]) for a in song_artist]
  ids = np.sort(rng.choice(config.songs * 6, size=config.songs, replace=False))
  albums = {a: [a * 3 + k for k in range(1 + int(rng.integers(3)))] for a in range(n_artists)}
  meta = []
  for song_id, song in zip(ids, songs):
    artist = artists[song.artist]
    genres = [synth.GENRES[g] for g in song.genres]
    meta.append({
        "song_gn_dtl_gnr_basket": [g.code for g in genres],
        "issue_date": _date(rng, 1990, 2021).strftime("%Y%m%d"),
        "album_name": f"{artist.name} vol. {int(rng.integers(1, 6))}",
        "album_id": int(rng.choice(albums[song.artist])),
        "artist_id_basket": [int(song.artist)],
        "song_name": synth._name(rng, 3),
        "song_gn_gnr_basket": sorted({g.main_code for g in genres}),
        "artist_name_basket": [artist.name],
        "id": int(song_id),
    })
  playlists = sample_playlists(rng, config, songs, ids)
  return artists, songs, ids, meta, playlists


def sample_playlists(rng, config, songs, ids):
  """Playlists from listener tastes: genres they like, a mood they want, artists they follow.

  score = 2 [main genre liked] + 1 [detailed genre liked] - |mood - wanted|^2 / (2 * 0.45^2)
          + 3 [artist followed] + 0.5 log popularity + Gumbel noise; the top L songs are the playlist.
  Mood and artists are audible but absent from the genre labels: playlists carry what genre does not.
  """
  n = len(songs)
  main = np.zeros((n, len(synth.MAIN_GENRES)))
  detailed = np.zeros((n, len(synth.GENRES)))
  for i, song in enumerate(songs):
    for g in song.genres:
      main[i, synth.GENRES[g].main] = 1
      detailed[i, g] = 1
  mood = np.array([(s.energy, s.valence) for s in songs])
  artist = np.array([s.artist for s in songs])
  log_pop = rng.normal(0, 1, n)
  genre_prior = main.sum(0) / main.sum()
  out = []
  start = datetime.datetime(2013, 1, 1)
  for pid in range(config.playlists):
    liked = rng.choice(len(synth.MAIN_GENRES), size=1 + int(rng.random() < 0.4), replace=False,
                       p=genre_prior)
    liked_detailed = liked[0] * 3 + int(rng.integers(3))
    wanted = rng.uniform(-1, 1, 2)
    followed = rng.choice(artist[main[:, liked[0]] > 0], size=int(rng.integers(0, 3)))
    score = (2.0 * main[:, liked].max(1) + 1.0 * detailed[:, liked_detailed]
             - ((mood - wanted) ** 2).sum(1) / (2 * 0.45 ** 2)
             + 3.0 * np.isin(artist, followed) + 0.5 * log_pop + rng.gumbel(size=n))
    length = int(rng.integers(10, 41))
    chosen = np.argsort(-score, kind="stable")[:length]
    words = _mood_words(*wanted) or ["chill"]
    genre_words = [synth.MAIN_GENRES[g] for g in liked]
    updated = start + datetime.timedelta(seconds=int(rng.integers(7 * 365 * 86400)))
    out.append({
        "tags": words + genre_words,
        "id": pid,
        "plylst_title": f"{' '.join(words)} {' & '.join(genre_words)} #{pid}",
        "songs": [int(ids[i]) for i in chosen],
        "like_cnt": int(rng.integers(0, 500)),
        "updt_date": updated.strftime("%Y-%m-%d %H:%M:%S.000"),
    })
  return out


def write_melon(out, rng, config, pool):
  """Writes the Melon layout; returns counts for the manifest."""
  from tfcmir import audio  # TensorFlow only in the parent, after the pool has spawned.

  artists, songs, ids, meta, playlists = sample_melon(rng, config)
  melon = os.path.join(out, "melon")
  os.makedirs(melon)
  _write_json(os.path.join(melon, "song_meta.json"), meta)
  codes = {}
  for g in synth.GENRES:
    codes[g.main_code] = g.main_name.title()
    codes[g.code] = g.name
  _write_json(os.path.join(melon, "genre_gn_all.json"), dict(sorted(codes.items())))
  order = rng.permutation(len(playlists))
  n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
  parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
           "test": order[n_train + n_val:]}
  for name, index in parts.items():
    _write_json(os.path.join(melon, f"{name}.json"), [playlists[i] for i in sorted(index)])
  has_mel = rng.random(len(songs)) >= config.missing_mel
  tasks = [(song, config.seconds, audio.SAMPLE_RATE, None) for song, keep in zip(songs, has_mel)
           if keep]
  kept_ids = ids[has_mel]
  mel_layer = audio.MelSpectrogram()
  batch, batch_ids = [], []

  def flush():
    mels = np.asarray(mel_layer(np.stack(batch)))
    for song_id, mel in zip(batch_ids, mels):
      folder = os.path.join(melon, str(song_id // 1000))
      os.makedirs(folder, exist_ok=True)
      np.save(os.path.join(folder, f"{song_id}.npy"), np.ascontiguousarray(mel.T))  # (48, T)
    batch.clear()
    batch_ids.clear()

  for song_id, wave in tqdm(zip(kept_ids, _imap(pool, tasks)), total=len(tasks), desc="melon",
                            unit="song", leave=False):
    batch.append(wave)
    batch_ids.append(int(song_id))
    if len(batch) == 64:
      flush()
  if batch:
    flush()
  truth = [{"id": int(i), "genres": [synth.GENRES[g].code for g in s.genres],
            "main_genre": synth.GENRES[s.genres[0]].main_name, "energy": round(s.energy, 4),
            "valence": round(s.valence, 4), "artist": s.artist, "lead": s.lead, "has_mel": bool(k)}
           for i, s, k in zip(ids, songs, has_mel)]
  _write_json(os.path.join(out, "truth", "melon.json"), truth)
  return {"songs": len(songs), "songs_with_mel": int(has_mel.sum()), "artists": len(artists),
          "playlists": {k: int(len(v)) for k, v in parts.items()},
          "mel_frames": int(audio.num_frames(int(round(config.seconds * audio.SAMPLE_RATE))))}


# --------------------------------------------------------------------------------------------------
# GTZAN.


def write_gtzan(out, rng, config, pool):
  root = os.path.join(out, "gtzan")
  per_genre = config.gtzan_per_genre
  tasks, splits = [], {name: [] for name in GTZAN_SPLIT}
  total = sum(GTZAN_SPLIT.values())
  cut_train = round(per_genre * GTZAN_SPLIT["train"] / total)
  cut_valid = cut_train + round(per_genre * GTZAN_SPLIT["valid"] / total)
  for g, genre in enumerate(synth.MAIN_GENRES):
    for k, i in enumerate(rng.permutation(per_genre)):
      _, song = synth.sample_song_for_genre(rng, g, index=i)
      rel = f"{genre}/{genre}.{i:05d}.wav"
      tasks.append((song, config.seconds, GTZAN_RATE, os.path.join(root, rel)))
      split = "train" if k < cut_train else "valid" if k < cut_valid else "test"
      splits[split].append(rel)
  for _ in tqdm(_imap(pool, tasks), total=len(tasks), desc="gtzan", unit="track", leave=False):
    pass
  for name, rels in splits.items():
    with open(os.path.join(root, f"{name}_filtered.txt"), "w") as f:
      f.writelines(rel + "\n" for rel in sorted(rels))
  return {name: len(rels) for name, rels in splits.items()}


# --------------------------------------------------------------------------------------------------
# MTG-Jamendo.


def jamendo_tags(song):
  """The tags a Jamendo annotator would give: genres, mood/theme from the hidden mood, instruments."""
  genres = set()
  for g in song.genres:
    genres.add(synth.GENRES[g].main_name)
    genres.add(synth.GENRES[g].name)
  moods = set()
  e, v = song.energy, song.valence
  if e > 0.35:
    moods.add("energetic")
  if e < -0.35:
    moods.add("calm")
  if v > 0.35:
    moods.add("happy")
  if v < -0.35:
    moods.add("sad")
  if v < -0.2 and e > 0.2:
    moods.add("dark")
  if v > 0.2 and e > 0.2:
    moods.add("uplifting")
  if v < -0.2 and e < -0.2:
    moods.add("melancholic")
  if v > -0.2 and e < -0.2:
    moods.add("relaxing")
  params = synth.resolve(song)
  instruments = {song.lead, song.pad}
  if params.drums > 0:
    instruments.add("drums")
  if params.bass > 0:
    instruments.add("bass")
  return {"genre": sorted(genres), "moodtheme": sorted(moods), "instrument": sorted(instruments)}


def write_jamendo(out, rng, config, pool):
  root = os.path.join(out, "mtg-jamendo")
  track_ids = np.sort(rng.choice(1_400_000, size=config.jamendo_tracks, replace=False))
  rows, tasks = [], []
  for k, track_id in enumerate(track_ids):
    artist, song = synth.sample_song_for_genre(rng, int(rng.integers(len(synth.MAIN_GENRES))), k)
    tags = jamendo_tags(song)
    for category in JAMENDO_CATEGORIES:  # annotators miss a tag now and then
      tags[category] = [t for t in tags[category] if rng.random() > 0.08] or tags[category][:1]
    rel = f"{track_id % 100:02d}/{track_id}.mp3"
    tasks.append((song, config.seconds, JAMENDO_RATE, os.path.join(root, "audio", rel)))
    rows.append((f"track_{track_id:07d}", f"artist_{k:06d}", f"album_{k:06d}", rel,
                 f"{config.seconds:.1f}", tags))
  for _ in tqdm(_imap(pool, tasks), total=len(tasks), desc="jamendo", unit="track", leave=False):
    pass
  for split in range(JAMENDO_SPLITS):
    folder = os.path.join(root, "data", "splits", f"split-{split}")
    os.makedirs(folder)
    order = rng.permutation(len(rows))
    cut1, cut2 = int(0.6 * len(rows)), int(0.8 * len(rows))
    parts = {"train": order[:cut1], "validation": order[cut1:cut2], "test": order[cut2:]}
    for category in JAMENDO_CATEGORIES:
      prefix = "mood/theme" if category == "moodtheme" else category
      for part, index in parts.items():
        lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
        for i in sorted(index):
          track, artist, album, rel, duration, tags = rows[i]
          if tags[category]:
            lines.append("\t".join([track, artist, album, rel, duration]
                                   + [f"{prefix}---{t}" for t in tags[category]]))
        path = os.path.join(folder, f"autotagging_{category}-{part}.tsv")
        with open(path, "w", newline="") as f:
          f.write("\r\n".join(lines) + "\r\n")
  return {"tracks": len(rows), "splits": JAMENDO_SPLITS}


# --------------------------------------------------------------------------------------------------


def _write_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, ensure_ascii=False)


def _dir_size(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def read_manifest(out):
  path = os.path.join(out, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def generate(out, config=DemoConfig(), workers=2, overwrite=False):
  """Writes the three demo datasets to `out`; returns the manifest (a dict).

  Deterministic: every random draw comes from one generator seeded with `config.seed`, consumed in
  a fixed order, and worker processes only render songs whose seeds were drawn up front.
  """
  settings = dataclasses.asdict(config) | {"format_version": FORMAT_VERSION}
  safeio.check_ours(out, (MANIFEST,), "demo data (--out)")
  existing = read_manifest(out)
  if existing and existing.get("settings") == settings and not overwrite:
    print(f"{out} already holds this demo dataset (--overwrite rebuilds it)")
    return existing
  partial = safeio.partial_folder(out)
  started = time.time()
  # Independent streams per dataset: changing the GTZAN size leaves the Melon corpus unchanged.
  melon_rng, gtzan_rng, jamendo_rng = (np.random.default_rng(s)
                                       for s in np.random.SeedSequence(config.seed).spawn(3))
  pool = _pool(workers)
  try:
    counts = {"melon": write_melon(partial, melon_rng, config, pool),
              "gtzan": write_gtzan(partial, gtzan_rng, config, pool),
              "mtg-jamendo": write_jamendo(partial, jamendo_rng, config, pool)}
  finally:
    if pool:
      pool.close()
      pool.join()
  manifest = {"settings": settings, "counts": counts, "bytes": _dir_size(partial),
              "seconds": round(time.time() - started, 1), "workers": workers,
              "written_by": safeio.WRITTEN_BY}
  _write_json(os.path.join(partial, MANIFEST), manifest)
  # Files of others in `out` are carried over; every name the demo writes is replaced.
  safeio.replace_folder(partial, out, DATASET_NAMES)
  return manifest


def digest(out):
  """sha256 over every file's relative path and bytes (the manifest's timing aside)."""

  def parts():
    for d, dirs, files in sorted(os.walk(out)):
      dirs.sort()
      for name in sorted(files):
        if name == MANIFEST:
          continue
        path = os.path.join(d, name)
        yield os.path.relpath(path, out)
        with open(path, "rb") as f:
          yield f.read()
  return safeio.sha256_chunks(parts())


def config_from_flags(seed=None):
  F = flags.FLAGS
  return DemoConfig(seed=F.seed if seed is None else seed, songs=F.demo_songs,
                    playlists=F.demo_playlists, seconds=F.demo_seconds,
                    missing_mel=F.demo_missing_mel, gtzan_per_genre=F.demo_gtzan_per_genre,
                    jamendo_tracks=F.demo_jamendo_tracks)


def summary(out, manifest):
  c = manifest["counts"]
  m = c["melon"]
  return "\n".join([
      f"demo data in {out}  ({manifest['bytes'] / 2**20:.0f} MiB, {manifest['seconds']:.1f} s, "
      f"{manifest['workers']} workers)",
      f"  melon:       {m['songs']} songs ({m['songs_with_mel']} with mels of 48 x {m['mel_frames']}),"
      f" {m['artists']} artists, playlists train/val/test "
      f"{m['playlists']['train']}/{m['playlists']['val']}/{m['playlists']['test']}",
      f"  gtzan:       train/valid/test {c['gtzan']['train']}/{c['gtzan']['valid']}/"
      f"{c['gtzan']['test']} tracks",
      f"  mtg-jamendo: {c['mtg-jamendo']['tracks']} tracks, {c['mtg-jamendo']['splits']} splits"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  out = flags.FLAGS.out or flags.FLAGS.demo_dir
  manifest = generate(out, config_from_flags(), flags.FLAGS.workers, flags.FLAGS.overwrite)
  print(summary(out, manifest))


if __name__ == "__main__":
  app.run(main)
