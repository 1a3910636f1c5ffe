#!/usr/bin/env bash
# A demo scaling-law sweep sized for a 2-core machine (~10-15 minutes with --threads 1):
# LLaMA-style byte-level models of 3 widths (2 layers) x 3 token budgets, each run training
# fp32, quartet and mxfp4 side by side, then `fp4swift scaling-law` on all of them.
#
#   tools/scaling_sweep.sh                      # outputs in runs/scaling-demo/ (runs/ is git-ignored)
#   OUT=/tmp/sweep SIZES="32 64" BUDGETS="100000 200000 400000" RECIPES=fp32,quartet tools/scaling_sweep.sh
#
# Widths must be multiples of 32 for quartet/mxfp4 (their groups of 32 run along d_model and
# the MLP width). Every (size, budget) run is its own `fp4swift train` with its own cosine
# schedule (Chinchilla-style: the schedule ends at the budget). Re-running skips finished runs
# and resumes interrupted ones, so Ctrl-C is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/scaling-demo}
SIZES=${SIZES:-"32 64 96"}
BUDGETS=${BUDGETS:-"100000 200000 400000"}
RECIPES=${RECIPES:-fp32,quartet,mxfp4}
LAYERS=${LAYERS:-2}
THREADS=${THREADS:-1}
FP4SWIFT=${FP4SWIFT:-"python3 -m fp4swift.cli"}
mkdir -p "$OUT"
start=$(date +%s)
for d in $SIZES; do
  heads=$(( d / 16 ))
  for tokens in $BUDGETS; do
    dir="$OUT/d${d}-t${tokens}"
    if [ -f "$dir/summary.md" ]; then
      echo "== $dir: finished, skipped"
      continue
    fi
    if [ -f "$dir/config.json" ]; then
      echo "== $dir: resuming"
      $FP4SWIFT train --resume --out "$dir" --no-progress --threads "$THREADS"
      continue
    fi
    echo "== $dir: d_model $d, $LAYERS layers, $heads heads, $tokens tokens per recipe ($(( $(date +%s) - start )) s so far)"
    $FP4SWIFT train --recipes "$RECIPES" --d-model "$d" --layers "$LAYERS" --heads "$heads" \
      --seq-len 64 --batch-size 16 --tokens "$tokens" --lr 2e-3 \
      --eval-every 100 --eval-batches 16 --checkpoint-every 100 \
      --no-progress --threads "$THREADS" --out "$dir" | grep -E '^(model|training|\| )' || true
  done
done
echo "== sweep done in $(( $(date +%s) - start )) s; fitting"
$FP4SWIFT scaling-law "$OUT"
