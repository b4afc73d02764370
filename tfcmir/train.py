"""`python -m tfcmir.train --flagfile=...`: trains the paper's model (or an ablation or a baseline).

Reads the shards of `tfcmir.prepare` (--tfrecord_dir), trains under a tf.distribute strategy
(MirroredStrategy over several visible GPUs, TensorFlow's default strategy on one device;
MultiWorkerMirroredStrategy when TF_CONFIG names several workers), and writes to --model_dir (default runs/<mode>):

  config.json          the model's description and the flags of the run
  checkpoints/         the latest model + optimizer checkpoints (tf.train.CheckpointManager)
  best.weights.h5      the weights of the best validation loss, written whole (temp file + rename)
  logs/train, logs/val TensorBoard scalars (tf.summary)
  history.json         the metrics of every epoch

Re-running the same command after a crash or a kill resumes from the latest checkpoint: the epoch
counter, the weights and the optimizer state come back; an epoch interrupted between checkpoints is
run again from its start (with --checkpoint_steps, from the weights of its last checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time

import keras
import tensorflow as tf
from absl import flags, logging
from tensorflow.core.framework import summary_pb2

from tfcmir import flags as tfcmir_flags
from tfcmir import safeio
from tfcmir.data import pipeline
from tfcmir.data.corpus import InputError
from tfcmir.model import contrastive, probe
from tfcmir.prepare import genres as genres_lib

FLAGS = flags.FLAGS


class NonFiniteLoss(RuntimeError):
  pass


class Cluster:
  """This process's place in a TF_CONFIG cluster (https://www.tensorflow.org/guide/distributed_training).

  TF_CONFIG='{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker",
  "index": 0}}' on every machine, with its own index. The chief (task 'chief', else worker 0) writes
  the run's files; the other workers write their checkpoints to a scratch folder that is removed.
  """

  def __init__(self, environ=None):
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    try:
      config = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as err:
      raise InputError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]}") from err
    cluster = config.get("cluster", {})
    self.tasks = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    task = config.get("task", {})
    self.task_type, self.task_id = task.get("type"), int(task.get("index", 0))
    if self.tasks > 1 and self.task_type not in ("chief", "worker"):
      raise InputError(f"TF_CONFIG: task type {self.task_type!r} of a {self.tasks}-task cluster: "
                       "tfcmir.train runs as 'chief' or 'worker'")
    self.is_chief = (self.tasks <= 1 or self.task_type == "chief" or
                     (self.task_type == "worker" and self.task_id == 0 and "chief" not in cluster))

  @property
  def multi_worker(self):
    return self.tasks > 1

  def write_dir(self, model_dir):
    """Where this process writes: the run's folder (chief), else a scratch folder inside it."""
    return model_dir if self.is_chief else os.path.join(model_dir, f".{self.task_type}-{self.task_id}")


def _peer_error(err):
  """The line of a collective's error that says what happened to the peer (TensorFlow's is long)."""
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  for i, line in enumerate(lines):
    if re.search(r"unhealthy|heartbeat|timed out|deadline|connect|unavailable|socket", line, re.I):
      if line.endswith(":") and i + 1 < len(lines):  # 'tasks are unhealthy ...:' then the task
        line = f"{line} {lines[i + 1]}"
      return f"{type(err).__name__}: {line[:300]}"
  return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


def make_strategy(cluster=None, timeout_s=0):
  """MultiWorkerMirroredStrategy when TF_CONFIG names several tasks, MirroredStrategy over several
  local GPUs, else TensorFlow's default strategy (one device: the GPU, or the CPU).

  One device gets the default strategy because MirroredStrategy costs time there and mirrors
  nothing: measured on the demo (2-core AVX-512 CPU), it adds 1-9 s between an epoch's last step and
  its validation, 40 % of the epoch.

  `cluster`: a Cluster (default: this process's, from TF_CONFIG).

  `timeout_s` bounds every cross-worker collective, so a lost worker fails the run instead of
  hanging it (the coordination service's heartbeats catch a dead process on their own as well).
  """
  cluster = cluster or Cluster()
  if cluster.multi_worker:
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s or None)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  if len(tf.config.list_logical_devices("GPU")) > 1:
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


# What TensorFlow raises in a worker whose peer died or stopped answering.
_LOST_PEER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
              tf.errors.CancelledError, tf.errors.InternalError)


