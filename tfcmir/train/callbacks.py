"""Keras callbacks of a training run: crash-safe checkpoints and best weights, TensorBoard scalars."""

from __future__ import annotations

import math
import os

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfcmir import safeio


class NonFiniteLoss(RuntimeError):
  pass


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
      # Written whole: a temporary name that keeps the ".weights.h5" suffix Keras insists on.
      with safeio.atomic_path(os.path.join(self.model_dir, "best.weights.h5")) as temporary:
        self.model.save_weights(temporary)
      self.state.update(best_val_loss=float(val), best_epoch=epoch + 1)
    self.checkpoint.epoch.assign(epoch + 1)
    self.manager.save()
    self.state.setdefault("history", []).append(
        {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
    safeio.write_json(os.path.join(self.model_dir, "history.json"), self.state)


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
