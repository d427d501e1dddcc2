#!/usr/bin/env bash
# Set up, start `launcher local` with the toy model, send one request, stop.
#   scripts/demo.sh            # 2 ranks
#   RANKS=4 scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[local]'

.venv/bin/launcher local --ranks "${RANKS:-2}" &
launcher=$!
trap 'kill -TERM $launcher 2>/dev/null || true; wait $launcher || true' EXIT
.venv/bin/python -m launcher.examples.request --wait 120 1 2 3
