"""Ranking metrics for playlist continuation: nDCG@k and AP@k with binary relevance, in pure NumPy.

Conventions (the Melon / RecSys-challenge ones, which the paper's Table 3 follows):
  * nDCG@k: DCG = sum over ranks r (1-based, r <= k) of rel_r / log2(r + 1); IDCG is the DCG of
    min(k, |relevant|) hits at the top, so a perfect ranking scores 1 even when |relevant| > k.
  * AP@k: (1 / min(k, |relevant|)) * sum over hit ranks r <= k of precision@r. Dividing by |relevant|
    instead would cap a perfect top-k below 1 whenever a playlist holds more than k held-out songs;
    dividing by the number of hits would give a single lucky hit at rank 1 a perfect score.
  * Duplicates in `ranked` count once, at their first position, and do not take up a rank: the ranking
    is de-duplicated before it is cut to k (a recommender that repeats itself earns nothing for it).
  * An empty relevant set has no ideal ranking, so the metric is undefined: both functions raise
    ValueError. Callers leave such queries out (`evaluate_continuation` never makes one).
"""

from __future__ import annotations

import numpy as np


def _discounts(k):
  """(k,) float64: 1 / log2(r + 1) for ranks r = 1..k."""
  return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _hits(ranked, relevant, k):
  """(<= k,) bool: whether each of the first k distinct items of `ranked` is relevant."""
  relevant = set(relevant)
  if not relevant:
    raise ValueError("relevant set is empty: the metric is undefined (leave the query out)")
  distinct = list(dict.fromkeys(ranked))[:k]
  return np.fromiter((item in relevant for item in distinct), bool, len(distinct)), len(relevant)


def ndcg_from_hits(hits, n_relevant, k=100):
  """nDCG@k from a hit vector.

  Args:
    hits: (n,) bool, whether rank r + 1 holds a relevant item; ranks past k are ignored.
    n_relevant: size of the relevant set (> 0).
    k: cut-off.

  Returns:
    float in [0, 1].
  """
  hits = np.asarray(hits, bool)[:k]
  dcg = _discounts(len(hits))[hits].sum()
  idcg = _discounts(min(k, n_relevant)).sum()
  return float(dcg / idcg)


def average_precision_from_hits(hits, n_relevant, k=100):
  """AP@k from a hit vector, normalised by min(k, n_relevant).

  Args:
    hits: (n,) bool, whether rank r + 1 holds a relevant item; ranks past k are ignored.
    n_relevant: size of the relevant set (> 0).
    k: cut-off.

  Returns:
    float in [0, 1].
  """
  hits = np.asarray(hits, bool)[:k]
  precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
  return float(precision[hits].sum() / min(k, n_relevant))


def ndcg_at_k(ranked, relevant, k=100):
  """nDCG@k of a ranked list of ids against a set of relevant ids (see the module docstring)."""
  hits, n_relevant = _hits(ranked, relevant, k)
  return ndcg_from_hits(hits, n_relevant, k)


def average_precision_at_k(ranked, relevant, k=100):
  """AP@k of a ranked list of ids against a set of relevant ids (see the module docstring)."""
  hits, n_relevant = _hits(ranked, relevant, k)
  return average_precision_from_hits(hits, n_relevant, k)


def mean_metric(fn, rankings, relevants, k=100):
  """Mean of fn(ranked, relevant, k) over paired queries (MAP@k when fn is AP@k).

  Args:
    fn: `ndcg_at_k` or `average_precision_at_k`.
    rankings: sequence of ranked id lists.
    relevants: sequence of relevant id collections, one per ranking; none may be empty.
    k: cut-off.

  Returns:
    float, the unweighted mean over queries.
  """
  if len(rankings) != len(relevants):
    raise ValueError(f"{len(rankings)} rankings but {len(relevants)} relevant sets")
  if not rankings:
    raise ValueError("no queries to average over")
  return float(np.mean([fn(ranked, relevant, k) for ranked, relevant in zip(rankings, relevants)]))
