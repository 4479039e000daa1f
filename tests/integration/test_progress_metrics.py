"""Honest progress (a job's Content in the instances' own size, with the time left) and the Prometheus
metrics of /tools/metrics-prometheus, on real servers: A pushes to B and B pulls from A, each through a
throttling proxy, so that the Content can be watched while the job runs (issue 14, items 3 and 4)."""

import hashlib
import time

import pytest

from tests.integration.transfer_helpers import load_study, pull, study_of
from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import free_port
from transfers_plugin.planner import push_buckets
from transfers_plugin.protocol import InstanceInfo, PushDescriptor, round_mb

MAX_PUSH = 3
N = 12  # slices of 512 x 512: about 6 MB, compressing with gzip
RATE = 1_000_000  # bytes per second through the proxies: a transfer takes about 3 s


@pytest.fixture(scope="module")
def servers(module_orthanc_factory):
    port_a = free_port()
    to_a = TcpProxy(port_a).start()
    b = module_orthanc_factory("b", transfers={"MaxPushTransactions": MAX_PUSH, "BucketSize": 512},
                               peers={"a": {"Url": to_a.url}})
    to_b = TcpProxy(b.http_port).start()
    a = module_orthanc_factory("a", http_port=port_a, transfers={"BucketSize": 512, "Threads": 2},
                               peers={"b": {"Url": to_b.url}})
    yield a, b, to_a, to_b
    to_a.stop()
    to_b.stop()


def metrics(server) -> dict:
    r = server.get("/tools/metrics-prometheus")
    assert r.status_code == 200, r.text
    values = {}
    for line in r.text.splitlines():
        if line.startswith("orthanc_transfers_"):
            name, value = line.split()[:2]
            values[name] = float(value)
    return values


def wait_metrics(server, expected: dict, timeout: float = 15.0) -> dict:
    """The server's transfers metrics once they have the expected values (they are published once a
    second); fails with the values seen."""
    deadline = time.monotonic() + timeout
    while True:
        seen = metrics(server)
        if all(seen.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            assert {k: seen.get(k) for k in expected} == expected
            return seen
        time.sleep(0.2)


def watch(server, job_id: str, timeout: float = 120.0):
    """The job's Content at each poll while it runs, and its final JSON."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.get_json(f"/jobs/{job_id}")
        if job["State"] in ("Success", "Failure"):
            return seen, job
        if job["State"] == "Running":
            seen.append(dict(job["Content"]))
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def study_bytes(server, study: str) -> int:
    """The study's size as Orthanc reports it (its DICOM files: no compression of the storage here)."""
    return int(server.get_json(f"/studies/{study}/statistics")["UncompressedSize"])


def assert_honest_progress(seen, final, study_size: int, wire_key: str):
    content = final["Content"]
    # While it ran: sizes in one unit, growing; the time left appears once it means something.
    during = [c for c in seen if "CompletedSizeMB" in c]
    assert during, seen
    completed = [c["CompletedSizeMB"] for c in during]
    assert completed == sorted(completed) and len(set(completed)) >= 2, completed
    assert all(c["CompletedSizeMB"] <= c["TotalSizeMB"] == content["TotalSizeMB"] for c in during)
    assert all(c["WireSizeMB"] == c[wire_key] for c in during)  # the C++ key, kept, is the wire's
    assert "RemainingSeconds" not in during[0], during[0]
    left = [c["RemainingSeconds"] for c in during if "RemainingSeconds" in c]
    assert left and all(isinstance(s, int) and s >= 0 for s in left), during
    # At the end: consistent with the transfer.
    assert content["TotalSizeMB"] == content["CompletedSizeMB"] == round_mb(study_size)
    assert content.get("RemainingSeconds", 0) == 0
    assert 0 < content["WireSizeMB"] < content["TotalSizeMB"]  # gzip
    assert content["WireSizeMB"] == content[wire_key]
    assert content["NetworkSpeedKBs"] > 0


def test_push_progress_and_metrics(servers):
    a, b, to_a, to_b = servers
    files = load_study(a, N, seed=1401)
    study = study_of(a, next(iter(files)))
    size = sum(len(d) for d in files.values())
    assert study_bytes(a, study) == size
    before_a, before_b = metrics(a), metrics(b)
    assert before_b["orthanc_transfers_available_push_count"] == MAX_PUSH
    to_b.set_upstream_rate(RATE)
    try:
        r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip",
                                            "Peer": "b"})
        assert r.status_code == 200, r.text
        seen, final = watch(a, r.json()["ID"])
    finally:
        to_b.set_upstream_rate(None)
    assert final["State"] == "Success", final
    assert study_bytes(b, study) == size
    assert_honest_progress(seen, final, size, "UploadedSizeMB")

    sent = wait_metrics(a, {"orthanc_transfers_jobs_push_success":
                            before_a["orthanc_transfers_jobs_push_success"] + 1})
    wire = sent["orthanc_transfers_push_sent_bytes_count"] - before_a["orthanc_transfers_push_sent_bytes_count"]
    assert 0 < wire < size
    got = wait_metrics(b, {
        "orthanc_transfers_created_push_count": before_b["orthanc_transfers_created_push_count"] + 1,
        "orthanc_transfers_committed_push_count": before_b["orthanc_transfers_committed_push_count"] + 1,
        "orthanc_transfers_aborted_push_count": before_b["orthanc_transfers_aborted_push_count"],
        "orthanc_transfers_available_push_count": MAX_PUSH,
        "orthanc_transfers_push_total_received_bytes_count":
            before_b["orthanc_transfers_push_total_received_bytes_count"] + size,
        "orthanc_transfers_push_received_bytes_count": before_b["orthanc_transfers_push_received_bytes_count"] + wire,
    })
    # The reception took the throttled upload's time (more than a second); the commit some time.
    assert got["orthanc_transfers_push_total_time_spent_in_reception_ms"] \
        - before_b["orthanc_transfers_push_total_time_spent_in_reception_ms"] > 1000
    assert got["orthanc_transfers_push_total_time_spent_in_commit_ms"] \
        >= before_b["orthanc_transfers_push_total_time_spent_in_commit_ms"]
    # A's cache served the upload: each instance loaded once, and dropped once all its bytes were sent (no
    # one asks for them again: the cache does not fill with a finished transfer).
    assert sent["orthanc_transfers_cache_miss_count"] - before_a["orthanc_transfers_cache_miss_count"] == N
    assert sent["orthanc_transfers_used_cache_size"] == before_a["orthanc_transfers_used_cache_size"]


