"""`python -m tfcmir.train --flagfile=...`: trains the paper's model (or an ablation or a baseline).

Reads the shards of `tfcmir.prepare` (--tfrecord_dir), trains under a tf.distribute strategy
(MirroredStrategy over several visible GPUs, TensorFlow's default strategy on one device;
MultiWorkerMirroredStrategy when TF_CONFIG names several workers), and writes to --model_dir (default
runs/<mode>): config.json, checkpoints/, best.weights.h5, logs/ and history.json (tfcmir/train/loop.py).

Settings that follow the data: --batch_size, --conv_channels, --hidden_dim, --learning_rate,
--lr_schedule, --epochs and --early_stopping, where not given (on the command line or in a --flagfile),
are chosen from the size of the training split (tfcmir/train/sizing.py): the paper's values from
100,000 training songs up, a smaller encoder and batch, a larger learning rate and early stopping on a
small catalogue. The run prints what it chose and why.

Re-running the same command after a crash or a kill resumes from the latest checkpoint.
"""

from __future__ import annotations

import os

from absl import flags

from tfcmir import flags as tfcmir_flags
from tfcmir.train import loop, sizing

FLAGS = flags.FLAGS


def model_settings_from_flags():
  """contrastive.model_config's keyword arguments, as the flags say."""
  return {"channels": [int(c) for c in FLAGS.conv_channels], "kernel_size": FLAGS.kernel_size,
          "hidden_dim": FLAGS.hidden_dim, "embedding_dim": FLAGS.embedding_dim, "dropout": FLAGS.dropout,
          "attention_heads": FLAGS.attention_heads, "temperature": FLAGS.temperature,
          "lambdas": (FLAGS.lambda_a2g, FLAGS.lambda_a2p, FLAGS.lambda_g2p)}


def settings_from_flags():
  """loop.train's keyword arguments from `epochs` on, as the flags say."""
  return {"epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size, "learning_rate": FLAGS.learning_rate,
          "weight_decay": FLAGS.weight_decay, "seed": FLAGS.seed, "steps_per_epoch": FLAGS.steps_per_epoch,
          "early_stopping": FLAGS.early_stopping, "checkpoint_steps": FLAGS.checkpoint_steps,
          "keep_checkpoints": FLAGS.keep_checkpoints, "shuffle_buffer": FLAGS.shuffle_buffer,
          "jit_compile": FLAGS.jit_compile, "mixed_precision": FLAGS.mixed_precision,
          "overwrite": FLAGS.overwrite, "flags_used": tfcmir_flags.resolved(),
          "worker_timeout_s": FLAGS.worker_timeout_s, "verify_shards": FLAGS.verify_shards,
          "weight_decay_form": FLAGS.weight_decay_form}


def size_to_data(values=FLAGS):
  """Sets each sizing flag not given explicitly (on the command line or in a --flagfile) to
  sizing.choose's value for this training split, so that config.json records what ran; prints the
  table of what was chosen and why. Returns the training split's size."""
  from tfcmir import shards
  from tfcmir.model import contrastive

  n_train = shards.split_size(shards.read_manifest(values.tfrecord_dir), "train",
                              contrastive.mode_inputs(values.mode)["cf"])
  chosen = sizing.choose(n_train)
  rows = sizing.resolve(chosen, {name: values[name].value for name in chosen if values[name].present})
  for name, value, source, _ in rows:
    if source == "auto":
      setattr(values, name, [str(c) for c in value] if name == "conv_channels" else value)
  print(sizing.format_table(rows, n_train), flush=True)
  return n_train


def learning_rate(settings, n_train, schedule):
  """--learning_rate, or with --lr_schedule=cosine a cosine decay from it over the run's steps."""
  if schedule == "constant":
    return settings["learning_rate"]
  import keras

  steps = settings["steps_per_epoch"] or max(n_train // settings["batch_size"], 1)
  return keras.optimizers.schedules.CosineDecay(settings["learning_rate"], settings["epochs"] * steps,
                                                alpha=0.1)


def main(argv):
  model_dir = FLAGS.model_dir or os.path.join("runs", FLAGS.mode)
  n_train = size_to_data()
  settings = settings_from_flags()
  settings["learning_rate"] = learning_rate(settings, n_train, FLAGS.lr_schedule)
  print(loop.format_summary(*loop.run(FLAGS.tfrecord_dir, model_dir, FLAGS.mode,
                                      model_settings_from_flags(), settings)))
