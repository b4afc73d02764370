"""The matrix-product cosine search of the continuation (tfcmir/evaluate/ivf.py)."""

import numpy as np
import pytest

from tfcmir.evaluate import continuation as cont
from tfcmir.evaluate import ivf


def brute_force(items, queries, k):
  """Top-k item ids by cosine, written the slow way: a full sort of every row."""
  unit = items / np.linalg.norm(items, axis=1, keepdims=True)
  scores = queries @ unit.T / np.linalg.norm(queries, axis=1, keepdims=True)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  out = np.full((len(queries), k), -1)
  out[:, :order.shape[1]] = order
  return out


def clustered(rng, n, dim=16, clusters=8, noise=0.3):
  centres = rng.standard_normal((clusters, dim))
  labels = rng.integers(0, clusters, n)
  return (centres[labels] + noise * rng.standard_normal((n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("k,threads", [(10, 1), (10, 3), (300, 2)])
def test_exact_search_equals_a_full_sort(k, threads, monkeypatch):
  # Small blocks and score buffers so that queries and candidates cross many chunk boundaries;
  # k = 300 is more than the 250 items, so rows end in -1.
  monkeypatch.setattr(ivf, "QUERY_BLOCK", 7)
  monkeypatch.setattr(ivf, "SCORE_ELEMENTS", 500)
  rng = np.random.default_rng(0)
  items, queries = rng.standard_normal((250, 12)), rng.standard_normal((40, 12))
  got = ivf.IVFIndex(items, 1).search(queries, k, n_probe=1, threads=threads)
  np.testing.assert_array_equal(got, brute_force(items, queries, k))


def test_probing_every_list_is_exact_and_fewer_probes_trade_recall(monkeypatch):
  monkeypatch.setattr(ivf, "QUERY_BLOCK", 16)
  rng = np.random.default_rng(1)
  items, queries = rng.standard_normal((600, 16)), rng.standard_normal((50, 16))
  index = ivf.IVFIndex(items, 20, seed=3)
  assert index.n_lists == 20 and sorted(index.ids.tolist()) == list(range(600))
  expected = brute_force(items, queries, 15)
  np.testing.assert_array_equal(index.search(queries, 15, n_probe=20), expected)
  np.testing.assert_array_equal(index.search(queries, 15, n_probe=99), expected)  # clamped
  # Unclustered data: one list of twenty holds few of a query's true neighbours.
  one = index.search(queries, 15, n_probe=1)
  recall = np.mean([len(set(a) & set(b)) / 15 for a, b in zip(one, expected)])
  assert 0 < recall < 0.7
  assert ((one == -1) | (one >= 0)).all() and (one[:, 0] >= 0).all()


def test_clustered_data_is_found_with_few_probes():
  """What makes the index fast at Melon scale: neighbours share a list, so few probes find them."""
  rng = np.random.default_rng(2)
  data, labels = clustered(rng, 2100, clusters=8)
  items, queries = data[:2000], data[2000:]
  index = ivf.IVFIndex(items, 32, seed=0)
  exact = brute_force(items, queries, 20)
  found = index.search(queries, 20, n_probe=4)
  recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, exact)])
  assert recall > 0.9
  # The neighbours are the query's own cluster, as exact search says.
  assert (labels[:2000][found] == labels[2000:, None]).mean() > 0.99


def test_spherical_kmeans_recovers_separated_clusters():
  rng = np.random.default_rng(3)
  data, labels = clustered(rng, 800, clusters=5, noise=0.05)
  centroids, assignment = ivf.spherical_kmeans(ivf.unit_rows(data), 5, seed=0)
  np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
  # Each k-means list is one true cluster (the best of a few seeds: Lloyd's can merge two at random).
  purity = [np.mean([np.bincount(labels[assignment == c]).max() / (assignment == c).sum()
                     for c in np.unique(assignment)]) for assignment in
            [ivf.spherical_kmeans(ivf.unit_rows(data), 5, seed=s)[1] for s in range(3)]]
  assert max(purity) == 1.0
  # Each item sits in the list of its most similar centroid.
  np.testing.assert_array_equal(assignment, np.argmax(ivf.unit_rows(data) @ centroids.T, axis=1))


def test_the_result_does_not_depend_on_threads_or_block_size(monkeypatch):
  rng = np.random.default_rng(4)
  items, queries = rng.standard_normal((500, 8)), rng.standard_normal((90, 8))
  index = ivf.IVFIndex(items, 10, seed=1)
  first = index.search(queries, 25, n_probe=3, threads=1)
  monkeypatch.setattr(ivf, "QUERY_BLOCK", 13)
  np.testing.assert_array_equal(index.search(queries, 25, n_probe=3, threads=3), first)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match=r"\(items, dim\)"):
    ivf.IVFIndex(np.zeros((0, 4)), 2)
  with pytest.raises(ValueError, match=r"queries must be \(n, 4\)"):
    ivf.IVFIndex(np.ones((5, 4)), 2).search(np.ones((3, 5)), 2, 1)


def continuation_case(seed=0, songs=900, dim=16):
  rng = np.random.default_rng(seed)
  data, labels = clustered(rng, songs, dim, clusters=10, noise=0.8)
  embeddings = dict(enumerate(data))
  test_ids = rng.permutation(songs)[:300].tolist()
  playlists = [rng.choice(np.flatnonzero(labels == rng.integers(0, 10)), int(rng.integers(2, 25))).tolist()
               for _ in range(200)]
  return embeddings, playlists, test_ids


def test_continuation_indexes_agree_where_each_is_exact():
  """--continuation_index: exact search, an IVF probing every list and an Annoy search of every leaf
  retrieve the same neighbours, so the whole evaluation gives the same numbers."""
  data = continuation_case()
  exact = cont.evaluate_continuation(*data, k=20, index="exact")
  assert exact["playlists"] > 150 and exact["ndcg@20"] > 2 * exact["random"]["ndcg@20"]
  assert cont.evaluate_continuation(*data, k=20, index="ivf", ivf_lists=12, ivf_probe=12) == exact
  assert cont.evaluate_continuation(*data, k=20, n_trees=5, search_k=300 * 5) == exact
  fast = cont.evaluate_continuation(*data, k=20, index="ivf", ivf_lists=12, ivf_probe=2)
  assert fast != exact and fast["ndcg@20"] > 0.8 * exact["ndcg@20"]
  with pytest.raises(ValueError, match="index must be one of"):
    cont.evaluate_continuation(*data, k=20, index="hnsw")


def test_default_lists_follow_the_square_root_rule():
  assert cont.default_ivf_lists(64_852) == 1019
  assert cont.default_ivf_lists(1) == 4 and ivf.IVFIndex(np.ones((1, 3)), 4).n_lists == 1


def test_the_evaluate_flags_choose_the_search():
  """--continuation_index and --continuation_ivf_* reach evaluate_continuation as its options."""
  from absl import flags
  from absl.testing import flagsaver

  from tfcmir.evaluate import cli
  import tfcmir.flags  # noqa: F401 (defines the flags)

  flags.FLAGS.mark_as_parsed()
  data = continuation_case(seed=1)
  with flagsaver.flagsaver(continuation_index="ivf", continuation_ivf_lists=12, continuation_ivf_probe=2):
    options = cli.search_flags()
  assert options == dict(index="ivf", search_k=-1, ivf_lists=12, ivf_probe=2)
  assert cont.evaluate_continuation(*data, k=20, **options) == \
      cont.evaluate_continuation(*data, k=20, index="ivf", ivf_lists=12, ivf_probe=2)
  assert cli.search_flags()["index"] == "annoy"  # the paper's search stays the default
