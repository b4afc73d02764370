"""WARP factorisation: held-out recall against LightFM and implicit's BPR, and speed at Melon scale.

    python benchmarks/warp.py [--songs 4000] [--playlists 2000] [--dim 64] [--epochs 30]
    python benchmarks/warp.py --melon_scale [--melon_epochs 3] [--skip_quality]
    python benchmarks/warp.py --skip_quality --lightfm demo,60k,melon [--lightfm_melon_epochs 3]
    python benchmarks/warp.py --quick        # smoke test (CI): every part at toy sizes

(a) On structured synthetic playlists (tfcmir.prepare.warp.synthetic_playlists: latent clusters,
Zipf popularity) with 20 % of each playlist held out: recall@10/50 and fit time of fit_warp (default
shared negatives, LightFM-like per-positive draws, two schedules), implicit's BPR, popularity and
random.
(b) --melon_scale: a synthetic matrix of Melon's size (649,091 songs x 115,071 playlists, ~5.9M
memberships, Zipf song popularity); times setup and whole epochs at dim 300 and projects the paper's
50-epoch schedule. Needs ~4 GB of memory and 10-30 s per epoch on two cores.

(c) --lightfm SIZES: fit_warp against LightFM (lightfm-next, the authors' library; 2 threads) on the
same held-out split, with the preparation's settings (tfcmir/flags.py: 300 factors, 40 draws, Adagrad at
0.05, 50 epochs): held-out recall@10/50 and seconds per epoch. Sizes: demo (the demo corpus's playlist
matrix, 1,500 x 600), 60k (synthetic, 60,000 songs, Melon's playlist/song ratio) and melon (synthetic,
Melon's size), where --lightfm_melon_epochs epochs are run and 50 projected from the last epoch's rate;
recall there is after those epochs, on a sample of --eval_playlists playlists.

Prints Markdown tables. `implicit` (0.7.3) is only needed for the BPR row, `lightfm-next` (1.19.0)
for the LightFM rows (both in the `bench` extra).
"""

import argparse
import time

import numpy as np

import common
from tfcmir.data import generator
from tfcmir import flags as tfcmir_flags
from tfcmir.prepare import warp

MELON_SONGS = 649_091
MELON_PLAYLISTS = 115_071
MELON_MEAN_LENGTH = 55  # 6.3M draws, ~5.9M memberships once repeats within a playlist merge
LIGHTFM_SIZES = ("demo", "60k", "melon")
LIGHTFM_THREADS = 2


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
  if lightfm_version():
    methods.append((f"LightFM {lightfm_version()} WARP, 10 epochs, {LIGHTFM_THREADS} threads",
                    lambda: warp.fit_lightfm(train, dim=args.dim, epochs=10, seed=args.seed,
                                             threads=LIGHTFM_THREADS)))
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


def lightfm_version():
  """lightfm-next's version, or None (and a note) when it is not installed."""
  try:
    from importlib import metadata
    import lightfm  # noqa: F401
    return metadata.version("lightfm-next")
  except ImportError:
    print("lightfm is not installed: no LightFM rows (pip install lightfm-next==1.19.0)")
  except metadata.PackageNotFoundError:
    return "(unknown version)"
  return None


def prepare_settings():
  """The WARP settings `python -m tfcmir.prepare` uses by default (the authors' LightFM values)."""
  flag = tfcmir_flags.flags.FLAGS
  return dict(dim=flag["cf_dim"].default, epochs=flag["warp_epochs"].default,
              max_sampled=flag["warp_negatives"].default,
              learning_rate=flag["warp_learning_rate"].default)


def lightfm_matrix(size, seed, scale=1):
  """(name, song x playlist matrix) for a size of the LightFM comparison."""
  if size == "demo":
    _, _, ids, _, playlists = generator.sample_melon(np.random.default_rng(seed), generator.DemoConfig(seed=seed))
    row = {int(s): i for i, s in enumerate(ids)}
    cols = np.repeat(np.arange(len(playlists)), [len(p["songs"]) for p in playlists])
    rows = [row[s] for p in playlists for s in p["songs"]]
    matrix = warp.check_matrix(scipy_csr(rows, cols, (len(ids), len(playlists))))
    return "demo corpus playlists", matrix
  n_songs = {"60k": 60_000, "melon": MELON_SONGS}[size] // scale
  n_playlists = max(2, round(n_songs * MELON_PLAYLISTS / MELON_SONGS))
  matrix = warp.synthetic_playlists(n_songs, n_playlists, mean_length=MELON_MEAN_LENGTH,
                                    n_clusters=200 if n_songs >= 2000 else 8, seed=seed)
  return "synthetic, Melon's ratio and mean length", matrix


def scipy_csr(rows, cols, shape):
  import scipy.sparse
  return scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)


