"""Every bad input to the source routes gets a 4xx with a JSON body, and the server keeps serving."""

import pytest
from corpus import upload_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_and_files(module_orthanc_factory, corpus):
    server = module_orthanc_factory("bad-input")
    files = upload_files(server, [f for f in corpus.files if f.group == "studies"][:6])
    return server, files


def assert_json_error(r, status, *words):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["HttpStatus"] == status
    message = body["Message"].lower()
    for w in words:
        assert w.lower() in message, (w, body["Message"])


def still_serving(server, files):
    instance_id, f = sorted(files.items())[0]
    r = server.get(f"/transfers/chunks/{instance_id}")
    assert r.status_code == 200 and r.content == f.read()
    assert server.post("/transfers/lookup", json=[{"Level": "Instance", "ID": instance_id}]).status_code == 200


LOOKUP_CASES = [
    (b"not json", 400, ["json"]),
    (b"[{\"Level\": \"Study\", \"ID\": ", 400, ["json"]),
    (b"\xff\xfe", 400, ["json"]),
    (b"{\"Level\": \"Study\", \"ID\": \"x\"}", 400, ["array"]),
    (b"[\"abc\"]", 400, ["object"]),
    (b"[{\"Level\": \"Study\"}]", 400, ["ID"]),
    (b"[{\"ID\": \"abc\"}]", 400, ["Level"]),
    (b"[{\"Level\": \"Study\", \"ID\": 12}]", 400, ["ID", "string"]),
    (b"[{\"Level\": 3, \"ID\": \"abc\"}]", 400, ["Level"]),
    (b"[{\"Level\": \"Hospital\", \"ID\": \"abc\"}]", 400, ["level", "Hospital"]),
    (b"[{\"Level\": \"Study\", \"ID\": \"0000000-00000000-00000000-00000000-00000000\"}]", 404, ["unknown"]),
    (b"[{\"Level\": \"Patient\", \"ID\": \"../../instances\"}]", 404, ["unknown"]),
    (b"[{\"Level\": \"Series\", \"ID\": \"\"}]", 404, ["unknown"]),
    (b"[{\"Level\": \"Instance\", \"ID\": \"0000000-00000000-00000000-00000000-00000000\"}]", 404, ["unknown"]),
]


@pytest.mark.parametrize("body,status,words", LOOKUP_CASES)
def test_bad_lookup(server_and_files, body, status, words):
    server, files = server_and_files
    assert_json_error(server.post("/transfers/lookup", data=body), status, *words)
    still_serving(server, files)


def test_lookup_with_an_unknown_resource_among_good_ones_is_refused_whole(server_and_files):
    server, files = server_and_files
    good = sorted(files)[0]
    r = server.post("/transfers/lookup", json=[{"Level": "Instance", "ID": good},
                                              {"Level": "Study", "ID": "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"}])
    assert_json_error(r, 404, "unknown")


CHUNK_CASES = [
    ("{id}", {"offset": "-1"}, 400, ["offset"]),
    ("{id}", {"offset": "abc"}, 400, ["offset"]),
    ("{id}", {"offset": "1e3"}, 400, ["offset"]),
    ("{id}", {"offset": ""}, 400, ["offset"]),
    ("{id}", {"offset": " 1"}, 400, ["offset"]),
    ("{id}", {"size": "-5"}, 400, ["size"]),
    ("{id}", {"size": "0x10"}, 400, ["size"]),
    ("{id}", {"size": "99999999999999999999999"}, 400, ["size"]),
    ("{id}", {"compression": "zip"}, 400, ["compression"]),
    ("{id}", {"compression": "GZIP"}, 400, ["compression"]),
    ("{id}", {"compression": "None"}, 400, ["compression"]),
    ("{id}", {"compression": ""}, 400, ["compression"]),
    ("{id}", {"offset": "100000000"}, 400, ["offset", "past the end"]),
    ("{id}.{id}", {"offset": "{twice}"}, 400, ["offset", "past the end"]),
    ("ABCDEF", {}, 400, ["instance IDs"]),
    ("{id}..{id}", {}, 400, ["instance IDs"]),
    (".{id}", {}, 400, ["instance IDs"]),
    ("", {}, 404, ["unknown"]),  # Orthanc drops the trailing slash and answers itself
    ("ffffffff-ffffffff-ffffffff-ffffffff-ffffffff", {}, 404, ["unknown", "ffffffff-ffffffff"]),
    ("{id}.ffffffff-ffffffff-ffffffff-ffffffff-ffffffff", {}, 404, ["unknown"]),
]


@pytest.mark.parametrize("ids,args,status,words", CHUNK_CASES)
def test_bad_chunks(server_and_files, ids, args, status, words):
    server, files = server_and_files
    instance_id, f = sorted(files.items())[0]
    path = ids.format(id=instance_id)
    args = {k: v.format(twice=2 * f.size) for k, v in args.items()}
    assert_json_error(server.get(f"/transfers/chunks/{path}", params=args), status, *words)
    still_serving(server, files)


@pytest.mark.parametrize("method,uri,allowed", [
    ("POST", "/transfers/chunks/{id}", "GET"),
    ("DELETE", "/transfers/chunks/{id}", "GET"),
    ("GET", "/transfers/lookup", "POST"),
    ("PUT", "/transfers/lookup", "POST"),
    ("POST", "/transfers/peers", "GET"),
    ("DELETE", "/transfers/peers", "GET"),
    ("POST", "/plugins", "GET"),
])
def test_wrong_method(server_and_files, method, uri, allowed):
    server, files = server_and_files
    r = server.request(method, uri.format(id=sorted(files)[0]), data=b"[]")
    assert r.status_code == 405
    assert r.headers["Allow"] == allowed
    still_serving(server, files)


def test_many_bad_requests_then_good_ones(server_and_files):
    server, files = server_and_files
    for i in range(50):
        server.get(f"/transfers/chunks/{'f' * (i + 1)}")
        server.post("/transfers/lookup", data=b"[" * (i + 1))
    still_serving(server, files)
    assert server.get("/system").status_code == 200
