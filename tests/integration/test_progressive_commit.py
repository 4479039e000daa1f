"""Issue 15 item 3: ``ProgressiveCommit`` imports verified instances while the rest still moves.

Two of our servers, A (the source of a pull, the sender of a push) and B (the target). Transfers are slowed
down by ``MaxBandwidthKBs`` so that they are caught in the middle: with the option, instances are in B before
the job ends, and the end result is byte-identical; a failure, a cancel or a ``kill -9`` of B leaves none of
the transfer's instances at B, but keeps those B held before. Without it, nothing is visible before the end.
"""

import time

import pytest
from transfer_helpers import assert_same_instances, load_study, study_of, wait_job

from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

N = 30  # instances of about 130 KB: 4 MB
CAP = 700  # KB/s: about 6 s a transfer
PRE = 3  # instances B holds before the transfer (they are part of it: SkipExisting false)


def setup(orthanc_factory, b_transfers=None, remote_self=False):
    port_a, port_b = free_port(), free_port()
    b_entry = {"Url": f"http://127.0.0.1:{port_b}/"}
    if remote_self:
        b_entry["RemoteSelf"] = "a"
    a = orthanc_factory("a", http_port=port_a, transfers={"BucketSize": 256}, peers={"b": b_entry},
                        extra_config={"HttpTimeout": 10})
    b = orthanc_factory("b", http_port=port_b, transfers={"BucketSize": 256, **(b_transfers or {})},
                        peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}}, extra_config={"HttpTimeout": 10})
    files = load_study(a, N, rows=256, seed=1515)
    study = study_of(a, next(iter(files)))
    preexisting = sorted(files)[:PRE]
    for instance_id in preexisting:
        b.upload(files[instance_id])
    return a, b, files, study, preexisting


def start(a, b, mode, study, **options):
    """A throttled pull at B or push from A; (the server running the job, its ID)."""
    body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip", "SkipExisting": False,
            "MaxBandwidthKBs": CAP, **options}
    if mode == "pull":
        server, r = b, b.post("/transfers/pull", json=dict(body, Peer="a"))
    else:
        server, r = a, a.post("/transfers/send", json=dict(body, Peer="b"))
    assert r.status_code == 200, r.text
    return server, r.json()["ID"]


def count(server) -> int:
    return int(server.get_json("/statistics")["CountInstances"])


def watch(server, job_id, b):
    """Until the job ends: (state, buckets done, instances at B) seen while it ran, and the final job."""
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = server.get_json(f"/jobs/{job_id}")
        if job["State"] in ("Success", "Failure"):
            return seen, job
        n = count(b)
        seen.append((job["State"], int(job["Content"].get("CompletedHttpQueries", 0)), n))
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def wait_count_at_least(server, job_server, job_id, n):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if count(server) >= n:
            state = job_server.get_json(f"/jobs/{job_id}")["State"]
            assert state == "Running", f"the transfer ended ({state}) before it was caught in the middle"
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} instances never appeared at {server.name}")


def wait_instances(server, expected, timeout=20.0):
    deadline = time.monotonic() + timeout
    while sorted(server.instances()) != sorted(expected) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(server.instances()) == sorted(expected), \
        f"{len(server.instances())} instances at {server.name}, expected {len(expected)}"


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_instances_appear_before_the_end_and_the_result_is_identical(orthanc_factory, mode):
    a, b, files, study, _ = setup(orthanc_factory)
    server, job_id = start(a, b, mode, study, ProgressiveCommit=True)
    seen, job = watch(server, job_id, b)
    assert job["State"] == "Success", job
    assert job["Content"]["ProgressiveCommit"] is True
    running = [n for state, _, n in seen if state == "Running"]
    assert any(PRE < n < N for n in running), f"no instance was imported before the end: {running}"
    assert_same_instances(b, files)


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_by_default_nothing_is_visible_before_the_end(orthanc_factory, mode):
    a, b, files, study, _ = setup(orthanc_factory)
    server, job_id = start(a, b, mode, study)
    seen, job = watch(server, job_id, b)
    assert job["State"] == "Success", job
    assert job["Content"].get("ProgressiveCommit", False) is False
    buckets = int(job["Content"]["CompletedHttpQueries"])
    # Caught in the second half of the download (not every bucket in yet: no commit started)...
    late = [(done, n) for state, done, n in seen if state == "Running" and buckets / 2 <= done < buckets]
    assert late, f"the transfer was not caught in its second half: {seen}"
    # ... B holds only what it held before.
    assert all(n == PRE for _, n in late), late
    assert_same_instances(b, files)


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_a_cancel_mid_transfer_deletes_what_it_imported_and_keeps_what_was_there(orthanc_factory, mode):
    a, b, files, study, preexisting = setup(orthanc_factory)
    server, job_id = start(a, b, mode, study, ProgressiveCommit=True)
    wait_count_at_least(b, server, job_id, PRE + 5)
    assert server.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = wait_job(server, job_id, states=("Failure",))
    assert job["State"] == "Failure"
    wait_instances(b, preexisting)


