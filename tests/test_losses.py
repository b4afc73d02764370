"""NT-Xent (eq. 9-12) against a float64 NumPy transcription of the paper, plus hand-worked cases."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfcmir.model import losses


def reference_nt_xent(psi_a, psi_b, tau):
  """Eq. 9-12 word for word, in float64, with explicit loops: returns the M per-anchor terms."""
  psi_a = np.asarray(psi_a, np.float64)
  psi_b = np.asarray(psi_b, np.float64)
  m = len(psi_a)
  sim = lambda a, b: a @ b / (np.linalg.norm(a) * np.linalg.norm(b))  # eq. 11
  xi = lambda a, b: math.exp(sim(a, b) / tau)  # eq. 10
  zeta = lambda k: psi_a[k] if k < m else psi_b[k - m]  # eq. 12 (0-based k)
  terms = []
  for i in range(m):
    denominator = sum(xi(psi_a[i], zeta(k)) for k in range(2 * m) if k != i)
    terms.append(-math.log(xi(psi_a[i], psi_b[i]) / denominator))
  return np.array(terms)


def reference_pair_loss(x, y, tau):
  return reference_nt_xent(x, y, tau).sum() + reference_nt_xent(y, x, tau).sum()


def random_pair(m, d, seed):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((m, d)).astype(np.float32), rng.standard_normal((m, d)).astype(np.float32)


@pytest.mark.parametrize("m,d", [(1, 3), (2, 2), (5, 8), (16, 32)])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_the_equations(m, d, tau):
  a, b = random_pair(m, d, seed=m * 100 + d)
  np.testing.assert_allclose(losses.nt_xent(a, b, tau).numpy(), reference_nt_xent(a, b, tau),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(losses.pair_loss(a, b, tau).numpy(), reference_pair_loss(a, b, tau),
                             rtol=1e-5)


def test_hand_computed_identity_pairs():
  # a = b = [[1, 0], [0, 1]], tau = 1. Anchor a_1 (itself excluded) sees a_2 (cos 0), b_1 (cos 1,
  # the positive) and b_2 (cos 0):
  #   L_1 = -log(e / (e^0 + e^1 + e^0)) = log(2 + e) - 1 = 0.551445; by symmetry L_2 = L_1.
  # L_{a,b} = 2 * 0.551445 = 1.102889 and pair_loss = L_{a,b} + L_{b,a} = 2.205779.
  eye = np.eye(2, dtype=np.float32)
  np.testing.assert_allclose(losses.nt_xent(eye, eye, 1.0).numpy(), [0.551445, 0.551445], rtol=1e-5)
  np.testing.assert_allclose(losses.pair_loss(eye, eye, 1.0).numpy(), 2.205779, rtol=1e-5)


def test_hand_computed_asymmetric_pairs():
  # a = [[1, 0], [0, 1]], b = [[1, 1], [0, 1]], tau = 0.5, so logits are 2 * cos.
  # Anchor a_1: a_2 -> 0, b_1 -> 2 / sqrt(2) = 1.414214 (positive), b_2 -> 0:
  #   L_1 = log(1 + e^1.414214 + 1) - 1.414214 = log(6.113250) - 1.414214 = 0.396245.
  # Anchor a_2: a_1 -> 0, b_1 -> 1.414214, b_2 -> 2 (positive):
  #   L_2 = log(1 + e^1.414214 + e^2) - 2 = log(12.502306) - 2 = 0.525913.
  a = np.array([[1, 0], [0, 1]], np.float32)
  b = np.array([[1, 1], [0, 1]], np.float32)
  np.testing.assert_allclose(losses.nt_xent(a, b, 0.5).numpy(), [0.396245, 0.525913], rtol=1e-5)


@pytest.mark.parametrize("m", [3, 8])
def test_replica_halves_sum_to_the_global_batch(m):
  a, b = random_pair(2 * m, 16, seed=m)
  full = losses.pair_loss(a, b, 0.1).numpy()
  halves = [losses.pair_loss(a[s:s + m], b[s:s + m], 0.1, global_x=a, global_y=b, offset=s).numpy()
            for s in (0, m)]
  np.testing.assert_allclose(sum(halves), full, rtol=1e-5)
  per_anchor = np.concatenate([losses.nt_xent(a[s:s + m], b[s:s + m], 0.1, a, b, tf.constant(s))
                               for s in (0, m)])
  np.testing.assert_allclose(per_anchor, losses.nt_xent(a, b, 0.1).numpy(), rtol=1e-5)


def test_gradients_are_finite_even_for_degenerate_rows():
  a, b = random_pair(6, 8, seed=1)
  a[1] = a[0]  # duplicate rows
  b[2] = 0.0  # a zero embedding (cosine undefined: l2_normalize's epsilon keeps it finite)
  a, b = tf.Variable(a), tf.Variable(b)
  with tf.GradientTape() as tape:
    loss = losses.pair_loss(a, b, 0.1)
  grads = tape.gradient(loss, [a, b])
  assert np.isfinite(loss.numpy())
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_perfect_alignment_is_far_below_random():
  m, tau = 8, 0.1
  aligned = np.eye(m, 16, dtype=np.float32)  # orthogonal rows, each paired with itself
  # Each anchor: positive logit 10, the 2m - 2 others 0: L_i = log(1 + 14 e^-10) ~ 6e-4.
  aligned_loss = losses.pair_loss(aligned, aligned, tau).numpy()
  random_loss = losses.pair_loss(*random_pair(m, 16, seed=7), tau).numpy()
  assert aligned_loss < 0.02
  assert random_loss > 2 * m * 1.0  # about log(2m - 1) = 2.7 per anchor
  # float32 logsumexp(10, 0, ...) - 10 keeps ~1e-6 absolute per anchor, hence atol, not rtol.
  np.testing.assert_allclose(aligned_loss, 2 * m * math.log1p(14 * math.exp(-10)), atol=2e-5)


def test_invariant_to_input_scale():
  a, b = random_pair(5, 8, seed=3)
  scales = np.array([[0.01], [1.0], [3.0], [100.0], [7.5]], np.float32)
  np.testing.assert_allclose(losses.nt_xent(a * scales, b * 42.0, 0.2).numpy(),
                             losses.nt_xent(a, b, 0.2).numpy(), rtol=1e-5)


def test_float16_inputs_give_float32_losses():
  a, b = random_pair(4, 8, seed=4)
  out = losses.pair_loss(tf.constant(a, tf.float16), tf.constant(b, tf.float16), 0.1)
  assert out.dtype == tf.float32
  np.testing.assert_allclose(out.numpy(), reference_pair_loss(a, b, 0.1), rtol=1e-2)
