"""``CommitThreadsCount`` and the GIL: imports in parallel where the Python plugin releases the GIL.

Each import is one ``POST /instances`` through the SDK. The Python plugin holds the GIL during SDK calls,
unless ``"Python": {"AllowThreads": true}`` on plugin 4.3 or later (Debian 13's 5.0; Debian 12's 4.0 has no
such option): only then can several commit threads import at once. The plugin says at start what the setting
does on this platform (a warning when more than one thread cannot help), and transfers with several commit
threads, progressive or not, cancelled or not, end as with one: all or nothing, byte-identical.

Run on the platform of the pass (``TRANSFERS_PLATFORM``): on Debian 12 the same tests check that plugin 4.0
ignores ``AllowThreads`` and that the plugin says so.
"""

import time

import pytest
from transfer_helpers import assert_same_instances, load_study, study_of, wait_job

from tools.orthanc_launcher import DEBIAN13, default_platform, free_port

pytestmark = pytest.mark.integration

N = 40  # instances of about 130 KB: 5 MB
ALLOW_THREADS = {"Python": {"AllowThreads": True}}
PARALLEL = {"BucketSize": 256, "CommitThreadsCount": 4}


def releases_gil_here() -> bool:
    return default_platform() == DEBIAN13  # plugin 5.0 has AllowThreads; the host's 4.0 has not


def pair(orthanc_factory, transfers, extra):
    port_a, port_b = free_port(), free_port()
    a = orthanc_factory("a", http_port=port_a, transfers=transfers, extra_config=dict(extra),
                        peers={"b": {"Url": f"http://127.0.0.1:{port_b}/"}})
    b = orthanc_factory("b", http_port=port_b, transfers=transfers, extra_config=dict(extra),
                        peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}})
    return a, b


def started_log(server) -> str:
    """The server's log once the plugin's start is over: the metrics are published last, after the advice
    was logged (``Application.on_started``), so their first publication marks the end."""
    deadline = time.monotonic() + 60
    while "orthanc_transfers_" not in server.get("/tools/metrics-prometheus").text:
        assert time.monotonic() < deadline, "the plugin's metrics were never published"
        time.sleep(0.1)
    return server.log_path.read_text(errors="replace")


def advice_warnings(log: str):
    return [line for line in log.splitlines() if "Transfers.CommitThreadsCount is" in line]


def test_parallel_commit_threads_transfer_all_or_nothing(orthanc_factory):
    """CommitThreadsCount 4 with AllowThreads on: a pull and a push, with the default and with the progressive
    commit, each byte-identical; the plugin warns only where the GIL stays held (plugin 4.0)."""
    a, b = pair(orthanc_factory, PARALLEL, ALLOW_THREADS)
    warnings = advice_warnings(started_log(b))
    if releases_gil_here():
        assert warnings == [], warnings
    else:
        assert len(warnings) == 1 and "no AllowThreads option" in warnings[0], warnings
    files = load_study(a, N, rows=256, seed=4242)
    study = study_of(a, next(iter(files)))
    resources = [{"Level": "Study", "ID": study}]
    runs = [(b, "/transfers/pull", "a", "none"), (a, "/transfers/send", "b", "gzip")]  # a pull, a push
    for progressive in (False, True):
        for server, route, peer, compression in runs:
            r = server.post(route, json={"Resources": resources, "Compression": compression, "Peer": peer,
                                         "ProgressiveCommit": progressive})
            assert r.status_code == 200, r.text
            job = wait_job(server, r.json()["ID"], timeout=120)
            assert job["State"] == "Success", job
            assert_same_instances(b, files)
            for patient in b.get_json("/patients"):
                b.request("DELETE", f"/patients/{patient}")


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_a_cancel_with_parallel_imports_leaves_only_what_was_there(orthanc_factory, mode):
    """A progressive transfer with 4 commit threads, cancelled once instances are in: every instance it
    imported, by whichever thread, goes again; what B held before stays."""
    a, b = pair(orthanc_factory, PARALLEL, ALLOW_THREADS)
    files = load_study(a, N, rows=256, seed=4343)
    study = study_of(a, next(iter(files)))
    preexisting = sorted(files)[:3]
    for instance_id in preexisting:
        b.upload(files[instance_id])
    body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip", "SkipExisting": False,
            "MaxBandwidthKBs": 700, "ProgressiveCommit": True}
    server, r = (b, b.post("/transfers/pull", json=dict(body, Peer="a"))) if mode == "pull" else \
        (a, a.post("/transfers/send", json=dict(body, Peer="b")))
    assert r.status_code == 200, r.text
    job_id = r.json()["ID"]
    deadline = time.monotonic() + 60
    while int(b.get_json("/statistics")["CountInstances"]) < len(preexisting) + 5:
        assert time.monotonic() < deadline, "no instance was imported"
        assert server.get_json(f"/jobs/{job_id}")["State"] in ("Pending", "Running"), \
            "the transfer ended before the cancel"
        time.sleep(0.05)
    assert server.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert wait_job(server, job_id, states=("Failure",))["State"] == "Failure"
    deadline = time.monotonic() + 20
    while sorted(b.instances()) != preexisting and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(b.instances()) == preexisting


def test_several_commit_threads_without_allow_threads_are_warned_about(orthanc_factory):
    """AllowThreads off (Orthanc's default): CommitThreadsCount 2 cannot import in parallel, and the plugin
    says why, on either plugin; the transfer works as with one thread."""
    a, b = pair(orthanc_factory, {"CommitThreadsCount": 2}, {})
    warnings = advice_warnings(started_log(b))
    expected = "Python.AllowThreads is false" if releases_gil_here() else "no AllowThreads option"
    assert len(warnings) == 1 and expected in warnings[0] and "set CommitThreadsCount to 1" in warnings[0], \
        warnings
    files = load_study(a, 6, rows=256, seed=4444)
    r = b.post("/transfers/pull", json={"Resources": [{"Level": "Study", "ID": study_of(a, next(iter(files)))}],
                                         "Compression": "none", "Peer": "a"})
    assert r.status_code == 200, r.text
    assert wait_job(b, r.json()["ID"], timeout=120)["State"] == "Success"
    assert_same_instances(b, files)
