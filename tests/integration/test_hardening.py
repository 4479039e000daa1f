"""Hostile peers, full disks and restarts, on real servers: nothing written outside the download area,
errors in words, nothing left behind, and a resubmit that works right after a failure.

The download areas that fill up are small tmpfs mounts made by the test (it runs as root, as CI does).
"""

import errno
import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from transfer_helpers import (
    area_files,
    assert_alive,
    assert_area_empty,
    assert_same_instances,
    load_study,
    new_instance_changes,
    pull,
    study_of,
    wait_job,
)

from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(mb)``: a folder on a tmpfs of that size, unmounted at the end."""
    mounts = []
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]

    def make(mb: int) -> Path:
        folder = tmp_path / f"disk-{len(mounts)}"
        folder.mkdir()
        subprocess.run(sudo + ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)], check=True)
        mounts.append(folder)
        return folder / "area"

    yield make
    for folder in mounts:
        subprocess.run(sudo + ["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Takes every free byte of the disk of ``disk``; returns the filler file (delete it to free them)."""
    filler = disk.parent / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1 << 20, 4096, 1):
            data = b"\0" * block
            try:
                while True:
                    os.write(fd, data)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


def assert_clean_failure(job, *words):
    assert job["State"] == "Failure", job
    text = job["ErrorDescription"]
    for w in words:
        assert w in text, (w, text)
    for field in ("ErrorDescription", "ErrorDetails"):
        assert "Traceback" not in job[field] and "[Errno" not in job[field], job[field]


def assert_only_verified_files(server, files):
    """What a failed pull keeps: whole instances whose bytes are the source's, nothing partial."""
    kept = area_files(server)
    for path in kept:
        instance_id = path.name[:-len(".dcm")]
        assert path.suffix == ".dcm" and instance_id in files, path
        assert hashlib.md5(path.read_bytes()).digest() == hashlib.md5(files[instance_id]).digest(), \
            f"a partial or damaged file was kept: {path}"
    return kept


# --- a full download area --------------------------------------------------------------------------------

def test_a_pull_larger_than_the_download_area_fails_at_once_and_creates_nothing(orthanc_factory, small_disk):
    area = small_disk(4)
    source = orthanc_factory("source")
    files = load_study(source, 16, seed=21)  # about 8 MB
    target = orthanc_factory("target", transfers={"DownloadArea": str(area)}, peers={"a": source.peer_entry()})
    job = wait_job(target, pull(target, "a", [{"Level": "Study", "ID": study_of(source, next(iter(files)))}]))
    assert_clean_failure(job, str(area), "MB free", "needs")
    assert target.instances() == [] and area_files(target) == []
    assert_alive(target)


def test_a_pull_that_fills_the_download_area_keeps_only_verified_files_then_a_resubmit_reuses_them(
        orthanc_factory, small_disk):
    area = small_disk(16)
    source = orthanc_factory("source")
    files = load_study(source, 24, seed=22)  # about 12.6 MB
    proxy = TcpProxy(source.http_port, rate=2_500_000).start()
    try:
        target = orthanc_factory("target", transfers={"DownloadArea": str(area), "BucketSize": 1024, "Threads": 2},
                                 peers={"a": {"Url": proxy.url}})
        study = study_of(source, next(iter(files)))
        job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
        wait_job(target, job_id, ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 3)
        filler = fill(area)
        job = wait_job(target, job_id)
        assert_clean_failure(job, str(area), "is full")
        assert target.instances() == []
        kept = assert_only_verified_files(target, files)
        assert kept, "the instances verified before the disk filled up are kept for a resubmit"
        kept_bytes = sum(p.stat().st_size for p in kept)

        filler.unlink()
        proxy.set_rate(None)
        before = proxy.downstream_bytes
        assert target.post(f"/jobs/{job_id}/resubmit").status_code == 200
        job = wait_job(target, job_id)
        assert job["State"] == "Success", job
        assert_same_instances(target, files)
        moved = proxy.downstream_bytes - before
        assert moved < sum(len(d) for d in files.values()) - kept_bytes / 2, \
            "the resubmit fetched the kept instances again"
        assert_area_empty(target)
        assert_alive(target)
    finally:
        proxy.stop()


