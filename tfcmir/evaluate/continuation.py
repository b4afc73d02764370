"""Melon playlist continuation (paper section 3.3, Table 3): nDCG@100 and MAP@100 from track embeddings.

The protocol, step by step:
  1. Evaluate the playlists that hold at least one test-split song. Its test-split songs are the
     ground truth; its other songs are the seeds.
  2. A track's embedding is the mean of its patch embeddings (a (patches, dim) array is averaged here;
     a 1-D vector is taken as it is).
  3. An Annoy index with angular distance (cosine, as the paper says) holds the test-split tracks only.
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

import os
import sys

import numpy as np
from annoy import AnnoyIndex

from tfcmir.data.corpus import InputError
from tfcmir.data.melon import PLAYLIST_FILES, load_json
from tfcmir.evaluate import metrics

PROGRESS_EVERY = 10000


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


def _build_index(embeddings, indexed, n_trees, seed):
  """Angular Annoy index whose item i is the track indexed[i]; returns (index, dim)."""
  dim = None
  for i, track in enumerate(indexed):
    vector = track_vector(embeddings[track])
    if dim is None:
      dim = len(vector)
      index = AnnoyIndex(dim, "angular")
      index.set_seed(seed)
    elif len(vector) != dim:
      raise ValueError(f"track {track!r}: embedding has {len(vector)} dimensions, expected {dim}")
    index.add_item(i, vector)
  index.build(n_trees)
  return index, dim


def _query_seeds(index, dim, embeddings, seeds, k, progress):
  """(len(seeds), k) int64 Annoy item ids, nearest first, -1 where fewer than k exist; one query each."""
  table = np.full((len(seeds), k), -1, np.int64)
  for row, track in enumerate(seeds):
    vector = track_vector(embeddings[track])
    if len(vector) != dim:
      raise ValueError(f"track {track!r}: embedding has {len(vector)} dimensions, expected {dim}")
    found = index.get_nns_by_vector(vector, k)
    table[row, :len(found)] = found
    if progress and (row + 1) % PROGRESS_EVERY == 0:
      print(f"continuation: queried {row + 1}/{len(seeds)} seeds", file=sys.stderr)
  return table


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


def _scores(ranked, truth_items, n_relevant, k):
  """(nDCG@k, AP@k) of ranked item ids against the indexed held-out items of one playlist."""
  hits = np.isin(ranked, truth_items)
  return (metrics.ndcg_from_hits(hits, n_relevant, k),
          metrics.average_precision_from_hits(hits, n_relevant, k))


def evaluate_continuation(embeddings, playlists, test_ids, k=100, n_trees=50, seed=0,
                          random_baseline=True, progress=False):
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

  Returns:
    dict with "playlists" (evaluated), f"ndcg@{k}", f"map@{k}", "random" ({f"ndcg@{k}", f"map@{k}"},
    when random_baseline), "skipped_seeds", "skipped_playlists" (= "skipped_no_seeds" +
    "skipped_no_embedded_seeds"), "queried_tracks", "indexed_tracks", "test_tracks_without_embedding".

  Raises:
    ValueError: no test track has an embedding, no playlist can be evaluated, or dimensions disagree.
  """
  test_order = list(dict.fromkeys(test_ids))
  indexed = [t for t in test_order if t in embeddings]
  if not indexed:
    raise ValueError(f"none of the {len(test_order)} test-split tracks has an embedding")
  jobs, counts = _split_playlists(playlists, set(test_order), embeddings)
  if not jobs:
    raise ValueError(f"no playlist can be evaluated ({counts})")

  index, dim = _build_index(embeddings, indexed, n_trees, seed)
  seeds = list(dict.fromkeys(s for job_seeds, _ in jobs for s in job_seeds))
  row_of = {s: row for row, s in enumerate(seeds)}
  table = _query_seeds(index, dim, embeddings, seeds, k, progress)
  item_of = {t: i for i, t in enumerate(indexed)}

  rng = np.random.default_rng(seed)
  model, rand = np.zeros((len(jobs), 2)), np.zeros((len(jobs), 2))
  for n, (job_seeds, truth) in enumerate(jobs):
    truth_items = np.array([item_of[t] for t in truth if t in item_of], np.int64)
    ranked = continuation(table[[row_of[s] for s in job_seeds]], k)
    model[n] = _scores(ranked, truth_items, len(truth), k)
    if random_baseline:
      drawn = rng.choice(len(indexed), size=min(k, len(indexed)), replace=False)
      rand[n] = _scores(drawn, truth_items, len(truth), k)
    if progress and (n + 1) % PROGRESS_EVERY == 0:
      print(f"continuation: scored {n + 1}/{len(jobs)} playlists", file=sys.stderr)

  result = {"playlists": len(jobs), f"ndcg@{k}": float(model[:, 0].mean()),
            f"map@{k}": float(model[:, 1].mean()), **counts,
            "skipped_playlists": counts["skipped_no_seeds"] + counts["skipped_no_embedded_seeds"],
            "queried_tracks": len(seeds), "indexed_tracks": len(indexed),
            "test_tracks_without_embedding": len(test_order) - len(indexed)}
  if random_baseline:
    result["random"] = {f"ndcg@{k}": float(rand[:, 0].mean()), f"map@{k}": float(rand[:, 1].mean())}
  return result
