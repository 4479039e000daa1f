"""The pure helpers of the PullTransfer job: progress, network speed, the lookup answer, network errors."""

import json
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from transfers_plugin.config import PeerConfig
from transfers_plugin.errors import BadRequest, NetworkProtocol, NotFound
from transfers_plugin.jobs.pull import as_transfer_error, network_speed_kbs, parse_lookup_answer, progress
from transfers_plugin.protocol import DEFAULT_LIMITS, InstanceInfo, Limits, parse_json_body
from transfers_plugin.transport import PeerError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cxx-1.4"  # the C++ 1.4 recordings, in the repository
LOOKUP_ANSWER = FIXTURES / "pull-gzip" / "resp-002.json"
ORIGINATOR = "c1a02fc9-b7c7-463e-abe2-bb518161e6b9"

PEER = PeerConfig("remote", "http://remote.example:8042/")
AA = "aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa-aaaaaaaa"
BB = "bbbbbbbb-bbbbbbbb-bbbbbbbb-bbbbbbbb-bbbbbbbb"
CC = "cccccccc-cccccccc-cccccccc-cccccccc-cccccccc"


def parse_answer(body: bytes, originator, peer, limits: Limits = DEFAULT_LIMITS):
    """A lookup answer as the job reads it: parsed within the limits, then checked."""
    return parse_lookup_answer(parse_json_body(body, "lookup answer", limits), originator, peer, limits)


def answer(instances, originator=ORIGINATOR, **extra) -> bytes:
    body = {"CountInstances": len(instances), "Instances": instances, "Originator": originator}
    body.update(extra)
    return json.dumps(body).encode()


def item(iid=AA, size="10", md5="0" * 32):
    return {"ID": iid, "MD5": md5, "Size": size}


# --- progress -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("completed,scheduled,expected", [
    (0, 0, 0.5), (0, 8, 0.1), (4, 8, 0.5), (8, 8, 0.9), (1, 2, 0.5), (0, 98, 0.01)])
def test_progress_formula(completed, scheduled, expected):
    assert progress(completed, scheduled) == pytest.approx(expected)


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_progress_is_the_cxx_formula_and_below_one(completed, extra):
    scheduled = completed + extra
    p = progress(completed, scheduled)
    assert p == (1 + completed) / (2 + scheduled)
    assert 0 < p < 1


def test_progress_grows_with_each_bucket():
    values = [progress(c, 10) for c in range(11)]
    assert values == sorted(values) and len(set(values)) == 11


# --- network speed ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bytes,seconds,expected", [
    (1024 * 1000, 1.0, 1000),
    (1024 * 1000, 2.0, 500),
    (1024, 0.010, 100),
    (10 * 1024 * 1024, 0.5, 20480),
    (1500, 1.0, 1),  # truncated, as the C++ plugin does
    (1023, 1.0, 0),
    (0, 3.0, 0),
])
def test_network_speed_kbs(n_bytes, seconds, expected):
    assert network_speed_kbs(n_bytes, seconds) == expected


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.0099, -1.0])
def test_network_speed_is_0_under_10_ms(seconds):
    assert network_speed_kbs(10**9, seconds) == 0


def test_network_speed_is_an_integer():
    assert isinstance(network_speed_kbs(123456, 0.7), int)


# --- the lookup answer --------------------------------------------------------------------------------

def test_real_cxx_lookup_answer():
    body = LOOKUP_ANSWER.read_bytes()
    raw = json.loads(body)
    instances = parse_answer(body, ORIGINATOR, PEER)
    assert len(instances) == raw["CountInstances"] == 5
    assert all(isinstance(i, InstanceInfo) for i in instances)
    assert [i.to_json() for i in instances] == sorted(raw["Instances"], key=lambda x: x["ID"])
    assert sum(i.size for i in instances) == int(raw["TotalSize"]) == 541678
    assert instances[3] == InstanceInfo("a36d4be2-f419c44c-5157e814-171573f6-d151a103", 526432,
                                        "ae6d884f6892b7d05dddd6dd057ce42c")
    # Without an expected originator, any is accepted.
    assert parse_answer(body, None, PEER) == instances


def test_instances_are_sorted_by_id():
    body = answer([item(CC), item(AA), item(BB)])
    assert [i.id for i in parse_answer(body, ORIGINATOR, PEER)] == [AA, BB, CC]


