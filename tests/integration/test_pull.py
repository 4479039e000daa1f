"""POST /transfers/pull end to end: from our plugin, from a C++ source (recorded), through a bad network."""

import hashlib
import json
from urllib.parse import parse_qsl

import pytest
from corpus import upload_files
from transfer_helpers import assert_same_instances, load_study, pull, study_of, wait_job

from tools.net_proxy import TcpProxy

pytestmark = pytest.mark.integration

CONTENT_KEYS = {"Resources", "Peer", "Compression", "TotalInstances", "TotalSizeMB", "CompletedHttpQueries",
                "DownloadedSizeMB", "NetworkSpeedKBs", "SkippedInstances", "SkippedSizeMB",
                "CompletedSizeMB", "WireSizeMB", "RemainingSeconds"}  # ours (issue 14): the instances' own size


@pytest.fixture(scope="module")
def corpus_source(module_orthanc_factory, corpus):
    server = module_orthanc_factory("corpus-source")
    files = upload_files(server, corpus.files)
    assert len(server.get_json("/studies")) == corpus.study_count()
    return server, files


@pytest.fixture(scope="module")
def corpus_target(module_orthanc_factory, corpus_source):
    return module_orthanc_factory("corpus-target", transfers={"BucketSize": 256},
                                  peers={"source": corpus_source[0].peer_entry()},
                                  extra_config={"JobsHistorySize": 1000})


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")
    assert server.instances() == []


def assert_manifest_md5(target, files):
    assert sorted(target.instances()) == sorted(files)
    for instance_id, f in files.items():
        assert hashlib.md5(target.get(f"/instances/{instance_id}/file").content).hexdigest() == f.md5, f.relative


def test_every_study_one_job_each_gzip(corpus_source, corpus_target):
    source, files = corpus_source
    target = corpus_target
    clear(target)
    studies = source.get_json("/studies")
    jobs = {s: pull(target, "source", [{"Level": "Study", "ID": s}], "gzip", priority=4) for s in studies}
    for study, job_id in jobs.items():
        job = wait_job(target, job_id)
        assert job["State"] == "Success", job
        assert job["Type"] == "PullTransfer" and job["Priority"] == 4
        assert CONTENT_KEYS <= set(job["Content"]), job["Content"]
        expected = source.get_json(f"/studies/{study}/instances")
        assert job["Content"]["TotalInstances"] == len(expected)
    assert_manifest_md5(target, files)


def test_all_studies_in_one_job_none(corpus_source, corpus_target):
    source, files = corpus_source
    target = corpus_target
    clear(target)
    resources = [{"Level": "Study", "ID": s} for s in source.get_json("/studies")]
    job_id = pull(target, "source", resources, "none", priority=-2)
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    total = sum(f.size for f in files.values())
    content = job["Content"]
    assert set(content) == CONTENT_KEYS  # no Originator: none was given
    assert content["Resources"] == resources and content["Peer"] == "source" and content["Compression"] == "none"
    assert content["TotalInstances"] == len(files)
    assert content["TotalSizeMB"] == round(total / 1048576)
    assert content["DownloadedSizeMB"] == round(total / 1048576)  # no compression: every byte once
    assert content["CompletedHttpQueries"] >= total // (2 * 256 * 1024)
    assert isinstance(content["NetworkSpeedKBs"], int) and content["NetworkSpeedKBs"] >= 0
    assert job["Priority"] == -2 and job["Progress"] == 100
    assert_manifest_md5(target, files)
    assert not any((target.workdir / "storage" / "transfers-tmp").glob("*")), "download area left behind"


def test_originator_is_checked(corpus_source, corpus_target):
    source, files = corpus_source
    target = corpus_target
    clear(target)
    instance_id = sorted(files)[0]
    originator = source.post("/transfers/lookup", json=[]).json()["Originator"]
    resources = [{"Level": "Instance", "ID": instance_id}]
    r = target.post("/transfers/pull", json={"Resources": resources, "Compression": "gzip", "Peer": "source",
                                             "Originator": originator})
    job = wait_job(target, r.json()["ID"])
    assert job["State"] == "Success" and job["Content"]["Originator"] == originator
    r = target.post("/transfers/pull", json={"Resources": resources, "Compression": "gzip", "Peer": "source",
                                             "Originator": "00000000-1111-2222-3333-444444444444"})
    job = wait_job(target, r.json()["ID"])
    assert job["State"] == "Failure" and "invalid originator" in job["ErrorDescription"]


