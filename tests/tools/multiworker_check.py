"""A few training steps of the demo model on one fixed global batch, on one worker or on the workers of
TF_CONFIG (MultiWorkerMirroredStrategy, through tfcmir.train's own Cluster and make_strategy).

  python multiworker_check.py TFRECORD_DIR OUT.npz   -> the chief writes the trained weights to OUT.npz

Each worker feeds its replicas their rows of the global batch (as tfcmir.train's input pipelines do with
their part of the shards), so the run with two workers must end with the weights of the run with one.
"""
import sys

import keras
import numpy as np
import tensorflow as tf

from tfcmir.train import cluster as cluster_lib
from tfcmir.train import pipeline
from tfcmir import shards
from tfcmir.model import contrastive
from tfcmir.prepare import genres

GLOBAL_BATCH, STEPS = 16, 3


def main(tfrecord_dir, out):
  cluster = cluster_lib.Cluster()
  strategy = cluster_lib.make_strategy(cluster, timeout_s=120)
  manifest = shards.read_manifest(tfrecord_dir)
  table = genres.GenreVectors.load(tfrecord_dir).table
  config = contrastive.model_config("contr_cf_g", table.shape, manifest["schema"]["cf_dim"],
                                    channels=[4, 4, 8, 8, 8, 8, 16], hidden_dim=32, embedding_dim=16,
                                    dropout=0.0)
  config["genre"].update(dropout=0.0, attention_dropout=0.0)  # dropout masks differ per worker
  batch = next(iter(pipeline.dataset(tfrecord_dir, "train", GLOBAL_BATCH, training=False,
                                     only_with_cf=True)))
  batch = {k: v.numpy() for k, v in batch.items()}

  def replica_rows(context):
    size = context.get_per_replica_batch_size(GLOBAL_BATCH)
    # One pipeline per worker; its replicas take its consecutive per-replica batches.
    local = GLOBAL_BATCH // context.num_input_pipelines
    start = context.input_pipeline_id * local
    rows = {k: v[start:start + local] for k, v in batch.items()}
    return tf.data.Dataset.from_tensors(rows).unbatch().batch(size).repeat()

  with strategy.scope():
    keras.utils.set_random_seed(1)
    model = contrastive.build_model(config, table)
    model.build_from_batch({k: v[:2] for k, v in batch.items()})
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.optimizer.build(model.trainable_variables)
  initial = {f"initial{i}": w.numpy() for i, w in enumerate(model.trainable_variables)}
  history = model.fit(strategy.distribute_datasets_from_function(replica_rows), epochs=STEPS,
                      steps_per_epoch=1, verbose=0)  # an epoch a step: the loss of each step
  if cluster.is_chief:
    np.savez(out, loss=np.asarray(history.history["loss"], np.float64), **initial,
             **{f"w{i}": w.numpy() for i, w in enumerate(model.trainable_variables)})


if __name__ == "__main__":
  main(*sys.argv[1:3])
