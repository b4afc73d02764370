"""Playlist-continuation evaluation at Melon scale: time per phase and peak memory.

    python benchmarks/continuation.py            # Melon scale (~3 GB of embeddings, minutes)
    python benchmarks/continuation.py --quick    # smoke test (CI): the same code at toy sizes
    python benchmarks/continuation.py --dim 128  # e.g. the 128-d projection instead of the pre-head

A synthetic corpus with Melon's shape: 649,091 song ids, 10 % of them test-split candidates (~65k),
104,410 evaluated playlists (each holds a test song; mean ~55 songs, long-tailed lengths) plus 44,416
short playlists without a test song (Melon has 148,826 in all), songs drawn with Zipf popularity,
80 % from the playlist's own cluster. Every song of an evaluated playlist and every test song gets a
1024-d embedding (the pre-head `embedding` that `tfcmir.evaluate` takes from an export's
serving_default, paper-size encoder): non-negative (post-ReLU, like the real features), its cluster's
centre plus noise. The evaluation is `tfcmir.evaluate.continuation.evaluate_continuation` with the
settings `tfcmir.evaluate` uses (k = 100 as in the paper; 50 Annoy trees, our choice: the paper gives
none), called as `tfcmir.evaluate` calls it (a dict song id -> vector), once per Annoy `search_k`
(--continuation_search_k), once with faiss's exact IndexFlatIP (--continuation_index=exact), once per
faiss IndexIVFFlat probe count (--continuation_index=faiss_ivf --continuation_nprobe) and, with
--voyager_ef, once per HNSW query ef of Spotify's voyager (Annoy's successor; benchmark only,
`pip install voyager==2.2.3`), through the same protocol. Prints the phases, the peak memory of the process, the
metrics (the random row is the floor: clustered embeddings must beat it), each setting's recall@k
against the exact cosine top-k of a sample of seeds (a numpy full sort: what a faster setting costs),
and for faiss IVF how its query time splits between the coarse quantizer and the list scans. --noise sets how far songs scatter
around their cluster's centre: 1.5 keeps neighbours in their cluster; at 4 the 1024-d noise swamps the
clusters and neighbours are close to random, the hardest case for any approximate search.
"""

import argparse
import sys
import time

import numpy as np

import common
from tfcmir.evaluate import continuation

MELON_SONGS = 649_091
MELON_EVALUATED = 104_410
MELON_OTHER = 148_826 - 104_410
POPULARITY_SIGMA = 1.5
PHASES = ("split playlists", "build index", "query seeds", "score playlists")
TARGET_S, TARGET_RECALL = 60, 0.99


def sampler(cluster_of, weight, pool):
  """Draws songs of `pool` (bool mask) with probability ~ weight, from a given cluster or from all.

  Returns draw(clusters, anywhere, rng) -> song ids, one per entry of `clusters`; where `anywhere`
  is true the song comes from the whole pool instead of the entry's cluster.
  """
  songs = np.flatnonzero(pool)
  songs = songs[np.argsort(cluster_of[songs], kind="stable")]  # contiguous clusters in one cumsum
  cum = np.cumsum(weight[songs])
  bounds = np.searchsorted(cluster_of[songs], np.arange(cluster_of.max() + 2))
  start = np.concatenate([[0.0], cum])[bounds[:-1]]
  end = np.concatenate([[0.0], cum])[bounds[1:]]

  def draw(clusters, anywhere, rng):
    lo = np.where(anywhere, 0.0, start[clusters])
    hi = np.where(anywhere, cum[-1], end[clusters])
    u = lo + rng.random(len(clusters)) * (hi - lo)
    return songs[np.minimum(np.searchsorted(cum, u, side="right"), len(songs) - 1)]

  return draw


def playlist_lengths(count, mean, rng, longest=200):
  """Long-tailed (log-normal) lengths in [1, longest] with about the given mean."""
  sigma = 0.75
  return np.clip(np.rint(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, count)), 1, longest).astype(int)


