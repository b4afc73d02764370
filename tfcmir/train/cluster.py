"""Where this training process stands: its TF_CONFIG cluster, and the tf.distribute strategy for it."""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from tfcmir.errors import InputError


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


def peer_error(err):
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
LOST_PEER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
              tf.errors.CancelledError, tf.errors.InternalError)
