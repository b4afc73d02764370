"""Playlist continuation: a hand-checked 2-D case, the query-once property, a clustered sanity check,
and reading the Melon playlist files."""

import json
import math

import numpy as np
import pytest
from annoy import AnnoyIndex

from tfcmir.errors import InputError
from tfcmir.evaluate import continuation as cont
from tfcmir.evaluate import metrics

# Four test songs on the axes of the plane, and seeds that point obviously near them.
TEST = {"T1": [1, 0], "T2": [0, 1], "T3": [-1, 0], "T4": [0, -1]}
SEEDS = {
    "S1": [1, 0.1],  # nearest T1 (6 deg), then T2 (84 deg)
    "S2": [[1, 0.2], [1, 0.4]],  # (patches, dim): mean (1, 0.3), nearest T1 then T2
    "S3": [-1, -0.2],  # nearest T3, then T4
}
TINY_PLAYLISTS = [
    ["S1", "S2", "T2"],  # continuation [T1, T2]; truth {T2}
    ["S3", "T3", "T4"],  # continuation [T3, T4]; truth {T3, T4}
    ["T1"],  # no seed: skipped
    ["S_missing", "T1"],  # its only seed has no embedding: skipped, one skipped seed
    ["S1", "S3"],  # no test song: not part of the protocol
]


def tiny_result(**kwargs):
  return cont.evaluate_continuation({**TEST, **SEEDS}, TINY_PLAYLISTS, list(TEST), k=2, **kwargs)