def test_pull_progress_and_metrics(servers):
    a, b, to_a, to_b = servers
    files = load_study(a, N, seed=1402)
    study = study_of(a, next(iter(files)))
    size = sum(len(d) for d in files.values())
    before_a, before_b = metrics(a), metrics(b)
    to_a.set_rate(RATE)
    try:
        seen, final = watch(b, pull(b, "a", [{"Level": "Study", "ID": study}], "gzip"))
    finally:
        to_a.set_rate(None)
    assert final["State"] == "Success", final
    assert study_bytes(b, study) == size
    assert_honest_progress(seen, final, size, "DownloadedSizeMB")

    got = wait_metrics(b, {"orthanc_transfers_jobs_pull_success": before_b["orthanc_transfers_jobs_pull_success"] + 1,
                           "orthanc_transfers_jobs_pull_running": 0})
    key = "orthanc_transfers_pull_received_bytes_count"
    received = got[key] - before_b[key]
    assert 0 < received < size
    served = wait_metrics(a, {"orthanc_transfers_pull_sent_bytes_count":
                              before_a["orthanc_transfers_pull_sent_bytes_count"] + received})
    assert served["orthanc_transfers_cache_miss_count"] - before_a["orthanc_transfers_cache_miss_count"] == N
    assert served["orthanc_transfers_cache_hit_count"] >= before_a["orthanc_transfers_cache_hit_count"]
    assert served["orthanc_transfers_used_cache_size"] == before_a["orthanc_transfers_used_cache_size"]
    assert got["orthanc_transfers_retries_count"] == before_b["orthanc_transfers_retries_count"]
    assert got["orthanc_transfers_skipped_instances_count"] == before_b["orthanc_transfers_skipped_instances_count"]


def test_a_discarded_push_is_an_abort(servers):
    a, b, _, _ = servers
    data = next(iter(load_study(a, 1, seed=1403).values()))
    info = InstanceInfo("0" * 8 + "-" + "0" * 8 + "-" + "0" * 8 + "-" + "0" * 8 + "-" + "0" * 8, len(data),
                        hashlib.md5(data).hexdigest())
    descriptor = PushDescriptor((info,), tuple(push_buckets([(info.id, info.size)], 4096)), "none")
    assert len(descriptor.buckets) == 1
    total_key = "orthanc_transfers_push_total_received_bytes_count"
    wire_key = "orthanc_transfers_push_received_bytes_count"
    before = metrics(b)
    r = b.post("/transfers/push", json=descriptor.to_json())
    assert r.status_code == 200, r.text
    path = r.json()["Path"]
    wait_metrics(b, {"orthanc_transfers_available_push_count": MAX_PUSH - 1,
                     "orthanc_transfers_created_push_count": before["orthanc_transfers_created_push_count"] + 1})
    assert b.request("PUT", f"{path}/0", data=data).status_code == 200
    assert b.request("DELETE", path).status_code == 200
    wait_metrics(b, {
        "orthanc_transfers_available_push_count": MAX_PUSH,
        "orthanc_transfers_created_push_count": before["orthanc_transfers_created_push_count"] + 1,
        "orthanc_transfers_aborted_push_count": before["orthanc_transfers_aborted_push_count"] + 1,
        "orthanc_transfers_committed_push_count": before["orthanc_transfers_committed_push_count"],
        total_key: before[total_key],  # nothing committed
        wire_key: before[wire_key] + len(data),
    })
    assert b.request("DELETE", path).status_code == 404  # gone: a second DELETE counts nothing
    wait_metrics(b, {"orthanc_transfers_aborted_push_count": before["orthanc_transfers_aborted_push_count"] + 1})
