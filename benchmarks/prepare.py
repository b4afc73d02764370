"""Preparation throughput: Melon-layout npy mels -> TFRecord shards, per worker, and its memory.

    python benchmarks/prepare.py                       # 5k and 20k songs, 1 and 2 workers
    python benchmarks/prepare.py --metadata_songs 649091   # + the metadata steps at Melon's size
    python benchmarks/prepare.py --quick               # smoke test (CI)

Writes a synthetic dataset in the Melon layout (song_meta.json, genre_gn_all.json, train/val/test.json,
{id // 1000}/{id}.npy float32 (48, 1876) mels, like the real arena_mel files) into a temporary folder,
then runs the real `tfcmir.prepare` step on it in a fresh process per configuration, so that each row's
peak memory is its own. The mels were just written, so they are read from the page cache: on a cold
disk the shard step is bound by the disk instead (360 KB a song).

--metadata_songs builds song_meta.json and playlists of that size (Melon: 649,091 songs with mels,
115,071 train playlists) without mel files and times and measures what prepare holds per song before
any shard is written: the reader, the split, Word2Vec and the shard plan (WARP has its own benchmark,
benchmarks/warp.py).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import common

FRAMES = 1876  # 30 s at 16 kHz, hop 256: over 99 % of the Melon mels
BANDS = 48
MAIN_GENRES = [f"GN{i:02d}00" for i in range(1, 31)]
DETAILED = [f"GN{i:02d}{j:02d}" for i in range(1, 31) for j in range(1, 8)]


def write_metadata(root, songs, playlists, seed=0):
  """song_meta.json, genre_gn_all.json and the three playlist files of a synthetic Melon dataset."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "genre_gn_all.json"), "w", encoding="utf-8") as f:
    json.dump({code: f"genre {code}" for code in MAIN_GENRES + DETAILED}, f, ensure_ascii=False)
  main = rng.integers(0, len(MAIN_GENRES), songs)
  detailed_count = rng.integers(1, 3, songs)
  detailed_pick = rng.permuted(np.tile(np.arange(1, 8), (songs, 1)), axis=1)
  meta = [{"id": song, "album_id": song // 10, "artist_id_basket": [song // 30],
           "artist_name_basket": [f"artist {song // 30}"], "song_name": f"song {song}",
           "song_gn_gnr_basket": [MAIN_GENRES[m]],
           "song_gn_dtl_gnr_basket": [f"GN{m + 1:02d}{j:02d}" for j in detailed_pick[song, :n]],
           "issue_date": "20200101"}
          for song, m, n in zip(range(songs), main.tolist(), detailed_count.tolist())]
  with open(os.path.join(root, "song_meta.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, ensure_ascii=False)
  del meta
  # Long-tailed popularity (Zipf-like ranks), ~55 songs a playlist: Melon's shape. Drawn by inverse
  # CDF for all playlists at once (rng.choice with p= is O(songs) a call).
  cdf = np.cumsum(1.0 / np.arange(1, songs + 1) ** 0.8)
  cdf /= cdf[-1]
  order = rng.permutation(songs)
  lengths = np.clip(rng.lognormal(3.7, 0.7, playlists), 1, 200).astype(np.int64)
  draws = order[np.minimum(np.searchsorted(cdf, rng.random(lengths.sum())), songs - 1)]
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  shares = {"train": 0.775, "val": 0.155, "test": 0.07}  # 115,071 / 23,015 / 10,740
  first = 0
  for name, share in shares.items():
    last = playlists if name == "test" else first + max(1, int(playlists * share))
    entries = [{"id": pid, "plylst_title": f"playlist {pid}", "tags": [],
                "songs": np.unique(draws[bounds[pid]:bounds[pid + 1]]).tolist(), "like_cnt": 0,
                "updt_date": "2020-01-01 00:00:00.000"} for pid in range(first, last)]
    with open(os.path.join(root, f"{name}.json"), "w", encoding="utf-8") as f:
      json.dump(entries, f)
    first = last


def write_mels(root, songs, seed=0):
  """{id // 1000}/{id}.npy float32 (48, FRAMES) dB mels."""
  rng = np.random.default_rng(seed)
  base = rng.normal(-70, 12, (BANDS, FRAMES)).astype(np.float32)
  for song in range(songs):
    folder = os.path.join(root, str(song // 1000))
    if song % 1000 == 0:
      os.makedirs(folder, exist_ok=True)
    # A cheap per-song variation, so no two shards are byte-identical.
    np.save(os.path.join(folder, f"{song}.npy"), np.roll(base, song % FRAMES, axis=1) + song % 7)


def child_prepare(args):
  """In a fresh process: prepare the dataset at args.root; prints a JSON line of figures."""
  common.pin_threads(args.workers)  # the parent's share of cores: WARP and the writer pool
  from tfcmir.data import melon
  from tfcmir.prepare import steps

  started = time.perf_counter()
  corpus = melon.read_melon(args.root)
  read = time.perf_counter() - started
  config = steps.PrepareConfig(warp_epochs=args.warp_epochs, shard_mb=args.shard_mb)
  manifest = steps.prepare(corpus, args.out, config, workers=args.workers, progress=False)
  songs = sum(manifest["counts"]["songs"].values())
  print(json.dumps({"songs": songs, "read": read, **manifest["seconds"],
                    "shard_bytes": sum(s["bytes"] for s in manifest["shards"]),
                    "parent_gb": common.peak_rss_gb(), "worker_gb": common.peak_rss_children_gb()}))


def child_metadata(args):
  """In a fresh process: the per-song metadata work of prepare at Melon's size; prints JSON."""
  import unittest.mock

  from tfcmir.data import melon
  from tfcmir.prepare import genres as genres_lib
  from tfcmir.prepare import sharding, split as split_lib, steps

  figures = {}
  started = time.perf_counter()
  # No mel files at this size: the reader's existence check is answered yes for every song.
  with unittest.mock.patch("os.path.exists", lambda path: True):
    corpus = melon.read_melon(args.root)
  figures["read"] = time.perf_counter() - started
  figures["after_read_gb"] = common.peak_rss_gb()
  started = time.perf_counter()
  vocabulary = sorted(corpus.genre_names)
  song_genres = [s.genres for s in corpus.songs]
  assignment = split_lib.stratified_split(song_genres, vocabulary)
  figures["split"] = time.perf_counter() - started
  started = time.perf_counter()
  genre_of = {s.song_id: s.genres for s in corpus.songs}
  playlist_genres = [[g for song in p for g in genre_of.get(song, ())] for p in corpus.playlists]
  vectors = genres_lib.train_genre_vectors(song_genres, playlist_genres, vocabulary, 200, 5, 0)
  figures["word2vec"] = time.perf_counter() - started
  started = time.perf_counter()
  cf = np.zeros((len(corpus.songs), 300), np.float32)  # what WARP hands over
  entries = [sharding.Entry(s.song_id, str(a), vectors.ids(s.genres, 10), cf[i], True, s.mel_path,
                          s.audio_path) for i, (s, a) in enumerate(zip(corpus.songs, assignment))]
  tasks = sharding.plan(entries, 740, args.out, BANDS, 256, False)
  figures["plan"] = time.perf_counter() - started
  figures.update(songs=len(corpus.songs), playlists=len(corpus.playlists), shards=len(tasks),
                 peak_gb=common.peak_rss_gb())
  print(json.dumps(figures))
  del steps


def run_child(mode, **kwargs):
  argv = [sys.executable, os.path.abspath(__file__), f"--child={mode}"]
  argv += [f"--{k}={v}" for k, v in kwargs.items()]
  result = subprocess.run(argv, capture_output=True, text=True)
  if result.returncode:
    raise RuntimeError(f"{mode} run failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--songs", default="5000,20000", help="song counts, comma-separated")
  parser.add_argument("--workers", default="1,2", help="writer processes, comma-separated")
  parser.add_argument("--warp_epochs", type=int, default=1, help="WARP is timed by warp.py")
  parser.add_argument("--shard_mb", type=int, default=128)
  parser.add_argument("--metadata_songs", type=int, default=0,
                      help="also measure the metadata steps at this many songs (Melon: 649091)")
  parser.add_argument("--metadata_playlists", type=int, default=148_826)
  parser.add_argument("--quick", action="store_true", help="a smoke test: 300 songs, 1 worker")
  parser.add_argument("--tmp", default=None, help="where the synthetic data goes")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child == "prepare":
    args.workers = int(args.workers)
    return child_prepare(args)
  if args.child == "metadata":
    return child_metadata(args)
  if args.quick:
    args.songs, args.workers, args.shard_mb = "300", "1", 16

  counts = [int(n) for n in args.songs.split(",")]
  worker_counts = [int(n) for n in args.workers.split(",")]
  tmp = tempfile.mkdtemp(prefix="tfcmir-bench-prepare-", dir=args.tmp)
  rows, memory_rows = [], []
  try:
    for songs in counts:
      root = os.path.join(tmp, f"melon{songs}")
      started = time.perf_counter()
      write_metadata(root, songs, max(20, songs // 5))
      write_mels(root, songs)
      print(f"wrote {songs} songs in the Melon layout in {time.perf_counter() - started:.0f} s",
            flush=True)
      for workers in worker_counts:
        out = os.path.join(tmp, f"out{songs}-{workers}")
        r = run_child("prepare", root=root, out=out, workers=workers, warp_epochs=args.warp_epochs,
                      shard_mb=args.shard_mb)
        shutil.rmtree(out)
        rate = r["songs"] / r["shards"]
        rows.append((f"{songs:,}", workers, f"{r['read']:.1f}", f"{r['split']:.1f}",
                     f"{r['word2vec']:.1f}", f"{r['shards']:.1f}", f"{rate:,.0f}",
                     f"{rate / workers:,.0f}", f"{r['shard_bytes'] / r['shards'] / 2**20:,.0f}",
                     f"{r['parent_gb']:.2f}", f"{r['worker_gb']:.2f}"))
        memory_rows.append((songs, r["parent_gb"]))
        print(f"  {songs} songs, {workers} worker(s): {rate:.0f} songs/s", flush=True)
      shutil.rmtree(root)
    metadata = None
    if args.metadata_songs:
      root = os.path.join(tmp, "melon-metadata")
      started = time.perf_counter()
      write_metadata(root, args.metadata_songs, args.metadata_playlists)
      print(f"wrote metadata of {args.metadata_songs:,} songs in {time.perf_counter() - started:.0f} s",
            flush=True)
      metadata = run_child("metadata", root=root, out=os.path.join(tmp, "plan"))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  print()
  print(common.machine_line("mels float32 (48, 1876) from the page cache; WARP epochs "
                            f"{args.warp_epochs} (timed by benchmarks/warp.py)"))
  print(common.table(["songs", "workers", "read s", "split s", "word2vec s", "shards s", "songs/s",
                      "songs/s per worker", "shard MB/s", "parent peak GB", "worker peak GB"], rows))
  if len(memory_rows) >= 2:
    (n0, m0), (n1, m1) = min(memory_rows), max(memory_rows)
    if n1 > n0:
      slope = (m1 - m0) / (n1 - n0)
      print(f"\nparent peak memory grows {slope * 2**30 / 1e3:.1f} kB per song "
            f"({n0:,} -> {n1:,} songs: {m0:.2f} -> {m1:.2f} GB)")
  if metadata:
    print(f"\nmetadata steps at {metadata['songs']:,} songs, {metadata['playlists']:,} playlists "
          "(no mels, no WARP):")
    print(common.table(["step", "seconds", "peak GB so far"], [
        ("read song_meta.json + playlists", f"{metadata['read']:.1f}", f"{metadata['after_read_gb']:.2f}"),
        ("stratified split", f"{metadata['split']:.1f}", ""),
        ("genre Word2Vec", f"{metadata['word2vec']:.1f}", ""),
        (f"shard plan ({metadata['shards']} shards)", f"{metadata['plan']:.1f}",
         f"{metadata['peak_gb']:.2f}")]))


if __name__ == "__main__":
  main()