def test_empty_lookup_answer():
    assert parse_answer(answer([]), ORIGINATOR, PEER) == []


@pytest.mark.parametrize("body", [
    b"",
    b"not json",
    b"[]",
    json.dumps({"Originator": ORIGINATOR}).encode(),
    json.dumps({"Instances": []}).encode(),
    json.dumps({"Instances": {}, "Originator": ORIGINATOR}).encode(),
    json.dumps({"Instances": [], "Originator": 12}).encode(),
])
def test_bad_answer_shapes(body):
    with pytest.raises(BadRequest):
        parse_answer(body, ORIGINATOR, PEER)


@pytest.mark.parametrize("missing", ["ID", "MD5", "Size"])
def test_instance_with_a_missing_key(missing):
    bad = item()
    del bad[missing]
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item(BB), bad]), ORIGINATOR, PEER)
    assert missing in e.value.message


@pytest.mark.parametrize("size", [10, 10.0, None, "-1", "1e3", " 10", "0x10"])
def test_size_must_be_a_decimal_string(size):
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item(size=size)]), ORIGINATOR, PEER)
    assert "Size" in e.value.message


def test_instance_that_is_not_an_object():
    with pytest.raises(BadRequest):
        parse_answer(answer([AA]), ORIGINATOR, PEER)


def test_duplicate_instances_are_refused():
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item(AA), item(BB), item(AA, size="11")]), ORIGINATOR, PEER)
    assert "twice" in e.value.message


def test_originator_mismatch_is_refused():
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item()], originator="someone-else"), ORIGINATOR, PEER)
    assert "invalid originator" in e.value.message
    assert "someone-else" in e.value.message and "remote" in e.value.message


def test_real_answer_with_another_originator_is_refused():
    with pytest.raises(BadRequest, match="invalid originator"):
        parse_answer(LOOKUP_ANSWER.read_bytes(), "00000000-0000-0000-0000-000000000000", PEER)


@pytest.mark.parametrize("iid", ["/tmp/x/abs", "../../x", "..%2f..%2fx", "a" * 5000, AA + "\x00", AA.upper(),
                                 "\u00e9t\u00e9/" + AA, AA + "/../" + BB])
def test_a_malicious_source_cannot_name_files(iid):
    """A lookup answer's IDs become file names of the download area: only Orthanc IDs pass."""
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item(BB), item(iid)]), ORIGINATOR, PEER)
    assert "Orthanc identifier" in e.value.message and len(e.value.message) < 300


@pytest.mark.parametrize("md5", ["", "0" * 31, "g" * 32, "0" * 33, "../" + "0" * 29])
def test_md5_must_have_32_hex_digits(md5):
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item(md5=md5)]), ORIGINATOR, PEER)
    assert "MD5" in e.value.message


def test_lookup_answer_of_too_many_instances_is_refused():
    ids = [f"{i:08x}-00000000-00000000-00000000-00000000" for i in range(11)]
    with pytest.raises(BadRequest) as e:
        parse_answer(answer([item(i) for i in ids]), ORIGINATOR, PEER, Limits(max_instances=10))
    assert "MaxTransferInstances" in e.value.message
    assert len(parse_answer(answer([item(i) for i in ids[:10]]), ORIGINATOR, PEER, Limits(max_instances=10))) == 10


# --- network errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [requests.ConnectionError("refused"), requests.ReadTimeout("slow"),
                                 requests.exceptions.ChunkedEncodingError("cut")])
def test_requests_errors_become_peer_errors(exc):
    e = as_transfer_error(PEER, exc)
    assert isinstance(e, PeerError) and isinstance(e, NetworkProtocol)
    assert "'remote'" in e.message and PEER.url in e.message


def test_urllib3_errors_become_peer_errors():
    import urllib3

    e = as_transfer_error(PEER, urllib3.exceptions.ProtocolError("Connection broken"))
    assert isinstance(e, PeerError) and "'remote'" in e.message


def test_transfers_errors_and_others_are_unchanged():
    mine = NotFound("no such instance")
    assert as_transfer_error(PEER, mine) is mine
    bug = KeyError("x")
    assert as_transfer_error(PEER, bug) is bug