def test_tiny_case_by_hand():
  r = tiny_result()
  # Playlist 1: S1 -> [T1, T2], S2 -> [T1, T2]; T1 count 2, rank sum 0; T2 count 2, rank sum 2 -> [T1, T2].
  #   Truth {T2}, hit at rank 2: nDCG = 1/log2(3) = 0.63093, AP = (1/2) / 1 = 0.5.
  # Playlist 2: S3 -> [T3, T4]; truth {T3, T4} both on top: nDCG = 1, AP = 1.
  # Means: nDCG = (0.63093 + 1) / 2 = 0.81546, MAP = (0.5 + 1) / 2 = 0.75.
  assert r["playlists"] == 2
  assert r["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 2)
  assert r["map@2"] == pytest.approx(0.75)
  assert r["skipped_no_seeds"] == 1 and r["skipped_no_embedded_seeds"] == 1
  assert r["skipped_playlists"] == 2 and r["skipped_seeds"] == 1
  assert r["queried_tracks"] == 3 and r["indexed_tracks"] == 4
  assert r["test_tracks_without_embedding"] == 0
  assert set(r["random"]) == {"ndcg@2", "map@2"}


def test_tiny_case_without_random_row():
  assert "random" not in tiny_result(random_baseline=False)


@pytest.mark.parametrize("neighbours,k,expected", [
    # Count first: 2 is found twice; 1 and 3 once each at rank 0, so the smaller id goes first.
    ([[1, 2], [3, 2]], 3, [2, 1, 3]),
    # All counts 2 and all rank sums 1 (5: 0+1, 7: 1+0, 9: 1+0): ids decide.
    ([[5, 7], [7, 9], [9, 5]], 3, [5, 7, 9]),
    # 7 three times; 5 (rank sum 0) before 9 (rank sum 1); -1 padding ignored; cut at k = 2.
    ([[5, 7], [7, 9], [7, -1]], 2, [7, 5]),
    # Same counts, rank sum decides over id: 8 at ranks 0+0 = 0, 3 at ranks 1+1 = 2.
    ([[8, 3], [8, 3]], 2, [8, 3]),
])
def test_continuation_order(neighbours, k, expected):
  assert cont.continuation(np.array(neighbours), k).tolist() == expected


def test_each_track_queried_once(monkeypatch):
  queried = []

  class CountingIndex(AnnoyIndex):
    def get_nns_by_vector(self, vector, n, *args, **kwargs):
      queried.append(tuple(np.round(vector, 6)))
      return super().get_nns_by_vector(vector, n, *args, **kwargs)

  monkeypatch.setattr(cont, "AnnoyIndex", CountingIndex)
  # S1 sits in four playlists and S3 in three; each is still fetched once.
  playlists = [["S1", "T1"], ["S1", "S3", "T2"], ["S1", "S2", "T3"], ["S1", "S3", "T4"], ["S3", "T1"]]
  r = cont.evaluate_continuation({**TEST, **SEEDS}, playlists, list(TEST), k=2)
  assert len(queried) == len(set(queried)) == 3 == r["queried_tracks"]
  assert r["playlists"] == 5


def clustered_data(noise_only, clusters=20, per_cluster=100, dim=16, seed=0):
  """Songs in clusters; each playlist draws its songs from one cluster; 30 % of songs are test songs."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(clusters), per_cluster)
  centres = rng.standard_normal((clusters, dim)) * 3
  vectors = rng.standard_normal((len(labels), dim))
  if not noise_only:
    vectors += centres[labels]
  embeddings = {song: vectors[song] for song in range(len(labels))}
  test_ids = [song for song in range(len(labels)) if song % 10 < 3]
  playlists = [rng.choice(np.flatnonzero(labels == c), 15, replace=False).tolist()
               for c in rng.integers(0, clusters, 300)]
  return embeddings, playlists, test_ids


def test_cluster_embeddings_beat_random_and_noise_does_not():
  good = cont.evaluate_continuation(*clustered_data(noise_only=False), k=20, n_trees=10)
  noise = cont.evaluate_continuation(*clustered_data(noise_only=True), k=20, n_trees=10)
  # 600 test songs, 30 per cluster: the random row hits about 20/600 of the truth, the clustered
  # embeddings about 20/30 of it (in no useful order inside the cluster). Seen: good 0.37 / 0.18,
  # random 0.012 / 0.003; noise about the random row (0.018-0.027 nDCG over six data seeds).
  assert good["playlists"] > 250
  assert good["ndcg@20"] > 0.25 and good["map@20"] > 0.1
  assert good["ndcg@20"] > 10 * good["random"]["ndcg@20"]
  assert good["map@20"] > 10 * good["random"]["map@20"]
  assert noise["ndcg@20"] < 3 * noise["random"]["ndcg@20"] + 0.02
  assert noise["ndcg@20"] < good["ndcg@20"] / 5


def test_deterministic_for_a_seed():
  data = clustered_data(noise_only=False)
  assert cont.evaluate_continuation(*data, k=20, n_trees=5, seed=3) == \
      cont.evaluate_continuation(*data, k=20, n_trees=5, seed=3)


def test_no_embedded_test_track_raises():
  with pytest.raises(ValueError, match="test-split tracks has an embedding"):
    cont.evaluate_continuation(SEEDS, TINY_PLAYLISTS, ["T9"], k=2)


def write_melon(folder, **files):
  for name, content in files.items():
    (folder / f"{name}.json").write_text(content if isinstance(content, str) else json.dumps(content))


def test_read_melon_playlists(tmp_path):
  playlist = lambda i, songs: {"id": i, "plylst_title": "t", "tags": [], "songs": songs, "like_cnt": 0,
                               "updt_date": "2020-01-01 00:00:00.000"}
  write_melon(tmp_path, train=[playlist(1, [3, 4]), playlist(2, [5])], val=[playlist(3, [])],
              test=[playlist(4, [6, 3])])
  assert cont.read_melon_playlists(str(tmp_path)) == [[3, 4], [5], [], [6, 3]]


def test_read_melon_playlists_names_a_malformed_file(tmp_path):
  write_melon(tmp_path, train=[], val='[{"songs": [1, 2]', test=[])
  with pytest.raises(InputError, match=r"val\.json: malformed JSON"):
    cont.read_melon_playlists(str(tmp_path))


def test_read_melon_playlists_names_a_bad_entry_and_a_missing_file(tmp_path):
  write_melon(tmp_path, train=[{"id": 1}], val=[], test=[])
  with pytest.raises(InputError, match=r"train\.json: playlist 0"):
    cont.read_melon_playlists(str(tmp_path))
  (tmp_path / "test.json").unlink()
  write_melon(tmp_path, train=[])
  with pytest.raises(InputError, match=r"test\.json: file not found"):
    cont.read_melon_playlists(str(tmp_path))


def reference_evaluate(embeddings, playlists, test_ids, k, n_trees, seed):
  """The protocol as first written (one seed, one Annoy call, one playlist at a time): the reference
  the threaded queries and the batched scoring of `evaluate_continuation` must reproduce exactly."""
  test_order = list(dict.fromkeys(test_ids))
  test_set = set(test_order)
  indexed = [t for t in test_order if t in embeddings]
  jobs, skipped_seeds = [], 0
  for songs in playlists:
    songs = list(dict.fromkeys(songs))
    truth = [s for s in songs if s in test_set]
    seeds = [s for s in songs if s not in test_set]
    embedded = [s for s in seeds if s in embeddings]
    if truth:
      skipped_seeds += len(seeds) - len(embedded)
      if embedded:
        jobs.append((embedded, truth))
  vector = lambda track: np.asarray(embeddings[track], np.float32).reshape(-1, dim).mean(0)
  dim = np.shape(embeddings[indexed[0]])[-1]
  index = AnnoyIndex(dim, "angular")
  index.set_seed(seed)
  for i, track in enumerate(indexed):
    index.add_item(i, vector(track))
  index.build(n_trees)
  seeds = list(dict.fromkeys(s for job_seeds, _ in jobs for s in job_seeds))
  found = {s: index.get_nns_by_vector(vector(s), k) for s in seeds}
  item_of = {t: i for i, t in enumerate(indexed)}
  rng = np.random.default_rng(seed)
  model, rand = [], []
  for job_seeds, truth in jobs:
    table = np.full((len(job_seeds), k), -1)
    for row, s in enumerate(job_seeds):
      table[row, :len(found[s])] = found[s]
    # Count, then summed rank, then item id, spelled out with a sort on tuples.
    stats = {}
    for row in table:
      for rank, item in enumerate(row):
        if item >= 0:
          count, rank_sum = stats.get(item, (0, 0))
          stats[item] = (count + 1, rank_sum + rank)
    ranked = sorted(stats, key=lambda item: (-stats[item][0], stats[item][1], item))[:k]
    truth_items = [item_of[t] for t in truth if t in item_of]
    hits = np.isin(ranked, truth_items)
    model.append((metrics.ndcg_from_hits(hits, len(truth), k),
                  metrics.average_precision_from_hits(hits, len(truth), k)))
    drawn = rng.choice(len(indexed), size=min(k, len(indexed)), replace=False)
    hits = np.isin(drawn, truth_items)
    rand.append((metrics.ndcg_from_hits(hits, len(truth), k),
                 metrics.average_precision_from_hits(hits, len(truth), k)))
  model, rand = np.array(model), np.array(rand)
  return {"playlists": len(jobs), "skipped_seeds": skipped_seeds, "queried_tracks": len(seeds),
          f"ndcg@{k}": float(model[:, 0].mean()), f"map@{k}": float(model[:, 1].mean()),
          "random": {f"ndcg@{k}": float(rand[:, 0].mean()), f"map@{k}": float(rand[:, 1].mean())}}


def random_case(seed, songs=600, dim=8):
  """Clustered songs, some with (patches, dim) embeddings, some without any; playlists with repeats."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 6, songs)
  vectors = rng.standard_normal((6, dim))[labels] + rng.standard_normal((songs, dim))
  embeddings = {}
  for song in range(songs):
    if rng.random() < 0.05:
      continue  # no embedding
    embeddings[song] = (vectors[song] if rng.random() < 0.7 else
                        vectors[song] + 0.3 * rng.standard_normal((int(rng.integers(2, 5)), dim)))
  test_ids = rng.permutation(songs)[:songs // 4].tolist()
  playlists = [rng.choice(np.flatnonzero(labels == rng.integers(0, 6)), int(rng.integers(1, 30))).tolist()
               for _ in range(250)]
  return embeddings, playlists, test_ids


@pytest.mark.parametrize("seed,k,threads", [(0, 20, 1), (1, 20, 3), (2, 7, 2), (3, 200, 2)])
def test_fast_paths_equal_the_reference(seed, k, threads, monkeypatch):
  # Small chunks so that the threaded queries and the batched scoring cross many chunk boundaries;
  # k = 200 is more than the ~150 indexed songs, so rows are padded with -1.
  monkeypatch.setattr(cont, "QUERY_CHUNK", 7)
  monkeypatch.setattr(cont, "SCORE_CHUNK", 500)
  embeddings, playlists, test_ids = random_case(seed)
  expected = reference_evaluate(embeddings, playlists, test_ids, k=k, n_trees=5, seed=seed)
  got = cont.evaluate_continuation(embeddings, playlists, test_ids, k=k, n_trees=5, seed=seed,
                                   threads=threads)
  assert expected["playlists"] > 150 and expected[f"ndcg@{k}"] > 0
  assert {key: got[key] for key in expected} == expected  # exactly, not approximately


def test_batched_continuations_equal_one_at_a_time(monkeypatch):
  rng = np.random.default_rng(5)
  n_items, k, owners = 40, 12, 30
  seeds = rng.integers(1, 9, owners)
  # Few items and short rows make count and rank-sum ties common; -1 pads some rows.
  neighbours = rng.integers(0, n_items, (seeds.sum(), 15))
  neighbours[rng.random(neighbours.shape) < 0.1] = -1
  owner = np.repeat(np.arange(owners), seeds)
  expected = [cont.continuation(neighbours[owner == p], k).tolist() for p in range(owners)]
  # A large id bound widens the packed sort keys; past 62 bits both sorts fall back to lexsort.
  for bound in (n_items, 2**40, 2**58):
    items, starts = cont.continuations(neighbours, owner, owners, bound, k)
    assert [items[starts[p]:starts[p + 1]].tolist() for p in range(owners)] == expected


def test_timings_name_every_phase():
  timings = {}
  tiny_result(timings=timings)
  assert list(timings) == ["split playlists", "build index", "query seeds", "score playlists"]
  assert all(seconds >= 0 for seconds in timings.values())


def test_search_k_trades_exactness_for_speed():
  """--continuation_search_k: searching every leaf gives the exact cosine top-k; a small search_k
  gives fewer of them, and the evaluation passes the setting through."""
  rng = np.random.default_rng(4)
  items = rng.standard_normal((400, 16)).astype(np.float32)
  embeddings = {f"T{i}": v for i, v in enumerate(items)}
  seeds = {f"S{i}": v for i, v in enumerate(rng.standard_normal((40, 16)).astype(np.float32))}
  embeddings.update(seeds)
  index, dim = cont._build_index(embeddings, [f"T{i}" for i in range(400)], 5, 0)
  unit = items / np.linalg.norm(items, axis=1, keepdims=True)
  exact = np.argsort(-(np.stack(list(seeds.values())) @ unit.T), axis=1)[:, :10]
  full = cont._query_seeds(index, dim, embeddings, list(seeds), 10, search_k=400 * 5)
  np.testing.assert_array_equal(full, exact)
  small = cont._query_seeds(index, dim, embeddings, list(seeds), 10, search_k=10)
  recall = np.mean([len(set(s) & set(e)) / 10 for s, e in zip(small, exact)])
  assert recall < 0.9
  playlists = [[f"S{i}", f"T{i}", f"T{i + 1}"] for i in range(40)]
  test_ids = [f"T{i}" for i in range(400)]
  exhaustive = cont.evaluate_continuation(embeddings, playlists, test_ids, k=10, n_trees=5,
                                          search_k=2000)
  assert exhaustive != cont.evaluate_continuation(embeddings, playlists, test_ids, k=10, n_trees=5,
                                                  search_k=10)


# The faiss searches (--continuation_index=exact / faiss_ivf) and the callable-index hook.

def brute_force(items, queries, k):
  """Top-k item ids by cosine, written the slow way: a full sort of every row, -1 past the items."""
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
def test_exact_search_equals_a_full_sort(k, threads):
  # k = 300 is more than the 250 items, so rows end in -1; the thread count must not matter.
  rng = np.random.default_rng(0)
  items, queries = rng.standard_normal((250, 12)), rng.standard_normal((40, 12))
  with cont._omp_threads(threads):
    got = cont.faiss_search(items, "exact")(queries, k)
  np.testing.assert_array_equal(got, brute_force(items, queries, k))


def test_ivf_probing_every_list_is_exact_and_fewer_probes_trade_recall():
  rng = np.random.default_rng(1)
  items, _ = clustered(rng, 2000, clusters=20)
  queries = items[rng.choice(2000, 100, replace=False)] + 0.1 * rng.standard_normal((100, 16))
  expected = brute_force(items, queries, 15)
  every = cont.faiss_search(items, "faiss_ivf", nlist=40, nprobe=40, seed=3)
  assert every.index.nlist == 40 and every.index.ntotal == 2000
  np.testing.assert_array_equal(every(queries, 15), expected)
  recall = lambda found: np.mean([len(set(f) & set(e)) / 15 for f, e in zip(found, expected)])
  few, one = (cont.faiss_search(items, "faiss_ivf", 40, p, seed=3)(queries, 15) for p in (4, 1))
  # Clustered data: a few lists around the query's cluster hold nearly all of its neighbours.
  assert recall(few) >= 0.95 and recall(one) < recall(few)


def test_search_does_not_depend_on_threads():
  rng = np.random.default_rng(4)
  items, queries = rng.standard_normal((500, 8)), rng.standard_normal((90, 8))
  search = cont.faiss_search(items, "faiss_ivf", nlist=10, nprobe=3, seed=1)
  with cont._omp_threads(1):
    first = search(queries, 25)
  with cont._omp_threads(3):
    np.testing.assert_array_equal(search(queries, 25), first)


def test_faiss_search_names_bad_shapes_and_clamps_lists():
  with pytest.raises(ValueError, match=r"\(items, dim\)"):
    cont.faiss_search(np.zeros((0, 4)), "exact")
  with pytest.raises(ValueError, match=r"queries must be \(n, 4\)"):
    cont.faiss_search(np.ones((5, 4)), "exact")(np.ones((3, 5)), 2)
  assert cont.faiss_search(np.ones((3, 4)), "faiss_ivf", nlist=8).index.nlist == 3
  # 4 sqrt(n) at Melon scale; on small sets few enough lists that 4 probes hold ~2k candidates.
  assert cont.default_nlist(64_852, k=100, nprobe=4) == 1019
  assert cont.default_nlist(150, k=20, nprobe=4) == 15 and cont.default_nlist(1) == 1


def continuation_case(seed=0, songs=900, dim=16):
  rng = np.random.default_rng(seed)
  data, labels = clustered(rng, songs, dim, clusters=10, noise=0.8)
  embeddings = dict(enumerate(data))
  test_ids = rng.permutation(songs)[:300].tolist()
  playlists = [rng.choice(np.flatnonzero(labels == rng.integers(0, 10)), int(rng.integers(2, 25))).tolist()
               for _ in range(200)]
  return embeddings, playlists, test_ids


def test_continuation_indexes_agree_where_each_is_exact():
  """--continuation_index: faiss's exact search, its IVF probing every list, an Annoy search of every
  leaf and a numpy full sort (the callable-index hook) retrieve the same neighbours, so the whole
  evaluation gives the same numbers; an IVF probing few lists gives a close one."""
  data = continuation_case()
  exact = cont.evaluate_continuation(*data, k=20, index="exact")
  assert exact["playlists"] > 150 and exact["ndcg@20"] > 2 * exact["random"]["ndcg@20"]
  numpy_sort = lambda items: (lambda queries, k: brute_force(items, queries, k))
  assert cont.evaluate_continuation(*data, k=20, index=numpy_sort) == exact
  assert cont.evaluate_continuation(*data, k=20, index="faiss_ivf", nlist=12, nprobe=12) == exact
  assert cont.evaluate_continuation(*data, k=20, n_trees=5, search_k=300 * 5) == exact
  fast = cont.evaluate_continuation(*data, k=20, index="faiss_ivf", nlist=12, nprobe=1)
  assert fast != exact and fast["ndcg@20"] > 0.8 * exact["ndcg@20"]
  with pytest.raises(ValueError, match="index must be one of"):
    cont.evaluate_continuation(*data, k=20, index="hnsw")


def test_the_evaluate_flags_choose_the_search():
  """--continuation_index, --continuation_nlist and --continuation_nprobe reach evaluate_continuation."""
  from absl import flags
  from absl.testing import flagsaver

  from tfcmir.evaluate import cli
  import tfcmir.flags  # noqa: F401 (defines the flags)

  flags.FLAGS.mark_as_parsed()
  data = continuation_case(seed=1)
  with flagsaver.flagsaver(continuation_index="faiss_ivf", continuation_nlist=12, continuation_nprobe=2):
    options = cli.search_flags()
  assert options == dict(index="faiss_ivf", search_k=-1, nlist=12, nprobe=2)
  assert cont.evaluate_continuation(*data, k=20, **options) == \
      cont.evaluate_continuation(*data, k=20, index="faiss_ivf", nlist=12, nprobe=2)
  # The default: faiss IVF, chosen from benchmarks/results/2026-12-03-continuation-faiss.md.
  assert cli.search_flags() == dict(index="faiss_ivf", search_k=-1, nlist=0, nprobe=4)
