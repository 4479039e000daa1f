#!/usr/bin/env bash
# The main job: installs everything, starts two local Orthanc peers A and B with the plugin, loads a
# generated sample study into A, and prints the URLs and curl lines. Ctrl-C stops both servers.
# Options go to tools/demo.py (see: scripts/demo.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m tools.demo "$@"
