#!/usr/bin/env bash
# Installs what the plugin, its tests and its demo need on Debian 12 (run as root, or with sudo).
#   - Debian packages: Orthanc 1.10, its Python plugin, python3-requests (the plugin's runtime dependency,
#     imported by the Python that Orthanc embeds), python3-zstandard (its optional codec), orthanc-postgresql
#     and postgresql (the cluster tests: a PostgreSQL server started by the tests, no system service),
#     python3-venv, and chromium (the Explorer's browser test);
#   - a virtual environment .venv with the project and its test extras (pytest, hypothesis, pydicom, ...);
#   - the second platform of the tests: a Debian 13 root filesystem (Orthanc 1.12.7, Python plugin 5.0,
#     Python 3.13) built by mmdebstrap from Debian's packages into a cache outside the clone, reused when
#     present (TRANSFERS_DEBIAN13_ROOT, by default ~/.cache/orthanc-transfers-py/debian13-root;
#     TRANSFERS_DEBIAN13=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=0
PACKAGES="orthanc orthanc-python python3-requests python3-zstandard orthanc-postgresql postgresql python3-venv chromium nginx openssl mmdebstrap util-linux"
for pkg in $PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "== apt-get install $PACKAGES"
  $SUDO apt-get update -qq
  # The orthanc package starts a system service on port 8042 where services are allowed; we use our own.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $PACKAGES >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "== pip install -e .[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

if [ "${TRANSFERS_DEBIAN13:-1}" != 0 ]; then
  cache="${TRANSFERS_CACHE_DIR:-$HOME/.cache/orthanc-transfers-py}"
  root="${TRANSFERS_DEBIAN13_ROOT:-$cache/debian13-root}"
  # What the root holds; a different list (or a root without it) is built again.
  wanted="trixie orthanc orthanc-python python3-requests python3-zstandard orthanc-postgresql"
  if [ ! -f "$root/.transfers-root" ] || [ "$(cat "$root/.transfers-root")" != "$wanted" ]; then
    echo "== Debian 13 root filesystem in $root (mmdebstrap, about a minute)"
    mkdir -p "$(dirname "$root")"
    rm -rf "$root.partial"
    # Built aside and renamed when complete, so that an interrupted build is never taken for a root.
    $SUDO mmdebstrap --quiet --variant=apt --include=orthanc,orthanc-python,python3-requests,python3-zstandard,orthanc-postgresql \
      trixie "$root.partial"
    echo "$wanted" | $SUDO tee "$root.partial/.transfers-root" >/dev/null
    $SUDO rm -rf "$root"
    $SUDO mv "$root.partial" "$root"
  fi
  echo "== Debian 13 platform: $(chroot "$root" dpkg-query -W -f '${Package} ${Version}, ' orthanc orthanc-python)in $root"
fi