def test_a_push_larger_than_the_receivers_download_area_is_refused_in_words(orthanc_factory, small_disk):
    area = small_disk(4)
    b = orthanc_factory("b", transfers={"DownloadArea": str(area)})
    a = orthanc_factory("a", peers={"b": b.peer_entry()})
    files = load_study(a, 16, seed=23)
    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study_of(a, next(iter(files)))}],
                                        "Compression": "none", "Peer": "b"})
    job = wait_job(a, r.json()["ID"])
    assert_clean_failure(job, "'b'", "507", "MB free")
    assert b.instances() == [] and area_files(b) == []
    assert_alive(a)
    assert_alive(b)


def test_a_push_that_fills_the_receivers_download_area_is_discarded_there_then_a_resubmit_succeeds(
        orthanc_factory, small_disk):
    area = small_disk(16)
    b = orthanc_factory("b", transfers={"DownloadArea": str(area)})
    proxy = TcpProxy(b.http_port, upstream_rate=2_000_000).start()
    try:
        a = orthanc_factory("a", transfers={"BucketSize": 512, "Threads": 2}, peers={"b": {"Url": proxy.url}})
        files = load_study(a, 24, seed=24)
        r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study_of(a, next(iter(files)))}],
                                            "Compression": "none", "Peer": "b"})
        job_id = r.json()["ID"]
        wait_job(a, job_id, ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 3)
        filler = fill(area)
        job = wait_job(a, job_id)
        assert_clean_failure(job, "'b'", "is full", str(area))
        assert b.instances() == []
        assert_area_empty(b)  # discarded at once by the receiver, whatever the sender does
        assert "is discarded" in b.log_text()

        filler.unlink()
        proxy.set_upstream_rate(None)
        assert a.post(f"/jobs/{job_id}/resubmit").status_code == 200
        job = wait_job(a, job_id)
        assert job["State"] == "Success", job
        assert_same_instances(b, files)
        assert_area_empty(b)
        assert_alive(a)
        assert_alive(b)
    finally:
        proxy.stop()


# --- a receiver killed in the middle of a push ----------------------------------------------------------

@pytest.fixture
def push_through_proxy(orthanc_factory):
    """A pushes to B through a proxy that slows the uploads; B's port stays the same across restarts."""
    created = []

    def make(retries: int):
        b = orthanc_factory("b", http_port=free_port())
        proxy = TcpProxy(b.http_port, upstream_rate=2_000_000).start()
        created.append(proxy)
        a = orthanc_factory("a", transfers={"BucketSize": 512, "Threads": 2, "MaxHttpRetries": retries},
                            peers={"b": {"Url": proxy.url}})
        return a, b, proxy

    yield make
    for proxy in created:
        proxy.stop()


def kill_and_restart_mid_push(a, b, n: int, seed: int):
    files = load_study(a, n, seed=seed)
    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study_of(a, next(iter(files)))}],
                                        "Compression": "none", "Peer": "b"})
    job_id = r.json()["ID"]
    wait_job(a, job_id, ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 3)
    folders = [p for p in b.download_area.iterdir() if p.name.startswith("push-")]
    assert len(folders) == 1 and any(folders[0].iterdir())
    b.kill()
    b.start()  # at once, as a supervisor does: within about a second of the kill
    return files, job_id, folders[0]


def assert_gone(folder: Path) -> None:
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not folder.exists(), "the folder of the transaction killed with the receiver stays"


