"""The optimizer (Adam with the authors' L2 weight decay) and the precision policy of training."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfcmir.errors import InputError


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
