"""Melon playlist continuation (paper section 3.3, Table 3): nDCG@100 and MAP@100 from track embeddings.

The protocol, step by step:
  1. Evaluate the playlists that hold at least one test-split song. Its test-split songs are the
     ground truth; its other songs are the seeds.
  2. A track's embedding is the mean of its patch embeddings (a (patches, dim) array is averaged here;
     a 1-D vector is taken as it is).
  3. An index holds the test-split tracks only, searched by cosine similarity (the paper's angular
     distance): `index="annoy"`, Annoy with angular distance as in the paper; `"faiss_ivf"`, faiss's
     IndexIVFFlat (inner product over unit vectors in k-means lists, `nprobe` lists searched per seed);
     `"exact"`, faiss's IndexFlatIP, every candidate scored (the reference both approximate).
     benchmarks/continuation.py compares their time and recall at Melon scale.
  4. Each seed fetches its k nearest indexed tracks; each distinct seed is queried once, however many
     playlists hold it (the Melon playlists share songs heavily, so this is most of the speed-up).
  5. The k tracks retrieved most often across a playlist's seeds are its continuation. Ties go to the
     smaller summed rank position (a track found near the top beats one found near the bottom), then to
     the earlier position in `test_ids`, so the result does not depend on hash order.
  6. nDCG@k and AP@k (see metrics.py) against all of the playlist's held-out test songs, averaged over
     playlists; the `random` row ranks k indexed test tracks drawn at random (seeded) per playlist.

Skips, all counted in the result: seeds without an embedding; playlists with no seeds (only test songs);
playlists whose seeds all lack an embedding. A held-out song without an embedding stays in the ground
truth (it can never be retrieved, which is the honest score for a system that could not embed it).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import time

import faiss
import numpy as np
from annoy import AnnoyIndex

from tfcmir.errors import InputError
from tfcmir.data.melon import PLAYLIST_FILES, load_json
from tfcmir.evaluate import metrics

PROGRESS_EVERY = 10000
QUERY_CHUNK = 256  # seeds per task of an Annoy query thread
FAISS_CHUNK = 1 << 14  # seeds stacked into one matrix per faiss search (64 MB at 1024 dims)
INDEXES = ("annoy", "faiss_ivf", "exact")
SCORE_CHUNK = 1 << 18  # neighbour entries scored at once: ~50 playlists, sorted within the L2 cache


def read_melon_playlists(melon_dir):
  """Song-id lists of every playlist in MELON_DIR/{train,val,test}.json, in file order.

  Args:
    melon_dir: the Melon dataset folder.

  Returns:
    list of lists of int song ids.

  Raises:
    InputError: a file is missing, malformed or not a list of playlists; the message names it.
  """
  playlists = []
  for name in PLAYLIST_FILES:
    path = os.path.join(melon_dir, f"{name}.json")
    entries = load_json(path)
    if not isinstance(entries, list):
      raise InputError(f"{path}: expected a JSON list of playlists, found {type(entries).__name__}")
    for n, entry in enumerate(entries):
      try:
        playlists.append([int(song) for song in entry["songs"]])
      except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: playlist {n} has no list of integer song ids ({err!r})") from err
  return playlists


def track_vector(value):
  """(dim,) float32 track embedding: the mean over patches of a (patches, dim) array, or a 1-D vector."""
  value = np.asarray(value, np.float32)
  if value.ndim == 2:
    return value.mean(axis=0)
  if value.ndim != 1:
    raise ValueError(f"a track embedding must be (dim,) or (patches, dim), got shape {value.shape}")
  return value


def _split_playlists(playlists, test_set, embeddings):
  """Picks the evaluated playlists and their seeds; returns (jobs, counts).

  jobs: list of (embedded seed ids, held-out test ids); counts: the skip counters.
  """
  jobs = []
  counts = dict(skipped_seeds=0, skipped_no_seeds=0, skipped_no_embedded_seeds=0)
  for songs in playlists:
    songs = list(dict.fromkeys(songs))  # a song listed twice is one seed / one held-out song
    truth = [s for s in songs if s in test_set]
    if not truth:
      continue  # not part of the protocol, not a skip
    seeds = [s for s in songs if s not in test_set]
    embedded = [s for s in seeds if s in embeddings]
    counts["skipped_seeds"] += len(seeds) - len(embedded)
    if not seeds:
      counts["skipped_no_seeds"] += 1
    elif not embedded:
      counts["skipped_no_embedded_seeds"] += 1
    else:
      jobs.append((embedded, truth))
  return jobs, counts


def _vector(embeddings, track, dim):
  vector = track_vector(embeddings[track])
  if dim is not None and len(vector) != dim:
    raise ValueError(f"track {track!r}: embedding has {len(vector)} dimensions, expected {dim}")
  return vector


def _stack(embeddings, tracks, dim):
  """(len(tracks), dim) float32 matrix of the tracks' vectors, checked against `dim`."""
  return np.stack([_vector(embeddings, track, dim) for track in tracks])


