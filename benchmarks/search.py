"""Search query latency at catalogue scale: faiss flat (exact) against IVF, one query at a time.

    python benchmarks/search.py            # 1M tracks of 128 dims (the projection), 1 and 2 threads
    python benchmarks/search.py --quick    # smoke test (CI): the same code at toy sizes

`python -m tfcmir.search similar|genre` answers one query against every indexed track. The tracks
are synthetic unit vectors shaped like projections: 1,000 cluster centres plus noise (--noise),
normalised, as tfcmir/search/store.py stores them. Queries are drawn the same way (not indexed).
Each query is searched alone, as a user's query is, k = 10:

  * faiss IndexFlatIP (what `search index` writes): every track scored, exact;
  * tfcmir.search's own path (SearchIndex.search: the flat index plus the query's exclusion);
  * faiss IndexIVFFlat, sqrt(n)*4 k-means lists trained on a sample, at each --nprobe: its recall@k
    against the exact answer says what the speed costs.

Prints the machine line, the build time and memory, and per setting the median and 95th-percentile
latency in ms and recall@k. Target (issue 19): a query at 1M tracks under 50 ms on 2 cores.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

import common
import faiss
from tfcmir.search import store

TARGET_MS = 50


def synthetic(n, dim, clusters, noise, seed, chunk=1 << 18):
  """(n, dim) float32 unit rows: a random centre each, plus Gaussian noise, normalised."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((clusters, dim), dtype=np.float32)
  out = np.empty((n, dim), np.float32)
  for start in range(0, n, chunk):
    rows = slice(start, min(start + chunk, n))
    out[rows] = centres[rng.integers(0, clusters, rows.stop - start)]
    out[rows] += noise * rng.standard_normal((rows.stop - start, dim), dtype=np.float32)
    out[rows] /= np.linalg.norm(out[rows], axis=1, keepdims=True)
  return out


def latencies_ms(search, queries):
  """Milliseconds of each query searched alone, after one untimed warm-up query."""
  search(queries[:1])
  times = []
  for q in queries:
    start = time.perf_counter()
    search(q[None])
    times.append((time.perf_counter() - start) * 1000)
  return np.array(times)


def recall(found, exact):
  return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="toy sizes (smoke test)")
  parser.add_argument("--tracks", type=int, default=1_000_000)
  parser.add_argument("--dim", type=int, default=128, help="the projection's size (paper: 128)")
  parser.add_argument("--queries", type=int, default=200)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--threads", default="1,2", help="faiss threads, each measured")
  parser.add_argument("--nprobe", default="8,16,32", help="IVF lists searched per query")
  parser.add_argument("--noise", type=float, default=0.5)
  args = parser.parse_args()
  if args.quick:
    args.tracks, args.queries = 20_000, 20
  common.pin_threads(max(int(t) for t in args.threads.split(",")))
  print(common.machine_line(f"faiss {faiss.__version__}"))

  started = time.perf_counter()
  vectors = synthetic(args.tracks, args.dim, 1000, args.noise, seed=0)
  queries = _fresh_queries(args)
  setup = time.perf_counter() - started
  print(f"{args.tracks:,} tracks of {args.dim} dims ({vectors.nbytes / 2**30:.2f} GiB), "
        f"{args.queries} queries, k = {args.k}; made in {setup:.1f} s")

  rows = []
  started = time.perf_counter()
  flat = faiss.IndexFlatIP(args.dim)
  flat.add(vectors)
  flat_build = f"{time.perf_counter() - started:.1f}"
  exact = flat.search(queries, args.k)[1]
  started = time.perf_counter()
  index = store.SearchIndex({}, [{"path": str(i)} for i in range(args.tracks)], vectors)
  own_build = f"{time.perf_counter() - started:.1f}"
  print(disk_line(index))
  nlist = int(4 * np.sqrt(args.tracks))
  started = time.perf_counter()
  quantizer = faiss.IndexFlatIP(args.dim)
  ivf = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
  sample = vectors[np.random.default_rng(1).choice(args.tracks, min(args.tracks, 40 * nlist),
                                                   replace=False)]
  ivf.cp.min_points_per_centroid = 1
  ivf.train(sample)
  ivf.add(vectors)
  ivf_build = f"{time.perf_counter() - started:.1f}"
  for threads in [int(t) for t in args.threads.split(",")]:
    faiss.omp_set_num_threads(threads)
    times = latencies_ms(lambda q: flat.search(q, args.k), queries)
    rows.append(("faiss IndexFlatIP (exact; what `search index` writes)", threads, flat_build, times,
                 1.0))
    times = latencies_ms(lambda q: index.search(q, args.k, exclude=(0,), threads=threads), queries)
    found = np.concatenate([index.search(q[None], args.k, exclude=(0,), threads=threads)[0]
                            for q in queries])
    rows.append(("tfcmir.search SearchIndex.search (flat, one exclusion)", threads, own_build, times,
                 recall(found, exact)))
    for nprobe in [int(p) for p in args.nprobe.split(",")]:
      ivf.nprobe = nprobe
      times = latencies_ms(lambda q: ivf.search(q, args.k), queries)
      rows.append((f"faiss IndexIVFFlat, {nlist:,} lists, nprobe {nprobe}", threads, ivf_build, times,
                   recall(ivf.search(queries, args.k)[1], exact)))
      ivf_build = "(same)"
    flat_build = own_build = "(same)"  # built once

  print(common.table(
      ["index", "threads", "build s", "median ms", "p95 ms", f"recall@{args.k}",
       f"< {TARGET_MS} ms (median)"],
      [(name, threads, build, f"{np.median(t):.2f}", f"{np.percentile(t, 95):.2f}", f"{r:.3f}",
        "yes" if np.median(t) < TARGET_MS else "no") for name, threads, build, t, r in rows]))
  print(f"peak memory {common.peak_rss_gb():.2f} GB")


def disk_line(index):
  """Writes `index` as `search index` does (tfcmir/search/store.py) and times store.read: what a
  command pays before its first query (an API user pays it once)."""
  folder = tempfile.mkdtemp(prefix="tfcmir-bench-search-")
  try:
    index.tracks = [{"path": f"/music/artist {i // 10}/track {i}.mp3", "size": 4_000_000 + i,
                     "mtime_ns": 1_700_000_000_000_000_000 + i, "patches": 50, "padded": False}
                    for i in range(len(index.tracks))]
    started = time.perf_counter()
    store.write(os.path.join(folder, "index"), index)
    written = time.perf_counter() - started
    size = sum(os.path.getsize(os.path.join(folder, "index", f)) for f in os.listdir(
        os.path.join(folder, "index")))
    started = time.perf_counter()
    loaded = store.read(os.path.join(folder, "index"))
    loaded.row_of("/music/artist 0/track 1.mp3")  # the path table is built on first use
    read = time.perf_counter() - started
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  return (f"index on disk: {size / 2**20:.0f} MiB, written in {written:.1f} s; store.read and "
          f"the first path look-up {read:.1f} s")


def _fresh_queries(args):
  """Queries from the tracks' own centres (seed 0) but new noise: near neighbours exist, none is a
  copy of an indexed track."""
  rng = np.random.default_rng(0)
  centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
  noise = np.random.default_rng(2).standard_normal((args.queries, args.dim), dtype=np.float32)
  queries = centres[np.random.default_rng(3).integers(0, 1000, args.queries)] + args.noise * noise
  return queries / np.linalg.norm(queries, axis=1, keepdims=True)


if __name__ == "__main__":
  main()
