"""POST /transfers/send end to end: push mode (PushTransfer job) and pull mode (a peer with RemoteSelf)."""

import hashlib
import time

import pytest
import requests
from corpus import upload_files
from transfer_helpers import assert_same_instances, load_study, new_instance_changes, study_of, wait_job

from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

PUSH_CONTENT = {"Resources", "Peer", "Compression", "TotalInstances", "TotalSizeMB", "CompletedHttpQueries",
                "UploadedSizeMB", "NetworkSpeedKBs", "SkippedInstances", "SkippedSizeMB",
                "CompletedSizeMB", "WireSizeMB", "RemainingSeconds"}  # ours (issue 14): the instances' own size


@pytest.fixture(scope="module")
def pair(module_orthanc_factory, corpus):
    """A holds the corpus and knows B as "b-push" (push mode) and "b" (RemoteSelf: pull mode)."""
    port_a, port_b = free_port(), free_port()
    a = module_orthanc_factory("a", http_port=port_a, transfers={"BucketSize": 256},
                               extra_config={"JobsHistorySize": 1000},
                               peers={"b-push": {"Url": f"http://127.0.0.1:{port_b}/"},
                                      "b": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
    b = module_orthanc_factory("b", http_port=port_b, transfers={"BucketSize": 256},
                               extra_config={"JobsHistorySize": 1000},
                               peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}})
    files = upload_files(a, corpus.files)
    assert len(a.get_json("/studies")) == corpus.study_count()
    return a, b, files


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")


def send(a, peer, resources, compression, priority=0):
    r = a.post("/transfers/send", json={"Resources": resources, "Compression": compression, "Peer": peer,
                                        "Priority": priority})
    assert r.status_code == 200, r.text
    return r.json()


def assert_manifest_md5(server, files):
    assert sorted(server.instances()) == sorted(files)
    for instance_id, f in files.items():
        assert hashlib.md5(server.get(f"/instances/{instance_id}/file").content).hexdigest() == f.md5, f.relative


def test_push_every_study_gzip(pair):
    a, b, files = pair
    clear(b)
    answers = {s: send(a, "b-push", [{"Level": "Study", "ID": s}], "gzip", priority=5) for s in a.get_json("/studies")}
    for study, answer in answers.items():
        assert set(answer) == {"ID", "Path"} and answer["Path"] == f"/jobs/{answer['ID']}"
        job = wait_job(a, answer["ID"])
        assert job["State"] == "Success", job
        assert job["Type"] == "PushTransfer" and job["Priority"] == 5
        assert set(job["Content"]) == PUSH_CONTENT, job["Content"]
        assert job["Content"]["TotalInstances"] == len(a.get_json(f"/studies/{study}/instances"))
    assert_manifest_md5(b, files)
    assert not any((b.workdir / "storage" / "transfers-tmp").glob("push-*")), "receiver left files behind"


def test_push_everything_none(pair):
    a, b, files = pair
    clear(b)
    resources = [{"Level": "Patient", "ID": p} for p in a.get_json("/patients")]
    answer = send(a, "b-push", resources, "none", priority=-1)
    job = wait_job(a, answer["ID"])
    assert job["State"] == "Success", job
    total = sum(f.size for f in files.values())
    content = job["Content"]
    assert content["TotalInstances"] == len(files) and content["TotalSizeMB"] == round(total / 1048576)
    assert content["UploadedSizeMB"] == round(total / 1048576)
    assert content["CompletedHttpQueries"] >= total // (2 * 256 * 1024)
    assert content["Peer"] == "b-push" and content["Compression"] == "none" and content["Resources"] == resources
    assert job["Priority"] == -1 and job["Progress"] == 100
    assert_manifest_md5(b, files)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_send_in_pull_mode(pair, compression):
    a, b, files = pair
    clear(b)
    resources = [{"Level": "Study", "ID": s} for s in a.get_json("/studies")]
    answer = send(a, "b", resources, compression, priority=2)
    assert set(answer) == {"Peer", "RemoteJob", "URL"}
    assert answer["Peer"] == "b" and answer["URL"] == f"{b.url}/jobs/{answer['RemoteJob']}"
    assert a.get(f"/jobs/{answer['RemoteJob']}").status_code == 404, "the job runs at B, not at A"
    job = wait_job(b, answer["RemoteJob"])
    assert job["State"] == "Success", job
    assert job["Type"] == "PullTransfer" and job["Content"]["Peer"] == "a"
    # The sender's Priority (2) is not forwarded: the peer chooses it (0), as with the C++ plugin.
    assert job["Priority"] == 0
    assert job["Content"]["Originator"] == a.post("/transfers/lookup", json=[]).json()["Originator"]
    assert requests.get(answer["URL"], timeout=10).json()["State"] == "Success"
    assert_manifest_md5(b, files)


