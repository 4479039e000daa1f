#!/usr/bin/env bash
# The scale benchmark (not part of the test suite): installs everything, then runs tools/scale.py.
#   scripts/scale.sh                                   # 1000 and 10000 small instances, 5 GB, 20 jobs at once
#   scripts/scale.sh --sizes 1000,3000,10000 --big-mb 2000 --parts small,big
# Results: bench-results/scale.json and scale.md (the table). Needs about 3x --big-mb of free disk.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
exec .venv/bin/python -m tools.scale "$@"