def _build_index(embeddings, indexed, n_trees, seed):
  """Angular Annoy index whose item i is the track indexed[i]; returns (index, dim)."""
  dim = len(track_vector(embeddings[indexed[0]]))
  index = AnnoyIndex(dim, "angular")
  index.set_seed(seed)
  for i, track in enumerate(indexed):
    # A list converts ~5x faster than an array, which Annoy reads one numpy scalar at a time.
    index.add_item(i, _vector(embeddings, track, dim).tolist())
  index.build(n_trees)
  return index, dim


def _query_seeds(index, dim, embeddings, seeds, k, threads=1, progress=False, search_k=-1):
  """(len(seeds), k) int32 Annoy item ids, nearest first, -1 where fewer than k exist; one query each.

  Queries run on `threads` threads: Annoy releases the GIL while it searches, and each query's answer
  depends only on the index and the vector, so the table is the same for any thread count.
  """
  table = np.full((len(seeds), k), -1, np.int32)

  def query(start):
    stop = min(start + QUERY_CHUNK, len(seeds))
    vectors = _stack(embeddings, seeds[start:stop], dim).tolist()
    for row, vector in enumerate(vectors, start):
      found = index.get_nns_by_vector(vector, k, search_k)
      table[row, :len(found)] = found
    return stop - start

  starts = range(0, len(seeds), QUERY_CHUNK)
  done, reported = 0, 0
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for finished in pool.map(query, starts):
      done += finished
      if progress and done - reported >= PROGRESS_EVERY:
        reported = done
        print(f"continuation: queried {done}/{len(seeds)} seeds", file=sys.stderr)
  return table


def unit_rows(vectors, copy=True):
  """`vectors` as C-contiguous float32 with each row scaled to unit length (zero rows stay zero).

  On unit vectors faiss's inner product is the cosine, the order of Annoy's angular distance. With
  copy=False a C-contiguous float32 array is scaled in place (no second copy of a large index).
  """
  vectors = np.array(vectors, np.float32, order="C", copy=copy or None)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  np.divide(vectors, norms, out=vectors, where=norms > 0)
  return vectors


def faiss_search(items, index="exact", nlist=0, nprobe=4, seed=0, copy=True, k=100):
  """A cosine search over `items` with faiss; returns search(queries, k) -> (n, k) int ids, -1 padded.

  Args:
    items: (n, dim) candidate embeddings, item i is row i (any norm: they are scaled to unit length).
    index: "exact" (IndexFlatIP: every candidate scored, a GEMM per block of queries) or "faiss_ivf"
      (IndexIVFFlat: k-means lists, each query scores the members of its `nprobe` nearest lists).
    nlist: k-means lists of "faiss_ivf"; 0 is `default_nlist(n, k, nprobe)`; at most n.
    nprobe: lists each query searches (>= nlist: every candidate, exact up to float rounding).
    seed: seeds the k-means start.
    copy: False lets a float32 `items` be scaled in place (faiss keeps its own copy of the rows).
    k: the neighbours the searches will ask for (only sizes the default nlist).
  """
  items = unit_rows(items, copy)
  if items.ndim != 2 or not len(items):
    raise ValueError(f"a search needs a non-empty (items, dim) array, got shape {items.shape}")
  dim = items.shape[1]
  if index == "exact":
    found = faiss.IndexFlatIP(dim)
  else:
    nlist = max(1, min(int(nlist or default_nlist(len(items), k, nprobe)), len(items)))
    quantizer = faiss.IndexFlatIP(dim)
    found = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    found.cp.seed = seed
    found.cp.min_points_per_centroid = 1  # small candidate sets: no warning, the lists are just small
    found.train(items)
    found.nprobe = max(1, min(int(nprobe), nlist))
  found.add(items)

  def search(queries, k):
    queries = unit_rows(queries)
    if queries.ndim != 2 or queries.shape[1] != dim:
      raise ValueError(f"queries must be (n, {dim}), got shape {queries.shape}")
    return found.search(queries, k)[1]

  search.index = found  # for benchmarks: nprobe, list sizes
  return search


