#!/usr/bin/env bash
# Runs every benchmark in its full mode, one after another (they must not share the cores), and writes
# their tables to benchmarks/results/<date>.md: the figures of the README's Performance section.
#
#   bash benchmarks/run_all.sh            # ~45 min on 2 cores; needs the `bench` extra for WARP's BPR row
#   FAST=1 bash benchmarks/run_all.sh     # fewer timed steps and repeats at paper size (~25 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p benchmarks/results
OUT=benchmarks/results/$(date +%Y-%m-%d).md
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
if [[ -n "${FAST:-}" ]]; then
  TRAIN_ARGS=(--steps 3 --repeats 2 --warmup 1)
  EMBED_ARGS=(--repeats 2)
else
  TRAIN_ARGS=()
  EMBED_ARGS=()
fi

run() {  # run NAME ARGS...: one benchmark, its output into $OUT under a heading
  local name=$1; shift
  echo "== $name $*" >&2
  { echo "## $name"; echo; echo '```'; echo "python benchmarks/$name.py $*"; echo '```'; echo;
    "$PY" "benchmarks/$name.py" "$@" 2>/dev/null; echo; } >> "$OUT"
}

echo "# Benchmarks, $(date -u +'%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)" > "$OUT"
echo >> "$OUT"
run input_pipeline --json "$SCRATCH/pipeline.json"
run train_step --pipeline_json "$SCRATCH/pipeline.json" "${TRAIN_ARGS[@]}"
run warp --melon_scale
run prepare
run embed "${EMBED_ARGS[@]}"
run continuation
run frontend
echo "wrote $OUT" >&2
