"""Process set-up, done once on `import tfcmir` and before TensorFlow loads: fast kernels, quiet start.

Two things can only be decided before TensorFlow is imported:

- **oneDNN kernels.** TensorFlow turns them on by default only on CPUs with AVX512_VNNI, AVX512_BF16 or
  AMX; elsewhere (AVX2-only machines, many users' and some of our own) the Eigen kernels run, whose
  convolutions go through im2col. `TF_ENABLE_ONEDNN_OPTS=1` is 1.8-2.5x faster in training there
  (benchmarks/train_step.py prints both). A value the user set wins. Ours is taken out of the
  environment once TensorFlow has read it, so child processes start as the user's shell would start
  them (Essentia's libtensorflow 2.5 dies with it on AVX-512 CPUs).
- **Start-up noise.** TensorFlow's shared libraries log before absl's logging is initialised, so
  `TF_CPP_MIN_LOG_LEVEL` cannot silence those lines (the oneDNN notice, "Could not find cuda drivers",
  printed once per library), and probing for a GPU prints `failed call to cuInit` on a machine without
  one. `quiet_tensorflow_start()` drops exactly these known lines from stderr while TensorFlow loads and
  probes its devices, and passes every other line through. Users who want them back set
  `TF_CPP_MIN_LOG_LEVEL` themselves, or pass absl's `--verbosity=1` (or more) to a command.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile

# Lines TensorFlow prints while it loads, and that tell a CPU user nothing they can act on.
_START_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|\] oneDNN custom operations are on"
    r"|\] This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags"
    r"|\] Unable to register cu(DNN|FFT|BLAS) factory"
    r"|\] TF-TRT Warning: Could not find TensorRT"
    r"|computation_placer\.cc.*already registered"
    # LiteRT, once per process, at the first interpreter's allocation (quiet_native_lines).
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.")
# CUDA's complaints are noise only where there is no NVIDIA device at all; on a GPU machine they are
# the first sign of a broken driver, and stay.
_CUDA_NOISE = re.compile(r"cudart_stub\.cc.*Could not find cuda drivers|failed call to cuInit")
# Read before configure_environment() puts in its default: a level the user chose means "show me".
# Our default is inherited by the worker processes we spawn, so it carries a marker that says it is
# ours (without it a prepare worker took it for the user's choice and printed TensorFlow's start-up).
_DEFAULT_MARK = "TFCMIR_DEFAULT_TF_CPP_MIN_LOG_LEVEL"
_user_set_log_level = ("TF_CPP_MIN_LOG_LEVEL" in os.environ
                       and os.environ["TF_CPP_MIN_LOG_LEVEL"] != os.environ.get(_DEFAULT_MARK))
# absl's --verbosity of the command being run, when tfcmir.flags.preflight() read it before TensorFlow
# loaded (the flags are parsed for good only later, by absl's app.run).
command_verbosity = None
_onednn_set_here = False  # configure_environment() put TF_ENABLE_ONEDNN_OPTS=1 in os.environ


def configure_environment(environ=os.environ):
  """Defaults for TensorFlow's environment variables; the user's own values win."""
  global _onednn_set_here
  if "TF_ENABLE_ONEDNN_OPTS" not in environ and "tensorflow" not in sys.modules:
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    _onednn_set_here = environ is os.environ
  # Keras and TensorFlow INFO/WARNING lines from C++ (saver sharding, oneDNN notices) drown the
  # progress bars of every command.
  if "TF_CPP_MIN_LOG_LEVEL" not in environ:
    environ["TF_CPP_MIN_LOG_LEVEL"] = environ[_DEFAULT_MARK] = "2"


def _settle_onednn():
  """Once TensorFlow is loaded: fixes its oneDNN choice, then takes our default out of the environment.

  TensorFlow reads TF_ENABLE_ONEDNN_OPTS once and keeps the answer, so the variable is not needed
  afterwards, and left in place it would reach every child process. Essentia's bundled libtensorflow
  2.5 is one such child: with oneDNN forced on it dies of SIGFPE on AVX-512 CPUs (measured here).
  """
  global _onednn_set_here
  from tensorflow.python.util import _pywrap_util_port

  _pywrap_util_port.IsMklEnabled()  # the first call reads the variable and latches the answer
  if _onednn_set_here and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1":
    del os.environ["TF_ENABLE_ONEDNN_OPTS"]
  _onednn_set_here = False


def _has_nvidia_device():
  return os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")


def _verbose():
  """The user asked for TensorFlow's own lines: their TF_CPP_MIN_LOG_LEVEL, or absl --verbosity >= 1."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") not in ("2", "3") or _user_set_log_level:
    return True
  if command_verbosity is not None:
    return command_verbosity >= 1
  from absl import flags
  return flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].value >= 1