def set_precision(mixed):
  """bfloat16 on CPUs, float16 (with loss scaling) on GPUs; variables and losses stay float32.

  `mixed`: False, True (the device decides), or a Keras policy name to force one (tests).
  """
  if not mixed:
    keras.mixed_precision.set_global_policy("float32")
    return "float32"
  policy = mixed if isinstance(mixed, str) else (
      "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16")
  keras.mixed_precision.set_global_policy(policy)
  return policy


@keras.saving.register_keras_serializable(package="tfcmir")
class AdamL2(keras.optimizers.Adam):
  """Adam with L2 weight decay as torch's Adam(weight_decay=l2) does it: l2 * w joins the gradient
  before the moments (the authors' optimizer), unlike Keras' decoupled `weight_decay`, which at the
  paper's lr 1e-4 shrinks weights by only lr * 1e-4 = 1e-8 a step.

  Added in `update_step`, which sees each variable's gradient after the replicas' gradients are
  combined (and after loss-scale unscaling), so the decay does not scale with the replica count.
  """

  def __init__(self, l2=0.0, **kwargs):
    super().__init__(**kwargs)
    self.l2 = float(l2)

  def update_step(self, gradient, variable, learning_rate):
    if self.l2:
      gradient = gradient + self.l2 * keras.ops.cast(variable, gradient.dtype)
    super().update_step(gradient, variable, learning_rate)

  def get_config(self):
    return dict(super().get_config(), l2=self.l2)


WEIGHT_DECAY_FORMS = ("l2", "decoupled", "none")


def make_optimizer(learning_rate, weight_decay, form="l2"):
  """Adam with `weight_decay` in the authors' L2 form, Keras' decoupled form, or none."""
  if form not in WEIGHT_DECAY_FORMS:
    raise InputError(f"weight decay form must be one of {WEIGHT_DECAY_FORMS}, got {form!r}")
  if form == "l2" and weight_decay:
    return AdamL2(l2=weight_decay, learning_rate=learning_rate)
  if form == "decoupled" and weight_decay:
    return keras.optimizers.Adam(learning_rate, weight_decay=weight_decay)
  return keras.optimizers.Adam(learning_rate)


def _write_atomic(path, write):
  with safeio.atomic_path(path) as temporary:  # keeps the ".weights.h5" suffix Keras insists on
    write(temporary)


def _save_json(path, obj):
  safeio.write_json(path, obj)


