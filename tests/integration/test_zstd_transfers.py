"""zstd-shuffle and "auto" between two of our peers, on real Orthancs: pull, push and send in pull mode,
instances byte-identical (MD5); the chunks answer decodes to the uncompressed one; a hostile body is a 400."""

import hashlib
import json

import pytest
from corpus import upload_files
from transfer_helpers import assert_same_instances, load_study, pull, study_of, wait_job

from tools.orthanc_launcher import free_port
from transfers_plugin.codec import ZSTD_SHUFFLE, get_codec

pytestmark = pytest.mark.integration

# Small buckets: instances grouped, and split across buckets at any offset.
TRANSFERS = {"BucketSize": 96, "Threads": 3}


@pytest.fixture(scope="module")
def pair(module_orthanc_factory, corpus):
    port_a, port_b = free_port(), free_port()
    a = module_orthanc_factory("a", http_port=port_a, transfers=TRANSFERS, extra_config={"JobsHistorySize": 1000},
                               peers={"b": {"Url": f"http://127.0.0.1:{port_b}/"},
                                      "b-pulls": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
    b = module_orthanc_factory("b", http_port=port_b, transfers=TRANSFERS, extra_config={"JobsHistorySize": 1000},
                               peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}})
    files = load_study(a, 5, rows=256, seed=41)
    files.update(load_study(a, 2, rows=512, seed=42))
    corpus_files = upload_files(a, corpus.files)
    for instance_id, f in corpus_files.items():
        files[instance_id] = f.read()
    return a, b, files


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")
    assert server.instances() == []


def resources(a, files):
    return [{"Level": "Study", "ID": s} for s in sorted({study_of(a, i) for i in files})]


def test_capabilities_list_it(pair):
    a, _, _ = pair
    assert a.get_json("/transfers/capabilities")["Compression"] == ["none", "gzip", ZSTD_SHUFFLE]


@pytest.mark.parametrize("compression", [ZSTD_SHUFFLE, "auto"])
def test_pull(pair, compression):
    a, b, files = pair
    clear(b)
    job = wait_job(b, pull(b, "a", resources(a, files), compression), timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["Compression"] == ZSTD_SHUFFLE
    assert_same_instances(b, files)


@pytest.mark.parametrize("compression", [ZSTD_SHUFFLE, "auto"])
def test_push(pair, compression):
    a, b, files = pair
    clear(b)
    r = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": compression, "Peer": "b"})
    assert r.status_code == 200, r.text
    job = wait_job(a, r.json()["ID"], timeout=300)
    assert job["State"] == "Success", job
    assert job["Type"] == "PushTransfer" and job["Content"]["Compression"] == ZSTD_SHUFFLE
    assert_same_instances(b, files)


def test_send_in_pull_mode_with_auto(pair):
    a, b, files = pair
    clear(b)
    r = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": "auto", "Peer": "b-pulls",
                                        "Synchronous": False})
    assert r.status_code == 200, r.text
    remote = r.json()["RemoteJob"]
    job = wait_job(b, remote, timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["Compression"] == ZSTD_SHUFFLE  # resolved by A: B was asked for zstd-shuffle
    assert_same_instances(b, files)


def test_fewer_bytes_than_gzip_on_ct(pair):
    """The bytes a pull moves (WireSizeMB) for generated CT only."""
    a, b, _ = pair
    ct = load_study(a, 20, rows=512, seed=43)  # about 10 MB: gzip-1 makes 5 MB of it
    moved = {}
    for compression in ("gzip", ZSTD_SHUFFLE):
        clear(b)
        job = wait_job(b, pull(b, "a", resources(a, ct), compression), timeout=300)
        assert job["State"] == "Success", job
        assert_same_instances(b, ct)
        moved[compression] = job["Content"]["WireSizeMB"]
    assert moved[ZSTD_SHUFFLE] < moved["gzip"], moved


def test_a_chunks_answer_decodes_to_the_uncompressed_one(pair):
    a, _, files = pair
    ids = sorted(files)[:4]
    for offset, size in ((0, 0), (1, 100_001), (12_345, 7)):
        query = f"/transfers/chunks/{'.'.join(ids)}?offset={offset}&size={size}"
        plain = a.get(query + "&compression=none")
        packed = a.get(query + f"&compression={ZSTD_SHUFFLE}")
        assert plain.status_code == packed.status_code == 200
        assert get_codec(ZSTD_SHUFFLE).decode(packed.content, len(plain.content)) == plain.content
    assert a.get(f"/transfers/chunks/{ids[0]}?compression=auto").status_code == 400


def test_a_hostile_push_body_is_a_400_and_the_transaction_goes_on(pair):
    a, b, files = pair
    clear(b)
    instance_id = sorted(files)[0]
    data = files[instance_id]
    descriptor = {"Instances": [{"ID": instance_id, "MD5": hashlib.md5(data).hexdigest(), "Size": str(len(data))}],
                  "Buckets": [[{"ID": instance_id, "Offset": "0", "Size": str(len(data))}]],
                  "Compression": ZSTD_SHUFFLE}
    r = b.post("/transfers/push", data=json.dumps(descriptor))
    assert r.status_code == 200, r.text
    path = r.json()["Path"]
    good = get_codec(ZSTD_SHUFFLE).encode(data)
    bomb = get_codec(ZSTD_SHUFFLE).encode(data + b"\0" * 10_000_000)
    for bad in (b"", b"TZS1", good[:-5], good + b"\0", bomb, b"\0" * 64):
        r = b.request("PUT", f"{path}/0", data=bad)
        assert r.status_code == 400, (r.status_code, r.text)
        assert "ErrorPayload" not in r.text and "Traceback" not in r.text
    assert b.request("PUT", f"{path}/0", data=good).status_code == 200
    assert b.post(f"{path}/commit", data=b"").status_code == 200
    assert_same_instances(b, {instance_id: data})
