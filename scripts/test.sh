#!/usr/bin/env bash
# Installs everything (scripts/install.sh), then runs the linter and the whole test suite: unit tests without
# Orthanc, and the integration tests, which start real Orthanc servers on loopback ports, on both platforms:
# Debian 12's Orthanc 1.10.1 with Python plugin 4.0 (the host) and Debian 13's Orthanc 1.12.7 with Python
# plugin 5.0 (a root filesystem built by install.sh). TRANSFERS_PLATFORMS chooses (default "debian12 debian13").
# Extra arguments go to pytest, on the first platform only unless TRANSFERS_PLATFORMS is set, e.g.
#   scripts/test.sh tests/unit -k planner
#   TRANSFERS_PLATFORMS=debian13 scripts/test.sh tests/integration/test_push.py
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
mkdir -p test-artifacts
args=("$@")
if [ ${#args[@]} -gt 0 ]; then
  platforms="${TRANSFERS_PLATFORMS:-debian12}"
else
  platforms="${TRANSFERS_PLATFORMS:-debian12 debian13}"
fi
status=0
first=1
for platform in $platforms; do
  selection=("${args[@]}")
  if [ ${#args[@]} -eq 0 ]; then
    # The unit tests once, with the first platform; the integration tests on every platform.
    if [ "$first" = 1 ]; then selection=(tests); else selection=(tests/integration); fi
  fi
  echo "== pytest on $platform: ${selection[*]}"
  TRANSFERS_PLATFORM="$platform" .venv/bin/python -m pytest -p no:cacheprovider \
    --junitxml="test-artifacts/junit-$platform.xml" "${selection[@]}" || status=$?
  first=0
done
exit $status