def lightfm_comparison(args, size, scale=1):
  """Rows (method, epochs run, recall@10, recall@50, s/epoch list, 50-epoch seconds) at one size."""
  settings = prepare_settings()
  kind, matrix = lightfm_matrix(size, args.seed, scale)
  train, test = warp.holdout_split(matrix, 0.2, seed=args.seed)
  epochs = settings["epochs"] if size != "melon" else args.lightfm_melon_epochs
  settings["epochs"] = epochs
  rng = np.random.default_rng(args.seed)
  users = np.flatnonzero(np.diff(test.tocsc().indptr))
  if users.size > args.eval_playlists:
    users = np.sort(rng.choice(users, args.eval_playlists, replace=False))
  print(f"\n{size} ({kind}): {matrix.shape[0]:,} songs x {matrix.shape[1]:,} playlists, "
        f"{train.nnz:,} train / {test.nnz:,} held-out memberships; recall over {users.size:,} "
        f"playlists; dim {settings['dim']}, max_sampled {settings['max_sampled']}, learning rate "
        f"{settings['learning_rate']}, {epochs} epochs", flush=True)
  fits = [("TF WARP (fit_warp, defaults)",
           lambda done: warp.fit_warp(train, seed=args.seed, progress=False,
                                      on_epoch=lambda s, _: done(s), **settings)),
          (f"LightFM {lightfm_version()}, {LIGHTFM_THREADS} threads",
           lambda done: warp.fit_lightfm(train, seed=args.seed, threads=LIGHTFM_THREADS,
                                         on_epoch=done, **settings))]
  rows = []
  for name, fit in fits:
    seconds = []
    def done(s, seconds=seconds, name=name):
      seconds.append(s)
      if size == "melon":
        print(f"  {name}: epoch {len(seconds)} {s:.1f} s", flush=True)
    cpu = time.process_time()
    factors = fit(done)
    cpu = time.process_time() - cpu  # all threads of this process: less sensitive to other load
    recalls = [warp.recall_at_k(factors, train, test, k, users=users) for k in (10, 50)]
    del factors
    # Later epochs of both change speed (fewer violators for TF; more draws before one for LightFM):
    # the projection takes the last measured epoch's rate for the rest.
    projected = sum(seconds) + (50 - len(seconds)) * seconds[-1]
    rows.append((name, len(seconds), *recalls, seconds, projected, cpu))
  return rows


def print_lightfm_rows(size, rows):
  print("\n| size | method | epochs run | recall@10 | recall@50 | s/epoch (first, last) | "
        "50 epochs, s | CPU s of the fit |")
  print("|---|---|---|---|---|---|---|---|")
  for name, epochs, r10, r50, seconds, projected, cpu in rows:
    fifty = f"{projected:.0f}" + (" (projected)" if epochs < 50 else "")
    print(f"| {size} | {name} | {epochs} | {r10:.4f} | {r50:.4f} | {seconds[0]:.2f}, "
          f"{seconds[-1]:.2f} | {fifty} | {cpu:.0f} |")
  (_, _, _, tf50, _, tf_s, tf_cpu), (_, _, _, lf50, _, lf_s, lf_cpu) = rows
  print(f"\n{size}: TF / LightFM recall@50 {tf50 / lf50:.3f}, 50-epoch time {tf_s / lf_s:.2f}x, "
        f"CPU time of the epochs run {tf_cpu / lf_cpu:.2f}x", flush=True)


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
  parser.add_argument("--lightfm", type=lambda v: v.split(",") if v else [], default=[],
                      help=f"comma-separated sizes of the LightFM comparison: {LIGHTFM_SIZES}")
  parser.add_argument("--lightfm_melon_epochs", type=int, default=3,
                      help="epochs of each method at the melon size (50 are projected)")
  parser.add_argument("--eval_playlists", type=int, default=5000,
                      help="LightFM comparison: recall over at most this many playlists")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: tiny quality run, 1/200 of Melon for one epoch, LightFM "
                           "comparison at 1/200 of Melon")
  args = parser.parse_args()
  scale = 1
  if args.quick:
    args.songs, args.playlists, args.clusters, args.dim = 400, 200, 8, 16
    args.epochs, args.bpr_iterations, args.melon_scale, args.melon_epochs = 2, 5, True, 1
    args.lightfm, args.lightfm_melon_epochs = ["melon"], 1
    scale = 200
  unknown = set(args.lightfm) - set(LIGHTFM_SIZES)
  if unknown:
    parser.error(f"--lightfm: unknown sizes {sorted(unknown)}; choose from {LIGHTFM_SIZES}")

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
  if args.lightfm and lightfm_version():
    print("\nTF WARP against LightFM, same held-out split:", flush=True)
    for size in args.lightfm:
      print_lightfm_rows(size, lightfm_comparison(args, size, scale))


if __name__ == "__main__":
  main()