def synthetic_melon(songs, evaluated, other, clusters, mean_length, seed=0):
  """Returns (playlists: list of int lists, test_ids: sorted int array, cluster_of: (songs,))."""
  rng = np.random.default_rng(seed)
  cluster_of = rng.integers(0, clusters, songs)
  # Long-tailed popularity: log-normal weights put the top song in ~5k playlists, as in Melon, where
  # a Zipf law at this size puts it in over a third of them.
  weight = rng.lognormal(0.0, POPULARITY_SIGMA, songs)
  is_test = rng.random(songs) < 0.1
  draw_any, draw_test = sampler(cluster_of, weight, np.ones(songs, bool)), sampler(cluster_of, weight, is_test)
  draw_other = sampler(cluster_of, weight, ~is_test)

  def make(count, mean, draw):
    lengths = playlist_lengths(count, mean, rng)
    home = np.repeat(rng.integers(0, clusters, count), lengths)
    flat = draw(home, rng.random(len(home)) < 0.2, rng)
    return lengths, home, flat

  lengths, home, flat = make(evaluated, mean_length, draw_any)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  lacking = np.flatnonzero(np.add.reduceat(is_test[flat], starts) == 0)
  # Each evaluated playlist holds a test song: where none was drawn, the first song becomes one.
  flat[starts[lacking]] = draw_test(home[starts[lacking]], np.zeros(len(lacking), bool), rng)
  playlists = [p.tolist() for p in np.split(flat, starts[1:])]
  other_lengths, _, other_flat = make(other, mean_length / 2, draw_other)
  playlists += [p.tolist() for p in np.split(other_flat, np.cumsum(other_lengths)[:-1])]
  order = rng.permutation(len(playlists))  # train, val and test files are not sorted by kind
  return [playlists[i] for i in order], np.flatnonzero(is_test), cluster_of


def embed_songs(song_ids, cluster_of, dim, seed=0, chunk=65536, noise=1.5):
  """(len(song_ids), dim) float32 non-negative vectors: cluster centre + noise, through a ReLU."""
  rng = np.random.default_rng(seed + 1)
  centres = rng.standard_normal((cluster_of.max() + 1, dim), dtype=np.float32)
  out = np.empty((len(song_ids), dim), np.float32)
  for start in range(0, len(song_ids), chunk):
    rows = slice(start, start + chunk)
    out[rows] = centres[cluster_of[song_ids[rows]]]
    out[rows] += noise * rng.standard_normal((len(out[rows]), dim), dtype=np.float32)
    np.maximum(out[rows], 0, out=out[rows])
  return out


def voyager_index(ef, m, ef_construction, seed, threads, built):
  """An `evaluate_continuation` index function: voyager's HNSW over the candidates (cosine space).

  The search it builds is also put in built["voyager"]: its recall is measured on that index after
  the evaluation, so that the slow HNSW build happens once per run.
  """
  import voyager  # benchmark only: pip install voyager==2.2.3

  def build(items):
    index = voyager.Index(voyager.Space.Cosine, num_dimensions=items.shape[1], M=m,
                          ef_construction=ef_construction, random_seed=seed)
    index.add_items(items, num_threads=threads)

    def search(queries, k):
      return index.query(queries, k=k, num_threads=threads, query_ef=max(ef, k))[0]

    built["voyager"] = search
    return search

  return build


def index_options(run, args, threads, built=None):
  """evaluate_continuation's options for one run: ("annoy", search_k), ("exact", 0),
  ("faiss_ivf", nprobe) or ("voyager", query ef)."""
  kind, value = run
  if kind == "annoy":
    return dict(search_k=value)
  if kind == "voyager":
    return dict(index=voyager_index(value, args.voyager_m, args.voyager_ef_construction, args.seed,
                                    threads, {} if built is None else built))
  return dict(index=kind, nprobe=value, nlist=args.nlist)


def nlist(args, n_items, nprobe):
  """The IVF lists of a run: --nlist, or the evaluation's default for its nprobe."""
  return args.nlist or continuation.default_nlist(n_items, args.k, nprobe)


def exact_reference(embeddings, test_ids, seeds, k):
  """(indexed ids, unit candidate rows, seed vectors, their exact cosine top-k ids): a numpy full sort
  of the cosine scores against every indexed track, independent of faiss."""
  indexed = [t for t in test_ids if t in embeddings]
  items = continuation.unit_rows(np.stack([embeddings[t] for t in indexed]))
  queries = np.stack([embeddings[s] for s in seeds])
  # 100 seeds at a time: a full (1000, 65k) argsort would add ~0.8 GB to the peak the table reports.
  exact = np.concatenate([np.argsort(-(queries[i:i + 100] @ items.T), axis=1)[:, :k]
                          for i in range(0, len(queries), 100)])
  return indexed, items, queries, exact


def mean_recall(found, exact):
  return float(np.mean([len(set(f) & set(e)) / exact.shape[1] for f, e in zip(found, exact)]))


