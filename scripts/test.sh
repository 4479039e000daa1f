#!/usr/bin/env bash
# Installs everything (scripts/install.sh), then runs the linter and the whole test suite:
# unit tests without Orthanc, integration tests that start real Orthanc servers on loopback ports.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/unit -k planner
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "== ruff check"
.venv/bin/ruff check .
echo "== pytest"
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider --junitxml=test-artifacts/junit.xml "$@"
