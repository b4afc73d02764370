"""WARP factorisation: held-out recall against implicit's BPR, and speed at Melon scale.

    python benchmarks/warp.py [--songs 4000] [--playlists 2000] [--dim 64] [--epochs 30]
    python benchmarks/warp.py --melon_scale [--melon_epochs 3] [--skip_quality]
    python benchmarks/warp.py --quick        # smoke test (CI): both parts at toy sizes

(a) On structured synthetic playlists (tfcmir.prepare.warp.synthetic_playlists: latent clusters,
Zipf popularity) with 20 % of each playlist held out: recall@10/50 and fit time of fit_warp (default
shared negatives, LightFM-like per-positive draws, two schedules), implicit's BPR, popularity and
random.
(b) --melon_scale: a synthetic matrix of Melon's size (649,091 songs x 115,071 playlists, ~5.9M
memberships, Zipf song popularity); times setup and whole epochs at dim 300 and projects the paper's
50-epoch schedule. Needs ~4 GB of memory and 10-30 s per epoch on two cores.

Prints Markdown tables. `implicit` (0.7.3) is only needed for the BPR row.
"""

import argparse
import time

import numpy as np

import common
from tfcmir.prepare import warp

MELON_SONGS = 649_091
MELON_PLAYLISTS = 115_071
MELON_MEAN_LENGTH = 55  # 6.3M draws, ~5.9M memberships once repeats within a playlist merge


def fixed_factors(item, user):
  """WarpFactors around plain dot-product factors (BPR, popularity): no biases."""
  return warp.WarpFactors(item.astype(np.float32), np.zeros(len(item), np.float32),
                          user.astype(np.float32), np.zeros(len(user), np.float32))


def fit_bpr(train, dim, iterations, seed):
  from implicit.cpu.bpr import BayesianPersonalizedRanking
  model = BayesianPersonalizedRanking(factors=dim, iterations=iterations, random_state=seed)
  model.fit(train.T.tocsr(), show_progress=False)  # implicit wants playlists x songs
  return fixed_factors(model.item_factors, model.user_factors)


def quality(args):
  """Rows (method, recall@10, recall@50, seconds) on the structured synthetic matrix."""
  matrix = warp.synthetic_playlists(args.songs, args.playlists, mean_length=args.mean_length,
                                    n_clusters=args.clusters, seed=args.seed)
  train, test = warp.holdout_split(matrix, 0.2, seed=args.seed)
  print(f"synthetic: {matrix.shape[0]} songs x {matrix.shape[1]} playlists, {train.nnz} train and "
        f"{test.nnz} held-out memberships, {args.clusters} clusters; dim {args.dim}")
  def fit(**kwargs):
    return lambda: warp.fit_warp(train, dim=args.dim, seed=args.seed, progress=False, **kwargs)

  # The paper's learning rate overfits a matrix this small within a few tens of epochs (BPR's
  # default is 0.01 with regularisation), hence the epoch and learning-rate rows.
  methods = [
      ("WARP, defaults (shared negatives), 10 epochs", fit(epochs=10)),
      (f"WARP, defaults, {args.epochs} epochs", fit(epochs=args.epochs)),
      ("WARP, share_negatives=1, batch 64 (LightFM-like draws), 10 epochs",
       fit(epochs=10, share_negatives=1, batch_size=64)),
      (f"WARP, learning_rate 0.01, {args.epochs} epochs", fit(epochs=args.epochs, learning_rate=0.01)),
  ]
  try:
    import implicit  # noqa: F401
    methods.append((f"implicit {implicit.__version__} BPR, {args.bpr_iterations} iterations",
                    lambda: fit_bpr(train, args.dim, args.bpr_iterations, args.seed)))
  except ImportError:
    print("implicit is not installed: no BPR row (pip install implicit==0.7.3)")
  popularity = np.asarray(train.sum(axis=1), np.float32)
  methods.append(("popularity", lambda: fixed_factors(popularity, np.ones((train.shape[1], 1)))))
  rows = []
  for name, fit in methods:
    start = time.perf_counter()
    factors = fit()
    seconds = time.perf_counter() - start
    rows.append((name, *(warp.recall_at_k(factors, train, test, k) for k in (10, 50)), seconds))
  candidates = train.shape[0] - train.sum(axis=0).mean()
  rows.append(("random", 10 / candidates, 50 / candidates, 0.0))
  return rows


