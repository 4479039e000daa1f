"""Our push receiver (protocol.md R6 to R9, 7) in a real Orthanc, driven by a C++ 1.4 sender's requests.

The fixtures (tests/fixtures/cxx-1.4/push-*) were recorded between two C++ 1.4 peers. Replayed as
recorded (``//`` paths, ``Content-Type: application/x-www-form-urlencoded``, ``sender-transfer-id``),
they must give the 5 instances. Bad inputs get a 4xx with a JSON message and leave the receiver working.
"""

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import requests
from transfer_helpers import new_instance_changes

pytestmark = pytest.mark.integration

SCENARIOS = ["push-gzip", "push-none"]
UNKNOWN_TX = "00000000-1111-4222-8333-444444444444"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def receiver(module_orthanc_factory):
    # More room than the default 4, so that a failing test that leaves a transaction does not make the
    # next ones answer 503; every test still discards what it leaves open.
    return module_orthanc_factory("push-receiver", transfers={"MaxPushTransactions": 16})


@pytest.fixture(scope="module")
def expected(fixtures_dir) -> Dict[str, Dict[str, Any]]:
    return json.loads((fixtures_dir / "instances" / "instances.json").read_text())


@pytest.fixture
def empty_receiver(receiver):
    for instance_id in receiver.instances():
        assert receiver.request("DELETE", f"/instances/{instance_id}").status_code == 200
    assert receiver.instances() == []
    return receiver


# --- helpers ---------------------------------------------------------------------------------------------

class Recording:
    """One push scenario: the recorded requests, with the transaction ID of the recording."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.exchanges = json.loads((folder / "exchange.json").read_text())
        self.old_tx = json.loads((folder / "resp-002.json").read_bytes())["ID"]

    def headers(self, index: int) -> Dict[str, str]:
        rq = self.exchanges[index]["request"]
        return {k: v for k, v in rq["headers"].items() if k not in ("Host", "Content-Length")}

    def body(self, index: int) -> bytes:
        name = self.exchanges[index]["request"]["body"]
        return (self.folder / name).read_bytes() if name else b""

    @property
    def descriptor(self) -> bytes:
        return self.body(1)

    def bucket_bodies(self) -> List[Tuple[int, bytes]]:
        """(bucket index, body) of the PUTs, in the recorded order."""
        return [(int(e["request"]["path"].rsplit("/", 1)[1]), self.body(i))
                for i, e in enumerate(self.exchanges) if e["request"]["method"] == "PUT"]


def send(server, method: str, path: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None):
    """A request exactly as given: ``server.url`` has no trailing slash, so ``//`` paths stay as they are."""
    return server.session.request(method, server.url + path, data=body, headers=headers or {}, timeout=60)


def replay(server, recording: Recording, stop_before_commit: bool = False, puts: Optional[int] = None):
    """Replays the recording as the fixture README describes; returns the create answer and the answers."""
    new_tx = None
    create = None
    answers = []
    n_puts = 0
    for i, exchange in enumerate(recording.exchanges):
        rq = exchange["request"]
        path = rq["path"] if new_tx is None else rq["path"].replace(recording.old_tx, new_tx)
        if rq["method"] == "PUT":
            if puts is not None and n_puts >= puts:
                continue
            n_puts += 1
        if path.endswith("/commit") and (stop_before_commit or puts is not None):
            break
        url = path + ("?" + rq["query"] if rq["query"] is not None else "")
        r = send(server, rq["method"], url, recording.body(i), recording.headers(i))
        assert r.status_code == exchange["response"]["status"], (rq["method"], path, r.status_code, r.text)
        answers.append((rq["method"], path, r))
        if path == "//transfers/push":
            create = r
            new_tx = r.json()["ID"]
    return create, answers


def tx_of(create) -> str:
    return create.json()["ID"]


def download_root(server) -> Path:
    return server.workdir / "storage" / "transfers-tmp"


def push_areas(server) -> List[str]:
    root = download_root(server)
    return sorted(p.name for p in root.glob("push-*")) if root.exists() else []


def last_change(server) -> int:
    return server.get_json("/changes?last")["Last"]


