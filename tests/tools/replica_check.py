"""One replica vs two on the same global batch: loss, gradients and one optimizer step.

Run in its own process (the CPU must be split into two logical devices before TensorFlow starts):
  python replica_check.py MODE   -> prints a JSON line {"loss_1": .., "loss_2": .., "grad_rel": .., ...}
"""
import json
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from tfcmir.model import contrastive  # noqa: E402

BATCH = 16


def make_batch(rng, vocab, cf_dim):
  genres = np.zeros((BATCH, 10), np.int64)
  for i in range(BATCH):
    k = rng.integers(1, 4)
    genres[i, :k] = rng.choice(np.arange(1, vocab), size=k, replace=False)
  return {"mel": rng.normal(-80, 15, (BATCH, 256, 48)).astype(np.float32), "genres": genres,
          "cf": rng.normal(0, 0.3, (BATCH, cf_dim)).astype(np.float32),
          "has_cf": np.ones(BATCH, np.int64), "song_id": np.arange(BATCH, dtype=np.int64)}


def main(mode):
  rng = np.random.default_rng(0)
  table = rng.normal(0, 1, (12, 16)).astype(np.float32)
  config = contrastive.model_config(mode, table.shape, 24, channels=[4, 4, 8, 8, 8, 8, 16],
                                    hidden_dim=32, embedding_dim=16, dropout=0.0)
  config["genre"].update(dropout=0.0, attention_dropout=0.0)  # dropout draws differ per replica
  batch = make_batch(rng, table.shape[0], 24)
  results = {}
  weights = None
  for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
      keras.utils.set_random_seed(1)
      model = contrastive.build_model(config, table)
      model.build_from_batch({k: v[:2] for k, v in batch.items()})
      if weights is None:
        weights = [w.numpy() for w in model.weights]
      else:
        for w, value in zip(model.weights, weights):
          w.assign(value)
      model.compile(optimizer=keras.optimizers.SGD(0.01))
      model.optimizer.build(model.trainable_variables)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch))
    per_replica = next(iter(dataset))

    def loss_and_grads(b):
      with tf.GradientTape() as tape:
        total = tf.add_n(list(model.compute_losses(b, training=True).values()))
      # Dense copies: the embedding table gets IndexedSlices.
      return total, [tf.convert_to_tensor(g) for g in tape.gradient(total, model.trainable_variables)]

    # Inside tf.function, as in training: collectives and their gradients run as graph ops.
    loss, grads = tf.function(lambda b: strategy.run(loss_and_grads, args=(b,)))(per_replica)
    loss = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
    grads = [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]
    before = [w.numpy() for w in model.trainable_variables]
    tf.function(lambda b: strategy.run(model.train_step, args=(b,)))(per_replica)
    results[len(devices)] = (float(loss), [g.numpy() for g in grads],
                             [w.numpy() - b for w, b in zip(model.trainable_variables, before)])
  (l1, g1, w1), (l2, g2, w2) = results[1], results[2]
  def rel(x, y):  # over all variables at once: single near-zero gradients carry only rounding
    x, y = np.concatenate([a.ravel() for a in x]), np.concatenate([b.ravel() for b in y])
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))
  grad_rel = rel(g1, g2)
  # The optimizer's update (new minus old weights) of one SGD step, one replica vs two.
  step_rel = rel(w1, w2)
  if "-v" in sys.argv:
    for v, a, b in zip(model.trainable_variables, g1, g2):
      print(v.path, np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))
  print(json.dumps({"loss_1": l1, "loss_2": l2, "grad_rel": float(grad_rel),
                    "update_rel": float(step_rel), "variables": len(g1)}))


if __name__ == "__main__":
  main(sys.argv[1])
