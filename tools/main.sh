#!/usr/bin/env bash
# Sets up (system packages, `pip install -e .[torch]`) and runs the main job:
# `fp4swift train --seeds 3` trains a small LLaMA-style byte-level model on the Python standard
# library under the fp32, fp4-direct and wang2025 recipes side by side, each from three seeds,
# and prints each recipe's gap to fp32 with its interval over seeds, and whether it exceeds the
# seed spread (docs/experiments.md).
# Arguments are passed to `fp4swift train` (e.g. --steps 100, --recipes fp32,wang2025,
# --resume). Results: runs/<timestamp>/ (runs/latest points at the newest run).
set -euo pipefail
cd "$(dirname "$0")/.."
FP4SWIFT_EXTRAS=torch bash tools/setup.sh
fp4swift train --seeds 3 "$@"
