"""Fidelity to the authors' training: L2 weight decay, the float16 loss scale, the genre probe."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcmir.model import checkpoint as checkpoint_lib
from tfcmir.train import loop
from tfcmir.train import optimizer as optimizer_lib
from tfcmir.train import probe
from tfcmir.model import contrastive

TINY = dict(channels=[4, 4, 8, 8, 8, 8, 16], hidden_dim=32, embedding_dim=16)


def _numpy_adam(w, grads, lr, l2=0.0, decoupled=0.0, b1=0.9, b2=0.999, eps=1e-7):
  """Keras' Adam step in NumPy; `l2`: torch's Adam(weight_decay) (into the gradient), `decoupled`:
  Keras' weight_decay (w -= lr * wd * w before the step)."""
  w, m, v = np.array(w, np.float64), 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    w = w - lr * decoupled * w
    g = np.asarray(g, np.float64) + l2 * w
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    w = w - alpha * m / (np.sqrt(v) + eps)
  return w


@pytest.mark.parametrize("form", ["l2", "decoupled", "none"])
def test_weight_decay_forms_match_numpy(form):
  w0 = np.array([0.5, -0.3, 0.2, 0.0], np.float32)
  grads = [np.array([0.1, 0.0, -0.2, 0.05], np.float32), np.array([-0.05, 0.0, 0.1, 0.0], np.float32)]
  lr, decay = 0.1, 0.05
  variable = keras.Variable(w0)
  optimizer = optimizer_lib.make_optimizer(lr, decay, form)
  for g in grads:
    optimizer.apply([tf.constant(g)], [variable])
  expected = _numpy_adam(w0, grads, lr, l2=decay if form == "l2" else 0.0,
                         decoupled=decay if form == "decoupled" else 0.0)
  np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-4, atol=1e-5)  # float32 arithmetic
  # Where the gradient is 0, only L2 moves a weight by a full Adam step (-lr * sign(w)).
  if form == "l2":
    assert variable.numpy()[1] == pytest.approx(-0.3 + 2 * lr, abs=0.01)


def test_l2_is_the_default():
  from absl import flags
  from tfcmir import flags as _  # noqa: F401
  assert flags.FLAGS["weight_decay_form"].default == "l2"
  assert isinstance(optimizer_lib.make_optimizer(1e-4, 1e-4), optimizer_lib.AdamL2)


def _tiny(tfrecord_dir, manifest):
  from tfcmir.prepare import genres
  table = genres.GenreVectors.load(tfrecord_dir).table
  return contrastive.model_config("contr_cf_g", table.shape, manifest["schema"]["cf_dim"], **TINY)


def test_float16_loss_scale_is_built_checkpointed_and_resumed(small_prepared, tmp_path):
  """mixed_float16 forced on the CPU: the LossScaleOptimizer is what is checkpointed and restored."""
  _, tfrecord_dir, manifest = small_prepared
  config, run_dir = _tiny(tfrecord_dir, manifest), str(tmp_path / "run")
  kwargs = dict(batch_size=32, learning_rate=1e-3, weight_decay=1e-4, steps_per_epoch=2, verbose=0,
                mixed_precision="mixed_float16")
  try:
    summary = loop.train(tfrecord_dir, run_dir, config, epochs=1, **kwargs)
    optimizer = summary["model"].optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    keys = [name for name, _ in tf.train.list_variables(latest)]
    assert any("optimizer" in k and "dynamic_scale" in k for k in keys), keys
    # A loss scale no run reaches on its own (it only halves or doubles from 2^15) ...
    checkpoint = checkpoint_lib.make_checkpoint(summary["model"], optimizer)
    checkpoint.restore(latest).assert_consumed()
    optimizer.dynamic_scale.assign(3.0)
    tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"), 5).save()
    # ... comes back on resume: the scale after two more steps is 3 times a power of two.
    resumed = loop.train(tfrecord_dir, run_dir, config, epochs=2, **kwargs)
    assert resumed["resumed_from_epoch"] == 1 and resumed["policy"] == "mixed_float16"
    scale = float(resumed["model"].optimizer.dynamic_scale.numpy())
    assert np.log2(scale / 3.0) == pytest.approx(round(np.log2(scale / 3.0)))
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_probe_is_skipped_with_a_reason_when_too_small():
  assert probe.probe_problem(np.array([1, 1, 1, 2, 2, 3])) == (
      "6 songs, 0 genre(s) with >= 5 songs; the 5-fold probe needs two")
  assert probe.probe_problem(np.array([1] * 5 + [2] * 5)) is None
  assert "skipped" in loop.format_summary(
      {"mode": "contr_cf_g", "model_dir": "r", "epochs": 1, "seconds": 1, "songs_per_second": 1,
       "replicas": 1, "policy": "float32", "resumed_from_epoch": None, "best_val_loss": None},
      {"skipped": "test split: 3 songs"})


def test_probe_uses_the_best_weights(small_prepared, tmp_path):
  _, tfrecord_dir, manifest = small_prepared
  config, run_dir = _tiny(tfrecord_dir, manifest), str(tmp_path / "run")
  summary = loop.train(tfrecord_dir, run_dir, config, epochs=1, batch_size=32, learning_rate=1e-3,
                        weight_decay=1e-4, steps_per_epoch=2, verbose=0)
  model = summary["model"]
  kernel = model.audio_encoder.trainable_variables[0]
  kernel.assign(tf.zeros_like(kernel))  # as if the last epoch had wrecked the weights
  result = loop.genre_probe(model, config, tfrecord_dir, run_dir)
  assert "trained" in result
  best = contrastive.build_model(config)
  best.build_from_batch(checkpoint_lib.dummy_batch(config))
  best.load_weights(os.path.join(run_dir, "best.weights.h5"))
  np.testing.assert_array_equal(kernel.numpy(), best.audio_encoder.trainable_variables[0].numpy())
  assert np.any(kernel.numpy() != 0)


def test_export_takes_the_run_s_own_genre_vocabulary(tmp_path):
  import json
  from tfcmir import export
  from tfcmir.errors import InputError
  own, other, same = (tmp_path / n for n in ("own", "other", "copy"))
  for folder, fingerprint in ((own, "abc"), (other, "xyz"), (same, "abc")):
    folder.mkdir()
    (folder / "genre_vocab.json").write_text(json.dumps({"GN01": 1}))
    (folder / "manifest.json").write_text(json.dumps({"fingerprint": fingerprint}))
  run = {"data": {"tfrecord_dir": str(own), "fingerprint": "abc"}}
  assert export.genre_vocab_of(run) == str(own / "genre_vocab.json")
  assert export.genre_vocab_of(run, str(same)) == str(same / "genre_vocab.json")  # same preparation
  with pytest.raises(InputError, match="not the data the run was trained on"):
    export.genre_vocab_of(run, str(other))