BAD_PULLS = [
    (b"not json", 400, "json"),
    (json.dumps({"Resources": [], "Compression": "gzip", "Peer": "nobody"}).encode(), 404, "peer"),
    (json.dumps({"Resources": [{"Level": "Hospital", "ID": "x"}], "Compression": "gzip", "Peer": "source"}).encode(),
     400, "level"),
    (json.dumps({"Resources": [], "Compression": "zstd", "Peer": "source"}).encode(), 400, "compression"),
    (json.dumps({"Resources": [], "Compression": "GZIP", "Peer": "source"}).encode(), 400, "compression"),
    (json.dumps({"Compression": "gzip", "Peer": "source"}).encode(), 400, "resources"),
    (json.dumps({"Resources": [], "Peer": "source"}).encode(), 400, "compression"),
    (json.dumps({"Resources": [], "Compression": "gzip"}).encode(), 400, "peer"),
    (json.dumps({"Resources": [], "Compression": "gzip", "Peer": "source", "Priority": "3"}).encode(), 400, "priority"),
    (json.dumps({"Resources": [], "Compression": "gzip", "Peer": "source", "Priority": 1.5}).encode(), 400, "priority"),
    (json.dumps({"Resources": [], "Compression": "gzip", "Peer": "source", "Priority": True}).encode(), 400,
     "priority"),
    (json.dumps(["Resources"]).encode(), 400, "object"),
]


@pytest.mark.parametrize("body,status,word", BAD_PULLS)
def test_bad_pull_requests_create_no_job(corpus_target, body, status, word):
    target = corpus_target
    before = target.get_json("/jobs")
    r = target.post("/transfers/pull", data=body)
    assert r.status_code == status, r.text
    assert word in r.json()["Message"].lower()
    assert target.get_json("/jobs") == before
    assert target.get("/transfers/pull").status_code == 405


@pytest.mark.parametrize("scenario", ["pull-gzip", "pull-none"])
def test_pull_from_a_cxx_source(orthanc_factory, httpserver, fixtures_dir, scenario):
    """A C++ 1.4 source, replayed from its recorded answers: our puller asks exactly the same buckets."""
    folder = fixtures_dir / scenario
    seen = []
    for exchange in json.loads((folder / "exchange.json").read_text()):
        rq, rs = exchange["request"], exchange["response"]
        match = {}
        if rq["query"] is not None:
            match["query_string"] = dict(parse_qsl(rq["query"]))
        if rq["body"]:
            match["json"] = json.loads((folder / rq["body"]).read_bytes())
        httpserver.expect_request(rq["path"][1:], method=rq["method"], **match).respond_with_data(
            (folder / rs["body"]).read_bytes(), status=rs["status"], content_type=rs["headers"]["Content-Type"])
        if rq["path"].startswith("//transfers/chunks/"):
            seen.append((rq["path"][1:], rq["query"]))
    target = orthanc_factory("puller", transfers={"BucketSize": 64}, peers={"cxx": {"Url": httpserver.url_for("/")}})
    resources = json.loads((folder / "req-002.json").read_text())
    compression = scenario.split("-")[1]
    job_id = pull(target, "cxx", resources, compression)
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert job["Content"]["CompletedHttpQueries"] == 6 and job["Content"]["TotalInstances"] == 5
    asked = sorted((req.path, req.query_string.decode()) for req, _ in httpserver.log
                   if req.path.startswith("/transfers/chunks/"))
    assert asked == sorted(seen), "the same 6 buckets as the C++ puller, with the same URLs"
    lookup = next(req for req, _ in httpserver.log if req.path == "/transfers/lookup")
    assert lookup.headers.get("sender-transfer-id")
    expected = json.loads((fixtures_dir / "instances" / "instances.json").read_text())
    assert sorted(target.instances()) == sorted(expected)
    for instance_id, info in expected.items():
        data = target.get(f"/instances/{instance_id}/file").content
        assert len(data) == info["size"] and hashlib.md5(data).hexdigest() == info["md5"]