def test_a_source_killed_mid_pull_leaves_only_what_was_there(orthanc_factory):
    a, b, files, study, preexisting = setup(orthanc_factory)
    server, job_id = start(a, b, "pull", study, ProgressiveCommit=True)
    wait_count_at_least(b, b, job_id, PRE + 5)
    a.kill()
    job = wait_job(b, job_id)
    assert job["State"] == "Failure", job
    wait_instances(b, preexisting)
    assert "progressive commit had imported were deleted again" in b.log_text()


def test_kill_9_of_the_puller_then_restart_resumes_and_completes(orthanc_factory):
    a, b, files, study, _ = setup(orthanc_factory)
    _, job_id = start(a, b, "pull", study, ProgressiveCommit=True)
    wait_count_at_least(b, b, job_id, PRE + 5)
    b.kill()
    b.start()
    job = wait_job(b, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(b, files)


def test_kill_9_of_the_puller_then_a_failing_resume_leaves_only_what_was_there(orthanc_factory):
    a, b, files, study, preexisting = setup(orthanc_factory)
    _, job_id = start(a, b, "pull", study, ProgressiveCommit=True)
    wait_count_at_least(b, b, job_id, PRE + 5)
    b.kill()
    a.kill()  # the resumed job cannot reach its source any more: it fails
    b.start()
    job = wait_job(b, job_id)
    assert job["State"] == "Failure", job
    wait_instances(b, preexisting)


def test_kill_9_of_the_push_receiver_then_restart_leaves_only_what_was_there(orthanc_factory):
    a, b, files, study, preexisting = setup(orthanc_factory)
    _, job_id = start(a, b, "push", study, ProgressiveCommit=True)
    wait_count_at_least(b, a, job_id, PRE + 5)
    b.kill()
    job = wait_job(a, job_id)
    assert job["State"] == "Failure", job
    b.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "deleted again" not in b.log_text():
        time.sleep(0.1)
    assert "deleted again" in b.log_text(), b.log_tail(40)
    assert sorted(b.instances()) == sorted(preexisting)


def test_a_send_in_pull_mode_passes_the_option_to_our_peer(orthanc_factory):
    a, b, files, study, _ = setup(orthanc_factory, remote_self=True)
    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip",
                                        "Peer": "b", "SkipExisting": False, "MaxBandwidthKBs": CAP,
                                        "ProgressiveCommit": True})
    assert r.status_code == 200, r.text
    remote = r.json()["RemoteJob"]
    seen, job = watch(b, remote, b)
    assert job["State"] == "Success", job
    assert job["Content"]["ProgressiveCommit"] is True
    assert any(PRE < n < N for state, _, n in seen if state == "Running"), seen
    assert_same_instances(b, files)


def test_the_configuration_sets_the_default(orthanc_factory):
    a, b, files, study, _ = setup(orthanc_factory, b_transfers={"ProgressiveCommit": True})
    _, job_id = start(a, b, "pull", study)
    seen, job = watch(b, job_id, b)
    assert job["State"] == "Success", job
    assert job["Content"]["ProgressiveCommit"] is True
    assert any(PRE < n < N for state, _, n in seen if state == "Running"), seen
    assert_same_instances(b, files)