def test_receiver_killed_mid_push_then_resubmitted_at_once(push_through_proxy):
    a, b, proxy = push_through_proxy(retries=0)
    files, job_id, killed = kill_and_restart_mid_push(a, b, 30, 31)
    job = wait_job(a, job_id)
    assert_clean_failure(job, "'b'")
    proxy.set_upstream_rate(None)
    assert a.post(f"/jobs/{job_id}/resubmit").status_code == 200  # right away, as a user would
    job = wait_job(a, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(b, files)
    assert all(n == 1 for n in new_instance_changes(b).values())
    assert_gone(killed)
    assert_area_empty(b)
    assert_area_empty(a)


def test_receiver_killed_mid_push_with_retries_opens_a_new_transaction_by_itself(push_through_proxy):
    a, b, proxy = push_through_proxy(retries=3)
    files, job_id, killed = kill_and_restart_mid_push(a, b, 30, 32)
    proxy.set_upstream_rate(None)
    job = wait_job(a, job_id)
    assert job["State"] == "Success", job
    assert "does not know the push transaction" in a.log_text() and "opening a new one" in a.log_text()
    assert_same_instances(b, files)
    assert_gone(killed)
    assert_area_empty(b)


# --- a hostile source or receiver -----------------------------------------------------------------------

def traversal_ids(target, canary: Path):
    relative = os.path.relpath(canary / "rel", target.download_area / str(uuid.uuid4()))
    return {"absolute": str(canary / "abs"), "relative": relative, "encoded": relative.replace("/", "%2f"),
            "long": "a" * 5000, "nul": "05790313-0cf6912d-a46d83e8-12e91143-c99106b6\0/../../x",
            "non-ascii": "\u00e9t\u00e9/../" + relative}


@pytest.mark.parametrize("kind", ["absolute", "relative", "encoded", "long", "nul", "non-ascii"])
def test_a_malicious_lookup_answer_fails_the_pull_and_creates_nothing(orthanc_factory, httpserver, tmp_path, kind):
    target = orthanc_factory("target", peers={"evil": {"Url": httpserver.url_for("/")}})
    canary = target.workdir / "storage" / "canary"
    canary.mkdir(parents=True)
    bad = traversal_ids(target, canary)[kind]
    good = "05790313-0cf6912d-a46d83e8-12e91143-c99106b6"
    httpserver.expect_request("/plugins").respond_with_json(["transfers"])
    httpserver.expect_request("/transfers/lookup", method="POST").respond_with_json({
        "CountInstances": 2, "Originator": str(uuid.uuid4()), "TotalSize": "5", "TotalSizeMB": 0,
        "Instances": [{"ID": good, "Size": "0", "MD5": EMPTY_MD5}, {"ID": bad, "Size": "5", "MD5": "0" * 32}]})
    httpserver.expect_request("/transfers/chunks/" + bad).respond_with_data(b"12345")
    job = wait_job(target, pull(target, "evil", [{"Level": "Study", "ID": good}], "none"))
    assert_clean_failure(job, "'evil'", "bad lookup answer", "Orthanc identifier")
    assert len(job["ErrorDescription"]) < 500
    assert list(canary.iterdir()) == [] and area_files(target) == []
    assert not list(target.workdir.rglob("*.dcm")) and not list(tmp_path.rglob("*.dcm"))
    assert target.instances() == []
    assert_alive(target)


@pytest.mark.parametrize("answer", [
    {"ID": "../../../jobs", "Path": "/transfers/push/../../../jobs"},
    {"ID": "e12ee203-3705-4f1e-b159-f88239b57b9c", "Path": "http://elsewhere.example/transfers/push/x"},
    {"ID": "e12ee203-3705-4f1e-b159-f88239b57b9c", "Path": "/tools/reset"},
    {"Path": "/transfers/push/e12ee203-3705-4f1e-b159-f88239b57b9c"},
    "deep",
])
def test_a_malicious_push_creation_answer_fails_the_push_cleanly(orthanc_factory, httpserver, answer):
    a = orthanc_factory("a", peers={"evil": {"Url": httpserver.url_for("/")}})
    files = load_study(a, 2, rows=64, seed=25)
    if answer == "deep":  # a creation answer nested 100,000 deep, parsed by the job's thread
        httpserver.expect_request("/transfers/push", method="POST").respond_with_data(
            b"[" * 100_000 + b"]" * 100_000, content_type="application/json")
    else:
        httpserver.expect_request("/transfers/push", method="POST").respond_with_json(answer)
    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study_of(a, next(iter(files)))}],
                                        "Compression": "none", "Peer": "evil"})
    job = wait_job(a, r.json()["ID"])
    assert_clean_failure(job, "'evil'")
    # Nothing was sent anywhere the answer pointed (GET /plugins/transfers: the push asked what the peer is).
    assert all(req.path in ("/transfers/push", "/plugins/transfers") for req, _ in httpserver.log), \
        [req.path for req, _ in httpserver.log]
    assert_alive(a)


# --- memory -------------------------------------------------------------------------------------------

