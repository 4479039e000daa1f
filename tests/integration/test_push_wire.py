"""What a PushTransfer job sends on the wire, seen by a fake receiver: headers, cookies, bodies."""

import gzip
import hashlib
import json
import time

import pytest
from transfer_helpers import load_study, study_of, wait_job
from werkzeug.wrappers import Response

pytestmark = pytest.mark.integration


def test_push_headers_cookies_and_bodies(orthanc_factory, httpserver):
    source = orthanc_factory("sender", transfers={"BucketSize": 512},
                             peers={"fake": {"Url": httpserver.url_for("/"), "Username": "u", "Password": "p",
                                             "HttpHeaders": {"X-Site": "north"}}})
    files = load_study(source, 4, rows=256, seed=500)
    study = study_of(source, next(iter(files)))
    seen = {"descriptor": None, "puts": {}, "commit": 0}

    def create(request):
        seen["descriptor"] = json.loads(request.data)
        seen["create_headers"] = dict(request.headers)
        response = Response(json.dumps({"ID": "tx1", "Path": "/transfers/push/tx1"}), content_type="application/json")
        response.headers.add("Set-Cookie", "lb=backend-2; Path=/; HttpOnly")
        response.headers.add("Set-Cookie", "session=abc; Path=/")
        return response

    def put(request):
        index = int(request.path.rsplit("/", 1)[1])
        seen["puts"][index] = (dict(request.headers), request.data)
        return Response("{}", content_type="application/json")

    def commit(request):
        seen["commit"] += 1
        seen["commit_headers"] = dict(request.headers)
        return Response("{}", content_type="application/json")

    httpserver.expect_request("/transfers/push", method="POST").respond_with_handler(create)
    for index in range(16):
        httpserver.expect_request(f"/transfers/push/tx1/{index}", method="PUT").respond_with_handler(put)
    httpserver.expect_request("/transfers/push/tx1/commit", method="POST").respond_with_handler(commit)

    r = source.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip",
                                             "Peer": "fake", "SenderTransferID": "my-transfer-42"})
    job = wait_job(source, r.json()["ID"])
    assert job["State"] == "Success", job

    descriptor = seen["descriptor"]
    assert descriptor["Compression"] == "gzip"
    assert sorted(i["ID"] for i in descriptor["Instances"]) == sorted(files)
    for info in descriptor["Instances"]:
        assert info["MD5"] == hashlib.md5(files[info["ID"]]).hexdigest() and info["Size"] == str(len(files[info["ID"]]))
    headers = seen["create_headers"]
    assert headers["Content-Type"] == "application/json" and headers["Sender-Transfer-Id"] == "my-transfer-42"
    assert headers["X-Site"] == "north" and headers["Authorization"].startswith("Basic ")
    assert sorted(seen["puts"]) == list(range(len(descriptor["Buckets"])))
    rebuilt = {i: bytearray(len(files[i])) for i in files}
    for index, (put_headers, body) in seen["puts"].items():
        assert put_headers["Content-Type"] == "application/octet-stream"
        assert put_headers["Sender-Transfer-Id"] == "my-transfer-42"
        assert put_headers["Cookie"] == "lb=backend-2; session=abc", "every Set-Cookie sent back"
        payload = gzip.decompress(body)
        position = 0
        for chunk in descriptor["Buckets"][index]:
            offset, size = int(chunk["Offset"]), int(chunk["Size"])
            rebuilt[chunk["ID"]][offset:offset + size] = payload[position:position + size]
            position += size
        assert position == len(payload)
    assert {i: bytes(b) for i, b in rebuilt.items()} == files
    assert seen["commit"] == 1 and seen["commit_headers"]["Cookie"] == "lb=backend-2; session=abc"
    assert job["Content"]["CompletedHttpQueries"] == len(descriptor["Buckets"])


def test_a_failed_push_discards_its_transaction(orthanc_factory, httpserver):
    source = orthanc_factory("sender", transfers={"BucketSize": 512, "MaxHttpRetries": 1},
                             peers={"fake": {"Url": httpserver.url_for("/")}})
    files = load_study(source, 4, rows=256, seed=501)
    study = study_of(source, next(iter(files)))
    deleted = []
    puts = []
    httpserver.expect_request("/transfers/push", method="POST").respond_with_json(
        {"ID": "tx2", "Path": "/transfers/push/tx2"})

    def put(request):
        puts.append(request.path)
        return Response('{"Message": "disk full"}', status=507, content_type="application/json")

    def delete(request):
        deleted.append(request.path)
        return Response("{}", content_type="application/json")

    for index in range(16):
        httpserver.expect_request(f"/transfers/push/tx2/{index}", method="PUT").respond_with_handler(put)
    httpserver.expect_request("/transfers/push/tx2", method="DELETE").respond_with_handler(delete)
    r = source.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "none",
                                             "Peer": "fake"})
    job = wait_job(source, r.json()["ID"])
    assert job["State"] == "Failure" and "507" in job["ErrorDescription"] and "disk full" in job["ErrorDescription"]
    deadline = time.monotonic() + 10  # the cleanup runs right after the job is marked failed
    while not deleted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert deleted == ["/transfers/push/tx2"], "the remote transaction is discarded"
    assert not any("commit" in p for p in puts)