def recall(embeddings, reference, seeds, k, runs, args, threads):
  """{run: mean recall@k of its neighbours against the exact cosine top-k}, over `seeds`.

  The indexes are those `evaluate_continuation` builds (same items, trees, lists and seeds), asked
  what the evaluation asks. voyager runs are left out: main measures them on the index it times.
  """
  indexed, items, queries, exact = reference
  annoy, ivfs, recalls = None, {}, {}
  for run in runs:
    kind, value = run
    if kind == "voyager":
      continue
    if kind == "annoy":
      annoy = annoy or continuation._build_index(embeddings, indexed, args.trees, args.seed)
      found = continuation._query_seeds(*annoy, embeddings, list(seeds), k, threads, search_k=value)
    else:
      with continuation._omp_threads(threads):
        if kind == "faiss_ivf":  # one k-means per list count
          lists = nlist(args, len(indexed), value)
          if lists not in ivfs:
            ivfs[lists] = continuation.faiss_search(items, kind, lists, value, args.seed)
          ivfs[lists].index.nprobe = value
          found = ivfs[lists](queries, k)
        else:
          found = continuation.faiss_search(items, kind)(queries, k)
    recalls[run] = mean_recall(found, exact)
    print(f"recall@{k} of {label(run)}: {recalls[run]:.4f}", file=sys.stderr)
  return recalls


def label(run):
  kind, value = run
  if kind == "annoy":
    return "Annoy, default search_k (k x trees)" if value < 0 else f"Annoy, search_k {value:,}"
  if kind == "exact":
    return "faiss exact (IndexFlatIP)"
  if kind == "voyager":
    return f"voyager HNSW, query ef {value}"
  return f"faiss IVF (IndexIVFFlat), nprobe {value}"  # its nlist: the header line


