#!/usr/bin/env bash
# The benchmark (not part of the test suite): installs everything, then runs tools/bench.py.
#   scripts/bench.sh                       # 200 CT slices (~105 MB), loopback and WAN, 3 runs each
#   scripts/bench.sh --ct 400 --mr 200 --runs 5 --cxx-plugin /path/to/libOrthancTransfers.so
# Results: bench-results/results.json, results.md (the table) and results.png (the chart).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
exec .venv/bin/python -m tools.bench "$@"