def test_request_bodies_do_not_stay_in_memory(orthanc_factory):
    """The Python plugin 4.0 leaks every request body of a plugin route (fixed in 4.1): 50 PUTs of a 4 MB
    bucket would keep 200 MB for good. The plugin gives the leaked references back."""
    b = orthanc_factory("b")
    size = 4 * 1024 * 1024
    descriptor = {"Instances": [{"ID": "05790313-0cf6912d-a46d83e8-12e91143-c99106b6", "Size": str(size),
                                 "MD5": EMPTY_MD5}],
                  "Buckets": [[{"ID": "05790313-0cf6912d-a46d83e8-12e91143-c99106b6", "Offset": "0",
                                "Size": str(size)}]], "Compression": "none"}
    tid = b.post("/transfers/push", json=descriptor).json()["ID"]
    body = os.urandom(size)
    assert b.request("PUT", f"/transfers/push/{tid}/0", data=body).status_code == 200  # code paths warm
    before = b.memory_mb()
    for _ in range(50):
        assert b.request("PUT", f"/transfers/push/{tid}/0", data=body).status_code == 200
    deadline = time.monotonic() + 10
    after = b.memory_mb()
    while after - before >= 50 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = b.memory_mb()
    assert after - before < 50, f"{after - before:.0f} MB more after 50 PUTs of 4 MB"
    assert b.request("DELETE", f"/transfers/push/{tid}").status_code == 200
    assert_area_empty(b)
    assert_alive(b)


# --- what held before the hardening, and must keep holding -------------------------------------------

ROUTES = [("GET", "/transfers/chunks/05790313-0cf6912d-a46d83e8-12e91143-c99106b6"), ("POST", "/transfers/lookup"),
          ("GET", "/transfers/peers"), ("POST", "/transfers/pull"), ("POST", "/transfers/send"),
          ("POST", "/transfers/push"), ("PUT", "/transfers/push/e12ee203-3705-4f1e-b159-f88239b57b9c/0"),
          ("POST", "/transfers/push/e12ee203-3705-4f1e-b159-f88239b57b9c/commit"),
          ("DELETE", "/transfers/push/e12ee203-3705-4f1e-b159-f88239b57b9c"), ("GET", "/plugins/transfers"),
          ("GET", "/jobs"), ("GET", "/jobs/e12ee203-3705-4f1e-b159-f88239b57b9c"),
          ("POST", "/jobs/e12ee203-3705-4f1e-b159-f88239b57b9c/cancel")]


def test_password_protected_peers_refuse_strangers_and_transfer_among_themselves(orthanc_factory):
    users = {"alice": "s3cret"}
    port_a, port_b = free_port(), free_port()
    secured = {"AuthenticationEnabled": True, "RegisteredUsers": users}
    a = orthanc_factory("a", http_port=port_a, extra_config=secured, peers={
        "b": {"Url": f"http://127.0.0.1:{port_b}/", "Username": "alice", "Password": "s3cret"},
        "b-pull": {"Url": f"http://127.0.0.1:{port_b}/", "Username": "alice", "Password": "s3cret",
                   "RemoteSelf": "a"}})
    b = orthanc_factory("b", http_port=port_b, extra_config=secured, peers={
        "a": {"Url": f"http://127.0.0.1:{port_a}/", "Username": "alice", "Password": "s3cret"}})
    import requests
    for method, uri in ROUTES:
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret")):
            r = requests.request(method, a.url + uri, auth=auth, data=b"[]", timeout=30)
            assert r.status_code == 401, (method, uri, auth, r.status_code)
    files = load_study(a, 6, rows=128, seed=41)
    study = study_of(a, next(iter(files)))
    resources = [{"Level": "Study", "ID": study}]
    for peer, compression in (("b", "gzip"), ("b-pull", "none")):
        answer = a.post("/transfers/send", json={"Resources": resources, "Compression": compression,
                                                 "Peer": peer}).json()
        job = wait_job(a, answer["ID"]) if "ID" in answer else wait_job(b, answer["RemoteJob"])
        assert job["State"] == "Success", job
        assert_same_instances(b, files)
        for instance_id in files:
            b.request("DELETE", f"/instances/{instance_id}")
    job = wait_job(b, pull(b, "a", resources))
    assert job["State"] == "Success", job
    assert_same_instances(b, files)
    assert_area_empty(a)
    assert_area_empty(b)


