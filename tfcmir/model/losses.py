"""NT-Xent, the contrastive loss of the paper (section 2.2, eq. 9-12), as plain functions.

For paired batches psi_a, psi_b of M rows, zeta = concat(psi_a, psi_b) (2M rows) and

  L_{a,b} = sum_i -log( exp(sim(a_i, b_i) / tau) / sum_{k != i} exp(sim(a_i, zeta_k) / tau) ),

with sim the cosine similarity; the denominator holds the positive b_i and every other row of both
batches, only a_i itself is left out. A pair of modalities is aligned with L_{a,b} + L_{b,a}.

The paper sums over the anchors (the authors' code averages over the 2M rows instead, i.e. divides the
pair loss by 2M); `nt_xent` returns the per-anchor terms so a caller can do either.

Multi-replica training: each replica passes its local rows as anchors and the rows gathered from all
replicas as candidates, with `offset` the index of its first row in the gathered batch. Summing the
replicas' losses then gives exactly the single-device loss of the global batch.
"""

from __future__ import annotations

import tensorflow as tf

# Logit for the excluded self-similarity: exp() of it is exactly 0 in float32, and unlike -inf it keeps
# the softmax and its gradient free of inf - inf.
_EXCLUDED = -1e9


def nt_xent(anchors, others, temperature=0.1, global_anchors=None, global_others=None, offset=0):
  """Per-anchor NT-Xent losses for LOCAL anchors against the GLOBAL candidates (eq. 9 without the sum).

  Args:
    anchors: float (m, d) local rows of psi_a.
    others: float (m, d) local rows of psi_b, paired row by row with `anchors`.
    temperature: tau.
    global_anchors: float (M, d) rows of psi_a gathered from all replicas; default `anchors`.
    global_others: float (M, d) rows of psi_b gathered from all replicas; default `others`.
    offset: int (scalar, may be a tensor) index of this replica's first row in the global batch.

  Returns:
    float32 (m,) losses; row i's positive is global_others[offset + i], its excluded self is
    global_anchors[offset + i]. Any scale of the inputs gives the same losses (cosine similarity).
  """
  anchors = _unit_rows(anchors)
  global_anchors = anchors if global_anchors is None else _unit_rows(global_anchors)
  global_others = _unit_rows(others if global_others is None else global_others)
  inv_tau = 1.0 / float(temperature)
  to_anchors = tf.matmul(anchors, global_anchors, transpose_b=True) * inv_tau  # (m, M)
  to_others = tf.matmul(anchors, global_others, transpose_b=True) * inv_tau  # (m, M)

  rows = tf.range(tf.shape(anchors)[0]) + tf.cast(offset, tf.int32)
  own = tf.one_hot(rows, tf.shape(global_anchors)[0], on_value=True, off_value=False)  # (m, M)
  # tf.where, not an added mask: the excluded logit gets neither a value nor a gradient.
  to_anchors = tf.where(own, tf.constant(_EXCLUDED, tf.float32), to_anchors)
  positives = tf.gather(to_others, rows, batch_dims=1)  # (m,): sim(a_i, b_i) / tau
  denominators = tf.reduce_logsumexp(tf.concat([to_anchors, to_others], axis=1), axis=1)
  return denominators - positives


def pair_loss(x, y, temperature=0.1, global_x=None, global_y=None, offset=0):
  """L_{x,y} + L_{y,x}, summed over the local anchors (a scalar), e.g. L_A2G for x = phi_a, y = phi_w.

  Args:
    x, y: float (m, d) local paired rows of the two modalities.
    temperature: tau.
    global_x, global_y: float (M, d) rows gathered from all replicas; default the local ones.
    offset: index of this replica's first row in the global batch.

  Returns:
    float32 scalar.
  """
  forward = nt_xent(x, y, temperature, global_x, global_y, offset)
  backward = nt_xent(y, x, temperature, global_y, global_x, offset)
  return tf.reduce_sum(forward) + tf.reduce_sum(backward)


def _unit_rows(x):
  # float32 whatever the model's compute dtype: the logits reach 1 / tau and go through exp.
  return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)