def melon_speed(args, n_songs=MELON_SONGS, n_playlists=MELON_PLAYLISTS):
  """Rows (quantity, value) for a Melon-sized matrix (or a fraction of it) at dim 300."""
  start = time.perf_counter()
  matrix = warp.synthetic_playlists(n_songs, n_playlists, mean_length=MELON_MEAN_LENGTH,
                                    n_clusters=200, seed=args.seed)
  built = time.perf_counter() - start
  csr = warp.check_matrix(matrix)
  coo = csr.tocoo()
  songs, playlists = coo.row.astype(np.int32), coo.col.astype(np.int32)
  batch = warp.auto_batch_size(songs.size, args.share_negatives)
  start = time.perf_counter()
  # The internals of fit_warp, so that setup and each epoch are timed apart.
  model = warp._WarpModel(csr, 300, 40, 0.05, True, 0.0, args.share_negatives, args.seed)
  n_steps = -(-songs.size // batch)
  model.step(playlists[:batch], songs[:batch], np.ones(batch, np.float32))  # trace outside the timing
  setup = time.perf_counter() - start
  rng = np.random.default_rng(args.seed)
  epochs = []
  for _ in range(args.melon_epochs):
    start = time.perf_counter()
    loss = warp._run_epoch(model, rng.permutation(songs.size), playlists, songs, batch, n_steps)
    epochs.append(time.perf_counter() - start)
    print(f"  epoch {len(epochs)}: {epochs[-1]:.1f} s, mean loss {loss / songs.size:.3f}", flush=True)
  # Epochs get faster as fewer positives find a violator (only those are updated): project the rest
  # at the last measured rate, and bound it by the first epoch's rate (every positive updated).
  projected = setup + sum(epochs) + (50 - len(epochs)) * epochs[-1]
  return [
      ("songs x playlists", f"{n_songs:,} x {n_playlists:,}"),
      ("memberships (songs with any)", f"{songs.size:,} ({model.n_candidates:,})"),
      ("dim / max_sampled / batch / share_negatives", f"300 / 40 / {batch} / {args.share_negatives}"),
      ("build synthetic matrix", f"{built:.1f} s"),
      ("setup (init, variables, lookup, trace)", f"{setup:.1f} s"),
      ("seconds per epoch", ", ".join(f"{e:.1f}" for e in epochs) + f" ({n_steps} steps each)"),
      ("projected 50 epochs + setup (last rate; first-epoch rate)",
       f"{projected / 60:.1f} min; {(setup + 50 * epochs[0]) / 60:.1f} min"),
      ("peak memory (max RSS)", f"{common.peak_rss_gb():.1f} GB"),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--songs", type=int, default=4000)
  parser.add_argument("--playlists", type=int, default=2000)
  parser.add_argument("--mean_length", type=int, default=40)
  parser.add_argument("--clusters", type=int, default=40)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--bpr_iterations", type=int, default=100, help="implicit's default")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip_quality", action="store_true", help="only the Melon-scale timing")
  parser.add_argument("--melon_scale", action="store_true", help="time fit_warp at Melon's size")
  parser.add_argument("--melon_epochs", type=int, default=3)
  parser.add_argument("--share_negatives", type=int, default=warp.DEFAULT_SHARE_NEGATIVES,
                      help="for the Melon-scale timing")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: tiny quality run and 1/200 of Melon for one epoch")
  args = parser.parse_args()
  scale = 1
  if args.quick:
    args.songs, args.playlists, args.clusters, args.dim = 400, 200, 8, 16
    args.epochs, args.bpr_iterations, args.melon_scale, args.melon_epochs = 2, 5, True, 1
    scale = 200

  print(common.machine_line())
  if not args.skip_quality:
    rows = quality(args)
    print("\n| method | recall@10 | recall@50 | fit seconds |")
    print("|---|---|---|---|")
    for name, r10, r50, seconds in rows:
      print(f"| {name} | {r10:.4f} | {r50:.4f} | {seconds:.1f} |")
  if args.melon_scale:
    print("\nMelon scale:", flush=True)
    rows = melon_speed(args, MELON_SONGS // scale, MELON_PLAYLISTS // scale)
    print("\n| quantity | value |")
    print("|---|---|")
    for name, value in rows:
      print(f"| {name} | {value} |")


if __name__ == "__main__":
  main()
