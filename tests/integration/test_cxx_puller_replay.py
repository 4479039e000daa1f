"""A C++ puller's recorded requests, replayed against our source: the answers match the C++ source's.

The fixtures (tests/fixtures/cxx-1.4/pull-*) were recorded between two C++ 1.4 peers. Our source,
holding the same 5 instances, must answer the same lookup and byte-identical chunk bodies.
"""

import gzip
import json
import zlib

import pytest

pytestmark = pytest.mark.integration


def load(server, fixtures_dir):
    instances = json.loads((fixtures_dir / "instances" / "instances.json").read_text())
    for instance_id in instances:
        assert server.upload((fixtures_dir / "instances" / f"{instance_id}.dcm").read_bytes()) == instance_id
    return server


@pytest.fixture(scope="module")
def source(module_orthanc_factory, fixtures_dir):
    """At the C++ plugin's gzip level (6), our answers are byte-identical to the C++ source's."""
    return load(module_orthanc_factory("cxx-replay-source", transfers={"CompressionLevel": 6}), fixtures_dir)


@pytest.fixture(scope="module")
def default_source(module_orthanc_factory, fixtures_dir):
    return load(module_orthanc_factory("default-level-source"), fixtures_dir)


def test_default_level_answers_decode_to_the_same_bytes(default_source, fixtures_dir):
    """At our default level (1), a gzip answer is another valid single member of the same bytes."""
    folder = fixtures_dir / "pull-gzip"
    for exchange in json.loads((folder / "exchange.json").read_text()):
        rq, rs = exchange["request"], exchange["response"]
        if not rq["path"].startswith("//transfers/chunks/"):
            continue
        r = default_source.get(rq["path"] + "?" + rq["query"])
        recorded = (folder / rs["body"]).read_bytes()
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/gzip"
        assert r.content[:10] == bytes.fromhex("1f8b0800000000000403")  # XFL 4: the fastest level
        d = zlib.decompressobj(31)
        assert d.decompress(r.content) + d.flush() == gzip.decompress(recorded)
        assert d.eof and not d.unused_data


@pytest.mark.parametrize("scenario", ["pull-gzip", "pull-none"])
def test_replay_cxx_puller(source, fixtures_dir, scenario):
    folder = fixtures_dir / scenario
    exchanges = json.loads((folder / "exchange.json").read_text())
    chunk_requests = 0
    for exchange in exchanges:
        rq, rs = exchange["request"], exchange["response"]
        headers = {k: v for k, v in rq["headers"].items() if k not in ("Host", "Content-Length")}
        body = (folder / rq["body"]).read_bytes() if rq["body"] else None
        url = rq["path"] + ("?" + rq["query"] if rq["query"] is not None else "")
        r = source.request(rq["method"], url, data=body, headers=headers)
        assert r.status_code == rs["status"], (url, r.text)
        recorded = (folder / rs["body"]).read_bytes()
        if rq["path"] == "//plugins":
            assert "transfers" in r.json()
        elif rq["path"] == "//transfers/lookup":
            ours, theirs = r.json(), json.loads(recorded)
            assert set(ours) == set(theirs)
            for key in ("Instances", "CountInstances", "TotalSize", "TotalSizeMB"):
                assert ours[key] == theirs[key], key
            assert ours["Originator"] != theirs["Originator"]  # each plugin has its own
            # The C++ puller reads the compact form; ours is compact too.
            assert b"\n" not in r.content
        else:
            assert rq["path"].startswith("//transfers/chunks/")
            assert r.headers["Content-Type"] == rs["headers"]["Content-Type"]
            assert r.content == recorded, f"chunk body differs for {url}"
            chunk_requests += 1
    assert chunk_requests == 6
