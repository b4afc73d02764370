"""WARP factorisation of the song x playlist matrix: the CF input of the playlist encoder.

The paper (section 2.1) describes each song by its item factors from a WARP factorisation (Weighted
Approximate-Rank Pairwise loss, Weston et al. 2011) of the binary song x playlist matrix; the authors
ran LightFM with 300 components, max_sampled 40, learning rate 0.05 (Adagrad) and 50 epochs. LightFM
no longer builds, so this is the same algorithm in TensorFlow, vectorised over a batch of positives.

For one positive (playlist u, song p), WARP draws songs uniformly until one "violates", i.e. scores
above s(u, p) - 1, where s(u, i) = <user_u, item_i> + bias_i. If the first violator is the t-th draw
(1-based), the rank of p is estimated as floor((n - 1) / t) and the pair's loss is
    log(max(1, rank)) * max(0, 1 - s(u, p) + s(u, violator)),
which weighs the hinge by how far p is from the top. No violator in `max_sampled` draws: no loss.

What matches LightFM: the weight (with its clip at 10, `MAX_WEIGHT`), skipping violators that are in
the playlist while still counting their draw in the rank estimate (LightFM's fit_warp increments
`sampled` before it looks at the draw, then `continue`s past a positive), initialisation (uniform(-0.5, 0.5) / dim factors, zero biases), Adagrad with
accumulators starting at 1 and the step taken before the gradient is accumulated, L2 as weight decay.

What departs from LightFM, and why:
  * Batches instead of Hogwild SGD: `batch_size` positives are scored at once and their gradients
    summed per row, then one Adagrad step per touched row. It turns 5.9M scalar updates per epoch
    into ~1,400 batched steps, which is what makes the Melon scale fit on two CPU cores. Batches of
    4096 match the held-out recall of batches of 64 to 1024; 8192 and up lose a little (fewer,
    larger steps on the popular songs) for no gain in speed (per-positive costs dominate).
  * Shared negatives (`share_negatives`): groups of positives draw one set of `max_sampled` songs
    together, and each positive walks that set in its own rotated order (a random starting point),
    so every positive still sees `max_sampled` independent uniform draws in a random order, i.e. the
    same rank estimator. Gathering one negative set per positive moves batch x 40 x 300 floats per
    step and dominates the run time; sharing divides that by the group size, and the rotation keeps
    one easy-to-beat song from collecting the whole group's gradient. 1 gives LightFM's sampling.
  * Songs without any playlist (e.g. test songs held out for cold start) are not sampled as negatives
    and n in the rank estimate counts only songs with entries. LightFM would spend draws on them and
    push them down; their factors stay at the initialisation here, for the caller to replace.
  * Violators that are in the playlist are skipped for at most `_POSITIVE_CHECKS` rounds (LightFM
    checks every violator): with ~50 songs per playlist out of 649k a draw is a positive once in
    ~13,000, so more than a few in one positive's draws practically never happens.
  * User biases are returned as zeros: they cancel in every WARP difference (LightFM's update of them
    is a quirk that never affects the ranking).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.sparse
import tensorflow as tf
import tqdm
from absl import logging

# LightFM clips the rank weight at 10 (a rank estimate above e^10 ~ 22,000); at Melon scale log(n - 1)
# is 13.4, so a first-draw violator would otherwise get a third more weight than LightFM gives it.
MAX_WEIGHT = 10.0
MARGIN = 1.0
# Lookups of "is the chosen violator in the playlist?" per step. Each round removes the positives
# found among the current first violators and picks again.
_POSITIVE_CHECKS = 2

DEFAULT_BATCH_SIZE = 4096
DEFAULT_SHARE_NEGATIVES = 32
# With the default batch size, a small matrix would get a handful of steps per epoch: the automatic
# batch size gives every epoch at least this many steps.
MIN_STEPS_PER_EPOCH = 32


@dataclasses.dataclass
class WarpFactors:
  """Factors of a WARP fit; score(playlist u, song i) = user_factors[u] @ item_factors[i] + item_bias[i].

  Attributes:
    item_factors: float32 (n_items, dim), one row per song (row of the fitted matrix).
    item_bias: float32 (n_items,).
    user_factors: float32 (n_users, dim), one row per playlist (column of the fitted matrix).
    user_bias: float32 (n_users,); zeros for WARP, kept so the layout matches LightFM.
  """
  item_factors: np.ndarray
  item_bias: np.ndarray
  user_factors: np.ndarray
  user_bias: np.ndarray

  def scores(self, users):
    """Scores of every song for some playlists.

    Args:
      users: int array (n,) of playlist indices.

    Returns:
      float32 (n, n_items).
    """
    return (self.user_factors[users] @ self.item_factors.T + self.item_bias[None, :]
            + self.user_bias[users, None])


def check_matrix(matrix):
  """Validates a song x playlist membership matrix; returns it as binary float32 CSR.

  Args:
    matrix: scipy.sparse (n_songs, n_playlists); any positive value means membership.

  Raises:
    ValueError: not a 2-D scipy.sparse matrix, no entries, or negative or non-finite values.
  """
  if not scipy.sparse.issparse(matrix):
    raise ValueError(f"matrix must be a scipy.sparse matrix (songs x playlists), got {type(matrix)}")
  if matrix.ndim != 2:
    raise ValueError(f"matrix must be 2-D (songs x playlists), got shape {matrix.shape}")
  csr = scipy.sparse.csr_matrix(matrix)
  csr.sum_duplicates()
  if csr.data.size and not np.all(np.isfinite(csr.data)):
    raise ValueError("matrix has non-finite values (NaN or Inf)")
  if csr.data.size and csr.data.min() < 0:
    raise ValueError(f"matrix must be binary membership (>= 0), found {csr.data.min()}")
  csr.eliminate_zeros()
  if csr.nnz == 0:
    raise ValueError(f"matrix of shape {matrix.shape} has no memberships")
  if max(csr.shape) >= 2**31:
    raise ValueError(f"matrix of shape {csr.shape} is too large for int32 indices")
  csr.data = np.ones_like(csr.data, dtype=np.float32)
  return csr.astype(np.float32)


def _rank_weight(position, n_candidates):
  """log(max(1, floor((n - 1) / position))) clipped at MAX_WEIGHT, as LightFM; position is 1-based."""
  rank = tf.floor(tf.cast(n_candidates - 1, tf.float32) / tf.cast(position, tf.float32))
  return tf.minimum(tf.math.log(tf.maximum(rank, 1.0)), MAX_WEIGHT)


def _first_violators(user_aug, pos_scores, neg_aug, neg_ids, offsets, is_member):
  """Finds each positive's first violating negative in its own sample order.

  Args:
    user_aug: float32 (B, d + 1), playlist vectors with a trailing 1 (for the song bias).
    pos_scores: float32 (B,) scores of the positive songs.
    neg_aug: float32 (G, K, d + 1), song vectors with their bias last; group g serves positives
      [g * B / G, (g + 1) * B / G).
    neg_ids: int32 (G, K) song ids of `neg_aug`.
    offsets: int32 (B,) where in its group's K negatives each positive starts (then wraps around).
    is_member: None, or fn(songs int32 (B,)) -> bool (B,): is song b in positive b's playlist?

  Returns:
    (violator song id int32 (B,), 1-based sample position float32 (B,), found bool (B,)).
  """
  groups, k = tf.shape(neg_ids)[0], tf.shape(neg_ids)[1]
  batch = tf.shape(user_aug)[0]
  per_group = tf.reshape(user_aug, [groups, batch // groups, -1])
  scores = tf.reshape(tf.einsum("gsd,gkd->gsk", per_group, neg_aug), [batch, k])
  violates = scores > pos_scores[:, None] - MARGIN
  # order[b, j]: 0-based position of pool entry j in positive b's sample sequence.
  order = tf.math.floormod(tf.range(k)[None, :] - offsets[:, None], k)
  row_ids = tf.repeat(neg_ids, batch // groups, axis=0)  # (B, K)
  for check in range(_POSITIVE_CHECKS + 1):
    key = tf.where(violates, order, k)
    first = tf.argmin(key, axis=1, output_type=tf.int32)
    found = tf.reduce_min(key, axis=1) < k
    violator = tf.gather(row_ids, first, batch_dims=1)
    if is_member is None or check == _POSITIVE_CHECKS:
      break
    # A violator in the playlist is no negative: LightFM draws again, but its draw still counts in
    # the position (`sampled` grows before the check), so the position is the draw's own index.
    hit = found & is_member(violator)
    violates &= ~(hit[:, None] & tf.equal(tf.range(k)[None, :], first[:, None]))
  position = tf.gather(order, first, batch_dims=1) + 1
  return violator, tf.cast(position, tf.float32), found


def _pair_loss(user_aug, pos_aug, viol_aug, weight):
  """weight * max(0, 1 - s(u, p) + s(u, v)) per pair, all (B, d + 1) augmented vectors -> (B,)."""
  pos = tf.reduce_sum(user_aug * pos_aug, axis=1)
  neg = tf.reduce_sum(user_aug * viol_aug, axis=1)
  return weight * tf.nn.relu(MARGIN - pos + neg)


def _augment(user_vecs):
  """Appends the constant 1 that multiplies the song bias (stored as the last item column)."""
  return tf.concat([user_vecs, tf.ones_like(user_vecs[:, :1])], axis=1)


def warp_batch_loss(user_factors, item_factors, item_bias, users, items, negatives, n_candidates,
                    offsets=None, memberships=None):
  """The WARP loss of one batch of positives for given sampled negatives (the training step's core).

  Args:
    user_factors: float32 (n_users, dim).
    item_factors: float32 (n_items, dim).
    item_bias: float32 (n_items,).
    users: int (B,) playlist of each positive.
    items: int (B,) song of each positive.
    negatives: int (G, K) sampled songs; G divides B and group g serves positives
      [g * B / G, (g + 1) * B / G). G = B gives every positive its own K draws.
    n_candidates: number of songs negatives are drawn from (n in the rank estimate).
    offsets: int (B,) or None (zeros); positive b draws negatives[g, (offsets[b] + t) % K] for
      t = 0 .. K - 1.
    memberships: None, or scipy.sparse (n_items, n_users): violators that are members of the
      playlist are skipped, their draws still counted in the rank estimate, as LightFM does.

  Returns:
    (loss float32 (B,), violator song id int32 (B,), -1 where no draw violates).
  """
  user_factors = tf.convert_to_tensor(user_factors, tf.float32)
  item_aug = tf.concat([tf.convert_to_tensor(item_factors, tf.float32),
                        tf.reshape(tf.convert_to_tensor(item_bias, tf.float32), [-1, 1])], axis=1)
  users = tf.convert_to_tensor(users, tf.int32)
  items = tf.convert_to_tensor(items, tf.int32)
  negatives = tf.convert_to_tensor(negatives, tf.int32)
  offsets = tf.zeros_like(users) if offsets is None else tf.convert_to_tensor(offsets, tf.int32)
  is_member = None
  if memberships is not None:
    is_member = _playlist_members(check_matrix(memberships))(users)
  user_aug = _augment(tf.gather(user_factors, users))
  pos_aug = tf.gather(item_aug, items)
  pos_scores = tf.reduce_sum(user_aug * pos_aug, axis=1)
  violator, position, found = _first_violators(user_aug, pos_scores, tf.gather(item_aug, negatives),
                                               negatives, offsets, is_member)
  weight = _rank_weight(position, n_candidates) * tf.cast(found, tf.float32)
  loss = _pair_loss(user_aug, pos_aug, tf.gather(item_aug, violator), weight)
  return loss, tf.where(found, violator, -1)


def _playlist_members(csr):
  """Membership test for a batch: fn(users (B,)) -> fn(songs (B,)) -> bool (B,).

  A lower-bound binary search inside each playlist's sorted songs (its CSC slice), unrolled to the
  depth of the longest playlist. Searching all (playlist, song) keys instead took a quarter of the
  Melon step (~23 cache misses per query); gathering whole playlists to compare, a sixth.
  """
  csc = csr.tocsc()
  csc.sort_indices()
  starts = tf.constant(csc.indptr[:-1].astype(np.int32))
  ends = tf.constant(csc.indptr[1:].astype(np.int32))
  songs_of = tf.constant(csc.indices.astype(np.int32))
  last = csc.nnz - 1
  depth = max(1, int(np.ceil(np.log2(np.diff(csc.indptr).max() + 1))))

  def for_users(users):
    begin, end = tf.gather(starts, users), tf.gather(ends, users)

    def is_member(songs):
      lo, hi = begin, end
      for _ in range(depth):
        mid = lo + (hi - lo) // 2
        right = (lo < hi) & (tf.gather(songs_of, tf.minimum(mid, last)) < songs)
        left = (lo < hi) & ~right
        lo, hi = tf.where(right, mid + 1, lo), tf.where(left, mid, hi)
      return (lo < end) & tf.equal(tf.gather(songs_of, tf.minimum(lo, last)), songs)

    return is_member

  return for_users


def _sparse_step(var, accumulator, rows, grads, learning_rate):
  """One Adagrad (or SGD when accumulator is None) step on the given rows; duplicates are summed."""
  unique, slot = tf.unique(rows)
  grad = tf.math.unsorted_segment_sum(grads, slot, tf.shape(unique)[0])
  # Gather, compute, scatter_update: on CPU the arithmetic scatters (scatter_sub/add) run 4-5x slower
  # than a plain row copy, and rows are unique here, so overwriting them is exact.
  step = learning_rate * grad
  if accumulator is not None:
    # LightFM's order: step with the accumulator as it was (it starts at 1), then add this gradient.
    old = tf.gather(accumulator, unique)
    step *= tf.math.rsqrt(old)
    accumulator.scatter_update(tf.IndexedSlices(old + tf.square(grad), unique))
  var.scatter_update(tf.IndexedSlices(tf.gather(var, unique) - step, unique))


class _WarpModel:
  """Variables and the compiled training step of one fit."""

  def __init__(self, csr, dim, max_sampled, learning_rate, adagrad, l2, share_negatives, seed):
    n_items, n_users = csr.shape
    rng = np.random.default_rng(seed)
    # LightFM's initialisation: uniform(-0.5, 0.5) / dim, biases 0 (the bias is the last item column).
    items = (rng.random((n_items, dim), dtype=np.float32) - 0.5) / dim
    users = (rng.random((n_users, dim), dtype=np.float32) - 0.5) / dim
    self.item = tf.Variable(np.concatenate([items, np.zeros((n_items, 1), np.float32)], 1))
    self.user = tf.Variable(users)
    self.item_acc = tf.Variable(tf.ones_like(self.item)) if adagrad else None
    self.user_acc = tf.Variable(tf.ones_like(self.user)) if adagrad else None
    self.generator = tf.random.Generator.from_seed(seed)
    self.candidates = tf.constant(np.flatnonzero(np.diff(csr.indptr)).astype(np.int32))
    self.n_candidates = int(self.candidates.shape[0])
    self.members = _playlist_members(csr)
    self.max_sampled = max_sampled
    self.learning_rate = learning_rate
    self.l2 = l2
    self.share_negatives = share_negatives
    # No jit_compile: XLA has no tf.unique, and on CPU its scatters into the 650k-row tables ran ~4x
    # slower than TensorFlow's in-place ResourceScatterUpdate.
    self.step = tf.function(self._step, reduce_retracing=True)

  def _step(self, users, items, valid):
    """One batch; users, items int32 (B,), valid float32 (B,) (0 for padding). Returns loss sum."""
    batch = tf.shape(users)[0]
    groups = batch // self.share_negatives
    k = self.max_sampled
    draws = self.generator.uniform([groups, k], 0, self.n_candidates, dtype=tf.int32)
    neg_ids = tf.gather(self.candidates, draws)
    offsets = self.generator.uniform([batch], 0, k, dtype=tf.int32)
    user_vecs = tf.gather(self.user, users)
    pos_aug = tf.gather(self.item, items)
    user_aug = _augment(user_vecs)
    pos_scores = tf.reduce_sum(user_aug * pos_aug, axis=1)
    violator, position, found = _first_violators(user_aug, pos_scores, tf.gather(self.item, neg_ids),
                                                 neg_ids, offsets, self.members(users))
    # Only pairs with a violator move anything; after a few epochs that is a minority (~30 % by
    # epoch 10 on structured data), so the tape and the row updates see just those.
    keep = tf.where(found & (valid > 0))[:, 0]
    users, items, violator = (tf.gather(ids, keep) for ids in (users, items, violator))
    user_vecs, pos_aug = tf.gather(user_vecs, keep), tf.gather(pos_aug, keep)
    weight = _rank_weight(tf.gather(position, keep), self.n_candidates)
    viol_aug = tf.gather(self.item, violator)
    # The tape sees only the chosen pairs: the violator search (B x K scores, argmin) carries no
    # gradient, so differentiating it would only add two more B x K x d products of zeros.
    with tf.GradientTape() as tape:
      tape.watch([user_vecs, pos_aug, viol_aug])
      pair_loss = _pair_loss(_augment(user_vecs), pos_aug, viol_aug, weight)
      decay = 0.5 * self.l2 * (tf.reduce_sum(tf.square(user_vecs)) + tf.reduce_sum(tf.square(pos_aug))
                               + tf.reduce_sum(tf.square(viol_aug)))
      total = tf.reduce_sum(pair_loss) + decay
    grad_user, grad_pos, grad_viol = tape.gradient(total, [user_vecs, pos_aug, viol_aug])
    _sparse_step(self.user, self.user_acc, users, grad_user, self.learning_rate)
    _sparse_step(self.item, self.item_acc, tf.concat([items, violator], 0),
                 tf.concat([grad_pos, grad_viol], 0), self.learning_rate)
    return tf.reduce_sum(pair_loss)

  def factors(self):
    item = self.item.numpy()
    n_users = self.user.shape[0]
    return WarpFactors(item_factors=np.ascontiguousarray(item[:, :-1]), item_bias=item[:, -1].copy(),
                       user_factors=self.user.numpy(), user_bias=np.zeros(n_users, np.float32))


def auto_batch_size(n_memberships, share_negatives=DEFAULT_SHARE_NEGATIVES):
  """DEFAULT_BATCH_SIZE, or the multiple of share_negatives giving MIN_STEPS_PER_EPOCH steps."""
  fit = n_memberships // MIN_STEPS_PER_EPOCH // share_negatives * share_negatives
  return int(min(DEFAULT_BATCH_SIZE, max(share_negatives, fit)))


def _check_params(dim, epochs, max_sampled, learning_rate, batch_size, l2, share_negatives):
  for name, value in (("dim", dim), ("epochs", epochs), ("max_sampled", max_sampled),
                      ("share_negatives", share_negatives), ("batch_size", batch_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
  if not l2 >= 0:
    raise ValueError(f"l2 must be >= 0, got {l2!r}")
  if batch_size % share_negatives:
    raise ValueError(f"batch_size ({batch_size}) must be a multiple of share_negatives "
                     f"({share_negatives})")


def fit_warp(matrix, dim=300, epochs=50, max_sampled=40, learning_rate=0.05, batch_size=None, l2=0.0,
             seed=0, progress=True, optimizer="adagrad", share_negatives=DEFAULT_SHARE_NEGATIVES,
             on_epoch=None):
  """Fits WARP item (song) and user (playlist) factors to a binary song x playlist matrix.

  Defaults are the paper's LightFM settings (300 factors, 40 draws, Adagrad at 0.05, 50 epochs).
  Batches of 4096 positives with negatives shared by groups of 32 (see the module docstring) run a
  Melon-sized matrix (5.6M memberships) at dim 300 in 25 s for the first epoch and ~11 s for later
  ones (only pairs with a violator are updated) on two CPU cores, and reach the held-out recall of
  per-positive sampling (share_negatives=1) on structured synthetic playlists. The plain SGD option
  needs a smaller learning rate (~0.01): the rank weights reach 10 and diverge at 0.05.

  Args:
    matrix: scipy.sparse (n_songs, n_playlists), nonzero = the song is in the playlist. Songs or
      playlists without entries are allowed; their factors stay at the initialisation.
    dim: number of factors.
    epochs: passes over all memberships.
    max_sampled: negatives drawn per positive before giving up (LightFM's max_sampled).
    learning_rate: Adagrad (or SGD) learning rate.
    batch_size: positives per step, a multiple of share_negatives; None: DEFAULT_BATCH_SIZE, or
      less for small matrices so an epoch has at least MIN_STEPS_PER_EPOCH steps.
    l2: L2 weight decay on the rows each update touches (LightFM's item_alpha/user_alpha).
    seed: seeds initialisation, the epoch shuffles and the negative draws; same seed, same factors
      (on CPU).
    progress: show a tqdm bar over epochs with the epoch's mean loss.
    optimizer: "adagrad" (LightFM's default schedule) or "sgd".
    share_negatives: positives that share one draw of max_sampled negatives, each in its own
      rotated order; 1 = an independent draw per positive, as LightFM.
    on_epoch: optional fn(seconds, mean_loss) called after each epoch (the first epoch's seconds
      include tracing the step); benchmarks/warp.py times epochs with it.

  Returns:
    WarpFactors.

  Raises:
    ValueError: invalid matrix (see check_matrix), fewer than two songs with entries, or invalid
      parameters.
  """
  _check_params(dim, epochs, max_sampled, learning_rate,
                share_negatives if batch_size is None else batch_size, l2, share_negatives)
  if optimizer not in ("adagrad", "sgd"):
    raise ValueError(f"optimizer must be 'adagrad' or 'sgd', got {optimizer!r}")
  csr = check_matrix(matrix)
  coo = csr.tocoo()
  song_ids, playlist_ids = coo.row.astype(np.int32), coo.col.astype(np.int32)
  if batch_size is None:
    batch_size = auto_batch_size(song_ids.size, share_negatives)
  if np.unique(song_ids).size < 2:
    raise ValueError("matrix needs at least two songs with entries: WARP ranks songs against others")
  model = _WarpModel(csr, dim, max_sampled, learning_rate, optimizer == "adagrad", l2,
                     share_negatives, seed)
  rng = np.random.default_rng(seed)
  n_pos = song_ids.size
  n_steps = -(-n_pos // batch_size)
  start = time.perf_counter()
  bar = tqdm.trange(epochs, desc="WARP", unit="epoch", disable=not progress)
  for _ in bar:
    epoch_start = time.perf_counter()
    loss = _run_epoch(model, rng.permutation(n_pos), playlist_ids, song_ids, batch_size, n_steps)
    bar.set_postfix(loss=f"{loss / n_pos:.4f}")
    if on_epoch is not None:
      on_epoch(time.perf_counter() - epoch_start, loss / n_pos)
  seconds = time.perf_counter() - start
  # --verbosity=1 shows it; by default prepare's own summary (the WARP time, the matrix) says enough.
  logging.vlog(1, "WARP: %d songs (%d with entries) x %d playlists, %d memberships, dim %d, %d epochs "
               "in %.1f s (%.1f s/epoch), last epoch mean loss %.4f", csr.shape[0],
               model.n_candidates, csr.shape[1], n_pos, dim, epochs, seconds, seconds / epochs,
               loss / n_pos)
  return model.factors()


def fit_lightfm(matrix, dim=300, epochs=50, max_sampled=40, learning_rate=0.05, seed=0, threads=2,
                on_epoch=None):
  """The same WARP fit with LightFM (the authors' library; the `lightfm-next` fork builds on 3.11).

  The reference fit_warp is compared against (tests/test_warp.py, benchmarks/warp.py): LightFM's
  Hogwild SGD with one independent draw sequence per positive, Adagrad, no regularisation, as the
  authors ran it. Unlike fit_warp it also draws songs without entries as negatives and fits a
  playlist bias. With threads > 1 the updates race (Hogwild), so only threads=1 is reproducible.

  Args:
    matrix: scipy.sparse (n_songs, n_playlists) membership matrix.
    dim, epochs, max_sampled, learning_rate: as fit_warp (LightFM's no_components, max_sampled...).
    seed: LightFM's random_state.
    threads: LightFM's num_threads.
    on_epoch: optional fn(seconds) called after each epoch.

  Returns:
    WarpFactors (float32; item_bias and user_bias are LightFM's biases).

  Raises:
    ImportError: lightfm is not installed (pip install lightfm-next).
  """
  try:
    from lightfm import LightFM
  except ImportError as e:
    raise ImportError("fit_lightfm needs lightfm: pip install lightfm-next==1.19.0 (or the "
                      "'lightfm' extra of tfcmir)") from e
  _check_params(dim, epochs, max_sampled, learning_rate, 1, 0.0, 1)
  interactions = check_matrix(matrix).T.tocoo()  # LightFM wants users (playlists) x items (songs)
  model = LightFM(no_components=dim, loss="warp", max_sampled=max_sampled,
                  learning_rate=learning_rate, learning_schedule="adagrad", random_state=seed)
  for _ in range(epochs):
    start = time.perf_counter()
    model.fit_partial(interactions, epochs=1, num_threads=threads)
    if on_epoch is not None:
      on_epoch(time.perf_counter() - start)
  return WarpFactors(item_factors=model.item_embeddings.astype(np.float32),
                     item_bias=model.item_biases.astype(np.float32),
                     user_factors=model.user_embeddings.astype(np.float32),
                     user_bias=model.user_biases.astype(np.float32))


def _run_epoch(model, order, playlist_ids, song_ids, batch_size, n_steps):
  """One pass over the memberships in `order`; returns the summed WARP loss."""
  # Pad the last batch to full size (weight 0) so one traced graph serves every step.
  size = n_steps * batch_size
  users = np.resize(playlist_ids[order], size)
  items = np.resize(song_ids[order], size)
  valid = (np.arange(size) < order.size).astype(np.float32)
  total = 0.0
  for step in range(n_steps):
    batch = slice(step * batch_size, (step + 1) * batch_size)
    total += float(model.step(users[batch], items[batch], valid[batch]))
  return total


def holdout_split(matrix, fraction=0.2, seed=0):
  """Holds out a fraction of each playlist's songs, for evaluating a factorisation.

  Args:
    matrix: scipy.sparse (n_songs, n_playlists) membership matrix.
    fraction: share of each playlist's songs to hold out (rounded; at least 1 for playlists of 2+).
    seed: numpy seed.

  Returns:
    (train, test): binary float32 CSR matrices of the same shape whose entries partition matrix's.
  """
  if not 0 < fraction < 1:
    raise ValueError(f"fraction must be in (0, 1), got {fraction}")
  csc = check_matrix(matrix).tocsc()
  rng = np.random.default_rng(seed)
  lengths = np.diff(csc.indptr)
  n_test = np.where(lengths >= 2, np.maximum(1, np.round(lengths * fraction)), 0).astype(np.int64)
  # Random rank of each entry within its playlist; the n_test lowest ranks are held out.
  keys = np.repeat(np.arange(csc.shape[1]), lengths) + rng.random(csc.nnz)
  rank = np.empty(csc.nnz, np.int64)
  rank[np.argsort(keys, kind="stable")] = np.arange(csc.nnz) - np.repeat(csc.indptr[:-1], lengths)
  held = rank < np.repeat(n_test, lengths)
  rows, cols = csc.indices, np.repeat(np.arange(csc.shape[1]), lengths)

  def part(mask):
    return scipy.sparse.csr_matrix((np.ones(mask.sum(), np.float32), (rows[mask], cols[mask])),
                                   shape=csc.shape)

  return part(~held), part(held)


def recall_at_k(factors, train_matrix, test_matrix, k=50, users=None, chunk_floats=2**25):
  """Mean recall@k of held-out songs, ranking all songs not in the playlist's train songs.

  Args:
    factors: WarpFactors (or any object with the same four arrays).
    train_matrix: scipy.sparse (n_songs, n_playlists), the memberships the factors were fitted on.
    test_matrix: scipy.sparse (n_songs, n_playlists), held-out memberships.
    k: cut-off.
    users: optional int array of playlists to evaluate (default: all with held-out songs).
    chunk_floats: score-matrix size per chunk of playlists (memory bound, 128 MB by default).

  Returns:
    float: mean over evaluated playlists of |top-k ∩ held-out| / |held-out|.
  """
  train = check_matrix(train_matrix).T.tocsr()
  test = check_matrix(test_matrix).T.tocsr()
  n_items = train.shape[1]
  if not 0 < k < n_items:
    raise ValueError(f"k must be in [1, {n_items}), got {k}")
  has_test = np.flatnonzero(np.diff(test.indptr))
  users = has_test if users is None else np.intersect1d(np.asarray(users), has_test)
  if users.size == 0:
    raise ValueError("no playlist with held-out songs to evaluate")
  rows = max(1, chunk_floats // n_items)
  recalls = []
  for begin in range(0, users.size, rows):
    chunk = users[begin:begin + rows]
    scores = factors.scores(chunk).astype(np.float32)
    seen = train[chunk].tocoo()
    scores[seen.row, seen.col] = -np.inf  # train songs are no candidates
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    held = test[chunk]
    hits = np.asarray(held[np.arange(chunk.size)[:, None], top].sum(axis=1)).ravel()
    recalls.append(hits / np.diff(held.indptr))
  return float(np.mean(np.concatenate(recalls)))


def synthetic_playlists(n_songs, n_playlists, mean_length=30, n_clusters=12, zipf=0.8,
                        in_cluster=0.8, seed=0):
  """A song x playlist matrix with latent structure and long-tailed popularity (tests, benchmarks).

  Song i belongs to cluster i % n_clusters and has popularity rank i // n_clusters inside it (so
  overall popularity falls with i). Each playlist has a main and a second cluster; a membership is
  drawn from the main cluster with probability `in_cluster`, else from the second cluster or the
  whole catalogue (half each), always with Zipf(`zipf`) weights over popularity rank.

  Returns:
    binary float32 CSR (n_songs, n_playlists).
  """
  if n_songs < n_clusters:
    raise ValueError(f"need at least one song per cluster: {n_songs} songs, {n_clusters} clusters")
  rng = np.random.default_rng(seed)
  lengths = np.maximum(2, rng.poisson(mean_length, n_playlists))
  playlist = np.repeat(np.arange(n_playlists), lengths)
  main = rng.integers(0, n_clusters, n_playlists)[playlist]
  second = rng.integers(0, n_clusters, n_playlists)[playlist]
  u = rng.random(playlist.size)
  cluster = np.where(u < in_cluster, main, second)
  per_cluster = n_songs // n_clusters
  local = _zipf_draws(rng, per_cluster, zipf, playlist.size)
  songs = local * n_clusters + cluster
  anywhere = u > in_cluster + (1 - in_cluster) / 2
  songs[anywhere] = _zipf_draws(rng, n_songs, zipf, int(anywhere.sum()))
  matrix = scipy.sparse.csr_matrix((np.ones(songs.size, np.float32), (songs, playlist)),
                                   shape=(n_songs, n_playlists))
  matrix.data[:] = 1.0  # repeated draws of a song in one playlist are one membership
  return matrix


def _zipf_draws(rng, n, exponent, size):
  """Ranks in [0, n) with probability proportional to 1 / (rank + 1) ** exponent."""
  cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** exponent)
  return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[-1]), n - 1)
