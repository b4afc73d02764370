"""The checkpoint format of a model: what training saves and resumes (make_checkpoint), and what export
restores (load_trained)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfcmir import audio, safeio
from tfcmir.errors import InputError
from tfcmir.model import contrastive


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


def load_trained(checkpoint):
  """A run folder, a .weights.h5 file or a tf.train checkpoint prefix -> (model, config, weights path).

  A run folder gives its best-validation weights (best.weights.h5), else its latest checkpoint.
  """
  if os.path.isdir(checkpoint):
    run_dir = checkpoint
  elif checkpoint.endswith(".weights.h5"):
    run_dir = os.path.dirname(checkpoint)
  else:  # a tf.train prefix: RUN/checkpoints/ckpt-N
    run_dir = os.path.dirname(os.path.dirname(checkpoint))
  config_path = os.path.join(run_dir, "config.json")
  if not os.path.exists(config_path):
    raise InputError(f"{checkpoint}: no config.json in {run_dir}; point --checkpoint at a training "
                     "run folder (runs/NAME) or a file inside it")
  run = safeio.read_json(config_path)
  model = contrastive.build_model(run["model"])
  model.build_from_batch(dummy_batch(run["model"]))
  if os.path.isdir(checkpoint):
    best = os.path.join(checkpoint, "best.weights.h5")
    checkpoint = best if os.path.exists(best) else tf.train.latest_checkpoint(
        os.path.join(checkpoint, "checkpoints"))
    if checkpoint is None:
      raise InputError(f"{run_dir}: holds no weights yet (no best.weights.h5, no checkpoint)")
  if checkpoint.endswith(".weights.h5"):
    model.load_weights(checkpoint)
  else:
    make_checkpoint(model, None).restore(checkpoint).expect_partial()
  return model, run, checkpoint


def dummy_batch(model_config, batch=1, max_genres=10):
  return {"mel": np.zeros((batch, audio.PATCH_FRAMES, audio.NUM_BANDS), np.float32),
          "genres": np.zeros((batch, max_genres), np.int64),
          "cf": np.zeros((batch, model_config["cf_dim"]), np.float32)}
