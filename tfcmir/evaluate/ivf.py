"""Cosine top-k search by dense matrix products: exact, or over an inverted file (IVF) of k-means lists.

Why not only Annoy: an Annoy query reads a few thousand candidate vectors one at a time from memory
(1024-d floats: 4 kB each), so at Melon scale the continuation spends ~3 ms per seed waiting on memory.
Here the seeds are taken thousands at a time and scored against each candidate list with one matrix
product, which runs at the CPU's arithmetic rate instead:

  1. Spherical k-means (seeded, a fixed number of Lloyd iterations) cuts the unit-norm candidates into
     `n_lists` lists around unit centroids.
  2. A block of queries is scored against the centroids; each query probes its `n_probe` best lists.
  3. For each list, the queries that probe it are scored against its members in one product, and each
     keeps its k best there; a query's k best over its probed lists are its answer.

With n_probe >= n_lists every candidate is scored: exact search (the reference the tests and
benchmarks/continuation.py compare against). Fewer probes trade recall for time, as Annoy's search_k
does. Ranking is by cosine similarity, the order Annoy's angular distance sqrt(2 - 2 cos) gives;
among the k found, equal scores go to the smaller item id. Each query's answer depends only on the
index and its vector, not on the thread count or on which queries share its block.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np
from scipy import sparse
from threadpoolctl import threadpool_limits

KMEANS_ITERATIONS = 10
QUERY_BLOCK = 4096  # queries scored together: large enough that each list's product is a real GEMM
SCORE_ELEMENTS = 1 << 22  # query x member scores held at once per product (16 MB of float32)


def unit_rows(vectors, copy=True):
  """`vectors` as float32 with each row scaled to unit length (zero rows stay zero).

  With copy=False a float32 array is scaled in place and returned (no second copy of a large index).
  """
  vectors = np.array(vectors, np.float32, copy=copy or None)
  norms = np.linalg.norm(vectors, axis=1, keepdims=True)
  np.divide(vectors, norms, out=vectors, where=norms > 0)
  return vectors


def spherical_kmeans(vectors, n_lists, seed=0, iterations=KMEANS_ITERATIONS):
  """(centroids (n_lists, dim) unit rows, assignment (n,) int) of unit-norm `vectors`.

  Starts from n_lists distinct rows drawn with `seed`; a list that empties keeps its centroid.
  """
  rng = np.random.default_rng(seed)
  centroids = vectors[rng.choice(len(vectors), n_lists, replace=False)].copy()
  for _ in range(iterations):
    assignment = _nearest_centroid(vectors, centroids)
    # Each list's sum of rows as one sparse product: no copy of the vectors (np.add.at is ~50x slower).
    members = sparse.csr_matrix((np.ones(len(vectors), np.float32), (assignment, np.arange(len(vectors)))),
                                shape=(n_lists, len(vectors)))
    filled = np.bincount(assignment, minlength=n_lists) > 0
    centroids[filled] = unit_rows(np.asarray(members @ vectors)[filled])
  return centroids, _nearest_centroid(vectors, centroids)


def _nearest_centroid(vectors, centroids, block=QUERY_BLOCK * 4):
  return np.concatenate([np.argmax(vectors[i:i + block] @ centroids.T, axis=1)
                         for i in range(0, len(vectors), block)])


class IVFIndex:
  """Candidates cut into k-means lists; `search` returns each query's k most cosine-similar items.

  Args:
    vectors: (items, dim) candidate embeddings; item i is row i.
    n_lists: k-means lists (clamped to the number of items); 1 makes every search exact.
    seed: seeds the k-means start.
    copy: False lets a float32 `vectors` be normalised in place (saves one copy at Melon scale).
  """

  def __init__(self, vectors, n_lists, seed=0, copy=True):
    items = unit_rows(vectors, copy)
    if items.ndim != 2 or not len(items):
      raise ValueError(f"an index needs a non-empty (items, dim) array, got shape {items.shape}")
    n_lists = max(1, min(int(n_lists), len(items)))
    if n_lists == 1:
      self.centroids, assignment = np.zeros((1, items.shape[1]), np.float32), np.zeros(len(items), int)
    else:
      self.centroids, assignment = spherical_kmeans(items, n_lists, seed)
    order = np.argsort(assignment, kind="stable")  # each list's members in item order
    self.ids = order.astype(np.int32)
    self.members = items[order]  # contiguous per list: each product reads one slice
    self.bounds = np.searchsorted(assignment[order], np.arange(n_lists + 1))
    self.dim = items.shape[1]

  @property
  def n_lists(self):
    return len(self.centroids)

  def search(self, queries, k, n_probe, threads=1):
    """(len(queries), k) int32 item ids, most similar first, -1 where fewer than k were scored.

    Args:
      queries: (n, dim) array (any norm: cosine ranking ignores it).
      k: neighbours per query.
      n_probe: lists each query scores (>= n_lists: exact search).
      threads: query blocks searched at once; BLAS runs one thread per block meanwhile.
    """
    queries = np.asarray(queries, np.float32)
    if queries.ndim != 2 or queries.shape[1] != self.dim:
      raise ValueError(f"queries must be (n, {self.dim}), got shape {queries.shape}")
    n_probe = max(1, min(int(n_probe), self.n_lists))
    out = np.empty((len(queries), k), np.int32)

    def block(start):
      stop = min(start + QUERY_BLOCK, len(queries))
      out[start:stop] = self._search_block(unit_rows(queries[start:stop]), k, n_probe)

    with threadpool_limits(1 if threads > 1 else None, user_api="blas"), \
        concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
      list(pool.map(block, range(0, len(queries), QUERY_BLOCK)))  # list(): raises a block's error
    return out

  def _search_block(self, queries, k, n_probe):
    n = len(queries)
    if n_probe == self.n_lists:
      probes = np.broadcast_to(np.arange(self.n_lists), (n, n_probe))
    else:
      coarse = queries @ self.centroids.T
      probes = np.argpartition(-coarse, n_probe - 1, axis=1)[:, :n_probe]
    # Each query keeps up to k (score, item) per probed list, in slot (query, probe number).
    scores = np.full((n, n_probe, k), -np.inf, np.float32)
    items = np.full((n, n_probe, k), -1, np.int32)
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    edges = np.searchsorted(flat[order], np.arange(self.n_lists + 1))
    for lst in range(self.n_lists):
      hits = order[edges[lst]:edges[lst + 1]]
      lo, hi = self.bounds[lst], self.bounds[lst + 1]
      if not len(hits) or hi == lo:
        continue
      rows, slots = np.divmod(hits, n_probe)
      step = max(1, SCORE_ELEMENTS // (hi - lo))
      for i in range(0, len(rows), step):
        r, s = rows[i:i + step], slots[i:i + step]
        found = queries[r] @ self.members[lo:hi].T
        best, which = _top_k(found, np.broadcast_to(self.ids[lo:hi], found.shape), k)
        scores[r, s, :best.shape[1]] = best
        items[r, s, :best.shape[1]] = which
    best, which = _top_k(scores.reshape(n, -1), items.reshape(n, -1), k, ordered=True)
    which[~np.isfinite(best)] = -1
    return which


def _top_k(scores, items, k, ordered=False):
  """Per row, the k best (score, item) of (rows, m) scores and items; with `ordered`, best first and
  equal scores to the smaller item id."""
  if scores.shape[1] > k:
    keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    scores, items = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(items, keep, axis=1)
  if ordered:
    order = np.lexsort((items, -scores), axis=1)
    scores, items = np.take_along_axis(scores, order, axis=1), np.take_along_axis(items, order, axis=1)
  return scores, items
