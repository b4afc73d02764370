"""What every benchmark script shares: the machine line, Markdown tables, timing and memory helpers.

Scripts import it as `import common` (they run as `python benchmarks/NAME.py`, so this folder is on
sys.path). No script is a timed test: each prints its figures; tests/test_benchmarks.py only checks that
`--quick` still runs.
"""

from __future__ import annotations

import os
import platform
import resource
import time

# Before TensorFlow loads, as every tfcmir command does: oneDNN on unless TF_ENABLE_ONEDNN_OPTS says
# otherwise (tfcmir/runtime.py), so the figures are the ones a user gets.
import tfcmir  # noqa: F401


def cpu_flags():
  """The CPU feature flags that decide the fast paths (AVX-512, bfloat16, AMX), from /proc/cpuinfo,
  less those that oneDNN's own cap (ONEDNN_MAX_CPU_ISA, see onednn_cap) keeps its kernels from."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          return sorted(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2"))
                        and _allowed_by_cap(f))
  except OSError:
    pass
  return []


def onednn_cap():
  """ONEDNN_MAX_CPU_ISA, upper case, or None: oneDNN then uses no instructions beyond it. Set to AVX2 on
  an AVX-512 machine it stands in for the AVX2 class (same clock and memory, so a proxy only); bfloat16
  kernels are then missing, and a bfloat16 matmul would abort the process."""
  return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() or None


def _allowed_by_cap(flag):
  cap = onednn_cap()
  if cap is None or cap == "ALL" or cap.startswith("AVX10") or cap.startswith("AVX512_CORE_AMX"):
    return True
  if flag.startswith("amx"):
    return False
  if flag == "avx512_bf16":
    return cap.startswith("AVX512_CORE_BF16") or cap.startswith("AVX512_CORE_FP16")
  if flag.startswith("avx512"):
    return cap.startswith("AVX512")
  return cap.startswith(("AVX2", "AVX512"))  # avx2


def cpu_model():
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def usable_cores():
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count()


def isa_class(flags=None):
  """The CPU class that decides TensorFlow's kernels: AMX, AVX-512, AVX2 or older."""
  flags = cpu_flags() if flags is None else flags
  if any(f.startswith("amx") for f in flags):
    return "AMX"
  return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "pre-AVX2"


def onednn_enabled():
  """Whether TensorFlow's oneDNN kernels are on in this process (its own runtime answer, which
  follows TF_ENABLE_ONEDNN_OPTS and, unset, the CPU's features)."""
  from tensorflow.python.util import _pywrap_util_port
  return bool(_pywrap_util_port.IsMklEnabled())


def kernels_line():
  cap = f" (capped by ONEDNN_MAX_CPU_ISA={onednn_cap()})" if onednn_cap() else ""
  return f"{isa_class()} CPU{cap}, oneDNN kernels {'on' if onednn_enabled() else 'off (Eigen)'}"


def machine_line(extra=""):
  """One line naming the machine: cores, CPU, its ISA class and vector features, which kernels
  TensorFlow runs, TensorFlow and Python versions."""
  import tensorflow as tf
  gpus = tf.config.list_physical_devices("GPU")
  gpu = f", {len(gpus)} GPU(s)" if gpus else ", no GPU"
  line = (f"machine: {usable_cores()} cores ({cpu_model()}; {' '.join(cpu_flags()) or 'no AVX'}){gpu}; "
          f"{kernels_line()}; TensorFlow {tf.__version__}, Python {platform.python_version()}")
  return line + (f"; {extra}" if extra else "")


def table(headers, rows):
  """A Markdown table as a string; cells are formatted with str()."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def peak_rss_gb():
  """Peak resident memory of this process so far, GB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_rss_children_gb():
  """Peak resident memory of the largest finished child process, GB."""
  return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def timings(fn, repeats=3, warmup=1):
  """Seconds of each of `repeats` calls of fn(), after `warmup` untimed calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def best_of(fn, repeats=3, warmup=1):
  """Seconds of the fastest of `repeats` calls of fn(), after `warmup` untimed calls."""
  return min(timings(fn, repeats, warmup))


def pin_threads(cores):
  """Limits TensorFlow (and BLAS) to `cores` threads: call before TensorFlow runs anything.

  Used for per-core figures: TensorFlow's intra-op pool, its inter-op pool and OpenMP/oneDNN all get
  `cores` threads, and the process is bound to the first `cores` CPUs where the OS allows it.
  """
  os.environ["OMP_NUM_THREADS"] = str(cores)
  os.environ["TF_NUM_INTRAOP_THREADS"] = str(cores)
  os.environ["TF_NUM_INTEROP_THREADS"] = str(cores)
  try:
    available = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, available[:cores])
  except (AttributeError, OSError):
    pass
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(cores)
  tf.config.threading.set_inter_op_parallelism_threads(cores)
