#!/usr/bin/env bash
# One row of the small-catalogue sweep (issue 20): train on the development set's prepared training
# tracks, export, and score the export on the held-out tracks with `evaluate --task=catalogue`.
#   benchmarks/small_catalogue_sweep.sh NAME [train flags...]
# Environment: DEVSET (benchmarks/devset.py --out), TFRECORDS (its training folder, prepared as in
# benchmarks/results/2026-12-03-devset.md), SWEEP (where runs, exports and reports go), PY.
set -euo pipefail
name=$1; shift
PY=${PY:-python}
mkdir -p "$SWEEP/runs" "$SWEEP/exports" "$SWEEP/eval"
start=$(date +%s)
nice -n 5 "$PY" -m tfcmir.train --tfrecord_dir="$TFRECORDS" --model_dir="$SWEEP/runs/$name" \
    --overwrite "$@" > "$SWEEP/runs/$name.log" 2>&1
trained=$(date +%s)
nice -n 5 "$PY" -m tfcmir.export --checkpoint="$SWEEP/runs/$name" --out="$SWEEP/exports/$name" \
    --overwrite > "$SWEEP/exports/$name.log" 2>&1
nice -n 5 "$PY" -m tfcmir.evaluate --task=catalogue --models="$SWEEP/exports/$name" \
    --catalogue_audio_dir="$DEVSET/music" --catalogue_csv="$DEVSET/songs.csv" \
    --catalogue_playlists="$DEVSET/playlists" --eval_dir="$SWEEP/eval/$name" > "$SWEEP/eval/$name.log" 2>&1
echo "$name train_s=$((trained - start)) $(grep -a 'best validation' "$SWEEP/runs/$name.log" | tail -1)"
grep -a "^| Contr" "$SWEEP/eval/$name/catalogue.md"
