"""Every benchmark script still runs: `python benchmarks/NAME.py --quick` prints its machine line and table.

Not timed tests: the figures printed here are from toy sizes and are not checked; the full modes
produce the README's Performance figures.
"""

import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT

BENCHMARKS = os.path.join(ROOT, "benchmarks")
SCRIPTS = sorted(f[:-3] for f in os.listdir(BENCHMARKS) if f.endswith(".py") and f != "common.py")


def test_every_benchmark_is_covered():
  # A new script joins the smoke test automatically; this guards against an empty folder listing.
  assert {"frontend", "prepare", "warp"} <= set(SCRIPTS)


# catalogue_sizes runs three commands end to end (generate, prepare, train), each starting TensorFlow.
TIMEOUT_S = {"catalogue_sizes": 600}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in TIMEOUT_S else n
                                  for n in SCRIPTS])
def test_quick_mode_runs_and_prints_a_table(name, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp_path))
  result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, f"{name}.py"), "--quick"],
                          capture_output=True, text=True, timeout=TIMEOUT_S.get(name, 300), cwd=ROOT,
                          env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert re.search(r"^machine: \d+ cores", out, re.M), out[-2000:]
  table_rows = [line for line in out.splitlines() if line.startswith("|") and "---" not in line]
  assert len(table_rows) >= 2, out[-2000:]  # a header and at least one row of figures
  # Every figure cell of the table rows is a finite number, not nan/inf.
  assert not re.search(r"\|\s*(nan|inf|-inf)\s*\|", out, re.I), out[-2000:]
  # A measurement that failed is a row saying so (the other rows still print): not a pass.
  assert not re.search(r"\|\s*failed", out), out[-2000:]
  assert not os.listdir(tmp_path) or all(not n.startswith("tfcmir-bench") for n in os.listdir(tmp_path))
