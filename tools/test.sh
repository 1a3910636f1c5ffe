#!/usr/bin/env bash
# Sets up and runs every test: system packages, `pip install -e .[test,torch]`,
# the Swift XCTest suite (plain, then under AddressSanitizer), then pytest.
# This is the README's test command and CI's job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
echo "== swift test"
swift test --scratch-path .build-test
echo "== swift test under AddressSanitizer (docs/development.md)"
ASAN_OPTIONS=detect_leaks=0 swift test --sanitize=address --scratch-path .build-asan
echo "== pytest"
python3 -m pytest -q -p no:cacheprovider python/tests
