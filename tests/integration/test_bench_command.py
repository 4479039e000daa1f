"""The benchmark command runs end to end on a tiny workload and writes its table, JSON and chart.

Only that it works is checked here; what it measures is for the benchmark itself, not for pass/fail."""

import argparse
import json
import subprocess
import sys

import pytest

from tools import bench
from tools.orthanc_launcher import REPO_ROOT, default_platform

pytestmark = pytest.mark.integration


def test_bench_command_writes_its_report(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--ct", "3", "--mr", "2", "--runs", "1", "--profiles", "loopback,wan",
         "--modes", "peers,pull-none", "--delay-ms", "1", "--capacity-mbit", "1000", "--window-kb", "512",
         "--tuned", '{"Threads": 2}', "--orthanc", '{"Python": {"AllowThreads": true}}', "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    rows = {(r["workload"], r["profile"], r["mode"]) for r in report["results"]}
    assert rows == {(w, p, m) for w in ("ct", "mr") for p in ("loopback", "wan")
                    for m in ("peers", "pull-none", "tuned-pull-none")}
    for r in report["results"]:
        assert r["median_seconds"] > 0 and len(r["runs"]) == 1
        assert r["peak_mb_a"] > 0 and r["peak_mb_b"] > 0
        if r["profile"] == "wan":
            assert r["median_wire_bytes"] > 0 and r["link_limit_seconds"] > 0
    assert report["workload"]["ct"] == 3 and report["workload"]["mr"] == 2
    assert report["orthanc"] == '{"Python": {"AllowThreads": true}}' and report["platform"] == default_platform()
    assert set(report["workload"]["bytes"]) == {"ct", "mr"} and all(report["workload"]["bytes"].values())
    # One line of ratios per workload and profile, our best against built-in peers.
    assert report["summary"].count("our best") == 4 and "x built-in peers" in report["summary"]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mr | wan | tuned-pull-none |" in (out / "results.md").read_text()


def test_bench_command_refuses_a_missing_cxx_library_or_two_builds_of_one_name(tmp_path):
    def bench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.bench", "--out", str(tmp_path / "out"), *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    result = bench("--cxx-plugin", f"1.4={tmp_path}/missing.so")
    assert result.returncode == 2 and f"{tmp_path}/missing.so" in result.stderr
    library = tmp_path / "lib=1.so"  # "=" in a path is not a label
    library.write_bytes(b"")
    result = bench("--cxx-plugin", str(library), "--cxx-plugin", f"a={library}", "--cxx-plugin", f"a={library}")
    assert result.returncode == 2 and "two builds are named 'cxx-a'" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists(), "refused before anything is done"


def test_bench_command_measures_a_capped_transfer(tmp_path):
    """``--cap-kbs``: our modes once each with the cap in the request; the figure itself is the benchmark's
    (README), only a bound that a slow machine cannot break is checked here."""
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--ct", "3", "--cap-kbs", "800", "--modes", "push-none,pull-gzip",
         "--out", str(out), "--workdir", str(tmp_path / "work")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "cap.json").read_text())
    assert [r["mode"] for r in report["rows"]] == ["push-none", "pull-gzip"]
    for r in report["rows"]:
        assert r["cap_kbs"] == 800 and r["wire_bytes"] > 0 and r["seconds"] > 0
        assert r["overall_kbs"] <= 800 * 1.5, r
    assert "| push-none | 800 |" in (out / "cap.md").read_text()


def test_bench_orthanc_options_reach_our_servers_only(tmp_path):
    """``--orthanc``: Orthanc options of our servers (A and B), not of a C++ plugin's."""
    args = argparse.Namespace(delay_ms=20, capacity_mbit=100, window_kb=128)
    ours = bench.Setup(tmp_path / "py", "loopback", args, None, {}, {"Python": {"AllowThreads": True}})
    for server in (ours.a, ours.b):
        assert server.config()["Python"] == {"AllowThreads": True}
        assert server.config()["HttpTimeout"] == 600  # the benchmark's own options stay
    cxx = bench.Setup(tmp_path / "cxx", "loopback", args, "/nonexistent/libOrthancTransfers.so", {},
                      {"Python": {"AllowThreads": True}})
    assert "Python" not in cxx.a.config() and "Python" not in cxx.b.config()
