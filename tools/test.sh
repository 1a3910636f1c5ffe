#!/usr/bin/env bash
# Sets up and runs every test: system packages, `pip install -e .[test,torch]`,
# the Swift XCTest suite, then pytest. This is the README's test command and CI's job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
echo "== swift test"
swift test --scratch-path .build-test
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider python/tests