def ivf_split():
  """(coarse quantizer s, list scans s) of the faiss IVF searches since the last reset."""
  stats = continuation.faiss.cvar.indexIVF_stats
  return stats.quantization_time / 1000, stats.search_time / 1000


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="toy sizes, a smoke test of the script")
  parser.add_argument("--songs", type=int, default=MELON_SONGS)
  parser.add_argument("--playlists", type=int, default=MELON_EVALUATED, help="evaluated playlists")
  parser.add_argument("--other_playlists", type=int, default=MELON_OTHER,
                      help="playlists without a test song (read, not evaluated)")
  parser.add_argument("--mean_length", type=float, default=55)
  parser.add_argument("--clusters", type=int, default=500)
  parser.add_argument("--dim", type=int, default=1024, help="1024: the paper encoder's pre-head")
  parser.add_argument("--k", type=int, default=100)
  parser.add_argument("--trees", type=int, default=50)
  parser.add_argument("--threads", type=int, default=None, help="query threads (default: all cores)")
  parser.add_argument("--search_k", default="-1",
                      help="Annoy search_k values to time (-1: Annoy's default, k x trees; '' none)")
  parser.add_argument("--exact", type=int, default=1, help="1: time faiss's exact search too")
  parser.add_argument("--nprobe", default="4,16",
                      help="faiss IVF probe counts to time ('' for none; --continuation_nprobe)")
  parser.add_argument("--nlist", type=int, default=0,
                      help="faiss IVF k-means lists (0: the default of --continuation_nlist)")
  parser.add_argument("--voyager_ef", default="",
                      help="voyager HNSW query ef values to time ('' for none; pip install voyager==2.2.3)")
  parser.add_argument("--voyager_m", type=int, default=12, help="voyager HNSW links per node")
  parser.add_argument("--voyager_ef_construction", type=int, default=200)
  parser.add_argument("--noise", type=float, default=1.5,
                      help="scatter of songs around their cluster centre (see above)")
  parser.add_argument("--recall_seeds", type=int, default=1000,
                      help="seeds whose neighbours are checked against exact search")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.quick:
    args.songs, args.playlists, args.other_playlists, args.clusters = 20000, 2000, 500, 50
    args.dim, args.trees, args.recall_seeds = 64, 10, 200
  # Slowest last: each run's figures go to stderr as it ends, so a long run shows the fast ones early.
  runs = ([("faiss_ivf", int(v)) for v in args.nprobe.split(",") if v] + [("exact", 0)] * args.exact +
          [("voyager", int(v)) for v in args.voyager_ef.split(",") if v] +
          [("annoy", int(v)) for v in args.search_k.split(",") if v])
  threads = args.threads or common.usable_cores()

  start = time.perf_counter()
  playlists, test_ids, cluster_of = synthetic_melon(args.songs, args.playlists, args.other_playlists,
                                                    args.clusters, args.mean_length, args.seed)
  test_set = set(test_ids.tolist())
  # What tfcmir.evaluate embeds: every song of an evaluated playlist, and every test song.
  needed = np.unique(np.concatenate(
      [test_ids] + [np.asarray(p) for p in playlists if not test_set.isdisjoint(p)]))
  matrix = embed_songs(needed, cluster_of, args.dim, args.seed, noise=args.noise)
  embeddings = dict(zip(needed.tolist(), matrix))  # views into one matrix, as the dict of vectors
  setup = time.perf_counter() - start
  entries = sum(len(p) for p in playlists)
  print(f"synthetic Melon: {args.songs:,} songs, {len(test_ids):,} test-split candidates, "
        f"{len(playlists):,} playlists ({entries / len(playlists):.1f} songs on average), "
        f"{len(needed):,} embeddings of {args.dim} dims ({matrix.nbytes / 2**30:.2f} GiB); "
        f"set up in {setup:.0f} s, peak memory so far {common.peak_rss_gb():.2f} GB")

  sample = np.random.default_rng(args.seed).choice(
      np.setdiff1d(needed, test_ids), min(args.recall_seeds, len(needed)), replace=False)
  start = time.perf_counter()
  reference = exact_reference(embeddings, test_ids.tolist(), sample.tolist(), args.k)
  recalls = recall(embeddings, reference, sample.tolist(), args.k, runs, args, threads)
  print(f"recall of {len(sample):,} seeds' neighbours against exact search in "
        f"{time.perf_counter() - start:.0f} s", file=sys.stderr)

  k = args.k
  rows, phase_rows, totals, splits = [], [], {}, {}
  for run in runs:
    timings, built = {}, {}
    continuation.faiss.cvar.indexIVF_stats.reset()
    start = time.perf_counter()
    result = continuation.evaluate_continuation(
        embeddings, playlists, test_ids.tolist(), k=k, n_trees=args.trees, seed=args.seed,
        progress=True, threads=threads, timings=timings, **index_options(run, args, threads, built))
    totals[run] = total = time.perf_counter() - start
    if "voyager" in built:
      recalls[run] = mean_recall(built.pop("voyager")(reference[2], k), reference[3])
    print(f"{label(run)}: {total:.1f} s ({', '.join(f'{p} {timings[p]:.1f}' for p in PHASES)}), "
          f"recall@{k} {recalls[run]:.4f}, nDCG@{k} {result[f'ndcg@{k}']:.4f}, MAP@{k} {result[f'map@{k}']:.4f}",
          file=sys.stderr)
    if run[0] == "faiss_ivf":
      splits[run] = ivf_split()
    phase_rows.append((label(run), *(f"{timings[p]:.1f}" for p in PHASES), f"**{total:.1f}**"))
    rows.append((label(run), f"{recalls[run]:.3f}", f"{result[f'ndcg@{k}']:.4f}",
                 f"{result[f'map@{k}']:.4f}", f"{result['random'][f'ndcg@{k}']:.4f}",
                 f"{result['random'][f'map@{k}']:.4f}", f"{total:.0f}"))
  peak = common.peak_rss_gb()

  lists = ", ".join(f"{nlist(args, result['indexed_tracks'], v)} (nprobe {v})"
                    for kind, v in runs if kind == "faiss_ivf") or "none"
  voyager = (f"voyager M {args.voyager_m} ef_construction {args.voyager_ef_construction}, "
             if any(kind == "voyager" for kind, _ in runs) else "")
  print(common.machine_line())
  print(f"{result['playlists']:,} evaluated playlists, {result['queried_tracks']:,} distinct seeds "
        f"queried, {result['indexed_tracks']:,} indexed test tracks, {result['skipped_playlists']} "
        f"skipped; {args.trees} Annoy trees, "
        f"faiss IVF lists {lists}, "
        f"{voyager}"
        f"{threads} threads, k = {k}, {args.dim} dims, noise {args.noise}")
  print(common.table(["search", *PHASES, "total s"], phase_rows))
  print()
  print(common.table(["search", f"recall@{k} vs exact", f"nDCG@{k}", f"MAP@{k}", f"random nDCG@{k}",
                      f"random MAP@{k}", "seconds"], rows))
  print(f"\npeak memory {peak:.2f} GB (embeddings included)")
  for run, (coarse, scans) in splits.items():
    print(f"{label(run)}: query seeds = coarse quantizer {coarse:.1f} s + list scans {scans:.1f} s "
          f"(faiss's own timers, summed over its threads)")
  if not args.quick:
    for run, total in totals.items():
      met = total <= TARGET_S and recalls[run] >= TARGET_RECALL
      verdict = "met" if met else f"missed ({total / TARGET_S:.1f}x the time)" if total > TARGET_S else \
          "missed (recall)"
      print(f"{label(run)}: {total:.0f} s on {threads} threads, recall@{k} {recalls[run]:.3f}; "
            f"target <= {TARGET_S} s at recall >= {TARGET_RECALL}: {verdict}")


if __name__ == "__main__":
  main()