def _search_seeds(search, embeddings, seeds, k, dim, progress=False):
  """`_query_seeds` for a `faiss_search` (or any search(queries, k)): the seeds' vectors stacked
  FAISS_CHUNK at a time."""
  table = np.empty((len(seeds), k), np.int32)
  for start in range(0, len(seeds), FAISS_CHUNK):
    chunk = seeds[start:start + FAISS_CHUNK]
    table[start:start + len(chunk)] = search(_stack(embeddings, chunk, dim), k)
    if progress:
      print(f"continuation: queried {start + len(chunk)}/{len(seeds)} seeds", file=sys.stderr)
  return table


@contextlib.contextmanager
def _omp_threads(threads):
  """faiss's OpenMP threads set to `threads` for the block, and restored after."""
  before = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(max(1, threads))
  try:
    yield
  finally:
    faiss.omp_set_num_threads(before)


def default_nlist(n_items, k=100, nprobe=4):
  """4 sqrt(n) k-means lists, the usual rule for an inverted file (1,019 for Melon's ~65k candidates),
  but few enough that `nprobe` lists hold ~2k candidates: on small sets (the demo's 150 test songs,
  k = 20) 4 sqrt(n) lists would hold ~3 songs each and the probed ones fewer than k."""
  return max(1, min(int(round(4 * np.sqrt(n_items))), n_items * nprobe // (2 * k)))


def continuation(neighbours, k):
  """The k items found most often across a playlist's seeds.

  Args:
    neighbours: (seeds, n) int item ids, each row nearest first, -1 as padding.
    k: length of the continuation.

  Returns:
    (<= k,) int64 item ids: by count descending, then summed rank position ascending, then id ascending.
  """
  ranks = np.broadcast_to(np.arange(neighbours.shape[1]), neighbours.shape).ravel()
  items = neighbours.ravel()
  keep = items >= 0
  ids, inverse, counts = np.unique(items[keep], return_inverse=True, return_counts=True)
  rank_sums = np.bincount(inverse, weights=ranks[keep], minlength=len(ids))
  order = np.lexsort((ids, rank_sums, -counts))  # last key is the primary one
  return ids[order[:k]]


def continuations(neighbours, owners, n_owners, n_items, k):
  """`continuation` of many playlists at once: the same items in the same order for each.

  Args:
    neighbours: (rows, n) int item ids in [0, n_items), each row nearest first, -1 as padding.
    owners: (rows,) int playlist of each row, in [0, n_owners).
    n_owners: number of playlists.
    n_items: bound on the item ids.
    k: length of each continuation.

  Returns:
    (items, starts): int64 item ids of every continuation, concatenated in playlist order, and
    (n_owners + 1,) offsets: playlist p's continuation is items[starts[p]:starts[p + 1]].
  """
  n = neighbours.shape[1]
  valid = neighbours >= 0
  owners = np.broadcast_to(np.asarray(owners, np.int64)[:, None], neighbours.shape)[valid]
  pairs = owners * n_items + neighbours[valid]
  ranks = np.broadcast_to(np.arange(n, dtype=np.int64), neighbours.shape)[valid]
  # Group the (playlist, item) pairs with one sort of packed (pair, rank) keys: sorting values is
  # faster than an argsort and the gathers after it; keys too wide for int64 take lexsort.
  rank_bits = max(1, (n - 1).bit_length())
  key_bits = (int(n_owners) * int(n_items)).bit_length() + rank_bits
  if key_bits <= 62:
    # A chunk of ~50 Melon playlists fits int32 keys, which sort ~1.5x faster than int64 ones.
    packed = np.sort(((pairs << rank_bits) | ranks).astype(np.int32 if key_bits <= 31 else np.int64))
    pairs, ranks = packed >> rank_bits, packed & ((1 << rank_bits) - 1)
  else:
    order = np.lexsort((ranks, pairs))
    pairs, ranks = pairs[order], ranks[order]
  new = np.empty(len(pairs), bool)
  new[:1] = True
  np.not_equal(pairs[1:], pairs[:-1], out=new[1:])
  first = np.flatnonzero(new)
  counts = np.diff(first, append=len(pairs))
  rank_sums = np.add.reduceat(ranks, first) if len(first) else np.zeros(0, np.int64)
  owner, item = np.divmod(pairs[first].astype(np.int64), n_items)  # int64: _rank_within shifts
  ranked = _rank_within(owner, counts, rank_sums, item, n_owners, n_items, n)
  per_owner = np.bincount(owner, minlength=n_owners)
  position = np.arange(len(ranked)) - np.repeat(np.cumsum(per_owner) - per_owner, per_owner)
  starts = np.concatenate([[0], np.cumsum(np.minimum(per_owner, k))])
  return ranked[position < k], starts


def _rank_within(owner, counts, rank_sums, item, n_owners, n_items, width):
  """The items sorted by owner, then count descending, rank sum ascending, item ascending."""
  top = int(counts.max()) if len(counts) else 0
  bits = [int(n_owners).bit_length(), top.bit_length(), (top * width).bit_length(),
          int(n_items).bit_length()]
  if sum(bits) > 62:  # the packed key would overflow int64: the slower four-key sort
    return item[np.lexsort((item, rank_sums, -counts, owner))]
  key = owner
  for value, size in ((top - counts, bits[1]), (rank_sums, bits[2]), (item, bits[3])):
    key = (key << size) | value
  return np.sort(key) & ((1 << bits[3]) - 1)  # keys are distinct; the item is in the low bits


def _scores(ranked, truth_items, n_relevant, k):
  """(nDCG@k, AP@k) of ranked item ids against the indexed held-out items of one playlist."""
  hits = np.isin(ranked, truth_items)
  return _hit_scores(hits, n_relevant, k)


def _hit_scores(hits, n_relevant, k):
  return (metrics.ndcg_from_hits(hits, n_relevant, k),
          metrics.average_precision_from_hits(hits, n_relevant, k))


def _score_playlists(table, jobs, row_of, item_of, k, rng, random_baseline, progress, threads=1):
  """(len(jobs), 2) model and random (nDCG@k, AP@k), playlists taken SCORE_CHUNK neighbours at a time.

  The chunks' continuations are found on `threads` threads (numpy's sorts release the GIL); the
  scores and the random draws follow in playlist order, so the result does not depend on `threads`.
  """
  n_items = len(item_of)
  bounds, begin = [], 0
  while begin < len(jobs):
    end, rows = begin, 0
    while end < len(jobs) and (end == begin or rows + len(jobs[end][0]) <= SCORE_CHUNK // k):
      rows += len(jobs[end][0])
      end += 1
    bounds.append((begin, end))
    begin = end

  def hits_of(span):
    chunk = jobs[span[0]:span[1]]
    seed_rows = np.fromiter((row_of[s] for seeds, _ in chunk for s in seeds), np.int64)
    owners = np.repeat(np.arange(len(chunk)), [len(seeds) for seeds, _ in chunk])
    items, starts = continuations(table[seed_rows], owners, len(chunk), n_items, k)
    truth = [np.array([item_of[t] for t in truth if t in item_of], np.int64) for _, truth in chunk]
    truth_pairs = np.concatenate([[0]] + [p * n_items + t for p, t in enumerate(truth)])[1:]
    selected = np.repeat(np.arange(len(chunk)), np.diff(starts)) * n_items + items
    return np.isin(selected, truth_pairs), starts, truth

  model, rand = np.zeros((len(jobs), 2)), np.zeros((len(jobs), 2))
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for (begin, end), (hits, starts, truth) in zip(bounds, pool.map(hits_of, bounds)):
      for p, (_, held_out) in enumerate(jobs[begin:end]):
        model[begin + p] = _hit_scores(hits[starts[p]:starts[p + 1]], len(held_out), k)
        if random_baseline:
          drawn = rng.choice(n_items, size=min(k, n_items), replace=False)
          rand[begin + p] = _scores(drawn, truth[p], len(held_out), k)
      if progress and end // PROGRESS_EVERY > begin // PROGRESS_EVERY:
        print(f"continuation: scored {end}/{len(jobs)} playlists", file=sys.stderr)
  return model, rand


def _usable_cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


@contextlib.contextmanager
def _timed(timings, phase):
  start = time.perf_counter()
  try:
    yield
  finally:
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def evaluate_continuation(embeddings, playlists, test_ids, k=100, n_trees=50, seed=0,
                          random_baseline=True, progress=False, threads=None, timings=None,
                          search_k=-1, index="annoy", nlist=0, nprobe=4):
  """Runs the paper's playlist-continuation protocol (see the module docstring).

  Args:
    embeddings: mapping song id -> (dim,) or (patches, dim) embedding; seeds and test songs need one.
    playlists: iterable of song-id lists (e.g. `read_melon_playlists` output: train + val + test).
    test_ids: the test-split song ids (never seen in training); the only candidates.
    k: continuation length and metric cut-off (100 in the paper).
    n_trees: Annoy trees; more is closer to exact search.
    seed: seeds the Annoy build and the random row.
    random_baseline: also score the random row.
    progress: print progress to stderr.
    threads: threads querying the index, Annoy's or faiss's (OpenMP) (default: the usable cores); the
      result does not depend on it.
    timings: a dict that receives the seconds of each phase (split playlists, build index, query
      seeds, score playlists), when given.
    search_k: Annoy's search_k, the candidates a query examines; -1 is Annoy's default, k x n_trees.
      Lower is faster and less exact (benchmarks/continuation.py measures the recall it costs).
    index: "annoy" (the paper's), "faiss_ivf" (faiss IndexIVFFlat; --continuation_index's default) or
      "exact" (faiss IndexFlatIP); or
      a function items -> search, with items the (n, dim) float32 candidate matrix and search(queries,
      k) -> (len(queries), k) item ids, -1 padded (how benchmarks/continuation.py runs other
      libraries under the same protocol).
    nlist: k-means lists of "faiss_ivf"; 0 is `default_nlist` of the candidate count, k and nprobe.
    nprobe: lists each seed searches with "faiss_ivf"; more is slower and closer to exact.

  Returns:
    dict with "playlists" (evaluated), f"ndcg@{k}", f"map@{k}", "random" ({f"ndcg@{k}", f"map@{k}"},
    when random_baseline), "skipped_seeds", "skipped_playlists" (= "skipped_no_seeds" +
    "skipped_no_embedded_seeds"), "queried_tracks", "indexed_tracks", "test_tracks_without_embedding".

  Raises:
    ValueError: no test track has an embedding, no playlist can be evaluated, or dimensions disagree.
  """
  if not callable(index) and index not in INDEXES:
    raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
  timings = {} if timings is None else timings
  threads = threads or _usable_cores()
  with _timed(timings, "split playlists"):
    test_order = list(dict.fromkeys(test_ids))
    indexed = [t for t in test_order if t in embeddings]
    if not indexed:
      raise ValueError(f"none of the {len(test_order)} test-split tracks has an embedding")
    jobs, counts = _split_playlists(playlists, set(test_order), embeddings)
    if not jobs:
      raise ValueError(f"no playlist can be evaluated ({counts})")
    seeds = list(dict.fromkeys(s for job_seeds, _ in jobs for s in job_seeds))
    row_of = {s: row for row, s in enumerate(seeds)}
    item_of = {t: i for i, t in enumerate(indexed)}

  with _timed(timings, "build index"), _omp_threads(threads):
    if index == "annoy":
      annoy, dim = _build_index(embeddings, indexed, n_trees, seed)
    else:
      dim = len(track_vector(embeddings[indexed[0]]))
      items = _stack(embeddings, indexed, dim)
      if callable(index):
        search = index(items)
      else:
        search = faiss_search(items, index, nlist, nprobe, seed, copy=False, k=k)
      del items  # the index holds its own copy
  with _timed(timings, "query seeds"), _omp_threads(threads):
    if index == "annoy":
      table = _query_seeds(annoy, dim, embeddings, seeds, k, threads, progress, search_k)
    else:
      table = _search_seeds(search, embeddings, seeds, k, dim, progress)
  with _timed(timings, "score playlists"):
    model, rand = _score_playlists(table, jobs, row_of, item_of, k, np.random.default_rng(seed),
                                   random_baseline, progress, threads)

  result = {"playlists": len(jobs), f"ndcg@{k}": float(model[:, 0].mean()),
            f"map@{k}": float(model[:, 1].mean()), **counts,
            "skipped_playlists": counts["skipped_no_seeds"] + counts["skipped_no_embedded_seeds"],
            "queried_tracks": len(seeds), "indexed_tracks": len(indexed),
            "test_tracks_without_embedding": len(test_order) - len(indexed)}
  if random_baseline:
    result["random"] = {f"ndcg@{k}": float(rand[:, 0].mean()), f"map@{k}": float(rand[:, 1].mean())}
  return result
