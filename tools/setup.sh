#!/usr/bin/env bash
# Installs what fp4swift needs on a Debian machine with Swift 6 and Python 3.9+:
# system packages (python3-dev, libopenblas-dev) and the package itself, editable,
# with the extras named in $FP4SWIFT_EXTRAS (default: test,torch).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
dpkg -s python3-dev >/dev/null 2>&1 || need+=(python3-dev)
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}"
fi

command -v swift >/dev/null || { echo "swift is not on PATH: install Swift 6 from swift.org" >&2; exit 1; }

extras="${FP4SWIFT_EXTRAS-test,torch}"
echo "== pip install -e .[${extras}]"
python3 -m pip install --disable-pip-version-check -q -e ".[${extras}]"