class Checkpoints(keras.callbacks.Callback):
  """Latest checkpoints (model, optimizer, epoch) and the best-validation weights, crash-safe."""

  def __init__(self, model_dir, checkpoint, manager, every_steps, state):
    super().__init__()
    self.model_dir = model_dir
    self.checkpoint = checkpoint
    self.manager = manager
    self.every_steps = every_steps
    self.state = state
    self.epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
      raise NonFiniteLoss(f"non-finite loss ({loss}) at epoch {self.epoch + 1}, step {batch + 1}")
    if self.every_steps and (batch + 1) % self.every_steps == 0:
      self.checkpoint.epoch.assign(self.epoch)  # the epoch is not finished: it will run again
      self.manager.save()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    if not all(math.isfinite(float(v)) for v in logs.values()):
      raise NonFiniteLoss(f"non-finite metrics at the end of epoch {epoch + 1}: {logs}")
    val = logs.get("val_loss")
    if val is not None and val < self.state.get("best_val_loss", math.inf):
      _write_atomic(os.path.join(self.model_dir, "best.weights.h5"), self.model.save_weights)
      self.state.update(best_val_loss=float(val), best_epoch=epoch + 1)
    self.checkpoint.epoch.assign(epoch + 1)
    self.manager.save()
    self.state.setdefault("history", []).append(
        {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
    _save_json(os.path.join(self.model_dir, "history.json"), self.state)


# What tensorboard's own scalar summary writes: TensorBoard shows these in its Scalars dashboard. Written
# with the core tf.summary.write, since tf.summary.scalar needs the tensorboard package installed.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()


class Scalars(keras.callbacks.Callback):
  """Epoch metrics to TensorBoard event files (logs/train, logs/val)."""

  def __init__(self, log_dir):
    super().__init__()
    self.writers = {k: tf.summary.create_file_writer(os.path.join(log_dir, k))
                    for k in ("train", "val")}

  def on_epoch_end(self, epoch, logs=None):
    for key, value in (logs or {}).items():
      writer = self.writers["val" if key.startswith("val_") else "train"]
      with writer.as_default():
        tf.summary.write(key.removeprefix("val_"), tf.constant(float(value), tf.float32),
                         step=epoch + 1, metadata=_SCALAR_METADATA)
    for writer in self.writers.values():
      writer.flush()


def make_checkpoint(model, optimizer):
  """A tf.train.Checkpoint of every model variable (by path), the optimizer and the epoch.

  The variables are listed explicitly: layers kept in Python lists (the conv blocks) are tracked by
  Keras but not by tf.train.Checkpoint's object graph, which would silently leave them out.
  """
  # Keyed by path below the model (its own name varies with how many models a process built). The
  # dropout RNG states are left out: their names carry a per-process counter, and a resumed run
  # simply draws new dropout masks.
  parts = {"weights": {v.path.split("/", 1)[-1]: v for v in model.variables
                       if "seed_generator" not in v.path},
           "epoch": tf.Variable(0, dtype=tf.int64, trainable=False)}
  if optimizer is not None:  # None: restoring weights only (export)
    parts["optimizer"] = optimizer
  return tf.train.Checkpoint(**parts)


# What a run writes into --model_dir (workers other than the chief: a hidden scratch folder each);
# --overwrite removes these and nothing else.
RUN_FILES = ("config.json", "history.json", "best.weights.h5", "checkpoints", "logs")
_SCRATCH = re.compile(r"^\.(worker|chief|ps|evaluator)-\d+$")


def _corrupt_shard(tfrecord_dir, err):
  """A DataLossError met mid-epoch (which names no shard) -> one InputError naming the shard."""
  bad = pipeline.find_corrupt_shards(tfrecord_dir)
  if bad:
    return InputError(f"{bad[0]}; training stopped (--verify_shards=records checks every shard "
                      "before training)")
  first = err.message.strip().splitlines()[0] if err.message.strip() else type(err).__name__
  return InputError(f"{tfrecord_dir}: a shard could not be read during training ({first})")


def frontend_of(manifest):
  """The front-end kwargs (tfcmir.audio) that made, or match, a preparation's mels: its level.

  Manifests from before the level was recorded hold mels of the front end's default.
  """
  return {"level": manifest.get("mel_level", {}).get("level", "essentia")}


def _check_run(model_dir, config, overwrite):
  safeio.check_ours(model_dir, ("config.json",), "training run (--model_dir)")
  safeio.clean_leftovers(model_dir)
  path = os.path.join(model_dir, "config.json")
  if os.path.exists(path) and not overwrite:
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    if previous.get("model") != config["model"] or previous.get("data") != config["data"]:
      raise InputError(f"{model_dir}: holds a run of another model or data; use --overwrite to "
                       "replace it, or another --model_dir")
  elif overwrite and os.path.isdir(model_dir):
    safeio.remove_ours(model_dir, RUN_FILES + tuple(n for n in os.listdir(model_dir) if _SCRATCH.match(n)))
  os.makedirs(model_dir, exist_ok=True)
  _save_json(path, dict(config, written_by=safeio.WRITTEN_BY))


def train(tfrecord_dir, model_dir, model_config, epochs, batch_size, learning_rate, weight_decay,
          seed=0, steps_per_epoch=0, early_stopping=0, checkpoint_steps=0, keep_checkpoints=3,
          shuffle_buffer=2048, jit_compile=False, mixed_precision=False, overwrite=False,
          flags_used=None, verbose="auto", worker_timeout_s=0, verify_shards="size",
          weight_decay_form="l2"):
  """Trains; returns a summary dict. Flag-free: tests and other entry points call it directly.

  Under a multi-worker TF_CONFIG every worker runs this with the same arguments; `batch_size` is the
  global batch, split over all replicas of all workers.
  """
  started = time.time()
  manifest = pipeline.read_manifest(tfrecord_dir)
  if model_config["cf_dim"] != manifest["schema"]["cf_dim"]:
    raise InputError(f"{tfrecord_dir}: shards hold CF vectors of {manifest['schema']['cf_dim']} "
                     f"dimensions, the model expects {model_config['cf_dim']} (--cf_dim)")
  cluster = Cluster()
  if cluster.is_chief:
    # Before the strategy: its constructor waits for every worker, so no worker reads the checkpoints
    # before the chief has replaced them (--overwrite).
    _check_run(model_dir, {"model": model_config,
                           "data": {"tfrecord_dir": os.path.abspath(tfrecord_dir),
                                    "fingerprint": manifest["fingerprint"]},
                           "frontend": frontend_of(manifest), "flags": flags_used or {}}, overwrite)
  keras.utils.set_random_seed(seed)
  policy = set_precision(mixed_precision)
  strategy = make_strategy(cluster, worker_timeout_s)
  write_dir = cluster.write_dir(model_dir)
  os.makedirs(write_dir, exist_ok=True)
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise InputError(f"--batch_size={batch_size} must be a multiple of the {replicas} replicas")
  with_cf = contrastive.mode_inputs(model_config["mode"])["cf"]
  n_train = pipeline.split_size(manifest, "train", with_cf)
  n_val = pipeline.split_size(manifest, "val", with_cf)
  if n_train < batch_size:
    raise InputError(f"{tfrecord_dir}: {n_train} training songs, fewer than one batch of {batch_size}")
  val_batch = min(batch_size, n_val // replicas * replicas)
  # Repeated, with a fixed number of steps per epoch: the progress bar knows its length, and the
  # shuffle runs on across epoch boundaries. Each worker builds its own input pipeline over its part of
  # the shards (tfcmir.data.pipeline.dataset's input_context), batched per replica.
  steps = steps_per_epoch or n_train // batch_size
  train_ds = strategy.distribute_datasets_from_function(
      lambda context: pipeline.dataset(
          tfrecord_dir, "train", context.get_per_replica_batch_size(batch_size), training=True,
          seed=seed, shuffle_buffer=shuffle_buffer, repeat=True, only_with_cf=with_cf,
          input_context=context, verify=verify_shards))
  val_steps = n_val // val_batch if val_batch else 0
  val_ds = None
  if val_steps:
    # The same first val_steps x val_batch songs on any number of workers, so the losses compare.
    val_ds = strategy.distribute_datasets_from_function(
        lambda context: pipeline.dataset(
            tfrecord_dir, "val", context.get_per_replica_batch_size(val_batch), training=False,
            drop_remainder=True, only_with_cf=with_cf, input_context=context,
            take_batches=val_steps, verify=verify_shards))
  table = genres_lib.GenreVectors.load(tfrecord_dir).table
  with strategy.scope():
    model = contrastive.build_model(model_config, table)
    try:
      model.build_from_batch(next(iter(pipeline.dataset(tfrecord_dir, "train", 2, training=False,
                                                        verify="none"))))
    except tf.errors.DataLossError as err:
      raise _corrupt_shard(tfrecord_dir, err) from err
    model.compile(optimizer=make_optimizer(learning_rate, weight_decay, weight_decay_form),
                  jit_compile=jit_compile)
    # The optimizer the model really uses: under mixed_float16 compile wraps Adam in a
    # LossScaleOptimizer. Built here (not by fit's first batch, a symbolic build whose dict-batch
    # reduce fails under multi-worker) and checkpointed, so the dynamic loss scale survives a resume.
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    checkpoint = make_checkpoint(model, optimizer)
  # Every worker saves (a save may read variables collectively), each into its own folder; all of them
  # resume from the chief's latest checkpoint (the run's folder must be shared storage).
  manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "checkpoints"),
                                       max_to_keep=1 if not cluster.is_chief else keep_checkpoints)
  latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  state_path = os.path.join(model_dir, "history.json")
  state = {}
  if latest:
    checkpoint.restore(latest).assert_consumed()
    restored_epoch = int(checkpoint.epoch.numpy())
    if os.path.exists(state_path):
      with open(state_path, encoding="utf-8") as f:
        state = json.load(f)
      # Epochs after the restored checkpoint (a crash between the two writes) are dropped.
      state["history"] = [h for h in state.get("history", []) if h["epoch"] <= restored_epoch]
    logging.info("resuming from %s (epoch %d)", latest, restored_epoch)
  initial_epoch = int(checkpoint.epoch.numpy())
  callbacks = [Checkpoints(write_dir, checkpoint, manager, checkpoint_steps, state)]
  if cluster.is_chief:
    callbacks.append(Scalars(os.path.join(model_dir, "logs")))
  if early_stopping and val_ds is not None:
    callbacks.append(keras.callbacks.EarlyStopping("val_loss", patience=early_stopping))
  resumed = initial_epoch > 0
  if initial_epoch < epochs:
    try:
      # shuffle=False: the dataset shuffles itself; Keras would only warn that it ignores the flag.
      model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                steps_per_epoch=steps, validation_steps=val_steps or None, callbacks=callbacks,
                shuffle=False, verbose=verbose if cluster.is_chief else 0)
    except tf.errors.DataLossError as err:
      raise _corrupt_shard(tfrecord_dir, err) from err
    except NonFiniteLoss as err:
      raise InputError(f"{err}; training stopped. The last good checkpoint is kept: "
                       f"{manager.latest_checkpoint or 'none yet'} (lower --learning_rate, or check "
                       "the data)") from err
    except _LOST_PEER as err:
      if not cluster.multi_worker:
        raise
      raise InputError(
          f"{cluster.task_type} {cluster.task_id}: lost contact with another worker of the "
          f"{cluster.tasks}-task cluster ({_peer_error(err)}). Training stopped; "
          f"start every worker again with the same command to resume from the latest checkpoint in "
          f"{os.path.join(model_dir, 'checkpoints')}") from err
  if not cluster.is_chief:
    shutil.rmtree(write_dir, ignore_errors=True)  # a scratch copy of the chief's files
  elapsed = time.time() - started
  history = state.get("history", [])
  trained_epochs = len(history) - sum(h["epoch"] <= initial_epoch for h in history)
  return {"model_dir": model_dir, "mode": model_config["mode"], "epochs": len(history),
          "chief": cluster.is_chief, "task": f"{cluster.task_type} {cluster.task_id}"
          if cluster.multi_worker else None,
          "resumed_from_epoch": initial_epoch if resumed else None,
          "best_val_loss": state.get("best_val_loss"), "best_epoch": state.get("best_epoch"),
          "final": history[-1] if history else None, "replicas": replicas, "policy": policy,
          "seconds": round(elapsed, 1),
          "songs_per_second": round(trained_epochs * steps * batch_size / max(elapsed, 1e-9), 1),
          "model": model}


