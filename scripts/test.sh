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
  read -r -a platforms <<<"${TRANSFERS_PLATFORMS:-debian12}"
else
  read -r -a platforms <<<"${TRANSFERS_PLATFORMS:-debian12 debian13}"
fi
# One pass per platform: the arguments, or else the whole suite on the first platform and the integration
# tests on the others. The passes run at the same time (TRANSFERS_SERIAL=1: one after the other): their
# tests mostly wait on servers and sockets, so that the whole run stays well under CI's 40 minutes on two
# cores. Each pass has its own ports (below the kernel's ephemeral range) and temporary folder.
run_pass() {  # index
  local index=$1 platform=${platforms[$1]} first=$((20000 + $1 * 6000))
  local selection=("${args[@]}")
  if [ ${#args[@]} -eq 0 ]; then
    if [ "$index" = 0 ]; then selection=(tests); else selection=(tests/integration); fi
  fi
  echo "== pytest on $platform: ${selection[*]}"
  TRANSFERS_PLATFORM="$platform" TRANSFERS_PORT_RANGE="$first-$((first + 5999))" \
    .venv/bin/python -m pytest -p no:cacheprovider --basetemp="$base/$platform" \
    --junitxml="test-artifacts/junit-$platform.xml" "${selection[@]}"
}
# Under /tmp, which the Debian 13 servers see too; one folder per run, so that runs on other checkouts of the
# same machine keep theirs; removed at the end.
base=$(mktemp -d /tmp/transfers-tests.XXXXXX)
trap 'rm -rf "$base"' EXIT
status=0
pids=()
if [ "${TRANSFERS_SERIAL:-0}" != 1 ]; then
  for index in "${!platforms[@]}"; do
    if [ "$index" != 0 ]; then
      echo "== ${platforms[$index]}: at the same time, output in test-artifacts/pytest-${platforms[$index]}.log"
      run_pass "$index" >"test-artifacts/pytest-${platforms[$index]}.log" 2>&1 &
      pids[index]=$!
    fi
  done
fi
for index in "${!platforms[@]}"; do
  code=0
  if [ -n "${pids[$index]:-}" ]; then
    wait "${pids[$index]}" || code=$?
    cat "test-artifacts/pytest-${platforms[$index]}.log"
  else
    run_pass "$index" || code=$?
  fi
  echo "== ${platforms[$index]}: pytest exit code $code"
  if [ "$code" != 0 ]; then status=$code; fi
done
exit $status
