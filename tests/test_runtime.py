"""Process set-up (tfcmir/runtime.py, tfcmir.flags.preflight): oneDNN on, a quick start, a quiet one."""

import os
import re
import subprocess
import sys
import time

import pytest

from helpers import ROOT
from tfcmir import flags as tfcmir_flags
from tfcmir import runtime

NVIDIA = os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


def python(*args, env=None, **environ):
  """Runs `python args` in a fresh process with TensorFlow's variables taken out of the environment,
  then `environ` added: the process starts the way a user's shell would start it."""
  base = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
  base.update(environ)
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                        cwd=ROOT, env=base)


ONEDNN_STATE = ("import os, tfcmir, tensorflow\n"
                "from tensorflow.python.util import _pywrap_util_port\n"
                "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset'), _pywrap_util_port.IsMklEnabled())")


def test_import_turns_onednn_on_and_prints_nothing():
  done = python("-c", ONEDNN_STATE + "\nprint(float(tensorflow.constant(1.0) + 1))")
  assert done.returncode == 0, done.stderr
  # On, and our default does not leak into child processes (Essentia's libtensorflow 2.5 dies of
  # SIGFPE with oneDNN forced on); the user's own setting stays, as the next test checks.
  assert done.stdout.split() == ["unset", "True", "2.0"]
  assert done.stderr == ""  # no CUDA probing lines, no oneDNN notice, no absl preamble


def test_the_users_onednn_setting_wins():
  done = python("-c", ONEDNN_STATE, TF_ENABLE_ONEDNN_OPTS="0")
  assert done.returncode == 0, done.stderr
  assert done.stdout.split() == ["0", "False"]


def test_flag_error_answers_before_tensorflow_loads():
  started = time.perf_counter()
  done = python("-X", "importtime", "-m", "tfcmir.train", "--epochs=two")
  seconds = time.perf_counter() - started
  assert done.returncode == 1
  assert "flag --epochs=two: invalid literal for int()" in done.stderr
  imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()
              if line.startswith("import time:")}
  assert "absl" in imported and "tensorflow" not in imported and "keras" not in imported
  assert "Traceback" not in done.stderr
  # TensorFlow alone takes 5 s or more to import on these machines; the answer comes well before.
  assert seconds < 3, f"{seconds:.1f} s"


@pytest.mark.parametrize("command", ["tfcmir.train", "tfcmir.evaluate", "tfcmir.embed"])
def test_help_lists_the_flags_without_tensorflow(command):
  done = python("-X", "importtime", "-m", command, "--helpshort")
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith(f"`python -m {command}")  # the command's own docstring
  assert "--learning_rate:" in done.stdout and "Try --helpfull" in done.stdout
  assert "tensorflow" not in done.stderr


def test_unknown_flag_is_refused_but_beam_options_pass_with_a_runner():
  done = python("-m", "tfcmir.embed", "--num_workers=4")
  assert done.returncode == 1 and "Unknown command line flag 'num_workers'" in done.stderr
  # With --runner, a flag tfcmir does not know is Apache Beam's: preflight lets it through, so the
  # command gets as far as its own checks (no input files given).
  done = python("-m", "tfcmir.embed", "--runner=DirectRunner", "--num_workers=4", "--out=/dev/null/x")
  assert "Unknown command line flag" not in done.stderr


def test_start_is_quiet_and_verbosity_brings_tensorflow_back():
  # A command that imports TensorFlow and then stops on bad input (no such shard folder).
  args = ["-m", "tfcmir.train", "--tfrecord_dir=/nonexistent/shards", "--model_dir=/nonexistent/run"]
  quiet = python(*args)
  assert quiet.returncode == 1
  lines = quiet.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "/nonexistent/shards" in lines[0]
  loud = python(*args, "--verbosity=1")
  assert loud.returncode == 1
  # TensorFlow's start-up notice about oneDNN is printed again, before the same error.
  assert "oneDNN custom operations are on" in loud.stderr, loud.stderr[-2000:]
  assert loud.stderr.strip().splitlines()[-1] == lines[0]


def test_worker_processes_start_quietly_too():
  """A worker spawned by a tfcmir process (prepare's shard writers) inherits our default log level,
  and must not take it for the user's choice."""
  script = ("import multiprocessing, tfcmir, tensorflow\n"
            "if __name__ == '__main__':\n"
            "  with multiprocessing.get_context('spawn').Pool(1) as pool:\n"
            "    pool.apply(exec, ('import tfcmir, tensorflow; tensorflow.constant(1.0) + 1',))\n"
            "  print('done')")
  done = python("-c", script)
  assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]
  assert done.stderr == "", done.stderr[-2000:]


def test_users_log_level_shows_tensorflows_lines():
  done = python("-c", "import tfcmir, tensorflow", TF_CPP_MIN_LOG_LEVEL="0")
  assert "oneDNN custom operations are on" in done.stderr


def test_noise_is_only_known_lines():
  cuda = ("E0000 00:00:1 cuda_executor.cc:1309] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
  assert runtime.is_noise(cuda, nvidia=False)
  assert not runtime.is_noise(cuda, nvidia=True)  # a GPU machine's broken driver is news
  assert runtime.is_noise("I0000 00:00:1 port.cc:153] oneDNN custom operations are on. You may see")
  assert not runtime.is_noise("W0000 00:00:1 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc")
  assert not runtime.is_noise("Traceback (most recent call last):")


def test_command_module_reads_python_dash_m():
  assert tfcmir_flags.command_module(["python", "-m", "tfcmir.train", "--x"]) == "tfcmir.train"
  assert tfcmir_flags.command_module(["python", "-m", "pytest"]) is None
  assert tfcmir_flags.command_module(["python", "script.py"]) is None


# The numerical checks that depend on TensorFlow's kernels: NT-Xent against a float64 NumPy reference,
# one replica against two, a SavedModel against the Keras model, the front end against Essentia.
NUMERICAL = ["tests/test_losses.py",
             "tests/test_train.py::test_one_replica_and_two_give_the_same_loss_and_gradients[contr_cf_g]",
             "tests/test_encoders.py::test_saved_model_file_gives_identical_outputs",
             "tests/test_audio.py::test_mel_matches_essentia_on_the_same_waveform"]


@pytest.mark.slow
def test_numerical_checks_hold_with_eigen_kernels():
  # The rest of the suite runs with oneDNN on (tfcmir's default); here the same checks run on
  # TensorFlow's other CPU path, the one it picks by itself on AVX2-only machines.
  done = python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *NUMERICAL,
                TF_ENABLE_ONEDNN_OPTS="0")
  assert done.returncode == 0, done.stdout[-3000:]
  assert re.search(r"\d+ passed", done.stdout) and "failed" not in done.stdout


def test_environment_kept_undoes_what_an_import_sets(monkeypatch):
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  monkeypatch.delenv("TFCMIR_TEST_UNSET", raising=False)
  with runtime.environment_kept("TF_CPP_MIN_LOG_LEVEL", "TFCMIR_TEST_UNSET"):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # what `import tf2onnx.convert` does
    os.environ["TFCMIR_TEST_UNSET"] = "x"
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and "TFCMIR_TEST_UNSET" not in os.environ