def model_config_from_flags(manifest, tfrecord_dir):
  table_shape = genres_lib.GenreVectors.load(tfrecord_dir).table.shape
  return contrastive.model_config(
      FLAGS.mode, table_shape, manifest["schema"]["cf_dim"],
      channels=[int(c) for c in FLAGS.conv_channels], kernel_size=FLAGS.kernel_size,
      hidden_dim=FLAGS.hidden_dim, embedding_dim=FLAGS.embedding_dim, dropout=FLAGS.dropout,
      attention_heads=FLAGS.attention_heads, temperature=FLAGS.temperature,
      lambdas=(FLAGS.lambda_a2g, FLAGS.lambda_a2p, FLAGS.lambda_g2p))


def run():
  """Trains as the flags say; returns (summary, held-out genre probe)."""
  tfrecord_dir = FLAGS.tfrecord_dir
  model_dir = FLAGS.model_dir or os.path.join("runs", FLAGS.mode)
  manifest = pipeline.read_manifest(tfrecord_dir)
  config = model_config_from_flags(manifest, tfrecord_dir)
  summary = train(tfrecord_dir, model_dir, config, FLAGS.epochs, FLAGS.batch_size,
                  FLAGS.learning_rate, FLAGS.weight_decay, FLAGS.seed, FLAGS.steps_per_epoch,
                  FLAGS.early_stopping, FLAGS.checkpoint_steps, FLAGS.keep_checkpoints,
                  FLAGS.shuffle_buffer, FLAGS.jit_compile, FLAGS.mixed_precision, FLAGS.overwrite,
                  tfcmir_flags.resolved(), worker_timeout_s=FLAGS.worker_timeout_s,
                  verify_shards=FLAGS.verify_shards, weight_decay_form=FLAGS.weight_decay_form)
  if not summary["chief"]:
    return summary, None  # the chief reports for the cluster
  return summary, genre_probe(summary["model"], config, tfrecord_dir, manifest, model_dir, FLAGS.seed)


def genre_probe(model, config, tfrecord_dir, manifest, model_dir, seed=0):
  """The held-out genre probe on the best weights (those export ships), or {'skipped': reason}."""
  if not manifest["counts"]["songs"].get("test"):
    return {"skipped": "the test split is empty"}
  best = os.path.join(model_dir, "best.weights.h5")
  if os.path.exists(best):
    model.load_weights(best)
  return probe.held_out_genre_probe(model, config, tfrecord_dir, seed=seed)


def main(argv):
  print(format_summary(*run()))


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
    lines.append(f"held-out test songs, genre from audio embeddings (logistic regression, 5-fold): "
                 f"trained {result['trained']:.3f}, untrained {result['untrained']:.3f}, "
                 f"chance {result['chance']:.3f}")
  return "\n".join(lines)


if __name__ == "__main__":
  tfcmir_flags.run_main(main)