def assert_holds_exactly(server, fixtures_dir: Path, expected: Dict[str, Dict[str, Any]]) -> None:
    assert sorted(server.instances()) == sorted(expected)
    for instance_id, info in expected.items():
        data = server.get(f"/instances/{instance_id}/file").content
        assert len(data) == info["size"], instance_id
        assert hashlib.md5(data).hexdigest() == info["md5"], instance_id
        assert data == (fixtures_dir / "instances" / f"{instance_id}.dcm").read_bytes(), instance_id


def assert_json_error(r, status: Optional[int], *words: str) -> Dict[str, Any]:
    if status is None:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    else:
        assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["HttpStatus"] == r.status_code
    message = body["Message"].lower()
    for w in words:
        assert w.lower() in message, (w, body["Message"])
    return body


def still_receiving(server, fixtures_dir: Path) -> None:
    """A complete C++ push still succeeds (the instances may be there already: AlreadyStored is fine)."""
    replay(server, Recording(fixtures_dir / "push-gzip"))
    assert set(server.instances()) >= set(json.loads((fixtures_dir / "instances" / "instances.json").read_text()))


# --- (a) replay of the C++ sender ------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_replay_cxx_sender(empty_receiver, fixtures_dir, expected, scenario):
    server = empty_receiver
    recording = Recording(fixtures_dir / scenario)
    assert recording.headers(1)["Content-Type"] == "application/x-www-form-urlencoded"
    assert "sender-transfer-id" in recording.headers(1)
    since = last_change(server)
    create, answers = replay(server, recording)
    assert [m for m, _, _ in answers] == ["GET", "POST"] + ["PUT"] * 6 + ["POST"]
    assert "transfers" in answers[0][2].json()
    body = create.json()
    assert set(body) == {"ID", "Path"}
    assert UUID.fullmatch(body["ID"]) and body["ID"] != recording.old_tx
    assert body["Path"] == f"/transfers/push/{body['ID']}"
    assert create.headers["Content-Type"].startswith("application/json")
    for method, path, r in answers[2:]:
        assert r.json() == {}, (method, path, r.text)
    assert_holds_exactly(server, fixtures_dir, expected)
    assert new_instance_changes(server, since) == {i: 1 for i in expected}
    assert push_areas(server) == []


# --- (b) bad inputs --------------------------------------------------------------------------------------

def _descriptor(fixtures_dir: Path) -> Dict[str, Any]:
    return json.loads((fixtures_dir / "push-gzip" / "req-002.json").read_bytes())


def _without(key: str):
    def mutate(d):
        del d[key]
    return mutate


def _set(path: Tuple, value: Any):
    def mutate(d):
        target = d
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
    return mutate


def _drop_bucket(index: int):
    def mutate(d):
        del d["Buckets"][index]
    return mutate


SPLIT = "a36d4be2-f419c44c-5157e814-171573f6-d151a103"
UNKNOWN_INSTANCE = "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"

# (body or mutation of the C++ descriptor, status, words of the message)
BAD_DESCRIPTORS = {
    "malformed-json": (b'{"Instances": [', 400, ["json"]),
    "not-utf8": (b"\xff\xfe{}", 400, ["json"]),
    "empty-body": (b"", 400, ["json"]),
    "array": (b"[]", 400, ["object"]),
    "string": (b'"push"', 400, ["object"]),
    "missing-instances": (_without("Instances"), 400, ["Instances"]),
    "missing-buckets": (_without("Buckets"), 400, ["Buckets"]),
    "missing-compression": (_without("Compression"), 400, ["Compression"]),
    "instances-not-array": (_set(("Instances",), {}), 400, ["Instances", "array"]),
    "bucket-not-array": (_set(("Buckets", 0), {"ID": SPLIT}), 400, ["Buckets[0]", "array"]),
    "size-as-number": (_set(("Instances", 0, "Size"), 3812), 400, ["Size", "string"]),
    "chunk-size-as-number": (_set(("Buckets", 0, 0, "Size"), 105286), 400, ["Size", "string"]),
    "offset-negative": (_set(("Buckets", 1, 0, "Offset"), "-105286"), 400, ["Offset"]),
    "unknown-compression": (_set(("Compression",), "zip"), 400, ["compression", "zip"]),
    "compression-uppercase": (_set(("Compression",), "GZIP"), 400, ["compression", "GZIP"]),
    "unknown-instance-in-bucket": (_set(("Buckets", 5, 2, "ID"), UNKNOWN_INSTANCE), 400,
                                   ["not in Instances", UNKNOWN_INSTANCE]),
    "gap": (_drop_bucket(2), 400, ["gap", SPLIT]),
    "instance-not-covered": (_drop_bucket(5), 400, ["cover 0 of", "05790313"]),
    "chunk-past-the-end": (_set(("Buckets", 4, 0, "Size"), "105300"), 400, ["past the end", SPLIT]),
    "bad-md5": (_set(("Instances", 1, "MD5"), "abc"), 400, ["MD5"]),
}


