#!/usr/bin/env bash
# Installs everything (scripts/install.sh), then runs the linter and the whole test suite:
# unit tests without Orthanc, integration tests that start real Orthanc servers on loopback ports.
# Extra arguments go to pytest, e.g.  scripts/test.sh tests/unit -k planner
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The C++ Transfers accelerator, built from ../shared/cxx-transfers into a cache outside the clone (skipped
# when up to date), so that the live interoperability tests run against release 1.4 and mainline.
# TRANSFERS_CXX_PLUGINS set beforehand (even empty) chooses other builds (or none) instead.
shared="${TRANSFERS_SHARED_DIR:-../shared}"
if [ -z "${TRANSFERS_CXX_PLUGINS+set}" ] && [ -f "$shared/cxx-transfers/build.sh" ]; then
  cache="${TRANSFERS_CACHE_DIR:-$HOME/.cache/orthanc-transfers-py}/cxx"
  echo "== C++ Transfers plugin builds in $cache"
  bash "$shared/cxx-transfers/build.sh" "$cache" 1.4 mainline
  export TRANSFERS_CXX_PLUGINS="1.4=$cache/build-1.4/libOrthancTransfers.so:mainline=$cache/build-mainline/libOrthancTransfers.so"
fi
echo "== ruff check"
.venv/bin/ruff check .
echo "== pytest"
mkdir -p test-artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider --junitxml=test-artifacts/junit.xml "$@"