# -- a bad network -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_source(module_orthanc_factory):
    server = module_orthanc_factory("small-source")
    files = load_study(server, 16, seed=21)
    return server, files, study_of(server, next(iter(files)))


@pytest.fixture
def proxy(small_source):
    p = TcpProxy(small_source[0].http_port).start()
    yield p
    p.stop()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_corrupted_byte_is_caught_and_fetched_again(orthanc_factory, small_source, proxy, compression):
    server, files, study = small_source
    target = orthanc_factory("target", transfers={"MaxHttpRetries": 2, "BucketSize": 1024, "Threads": 2},
                             peers={"a": {"Url": proxy.url}})
    proxy.corrupt_once_at(2_500_000 if compression == "none" else 900_000)
    job = wait_job(target, pull(target, "a", [{"Level": "Study", "ID": study}], compression))
    assert proxy.corrupted == 1
    assert job["State"] == "Success", job
    assert_same_instances(target, files)
    assert "fetching its buckets again" in target.log_text() or "bucket" in target.log_text()


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_corruption_without_retries_fails_and_imports_nothing(orthanc_factory, small_source, proxy, compression):
    server, files, study = small_source
    target = orthanc_factory("target", transfers={"MaxHttpRetries": 0, "BucketSize": 1024, "Threads": 2},
                             peers={"a": {"Url": proxy.url}})
    proxy.corrupt_once_at(2_500_000 if compression == "none" else 900_000)
    job = wait_job(target, pull(target, "a", [{"Level": "Study", "ID": study}], compression))
    assert proxy.corrupted == 1
    assert job["State"] == "Failure", job
    if compression == "none":
        assert "corrupted" in job["ErrorDescription"] and "MD5" in job["ErrorDescription"]
    else:
        assert "gzip" in job["ErrorDescription"].lower() or "corrupt" in job["ErrorDescription"].lower()
    assert target.instances() == []


def test_peer_going_away_then_resubmit(orthanc_factory, small_source, proxy):
    server, files, study = small_source
    target = orthanc_factory("target", transfers={"BucketSize": 512, "Threads": 2},
                             peers={"a": {"Url": proxy.url}})
    proxy.set_rate(2_000_000)
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
    wait_job(target, job_id, ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 2)
    proxy.cut()
    job = wait_job(target, job_id)
    assert job["State"] == "Failure", job
    assert "'a'" in job["ErrorDescription"] and ("reached" in job["ErrorDescription"]
                                                   or "closed the connection" in job["ErrorDescription"])
    assert target.instances() == []
    proxy.restore()
    proxy.set_rate(None)
    assert target.post(f"/jobs/{job_id}/resubmit").status_code == 200
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(target, files)


def test_unreachable_peer_and_bad_credentials(orthanc_factory, small_source):
    server, files, study = small_source
    secured = orthanc_factory("secured", extra_config={"AuthenticationEnabled": True,
                                                        "RegisteredUsers": {"bob": "pw"}})
    for data in files.values():
        secured.upload(data)
    target = orthanc_factory("target", peers={
        "dead": ["http://127.0.0.1:9/"],
        "wrong": secured.peer_entry(Username="bob", Password="nope"),
        "right": secured.peer_entry(Username="bob", Password="pw"),
    })
    resources = [{"Level": "Study", "ID": study}]
    job = wait_job(target, pull(target, "dead", resources))
    assert job["State"] == "Failure" and "cannot be reached" in job["ErrorDescription"]
    job = wait_job(target, pull(target, "wrong", resources))
    assert job["State"] == "Failure" and "credentials" in job["ErrorDescription"]
    assert target.instances() == []
    job = wait_job(target, pull(target, "right", resources))
    assert job["State"] == "Success", job
    assert_same_instances(target, files)


def test_pull_of_nothing_and_of_an_unknown_resource(orthanc_factory, small_source):
    server, files, study = small_source
    target = orthanc_factory("target", peers={"a": server.peer_entry()})
    job = wait_job(target, pull(target, "a", []))
    assert job["State"] == "Success" and job["Content"]["TotalInstances"] == 0
    unknown = "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"
    job = wait_job(target, pull(target, "a", [{"Level": "Study", "ID": unknown}]))
    assert job["State"] == "Failure" and "404" in job["ErrorDescription"] and unknown in job["ErrorDescription"]
    assert target.instances() == []