@pytest.mark.parametrize("case", list(BAD_DESCRIPTORS))
def test_bad_descriptor(receiver, fixtures_dir, case):
    what, status, words = BAD_DESCRIPTORS[case]
    if isinstance(what, bytes):
        body = what
    else:
        descriptor = _descriptor(fixtures_dir)
        what(descriptor)
        body = json.dumps(descriptor, separators=(",", ":"), sort_keys=True).encode()
    recording = Recording(fixtures_dir / "push-gzip")
    areas = push_areas(receiver)
    r = send(receiver, "POST", "//transfers/push", body, recording.headers(1))
    if r.status_code == 200:  # accepted by mistake: do not leave the transaction to the next tests
        send(receiver, "DELETE", f"/transfers/push/{r.json()['ID']}")
    assert_json_error(r, status, *words)
    assert push_areas(receiver) == areas  # no transaction was created
    still_receiving(receiver, fixtures_dir)


@pytest.fixture
def open_transaction(receiver, fixtures_dir):
    """A transaction created from push-none's descriptor (uncompressed buckets); discarded afterwards."""
    recording = Recording(fixtures_dir / "push-none")
    r = send(receiver, "POST", "//transfers/push", recording.descriptor, recording.headers(1))
    assert r.status_code == 200, r.text
    tx = r.json()["ID"]
    yield recording, tx
    send(receiver, "DELETE", f"//transfers/push/{tx}", headers={"sender-transfer-id": "test"})


def test_put_to_an_unknown_transaction(receiver, fixtures_dir, open_transaction):
    recording, _ = open_transaction
    index, body = recording.bucket_bodies()[0]
    r = send(receiver, "PUT", f"//transfers/push/{UNKNOWN_TX}/{index}", body, recording.headers(2))
    assert_json_error(r, 404, "unknown", UNKNOWN_TX)
    still_receiving(receiver, fixtures_dir)


@pytest.mark.parametrize("index", ["6", "7", "99999999999999999999"])
def test_put_with_a_bucket_index_out_of_range(receiver, fixtures_dir, open_transaction, index):
    recording, tx = open_transaction
    r = send(receiver, "PUT", f"//transfers/push/{tx}/{index}", recording.bucket_bodies()[0][1],
             recording.headers(2))
    assert_json_error(r, 400, "index", "out of range")
    still_receiving(receiver, fixtures_dir)


@pytest.mark.parametrize("change", ["shorter", "longer", "empty"])
def test_put_with_a_wrong_payload_length(receiver, fixtures_dir, open_transaction, change):
    recording, tx = open_transaction
    index, body = recording.bucket_bodies()[0]
    wrong = {"shorter": body[:-1], "longer": body + b"\0", "empty": b""}[change]
    r = send(receiver, "PUT", f"//transfers/push/{tx}/{index}", wrong, recording.headers(2))
    assert_json_error(r, None, str(len(body)))
    # the transaction still accepts the right bytes
    r = send(receiver, "PUT", f"//transfers/push/{tx}/{index}", body, recording.headers(2))
    assert r.status_code == 200, r.text
    still_receiving(receiver, fixtures_dir)


