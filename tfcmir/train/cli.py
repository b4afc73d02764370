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


def _value(values, name, sized):
  """A setting as it runs: sizing's choice where `sized` holds one, else the flag's value."""
  return sized[name] if name in sized else values[name].value


def model_settings_from_flags(values=FLAGS, sized=None):
  """contrastive.model_config's keyword arguments, as the flags (and `sized`, plan()'s choices) say."""
  sized = sized or {}
  return {"channels": [int(c) for c in _value(values, "conv_channels", sized)],
          "kernel_size": values.kernel_size, "hidden_dim": _value(values, "hidden_dim", sized),
          "embedding_dim": values.embedding_dim, "dropout": values.dropout,
          "attention_heads": values.attention_heads, "temperature": values.temperature,
          "lambdas": (values.lambda_a2g, values.lambda_a2p, values.lambda_g2p)}


def settings_from_flags(values=FLAGS, sized=None):
  """loop.train's keyword arguments from `epochs` on, as the flags (and `sized`) say."""
  sized = sized or {}
  return {"epochs": _value(values, "epochs", sized), "batch_size": _value(values, "batch_size", sized),
          "learning_rate": _value(values, "learning_rate", sized), "weight_decay": values.weight_decay,
          "seed": values.seed, "steps_per_epoch": values.steps_per_epoch,
          "early_stopping": _value(values, "early_stopping", sized),
          "checkpoint_steps": values.checkpoint_steps, "keep_checkpoints": values.keep_checkpoints,
          "shuffle_buffer": values.shuffle_buffer, "jit_compile": values.jit_compile,
          "mixed_precision": values.mixed_precision, "overwrite": values.overwrite,
          "flags_used": {name: values[name].value for name in tfcmir_flags.resolved()},
          "worker_timeout_s": values.worker_timeout_s, "verify_shards": values.verify_shards,
          "weight_decay_form": values.weight_decay_form}


def plan(data, mode, values=FLAGS):
  """(model settings, loop.train settings, the chosen-settings table) for training `mode` on `data`
  (a loop.Data): sizing.choose's value for each sizing flag not given explicitly (on the command line
  or in a --flagfile), the flags' values everywhere else. config.json's flags record what ran."""
  from tfcmir.model import contrastive

  n_train = data.size("train", contrastive.mode_inputs(mode)["cf"])
  given = {name: values[name].value for name in sizing.PAPER if values[name].present}
  rows = sizing.resolve(sizing.choose(n_train), given)
  sized = {name: value for name, value, source, _ in rows if source == "auto"}
  settings = settings_from_flags(values, sized)
  settings["flags_used"].update(
      {name: [str(c) for c in v] if name == "conv_channels" else v for name, v in sized.items()},
      mode=mode)
  schedule = _value(values, "lr_schedule", sized)
  settings["learning_rate"] = learning_rate(settings, n_train, schedule)
  return model_settings_from_flags(values, sized), settings, sizing.format_table(rows, n_train)


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
  data = loop.Data.read(FLAGS.tfrecord_dir)
  model_settings, settings, table = plan(data, FLAGS.mode)
  print(table, flush=True)
  print(loop.format_summary(*loop.run(FLAGS.tfrecord_dir, model_dir, FLAGS.mode, model_settings,
                                      settings, data=data)))
