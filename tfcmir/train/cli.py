"""`python -m tfcmir.train --flagfile=...`: trains the paper's model (or an ablation or a baseline).

Reads the shards of `tfcmir.prepare` (--tfrecord_dir), trains under a tf.distribute strategy
(MirroredStrategy over several visible GPUs, TensorFlow's default strategy on one device;
MultiWorkerMirroredStrategy when TF_CONFIG names several workers), and writes to --model_dir (default
runs/<mode>): config.json, checkpoints/, best.weights.h5, logs/ and history.json (tfcmir/train/loop.py).

Re-running the same command after a crash or a kill resumes from the latest checkpoint.
"""

from __future__ import annotations

import os

from absl import flags

from tfcmir import flags as tfcmir_flags
from tfcmir.train import loop

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


def main(argv):
  model_dir = FLAGS.model_dir or os.path.join("runs", FLAGS.mode)
  print(loop.format_summary(*loop.run(FLAGS.tfrecord_dir, model_dir, FLAGS.mode,
                                      model_settings_from_flags(), settings_from_flags())))