@pytest.mark.parametrize("payload", ["garbage", "raw", "truncated", "trailing"])
def test_put_of_bad_gzip(receiver, fixtures_dir, payload):
    recording = Recording(fixtures_dir / "push-gzip")
    r = send(receiver, "POST", "//transfers/push", recording.descriptor, recording.headers(1))
    assert r.status_code == 200, r.text
    tx = r.json()["ID"]
    try:
        index, body = recording.bucket_bodies()[0]
        raw = Recording(fixtures_dir / "push-none")
        raw_body = dict(raw.bucket_bodies())[index]
        bad = {"garbage": b"this is not gzip" * 100, "raw": raw_body, "truncated": body[:-8],
               "trailing": body + b"\0\0\0\0"}[payload]
        r = send(receiver, "PUT", f"//transfers/push/{tx}/{index}", bad, recording.headers(2))
        assert_json_error(r, None, "gzip")
    finally:
        assert send(receiver, "DELETE", f"//transfers/push/{tx}").status_code == 200
    still_receiving(receiver, fixtures_dir)


def test_commit_and_delete_of_an_unknown_transaction(receiver, fixtures_dir):
    r = send(receiver, "POST", f"//transfers/push/{UNKNOWN_TX}/commit", b"", {"sender-transfer-id": "x"})
    assert_json_error(r, 404, "unknown", UNKNOWN_TX)
    r = send(receiver, "DELETE", f"//transfers/push/{UNKNOWN_TX}", b"", {"sender-transfer-id": "x"})
    assert_json_error(r, 404, "unknown", UNKNOWN_TX)
    still_receiving(receiver, fixtures_dir)


def test_commit_with_missing_buckets_then_completed(receiver, fixtures_dir, open_transaction):
    recording, tx = open_transaction
    puts = recording.bucket_bodies()
    for index, body in puts[:-1]:
        assert send(receiver, "PUT", f"//transfers/push/{tx}/{index}", body).status_code == 200
    r = send(receiver, "POST", f"//transfers/push/{tx}/commit")
    assert_json_error(r, 400, "never arrived", str(puts[-1][0]))
    index, body = puts[-1]
    assert send(receiver, "PUT", f"//transfers/push/{tx}/{index}", body).status_code == 200
    r = send(receiver, "POST", f"//transfers/push/{tx}/commit")
    assert r.status_code == 200 and r.json() == {}, r.text


def test_commit_of_a_corrupted_bucket_imports_nothing(empty_receiver, fixtures_dir):
    server = empty_receiver
    recording = Recording(fixtures_dir / "push-none")
    r = send(server, "POST", "//transfers/push", recording.descriptor, recording.headers(1))
    tx = r.json()["ID"]
    try:
        for index, body in recording.bucket_bodies():
            if index == 5:  # the 4 small instances: one byte changed in the last one
                body = body[:-1] + bytes([body[-1] ^ 0xFF])
            assert send(server, "PUT", f"//transfers/push/{tx}/{index}", body).status_code == 200
        r = send(server, "POST", f"//transfers/push/{tx}/commit", b"", recording.headers(8))
        assert_json_error(r, 400, "md5", "d344e612")  # what the sender sent is not what it announced
        assert server.instances() == []
    finally:
        assert send(server, "DELETE", f"//transfers/push/{tx}").status_code == 200
    assert push_areas(server) == []


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/transfers/push", "POST"),
    ("PUT", "/transfers/push", "POST"),
    ("DELETE", "/transfers/push", "POST"),
    ("POST", "/transfers/push/{tx}/0", "PUT"),
    ("GET", "/transfers/push/{tx}/0", "PUT"),
    ("DELETE", "/transfers/push/{tx}/0", "PUT"),
    ("GET", "/transfers/push/{tx}/commit", "POST"),
    ("PUT", "/transfers/push/{tx}/commit", "POST"),
    ("DELETE", "/transfers/push/{tx}/commit", "POST"),
    ("GET", "/transfers/push/{tx}", "DELETE"),
    ("POST", "/transfers/push/{tx}", "DELETE"),
    ("PUT", "/transfers/push/{tx}", "DELETE"),
])
def test_wrong_method(receiver, fixtures_dir, open_transaction, method, path, allowed):
    _, tx = open_transaction
    r = send(receiver, method, path.format(tx=tx), b"{}")
    assert r.status_code == 405, (r.status_code, r.text)
    assert r.headers["Allow"] == allowed
    # the transaction was not touched: it still exists and can be discarded
    assert send(receiver, "DELETE", f"/transfers/push/{tx}").status_code == 200
    still_receiving(receiver, fixtures_dir)


