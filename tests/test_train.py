"""Training: every mode trains, one replica equals two, kills resume, non-finite losses stop cleanly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import HERE, ROOT
from tfcmir.model import checkpoint as checkpoint_lib
from tfcmir.train import loop
from tfcmir.errors import InputError
from tfcmir.model import contrastive, tasks

TINY = dict(channels=[4, 4, 8, 8, 8, 8, 16], hidden_dim=32, embedding_dim=16)


def tiny_config(mode, tfrecord_dir, manifest):
  from tfcmir.prepare import genres
  table = genres.GenreVectors.load(tfrecord_dir).table
  return contrastive.model_config(mode, table.shape, manifest["schema"]["cf_dim"], **TINY)


@pytest.mark.parametrize("mode", contrastive.MODES)
def test_each_mode_trains_and_writes_a_checkpoint(small_prepared, tmp_path, mode):
  _, tfrecord_dir, manifest = small_prepared
  model_dir = str(tmp_path / mode)
  summary = loop.train(tfrecord_dir, model_dir, tiny_config(mode, tfrecord_dir, manifest), epochs=1,
                        batch_size=32, learning_rate=1e-3, weight_decay=1e-4, steps_per_epoch=2,
                        verbose=0)
  assert summary["epochs"] == 1 and np.isfinite(summary["final"]["loss"])
  expected = {"contr_cf_g": {"a2g", "a2p", "g2p"}, "contr_g": {"a2g"}, "contr_cf": {"a2p"},
              "bline_g": {"genre"}, "bline_cf": {"cf"}, "bline_cf_g": {"genre", "cf"}}[mode]
  assert expected | {"loss"} <= set(summary["final"]) and f"val_{sorted(expected)[0]}" in summary["final"]
  assert os.path.exists(os.path.join(model_dir, "checkpoints", "checkpoint"))
  assert os.path.exists(os.path.join(model_dir, "best.weights.h5"))
  assert json.load(open(os.path.join(model_dir, "config.json")))["model"]["mode"] == mode
  assert os.listdir(os.path.join(model_dir, "logs", "train"))  # TensorBoard event files


@pytest.mark.parametrize("mode", ["contr_cf_g", "bline_cf_g"])
def test_one_replica_and_two_give_the_same_loss_and_gradients(mode):
  """The CPU split into two logical devices: the global batch's loss, gradients and SGD update agree."""
  result = subprocess.run([sys.executable, os.path.join(HERE, "tools", "replica_check.py"), mode],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  check = json.loads(result.stdout.strip().splitlines()[-1])
  assert check["loss_2"] == pytest.approx(check["loss_1"], rel=1e-5)
  # float32 sums in another order (synchronized batch norm, gathered embeddings): ~1e-4 at most.
  assert check["grad_rel"] < 5e-4 and check["update_rel"] < 5e-4


def test_replica_gather_is_the_identity_on_one_replica():
  import tensorflow as tf
  x = tf.ones([3, 2])
  gathered, offset = tasks.gather_replicas(x)
  assert gathered is x and offset == 0


def test_killed_training_resumes_from_its_checkpoint(small_prepared, tmp_path):
  _, tfrecord_dir, _ = small_prepared
  model_dir = str(tmp_path / "run")
  args = [sys.executable, "-m", "tfcmir.train", "--flagfile=configs/demo.flags",
          f"--tfrecord_dir={tfrecord_dir}", f"--model_dir={model_dir}", "--epochs=4",
          "--steps_per_epoch=3", "--batch_size=32", "--conv_channels=4,4,8,8,8,8,16",
          "--hidden_dim=32", "--embedding_dim=16", "--cf_dim=32"]
  process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
  index = os.path.join(model_dir, "checkpoints", "checkpoint")
  deadline = time.time() + 300
  while not os.path.exists(index) and time.time() < deadline and process.poll() is None:
    time.sleep(0.2)
  os.killpg(process.pid, signal.SIGKILL)  # mid-run, as a crash or a pre-empted machine would
  process.wait(timeout=60)
  assert os.path.exists(index), "no checkpoint was written before the kill"
  history = json.load(open(os.path.join(model_dir, "history.json")))["history"]
  assert 1 <= len(history) < 4
  rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resumed from epoch" in rerun.stdout
  epochs = [h["epoch"] for h in json.load(open(os.path.join(model_dir, "history.json")))["history"]]
  assert epochs == [1, 2, 3, 4]  # nothing lost, nothing trained twice


def test_non_finite_loss_stops_with_a_message_and_keeps_the_checkpoint(small_prepared, tmp_path,
                                                                       monkeypatch):
  import tensorflow as tf
  _, tfrecord_dir, manifest = small_prepared
  model_dir = str(tmp_path / "nan")
  config = tiny_config("bline_cf", tfrecord_dir, manifest)
  loop.train(tfrecord_dir, model_dir, config, epochs=1, batch_size=32, learning_rate=1e-3,
              weight_decay=0, steps_per_epoch=2, verbose=0)
  good = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  monkeypatch.setattr(tasks.CFRegression, "call",
                      lambda self, audio, cf: {"cf": tf.reduce_sum(self.head(audio)) * np.nan})
  with pytest.raises(InputError, match=r"non-finite loss .* epoch 2, step 1.*last good checkpoint"):
    loop.train(tfrecord_dir, model_dir, config, epochs=2, batch_size=32, learning_rate=1e-3,
                weight_decay=0, steps_per_epoch=2, verbose=0)
  assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")) == good


def test_another_model_in_the_same_run_folder_is_refused(small_prepared, tmp_path):
  _, tfrecord_dir, manifest = small_prepared
  model_dir = str(tmp_path / "run")
  loop.train(tfrecord_dir, model_dir, tiny_config("contr_g", tfrecord_dir, manifest), epochs=1,
              batch_size=32, learning_rate=1e-3, weight_decay=0, steps_per_epoch=1, verbose=0)
  with pytest.raises(InputError, match="another model"):
    loop.train(tfrecord_dir, model_dir, tiny_config("contr_cf", tfrecord_dir, manifest), epochs=1,
                batch_size=32, learning_rate=1e-3, weight_decay=0, steps_per_epoch=1, verbose=0)


@pytest.mark.parametrize("mixed, jit", [(True, False), (False, True)])
def test_mixed_precision_and_xla_train_with_float32_losses(small_prepared, tmp_path, mixed, jit):
  import keras
  _, tfrecord_dir, manifest = small_prepared
  try:
    summary = loop.train(tfrecord_dir, str(tmp_path / "run"),
                          tiny_config("contr_cf_g", tfrecord_dir, manifest), epochs=1, batch_size=32,
                          learning_rate=1e-3, weight_decay=0, steps_per_epoch=2, verbose=0,
                          mixed_precision=mixed, jit_compile=jit)
    model = summary["model"]
    assert summary["policy"] == ("mixed_bfloat16" if mixed else "float32")
    assert np.isfinite(summary["final"]["loss"])
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    if mixed:
      assert model.audio_encoder.compute_dtype == "bfloat16"
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_checkpoints_hold_every_variable(small_prepared, tmp_path):
  """Resuming restores all weights, batch-norm statistics of the conv blocks included."""
  import tensorflow as tf
  _, tfrecord_dir, manifest = small_prepared
  model_dir = str(tmp_path / "run")
  summary = loop.train(tfrecord_dir, model_dir, tiny_config("contr_cf_g", tfrecord_dir, manifest),
                        epochs=1, batch_size=32, learning_rate=1e-3, weight_decay=0,
                        steps_per_epoch=2, verbose=0)
  trained = {v.path.split("/", 1)[1]: v.numpy() for v in summary["model"].variables
             if "seed_generator" not in v.path}  # dropout RNG states are not checkpointed
  prefix = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  model, _, _ = checkpoint_lib.load_trained(prefix)  # a fresh model, restored from the tf.train checkpoint
  restored = {v.path.split("/", 1)[1]: v.numpy() for v in model.variables
              if "seed_generator" not in v.path}
  assert len(restored) == len(trained) and any("conv3" in p for p in restored)
  for path, value in trained.items():
    np.testing.assert_array_equal(restored[path], value, err_msg=path)
