"""The training run: open the run folder, build the datasets and the model, restore, fit.

`train(...)` is flag-free: `python -m tfcmir.train` (tfcmir/train/cli.py), the demo job and the tests call
it with plain arguments. It writes to `model_dir`:

  config.json          the model's description and the flags of the run
  checkpoints/         the latest model + optimizer checkpoints (tf.train.CheckpointManager)
  best.weights.h5      the weights of the best validation loss, written whole (temp file + rename)
  logs/train, logs/val TensorBoard scalars (tf.summary)
  history.json         the metrics of every epoch

Re-running the same call after a crash or a kill resumes from the latest checkpoint: the epoch
counter, the weights and the optimizer state come back; an epoch interrupted between checkpoints is
run again from its start (with checkpoint_steps, from the weights of its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from tfcmir import safeio, shards
from tfcmir.errors import InputError
from tfcmir.model import checkpoint as checkpoint_lib
from tfcmir.model import contrastive
from tfcmir.train import callbacks as callbacks_lib
from tfcmir.train import cluster as cluster_lib
from tfcmir.train import optimizer as optimizer_lib
from tfcmir.train import pipeline, probe

# What a run writes into --model_dir (workers other than the chief: a hidden scratch folder each);
# --overwrite removes these and nothing else.
RUN_FILES = ("config.json", "history.json", "best.weights.h5", "checkpoints", "logs")
_SCRATCH = re.compile(r"^\.(worker|chief|ps|evaluator)-\d+$")


@dataclasses.dataclass
class Data:
  """A prepared folder as training sees it: its manifest and genre table, read once and passed down."""
  tfrecord_dir: str
  manifest: dict
  genre_table: object  # float32 (genres + 1, dim)

  @classmethod
  def read(cls, tfrecord_dir):
    return cls(tfrecord_dir, shards.read_manifest(tfrecord_dir), shards.genre_table(tfrecord_dir)[1])

  @property
  def cf_dim(self):
    return self.manifest["schema"]["cf_dim"]

  def size(self, split, with_cf):
    return shards.split_size(self.manifest, split, with_cf)


def _corrupt_shard(tfrecord_dir, err):
  """A DataLossError met mid-epoch (which names no shard) -> one InputError naming the shard."""
  bad = shards.find_corrupt_shards(tfrecord_dir)
  if bad:
    return InputError(f"{bad[0]}; training stopped (--verify_shards=records checks every shard "
                      "before training)")
  first = err.message.strip().splitlines()[0] if err.message.strip() else type(err).__name__
  return InputError(f"{tfrecord_dir}: a shard could not be read during training ({first})")


def open_run(model_dir, config, overwrite):
  """Checks that `model_dir` is ours and holds this model on this data (or replaces it with
  --overwrite), then writes config.json."""
  safeio.check_ours(model_dir, ("config.json",), "training run (--model_dir)")
  safeio.clean_leftovers(model_dir)
  path = os.path.join(model_dir, "config.json")
  if os.path.exists(path) and not overwrite:
    previous = safeio.read_json(path)
    if previous.get("model") != config["model"] or previous.get("data") != config["data"]:
      raise InputError(f"{model_dir}: holds a run of another model or data; use --overwrite to "
                       "replace it, or another --model_dir")
  elif overwrite and os.path.isdir(model_dir):
    safeio.remove_ours(model_dir, RUN_FILES + tuple(n for n in os.listdir(model_dir) if _SCRATCH.match(n)))
  os.makedirs(model_dir, exist_ok=True)
  safeio.write_json(path, dict(config, written_by=safeio.WRITTEN_BY))


def make_datasets(strategy, data, with_cf, batch_size, seed, shuffle_buffer, verify_shards,
                  steps_per_epoch=0):
  """(train dataset, steps per epoch, val dataset or None, val steps), distributed by `strategy`.

  Training repeats with a fixed number of steps per epoch: the progress bar knows its length, and the
  shuffle runs on across epoch boundaries. Each worker builds its own input pipeline over its part of
  the shards (pipeline.dataset's input_context), batched per replica.
  """
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise InputError(f"--batch_size={batch_size} must be a multiple of the {replicas} replicas")
  n_train, n_val = data.size("train", with_cf), data.size("val", with_cf)
  if n_train < batch_size:
    raise InputError(f"{data.tfrecord_dir}: {n_train} training songs, fewer than one batch of {batch_size}")
  common = {"only_with_cf": with_cf, "verify": verify_shards, "manifest": data.manifest}
  train_ds = strategy.distribute_datasets_from_function(
      lambda context: pipeline.dataset(
          data.tfrecord_dir, "train", context.get_per_replica_batch_size(batch_size), training=True,
          seed=seed, shuffle_buffer=shuffle_buffer, repeat=True, input_context=context, **common))
  val_batch = min(batch_size, n_val // replicas * replicas)
  val_steps = n_val // val_batch if val_batch else 0
  val_ds = None
  if val_steps:
    # The same first val_steps x val_batch songs on any number of workers, so the losses compare.
    val_ds = strategy.distribute_datasets_from_function(
        lambda context: pipeline.dataset(
            data.tfrecord_dir, "val", context.get_per_replica_batch_size(val_batch), training=False,
            drop_remainder=True, input_context=context, take_batches=val_steps, **common))
  return train_ds, steps_per_epoch or n_train // batch_size, val_ds, val_steps


def build(strategy, data, model_config, learning_rate, weight_decay, weight_decay_form, jit_compile):
  """(model, its checkpoint): built on a real batch and compiled, under `strategy`."""
  with strategy.scope():
    model = contrastive.build_model(model_config, data.genre_table)
    try:
      model.build_from_batch(next(iter(pipeline.dataset(data.tfrecord_dir, "train", 2, training=False,
                                                        verify="none", manifest=data.manifest))))
    except tf.errors.DataLossError as err:
      raise _corrupt_shard(data.tfrecord_dir, err) from err
    model.compile(optimizer=optimizer_lib.make_optimizer(learning_rate, weight_decay, weight_decay_form),
                  jit_compile=jit_compile)
    # The optimizer the model really uses: under mixed_float16 compile wraps Adam in a
    # LossScaleOptimizer. Built here (not by fit's first batch, a symbolic build whose dict-batch
    # reduce fails under multi-worker) and checkpointed, so the dynamic loss scale survives a resume.
    model.optimizer.build(model.trainable_variables)
    return model, checkpoint_lib.make_checkpoint(model, model.optimizer)


def restore(checkpoint, model_dir):
  """Restores the latest checkpoint of the run, if any; returns the history state it belongs to."""
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  if not latest:
    return {}
  checkpoint.restore(latest).assert_consumed()
  restored_epoch = int(checkpoint.epoch.numpy())
  state = {}
  state_path = os.path.join(model_dir, "history.json")
  if os.path.exists(state_path):
    state = safeio.read_json(state_path)
    # Epochs after the restored checkpoint (a crash between the two writes) are dropped.
    state["history"] = [h for h in state.get("history", []) if h["epoch"] <= restored_epoch]
  logging.info("resuming from %s (epoch %d)", latest, restored_epoch)
  return state


def fit(model, datasets, epochs, initial_epoch, callbacks, cluster, data, manager, model_dir, verbose):
  """model.fit, with its failures turned into one line each (a corrupt shard, a non-finite loss, a
  lost worker)."""
  train_ds, steps, val_ds, val_steps = datasets
  try:
    # shuffle=False: the dataset shuffles itself; Keras would only warn that it ignores the flag.
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
              steps_per_epoch=steps, validation_steps=val_steps or None, callbacks=callbacks,
              shuffle=False, verbose=verbose if cluster.is_chief else 0)
  except tf.errors.DataLossError as err:
    raise _corrupt_shard(data.tfrecord_dir, err) from err
  except callbacks_lib.NonFiniteLoss as err:
    raise InputError(f"{err}; training stopped. The last good checkpoint is kept: "
                     f"{manager.latest_checkpoint or 'none yet'} (lower --learning_rate, or check "
                     "the data)") from err
  except cluster_lib.LOST_PEER as err:
    if not cluster.multi_worker:
      raise
    raise _lost_peer(cluster, err, model_dir) from err


def _lost_peer(cluster, err, model_dir):
  """A collective that failed because a peer died -> one InputError naming what to do."""
  return InputError(
      f"{cluster.task_type} {cluster.task_id}: lost contact with another worker of the "
      f"{cluster.tasks}-task cluster ({cluster_lib.peer_error(err)}). Training stopped; "
      f"start every worker again with the same command to resume from the latest checkpoint in "
      f"{os.path.join(model_dir, 'checkpoints')}")


def train(tfrecord_dir, model_dir, model_config, epochs, batch_size, learning_rate, weight_decay,
          seed=0, steps_per_epoch=0, early_stopping=0, checkpoint_steps=0, keep_checkpoints=3,
          shuffle_buffer=2048, jit_compile=False, mixed_precision=False, overwrite=False,
          flags_used=None, verbose="auto", worker_timeout_s=0, verify_shards="size",
          weight_decay_form="l2", data=None):
  """Trains; returns a summary dict.

  Under a multi-worker TF_CONFIG every worker runs this with the same arguments; `batch_size` is the
  global batch, split over all replicas of all workers. `data`: the folder's Data, if already read.
  """
  started = time.time()
  data = data or Data.read(tfrecord_dir)
  manifest = data.manifest
  if model_config["cf_dim"] != data.cf_dim:
    raise InputError(f"{tfrecord_dir}: shards hold CF vectors of {data.cf_dim} "
                     f"dimensions, the model expects {model_config['cf_dim']} (--cf_dim)")
  with_cf = contrastive.mode_inputs(model_config["mode"])["cf"]
  cluster = cluster_lib.Cluster()
  if cluster.is_chief:
    # Before the strategy: its constructor waits for every worker, so no worker reads the checkpoints
    # before the chief has replaced them (--overwrite).
    open_run(model_dir, {"model": model_config,
                         "data": {"tfrecord_dir": os.path.abspath(tfrecord_dir),
                                  "fingerprint": manifest["fingerprint"]},
                         "frontend": shards.frontend_of(manifest), "flags": flags_used or {}}, overwrite)
  keras.utils.set_random_seed(seed)
  policy = optimizer_lib.set_precision(mixed_precision)
  strategy = cluster_lib.make_strategy(cluster, worker_timeout_s)
  write_dir = cluster.write_dir(model_dir)
  os.makedirs(write_dir, exist_ok=True)
  datasets = make_datasets(strategy, data, with_cf, batch_size, seed, shuffle_buffer, verify_shards,
                           steps_per_epoch)
  try:  # building runs collectives too (variables are broadcast from the chief)
    model, checkpoint = build(strategy, data, model_config, learning_rate, weight_decay,
                              weight_decay_form, jit_compile)
  except cluster_lib.LOST_PEER as err:
    if not cluster.multi_worker:
      raise
    raise _lost_peer(cluster, err, model_dir) from err
  # Every worker saves (a save may read variables collectively), each into its own folder; all of them
  # resume from the chief's latest checkpoint (the run's folder must be shared storage).
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"),
                                       max_to_keep=1 if not cluster.is_chief else keep_checkpoints)
  state = restore(checkpoint, model_dir)
  initial_epoch = int(checkpoint.epoch.numpy())
  callbacks = [callbacks_lib.Checkpoints(write_dir, checkpoint, manager, checkpoint_steps, state)]
  if cluster.is_chief:
    callbacks.append(callbacks_lib.Scalars(os.path.join(model_dir, "logs")))
  if early_stopping and datasets[2] is not None:
    callbacks.append(keras.callbacks.EarlyStopping("val_loss", patience=early_stopping))
  if initial_epoch < epochs:
    fit(model, datasets, epochs, initial_epoch, callbacks, cluster, data, manager, model_dir, verbose)
  if not cluster.is_chief:
    shutil.rmtree(write_dir, ignore_errors=True)  # a scratch copy of the chief's files
  elapsed = time.time() - started
  history = state.get("history", [])
  trained_epochs = len(history) - sum(h["epoch"] <= initial_epoch for h in history)
  return {"model_dir": model_dir, "mode": model_config["mode"], "epochs": len(history),
          "chief": cluster.is_chief, "task": f"{cluster.task_type} {cluster.task_id}"
          if cluster.multi_worker else None,
          "resumed_from_epoch": initial_epoch or None,
          "best_val_loss": state.get("best_val_loss"), "best_epoch": state.get("best_epoch"),
          "final": history[-1] if history else None, "replicas": strategy.num_replicas_in_sync,
          "policy": policy, "seconds": round(elapsed, 1),
          "songs_per_second": round(trained_epochs * datasets[1] * batch_size / max(elapsed, 1e-9), 1),
          "model": model}


def genre_probe(model, config, tfrecord_dir, model_dir, seed=0, manifest=None):
  """The held-out genre probe on the best weights (those export ships), or {'skipped': reason}."""
  manifest = manifest or shards.read_manifest(tfrecord_dir)
  if not manifest["counts"]["songs"].get("test"):
    return {"skipped": "the test split is empty"}
  best = os.path.join(model_dir, "best.weights.h5")
  if os.path.exists(best):
    model.load_weights(best)
  return probe.held_out_genre_probe(model, config, tfrecord_dir, seed=seed, manifest=manifest)


def run(tfrecord_dir, model_dir, mode, model_settings, settings, data=None):
  """Trains `mode` on a prepared folder and probes it: (summary, held-out genre probe or None).

  `model_settings`: contrastive.model_config's keyword arguments (channels, kernel_size, ...).
  `settings`: train()'s keyword arguments from `epochs` on. `data`: the folder's Data, if already read.
  """
  data = data or Data.read(tfrecord_dir)
  config = contrastive.model_config(mode, data.genre_table.shape, data.cf_dim, **model_settings)
  summary = train(tfrecord_dir, model_dir, config, **settings, data=data)
  if not summary["chief"]:
    return summary, None  # the chief reports for the cluster
  return summary, genre_probe(summary["model"], config, tfrecord_dir, model_dir,
                              settings.get("seed", 0), data.manifest)


def format_summary(summary, result=None):
  lines = [f"trained {summary['mode']} in {summary['model_dir']}: {summary['epochs']} epochs, "
           f"{summary['seconds']} s, {summary['songs_per_second']} songs/s, {summary['replicas']} "
           f"replica(s), {summary['policy']}"]
  if summary.get("task"):
    lines[0] += f" ({summary['task']}{', chief' if summary['chief'] else ''})"
  if summary["resumed_from_epoch"]:
    lines.append(f"resumed from epoch {summary['resumed_from_epoch']}")
  if summary["best_val_loss"] is not None:
    lines.append(f"best validation loss {summary['best_val_loss']:.4f} at epoch "
                 f"{summary['best_epoch']} (best.weights.h5)")
  if result and "skipped" in result:
    lines.append(f"genre probe skipped: {result['skipped']}")
  elif result:
    lines.append(f"held-out test songs, genre from audio embeddings (logistic regression, 5-fold "
                 f"x{probe.REPEATS}): trained {result['trained']:.3f}, untrained {result['untrained']:.3f}, "
                 f"chance {result['chance']:.3f}")
  return "\n".join(lines)