def is_noise(line, nvidia=None):
  """Whether a stderr line is one of TensorFlow's known start-up lines (see the module docstring)."""
  nvidia = _has_nvidia_device() if nvidia is None else nvidia
  return bool(_START_NOISE.search(line) or (not nvidia and _CUDA_NOISE.search(line)))


class _FilteredStderr:
  """Routes file descriptor 2 into a temporary file for a while, then replays all but the noise.

  A file, not a pipe: nothing has to drain it while TensorFlow loads. An exception inside the import
  still replays the lines (every line that is not noise, the traceback's context among them).
  """

  def __enter__(self):
    sys.stderr.flush()
    self.saved = os.dup(2)
    self.file = tempfile.TemporaryFile()
    os.dup2(self.file.fileno(), 2)
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self.saved, 2)
    os.close(self.saved)
    self.file.seek(0)
    nvidia = _has_nvidia_device()
    kept = [line for line in self.file.read().decode("utf-8", "replace").splitlines(keepends=True)
            if not is_noise(line, nvidia)]
    self.file.close()
    if kept:
      sys.stderr.write("".join(kept))
      sys.stderr.flush()
    return False


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` the first time it is imported, and loads it inside `_FilteredStderr`."""

  def find_spec(self, fullname, path=None, target=None):
    if fullname != "tensorflow":
      return None
    sys.meta_path.remove(self)  # one shot: TensorFlow's own submodules import normally
    spec = importlib.machinery.PathFinder.find_spec(fullname, path)
    if spec is None or spec.loader is None:
      return spec
    spec.loader = _QuietLoader(spec.loader, quiet=not _verbose())
    return spec


class _QuietLoader(importlib.abc.Loader):
  def __init__(self, loader, quiet):
    self.loader, self.quiet = loader, quiet

  def create_module(self, spec):
    return self.loader.create_module(spec)

  def exec_module(self, module):
    with _FilteredStderr() if self.quiet else contextlib.nullcontext():
      self.loader.exec_module(module)
      # The GPU probe (cuInit) runs at the first device query; doing it here keeps its line inside
      # the filter. It is cheap (well under a millisecond) and leaves logical devices configurable.
      module.config.list_physical_devices()
      _settle_onednn()


class _LibraryInfoFilter(logging.Filter):
  """Drops INFO lines that TensorFlow and Keras log through absl (the saver's "Sharding callback
  duration" on every checkpoint, "unsupported characters" on every export); warnings pass."""

  def filter(self, record):
    return record.levelno > logging.INFO or not _LIBRARY_PATH.search(record.pathname or "")


_LIBRARY_PATH = re.compile(r"[/\\](tensorflow|keras|tf_keras)[/\\]")


def quiet_library_logs(verbosity=0):
  """Under absl's app.run (which turns INFO on for everyone): library INFO lines off, unless the user
  asked for them with --verbosity >= 1. Our own INFO lines (what a step skipped or resumed) stay."""
  import logging as std_logging
  from absl import logging as absl_logging

  # These loggers log each Word2Vec epoch, each SavedModel write, each Beam stage, each ONNX
  # conversion step at INFO; faiss logs which of its builds it tried (one library dispatches at run time).
  for name in ("gensim", "smart_open", "tensorflow", "apache_beam", "tf2onnx", "faiss"):
    std_logging.getLogger(name).setLevel(std_logging.DEBUG if verbosity >= 1 else std_logging.WARNING)
  handler = absl_logging.get_absl_handler()
  if verbosity < 1 and not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())


@contextlib.contextmanager
def environment_kept(*names):
  """Restores the environment variables `names` (or their absence) when the block ends.

  For imports that set them: tf2onnx sets TF_CPP_MIN_LOG_LEVEL=3 when it is imported, and every
  process started afterwards took that for the user's own choice and printed TensorFlow's start-up.
  """
  saved = {name: os.environ.get(name) for name in names}
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


def quiet_native_lines():
  """A context that drops the known native lines (is_noise) printed inside it, unless the user asked
  for them (see _verbose). For native code that prints on first use, not at import: LiteRT announces
  its XNNPACK delegate on stderr when the first interpreter allocates, with no setting to stop it."""
  return contextlib.nullcontext() if _verbose() else _FilteredStderr()


def quiet_tensorflow_start():
  """Installs the one-shot import hook (nothing to do if TensorFlow is already loaded); the hook also
  settles the oneDNN choice (_settle_onednn)."""
  if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
    return
  sys.meta_path.insert(0, _QuietTensorFlowFinder())
