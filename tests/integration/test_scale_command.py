"""The scale benchmark command runs end to end on a tiny workload and writes its table and JSON.

Only that it works is checked here; what it measures is for the benchmark itself (README), not for pass/fail."""

import json
import subprocess
import sys

import pytest

from tools.orthanc_launcher import REPO_ROOT

pytestmark = pytest.mark.integration


def test_scale_command_writes_its_report(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "tools.scale", "--sizes", "4,8", "--big-mb", "3", "--big-rows", "256", "--jobs", "4",
         "--jobs-instances", "2", "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "scale.json").read_text())
    rows = [(r["part"], r["name"], r["instances"]) for r in report["rows"]]
    assert rows == [("small", "pull-none", 4), ("small", "push-none", 4), ("small", "pull-none", 8),
                    ("small", "push-none", 8), ("big", "pull-none", 23), ("jobs", "4 jobs", 8),
                    ("state", "save of 4 jobs x 8 instances", 8)]
    for r in report["rows"]:
        assert r["seconds"] > 0
        if r["part"] != "state":
            assert r["peak_mb_a"] > 0 and r["peak_mb_b"] > 0
    small = [r for r in report["rows"] if r["part"] == "small"]
    assert all(r["per_instance_vs_smallest"] > 0 for r in small)
    jobs = report["rows"][5]
    assert jobs["succeeded"] == 4 and jobs["stored"] == 8 and jobs["failures"] == []
    assert report["rows"][4]["mb_per_s"] > 0 and report["rows"][6]["bytes_written"] > 0
    assert "| jobs | 4 jobs (4 succeeded) | 8 |" in (out / "scale.md").read_text()
    assert not list((tmp_path / "work").iterdir()), "each part removes its servers' storage"


def test_scale_command_refuses_unknown_parts_and_modes(tmp_path):
    for args in (["--parts", "small,huge"], ["--modes", "push-zip"], ["--sizes", "ten"], ["--jobs", "0"]):
        result = subprocess.run([sys.executable, "-m", "tools.scale", "--out", str(tmp_path / "out"), *args],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
    assert not (tmp_path / "out").exists(), "refused before anything is done"