def test_a_lookup_of_50000_resources_a_10_gb_chunk_request_and_a_gzip_bomb(orthanc_factory):
    import gzip
    import json

    server = orthanc_factory("server")
    files = load_study(server, 2, rows=64, seed=42)
    instance_id, data = next(iter(files.items()))
    r = server.post("/transfers/lookup", json=[{"Level": "Instance", "ID": instance_id}] * 50_000)
    assert r.status_code == 200 and r.json()["CountInstances"] == 1, r.text[:300]
    r = server.get(f"/transfers/chunks/{instance_id}", params={"offset": "0", "size": str(10 * 1024 ** 3)})
    assert r.status_code == 200 and r.content == data  # what there is, as the C++ source answers

    size = 1024 * 1024
    descriptor = {"Instances": [{"ID": instance_id, "Size": str(size), "MD5": EMPTY_MD5}],
                  "Buckets": [[{"ID": instance_id, "Offset": "0", "Size": str(size)}]], "Compression": "gzip"}
    tid = server.post("/transfers/push", json=descriptor).json()["ID"]
    bomb = gzip.compress(bytes(256 * 1024 * 1024), 9)  # 256 MB of zeros in about 250 KB
    r = server.request("PUT", f"/transfers/push/{tid}/0", data=bomb)
    assert r.status_code == 400 and "expected" in json.loads(r.text)["Message"], r.text
    assert sum(p.stat().st_size for p in area_files(server)) <= size
    assert server.request("DELETE", f"/transfers/push/{tid}").status_code == 200
    assert_area_empty(server)
    assert_alive(server)


def test_a_gzip_body_that_inflates_to_a_huge_bucket_never_sits_in_memory(orthanc_factory):
    import gzip

    b = orthanc_factory("b")
    size = 256 * 1024 * 1024
    iid = "05790313-0cf6912d-a46d83e8-12e91143-c99106b6"
    descriptor = {"Instances": [{"ID": iid, "Size": str(size), "MD5": EMPTY_MD5}],
                  "Buckets": [[{"ID": iid, "Offset": "0", "Size": str(size)}]], "Compression": "gzip"}
    tid = b.post("/transfers/push", json=descriptor).json()["ID"]
    body = gzip.compress(bytes(size), 9)  # about 250 KB
    before = b.memory_mb("VmHWM")
    r = b.request("PUT", f"/transfers/push/{tid}/0", data=body)
    assert r.status_code == 200, r.text
    assert b.memory_mb("VmHWM") - before < 50, "the bucket was inflated in memory"
    assert b.request("DELETE", f"/transfers/push/{tid}").status_code == 200
    assert_area_empty(b)
    assert_alive(b)


def test_an_instance_listed_many_times_in_a_chunks_url_is_refused(orthanc_factory):
    server = orthanc_factory("server", transfers={"CacheSize": 2})
    files = load_study(server, 1, rows=1024, seed=43)  # one instance of about 2 MB
    instance_id, data = next(iter(files.items()))
    before = server.memory_mb("VmHWM")
    r = server.get("/transfers/chunks/" + ".".join([instance_id] * 300))  # 600 MB asked for
    assert r.status_code == 413 and "CacheSize" in r.json()["Message"], r.text[:300]
    assert server.memory_mb("VmHWM") - before < 50
    r = server.get(f"/transfers/chunks/{instance_id}.{instance_id}")  # what fits is still served
    assert r.status_code == 200 and r.content == data + data
    assert_alive(server)


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip"])
def test_a_compressed_lookup_answer_is_refused_before_it_inflates(orthanc_factory, httpserver, encoding):
    import gzip
    import json

    from werkzeug import Response

    target = orthanc_factory("target", peers={"evil": {"Url": httpserver.url_for("/")}})
    inflated = b'{"Instances": [' + b" " * (512 * 1024 * 1024) + b'], "Originator": "x"}'
    body = gzip.compress(inflated, 9)
    if encoding == "gzip, gzip":
        body = gzip.compress(body, 9)
    httpserver.expect_request("/transfers/lookup", method="POST").respond_with_response(
        Response(body, headers={"Content-Encoding": encoding}, content_type="application/json"))
    before = target.memory_mb("VmHWM")
    job = wait_job(target, pull(target, "evil", [{"Level": "Study",
                                                  "ID": "05790313-0cf6912d-a46d83e8-12e91143-c99106b6"}]))
    assert_clean_failure(job, "'evil'", "Content-Encoding")
    assert target.memory_mb("VmHWM") - before < 50
    assert area_files(target) == [] and json.loads(target.get("/system").text)
    assert_alive(target)