# --- (c) commit repeated ---------------------------------------------------------------------------------

def test_commit_repeated_after_success(empty_receiver, fixtures_dir, expected):
    server = empty_receiver
    since = last_change(server)
    recording = Recording(fixtures_dir / "push-gzip")
    create, answers = replay(server, recording)
    commit_method, commit_path, first = answers[-1]
    assert commit_path.endswith(f"/{tx_of(create)}/commit") and first.status_code == 200
    for _ in range(2):  # the sender lost the answer and retries
        r = send(server, "POST", commit_path, b"", recording.headers(len(recording.exchanges) - 1))
        assert r.status_code == 200 and r.json() == {}, r.text
    assert_holds_exactly(server, fixtures_dir, expected)
    assert new_instance_changes(server, since) == {i: 1 for i in expected}
    # a committed transaction takes no more buckets
    index, body = recording.bucket_bodies()[0]
    r = send(server, "PUT", f"//transfers/push/{tx_of(create)}/{index}", body)
    assert_json_error(r, 404, "unknown")


# --- (d) DELETE during uploads ---------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_delete_during_uploads_leaves_nothing(empty_receiver, fixtures_dir, scenario):
    server = empty_receiver
    since = last_change(server)
    recording = Recording(fixtures_dir / scenario)
    create, _ = replay(server, recording, puts=3)
    tx = tx_of(create)
    area = download_root(server) / f"push-{tx}"
    assert area.is_dir() and list(area.iterdir())  # files written by the PUTs are there before the DELETE
    r = send(server, "DELETE", f"//transfers/push/{tx}", b"", recording.headers(2))
    assert r.status_code == 200 and r.json() == {}, r.text
    assert push_areas(server) == []
    assert not area.exists()
    assert server.instances() == []
    assert new_instance_changes(server, since) == {}
    for method, path in (("PUT", f"//transfers/push/{tx}/{recording.bucket_bodies()[-1][0]}"),
                         ("POST", f"//transfers/push/{tx}/commit"), ("DELETE", f"//transfers/push/{tx}")):
        body = recording.bucket_bodies()[-1][1] if method == "PUT" else b""
        assert_json_error(send(server, method, path, body), 404, "unknown")
    assert server.instances() == []


# --- (e) MaxPushTransactions 0 ---------------------------------------------------------------------------

def test_max_push_transactions_zero_serves_no_push(module_orthanc_factory, fixtures_dir):
    server = module_orthanc_factory("no-push", transfers={"MaxPushTransactions": 0})
    assert server.get("/transfers/peers").status_code == 200  # the plugin is loaded and serving
    assert "transfers" in server.get_json("/plugins")
    recording = Recording(fixtures_dir / "push-gzip")
    r = send(server, "POST", "//transfers/push", recording.descriptor, recording.headers(1))
    assert r.status_code == 404, (r.status_code, r.text)
    r = send(server, "POST", "/transfers/push", recording.descriptor, {"Content-Type": "application/json"})
    assert r.status_code == 404, (r.status_code, r.text)
    index, body = recording.bucket_bodies()[0]
    tx = str(uuid.uuid4())
    assert send(server, "PUT", f"/transfers/push/{tx}/{index}", body).status_code == 404
    assert send(server, "POST", f"/transfers/push/{tx}/commit").status_code == 404
    assert server.instances() == []
    assert not (download_root(server).exists() and any(download_root(server).glob("push-*")))


def test_requests_module_keeps_double_slashes(receiver):
    """The replay relies on it: the path reaches Orthanc with its ``//``."""
    prepared = requests.Request("POST", receiver.url + "//transfers/push").prepare()
    assert prepared.path_url == "//transfers/push"
