"""The README's main command: the demo starts A and B, loads a study, sends it and stops cleanly."""

import subprocess
import sys

import pytest

from tools.orthanc_launcher import REPO_ROOT, free_port

pytestmark = pytest.mark.integration


def test_demo_runs_a_transfer(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tools.demo", "--seconds", "1", "--instances", "4", "--rows", "128",
         "--workdir", str(tmp_path / "demo"), "--port-a", str(free_port()), "--port-b", str(free_port())],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    # "auto" between two of our peers, both with zstandard (install.sh): the pixel-aware codec.
    assert "Done: B now holds 4 instances of the study (sent with zstd-shuffle)." in result.stdout, result.stdout
    assert "/transfers/send" in result.stdout and "Both servers are stopped." in result.stdout
