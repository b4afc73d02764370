"""Multi-worker training (TF_CONFIG, MultiWorkerMirroredStrategy): two worker processes on 127.0.0.1
agree with one, write through the chief only, resume, and a killed worker ends the run with a message.

Every worker process has a timeout of its own, so a hang fails the test instead of stalling CI.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import HERE, ROOT

TINY_FLAGS = ["--mode=contr_cf_g", "--conv_channels=4,4,8,8,8,8,16", "--hidden_dim=32",
              "--embedding_dim=16", "--batch_size=32", "--worker_timeout_s=60"]
WORKER_TIMEOUT_S = 240


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _tf_configs(n):
  workers = [f"127.0.0.1:{port}" for port in _free_ports(n)]
  return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
          for i in range(n)]


def _start(args, tf_config=None):
  env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
  if tf_config:
    env["TF_CONFIG"] = tf_config
  return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT, env=env)


def _finish(process, timeout=WORKER_TIMEOUT_S):
  try:
    out, err = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate()
    pytest.fail(f"a worker did not finish within {timeout} s:\n{err[-3000:]}")
  return process.returncode, out, err


def _run_cluster(args, n=2):
  """Runs `python args` as the n workers of a local cluster; returns [(rc, stdout, stderr)]."""
  processes = [_start(args, config) for config in _tf_configs(n)]
  return [_finish(p) for p in processes]


@pytest.mark.slow
def test_two_workers_agree_with_one_on_the_same_global_batch(small_prepared, tmp_path):
  _, tfrecord_dir, _ = small_prepared
  tool = os.path.join(HERE, "tools", "multiworker_check.py")
  one = str(tmp_path / "one.npz")
  two = str(tmp_path / "two.npz")
  single = _start([tool, tfrecord_dir, one])
  workers = _run_cluster([tool, tfrecord_dir, two])
  for rc, _, err in [_finish(single), *workers]:
    assert rc == 0, err[-3000:]
  a, b = np.load(one), np.load(two)
  assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)  # the loss of each of the 3 steps
  weights = sorted((n for n in a.files if n.startswith("w")), key=lambda n: int(n[1:]))
  update_a = np.concatenate([(a[n] - a["initial" + n[1:]]).ravel() for n in weights])
  update_b = np.concatenate([(b[n] - b["initial" + n[1:]]).ravel() for n in weights])
  np.testing.assert_array_equal(np.concatenate([a["initial" + n[1:]].ravel() for n in weights]),
                                np.concatenate([b["initial" + n[1:]].ravel() for n in weights]))
  # The steps did train, and to the same weights: float32 sums in another order (synchronized batch
  # norm, all-reduced gradients) leave ~2e-4 of the update.
  assert np.linalg.norm(update_a) > 1.0
  assert np.linalg.norm(update_a - update_b) / np.linalg.norm(update_a) < 1e-3


def _history(model_dir):
  with open(os.path.join(model_dir, "history.json"), encoding="utf-8") as f:
    return json.load(f)["history"]


@pytest.mark.slow
def test_train_command_on_two_workers_writes_through_the_chief_and_resumes(small_prepared, tmp_path):
  _, tfrecord_dir, _ = small_prepared
  model_dir = str(tmp_path / "run")
  args = ["-m", "tfcmir.train", f"--tfrecord_dir={tfrecord_dir}", f"--model_dir={model_dir}",
          *TINY_FLAGS, "--steps_per_epoch=2"]
  (rc0, out0, err0), (rc1, out1, err1) = _run_cluster(args + ["--epochs=2"])
  assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
  assert "2 replica(s)" in out0 and "(worker 0, chief)" in out0 and "(worker 1)" in out1
  assert "held-out test songs" in out0 and "held-out" not in out1  # the chief reports
  assert [h["epoch"] for h in _history(model_dir)] == [1, 2]
  assert sorted(n for n in os.listdir(model_dir)) == ["best.weights.h5", "checkpoints", "config.json",
                                                      "history.json", "logs"]  # worker 1's scratch gone
  with open(os.path.join(model_dir, "checkpoints", "checkpoint"), encoding="utf-8") as f:
    assert f.readline().strip() == 'model_checkpoint_path: "ckpt-2"'

  (rc0, out0, err0), (rc1, out1, err1) = _run_cluster(args + ["--epochs=3"])
  assert rc0 == 0 and rc1 == 0, err0[-2000:] + err1[-2000:]
  assert "resumed from epoch 2" in out0 and "resumed from epoch 2" in out1
  history = _history(model_dir)
  assert [h["epoch"] for h in history] == [1, 2, 3] and all(np.isfinite(h["loss"]) for h in history)


@pytest.mark.slow
def test_a_killed_worker_ends_the_run_with_a_message(small_prepared, tmp_path):
  _, tfrecord_dir, _ = small_prepared
  model_dir = str(tmp_path / "run")
  args = ["-m", "tfcmir.train", f"--tfrecord_dir={tfrecord_dir}", f"--model_dir={model_dir}",
          *TINY_FLAGS, "--steps_per_epoch=500", "--epochs=1"]
  chief, worker = [_start(args, config) for config in _tf_configs(2)]
  scratch = os.path.join(model_dir, ".worker-1")  # made once the cluster is up
  deadline = time.time() + WORKER_TIMEOUT_S
  while not os.path.isdir(scratch) and time.time() < deadline and chief.poll() is None:
    time.sleep(0.5)
  assert os.path.isdir(scratch), "the cluster never came up"
  time.sleep(5)  # into the training steps
  worker.send_signal(signal.SIGKILL)  # as the out-of-memory killer or a lost machine would
  killed_at = time.time()
  rc, _, err = _finish(chief, timeout=120)
  worker.communicate()
  assert rc == 1, err[-3000:]
  assert time.time() - killed_at < 90
  message = err.strip().splitlines()[-1]
  assert message.startswith("error: worker 0: lost contact with another worker"), err[-3000:]
  assert "task:1" in message and "resume from the latest checkpoint" in message
  assert "Traceback" not in err