def test_send_refusals(pair):
    a, b, files = pair
    before = a.get_json("/jobs")
    for body, status in [({"Resources": [], "Compression": "gzip", "Peer": "nobody"}, 404),
                         ({"Resources": [{"Level": "Galaxy", "ID": "x"}], "Compression": "gzip",
                           "Peer": "b-push"}, 400),
                         ({"Resources": [], "Compression": "lzma", "Peer": "b-push"}, 400),
                         ({"Resources": [], "Peer": "b-push"}, 400)]:
        r = a.post("/transfers/send", json=body)
        assert r.status_code == status, r.text
        assert r.json()["Message"]
    assert a.post("/transfers/send", data=b"{").status_code == 400
    assert a.get("/transfers/send").status_code == 405
    assert a.get_json("/jobs") == before
    # An unknown resource is found when the job runs: it fails and says so.
    answer = send(a, "b-push", [{"Level": "Study", "ID": "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"}], "gzip")
    job = wait_job(a, answer["ID"])
    assert job["State"] == "Failure" and "ffffffff" in job["ErrorDescription"]


# -- several senders, pause, cancel ----------------------------------------------------------------------


@pytest.fixture
def throttled(orthanc_factory):
    """A sends to B through a throttling proxy; B accepts 4 push transactions at once."""
    b = orthanc_factory("b", transfers={"MaxPushTransactions": 4})
    proxy = TcpProxy(b.http_port, rate=None).start()
    a = orthanc_factory("a", transfers={"BucketSize": 512, "Threads": 2},
                        extra_config={"ConcurrentJobs": 6}, peers={"b": {"Url": proxy.url}})
    yield a, b, proxy
    proxy.stop()


def test_six_simultaneous_sends_to_four_slots(throttled):
    a, b, proxy = throttled
    studies = {}
    for seed in range(6):
        files = load_study(a, 6, rows=512, seed=100 + seed)
        studies[study_of(a, next(iter(files)))] = files
    proxy.set_upstream_rate(4_000_000)  # the uploads overlap: six senders want four slots
    jobs = {s: send(a, "b", [{"Level": "Study", "ID": s}], "none")["ID"] for s in studies}
    results = {s: wait_job(a, j, timeout=300) for s, j in jobs.items()}
    stored = set(b.instances())
    for study, job in results.items():
        expected = set(studies[study])
        if job["State"] == "Success":
            assert expected <= stored
        else:
            assert job["ErrorDescription"], "a failure must say why"
            assert not (expected & stored), "a failed transfer must leave nothing behind"
    assert all(j["State"] == "Success" for j in results.values()), \
        {s: (j["State"], j["ErrorDescription"]) for s, j in results.items()}
    assert all(n == 1 for n in new_instance_changes(b).values())
    assert not any((b.workdir / "storage" / "transfers-tmp").glob("push-*"))
    assert "is busy" in a.log_text(), "the receiver was full at some point and the senders waited"


def slow_push_under_way(a, proxy, n: int, seed: int, buckets_done: int):
    """A generated study of ``n`` slices pushed from A to "b" at 2 MB/s; returns once ``buckets_done`` buckets
    went up (its files and the job's ID)."""
    files = load_study(a, n, rows=512, seed=seed)
    study = study_of(a, next(iter(files)))
    proxy.set_upstream_rate(2_000_000)
    job_id = send(a, "b", [{"Level": "Study", "ID": study}], "none")["ID"]
    wait_job(a, job_id, ["Running"],
             condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= buckets_done)
    return files, job_id


def test_cancel_and_pause_a_push(throttled):
    a, b, proxy = throttled
    files, job_id = slow_push_under_way(a, proxy, 30, 300, 2)
    asked = time.monotonic()
    a.post(f"/jobs/{job_id}/pause")
    wait_job(a, job_id, ["Paused"], timeout=10)
    assert time.monotonic() - asked < 2.0
    a.post(f"/jobs/{job_id}/resume")
    wait_job(a, job_id, ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 4)
    asked = time.monotonic()
    a.post(f"/jobs/{job_id}/cancel")
    job = wait_job(a, job_id, ["Failure"], timeout=10)
    assert time.monotonic() - asked < 2.0 and job["ErrorCode"] == 37
    deadline = time.monotonic() + 10
    while any((b.workdir / "storage" / "transfers-tmp").glob("push-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any((b.workdir / "storage" / "transfers-tmp").glob("push-*")), "the remote transaction was discarded"
    assert b.instances() == []
    proxy.set_upstream_rate(None)
    assert a.post(f"/jobs/{job_id}/resubmit").status_code == 200
    assert wait_job(a, job_id)["State"] == "Success"
    assert_same_instances(b, files)


def test_sender_killed_mid_push_goes_on_after_restart(throttled):
    a, b, proxy = throttled
    files, job_id = slow_push_under_way(a, proxy, 24, 400, 3)
    a.kill()
    time.sleep(1.5)
    a.start()
    proxy.set_upstream_rate(None)
    job = wait_job(a, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(b, files)
    assert all(n == 1 for n in new_instance_changes(b).values())
    assert not any((b.workdir / "storage" / "transfers-tmp").glob("push-*"))
