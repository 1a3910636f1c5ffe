#!/usr/bin/env bash
# Sets up and runs the main job: quantizes a tensor in every format and prints fidelity
# and throughput. (It becomes `fp4swift train` once the training experiment lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
FP4SWIFT_EXTRAS="${FP4SWIFT_EXTRAS-}" bash tools/setup.sh
fp4swift formats "$@"
