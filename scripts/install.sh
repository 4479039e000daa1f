#!/usr/bin/env bash
# Installs what the plugin, its tests and its demo need on Debian 12 (run as root, or with sudo).
#   - Debian packages: Orthanc 1.10, its Python plugin, python3-requests (the plugin's runtime dependency,
#     imported by the Python that Orthanc embeds), python3-venv, and chromium (the Explorer's browser test);
#   - a virtual environment .venv with the project and its test extras (pytest, hypothesis, pydicom, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=0
PACKAGES="orthanc orthanc-python python3-requests python3-venv chromium nginx openssl"
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
