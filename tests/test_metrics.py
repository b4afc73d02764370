"""nDCG@k and AP@k on hand-worked cases; each expected value is derived in the comment beside it."""

import math

import numpy as np
import pytest

from tfcmir.evaluate import metrics

L2, L3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts of ranks 2 and 3: 0.63093, 0.5

CASES = [
    # name, ranked, relevant, k, nDCG, AP
    # Hits at ranks 1, 3. DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) = 1.63093 -> 0.91972.
    # AP = (P@1 + P@3) / min(k, 2) = (1 + 2/3) / 2 = 0.83333.
    ("hits_1_3", "abc", "ac", 100, 1.5 / (1 + L2), (1 + 2 / 3) / 2),
    # Perfect: every relevant item on top. DCG = IDCG; AP = (1 + 1) / 2.
    ("perfect", "ab", "ab", 100, 1.0, 1.0),
    # Worst: no hit at all.
    ("worst", "xy", "a", 100, 0.0, 0.0),
    # One hit at rank 2. DCG = 1/log2(3) = 0.63093, IDCG = 1; AP = P@2 / 1 = 0.5.
    ("hit_at_2", "xa", "a", 100, L2, 0.5),
    # k truncation: the hit at rank 3 falls outside k = 2.
    ("cut_before_hit", "xya", "a", 2, 0.0, 0.0),
    # Same ranking with k = 3: DCG = 1/log2(4) = 0.5, IDCG = 1; AP = P@3 = 1/3.
    ("cut_after_hit", "xya", "a", 3, L3, 1 / 3),
    # More relevant items than k: IDCG and the AP normaliser use min(k, 3) = 2, so a full top-2 is perfect.
    ("more_relevant_than_k", "ab", "abc", 2, 1.0, 1.0),
    # k = 3 with 2 hits out of 3: DCG = 1 + 0.63093 = 1.63093, IDCG = 1.63093 + 0.5 = 2.13093 -> 0.76536.
    # AP = (1 + 1) / min(3, 3) = 0.66667.
    ("two_of_three", "ab", "abc", 3, (1 + L2) / (1 + L2 + L3), 2 / 3),
    # Duplicates are dropped before the cut: [x, x, a] is [x, a], so with k = 2 the hit is at rank 2.
    ("duplicate_miss", "xxa", "a", 2, L2, 0.5),
    # A repeated hit counts once: [a, a, b] is [a, b], a perfect ranking of {a, b}.
    ("duplicate_hit", "aab", "ab", 100, 1.0, 1.0),
]


@pytest.mark.parametrize("name,ranked,relevant,k,ndcg,ap", CASES, ids=[c[0] for c in CASES])
def test_hand_worked(name, ranked, relevant, k, ndcg, ap):
  assert metrics.ndcg_at_k(list(ranked), set(relevant), k) == pytest.approx(ndcg, abs=1e-12)
  assert metrics.average_precision_at_k(list(ranked), set(relevant), k) == pytest.approx(ap, abs=1e-12)


def test_first_case_value():
  # The brief's worked example, written out: 1.5 / 1.63093 = 0.91972.
  assert metrics.ndcg_at_k(["a", "b", "c"], {"a", "c"}) == pytest.approx(0.91972, abs=1e-5)


@pytest.mark.parametrize("name,ranked,relevant,k,ndcg,ap", CASES, ids=[c[0] for c in CASES])
def test_hit_vector_forms_agree(name, ranked, relevant, k, ndcg, ap):
  distinct = list(dict.fromkeys(ranked))
  hits = np.array([item in relevant for item in distinct])
  assert metrics.ndcg_from_hits(hits, len(set(relevant)), k) == pytest.approx(ndcg, abs=1e-12)
  assert metrics.average_precision_from_hits(hits, len(set(relevant)), k) == pytest.approx(ap, abs=1e-12)


def test_empty_relevant_set_raises():
  with pytest.raises(ValueError, match="empty"):
    metrics.ndcg_at_k(["a"], set())
  with pytest.raises(ValueError, match="empty"):
    metrics.average_precision_at_k(["a"], [])


def test_mean_metric():
  # nDCG: query 1 perfect (1), query 2 a miss (0) -> 0.5. AP: query 1 hit at rank 2 (0.5), query 2 perfect.
  assert metrics.mean_metric(metrics.ndcg_at_k, [["a"], ["x"]], [{"a"}, {"a"}], 100) == 0.5
  assert metrics.mean_metric(metrics.average_precision_at_k, [["x", "a"], ["b"]], [{"a"}, {"b"}],
                             100) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="2 rankings but 1"):
    metrics.mean_metric(metrics.ndcg_at_k, [["a"], ["b"]], [{"a"}], 100)
