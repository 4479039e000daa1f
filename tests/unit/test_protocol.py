"""Wire types of protocol.md sections 2 and 3: strict parsing, JSON round trips, the lookup answer."""

import json
import string
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from transfers_plugin.errors import (
    BadFileFormat,
    BadJson,
    BadParameterType,
    BadRequest,
    ParameterOutOfRange,
    PayloadTooLarge,
    TransfersError,
)
from transfers_plugin.protocol import (
    MAX_JSON_DEPTH,
    MAX_UINT64,
    MB,
    Bucket,
    Chunk,
    ChunkRequest,
    InstanceInfo,
    Limits,
    PushDescriptor,
    Resource,
    TransferQuery,
    check_orthanc_id,
    check_uuid,
    dumps_compact,
    dumps_styled,
    lookup_answer,
    parse_compression,
    parse_decimal,
    parse_instance_ids,
    parse_json_body,
    parse_level,
    parse_resources,
    round_mb,
    sorted_unique,
)

ID1 = "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"
ID2 = "5e0bf3b7-8a3c5a2f-16d6b2e0-1b6a7d3c-0f2b4e91"
MD5_HELLO = "8b1a9953c4611296a827abf8c47804d7"  # protocol.md appendix A

ids = st.lists(st.text(alphabet="0123456789abcdef", min_size=8, max_size=8), min_size=5, max_size=5).map("-".join)
md5s = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
uint64 = st.integers(min_value=0, max_value=MAX_UINT64)
infos = st.builds(InstanceInfo, ids, uint64, md5s)
chunks = st.builds(Chunk, ids, uint64, uint64)


def status_of(exc_info) -> int:
    assert isinstance(exc_info.value, TransfersError)
    return exc_info.value.status


# --- parse_decimal -------------------------------------------------------------------------------------

@given(uint64)
def test_parse_decimal_round_trip(n):
    assert parse_decimal(str(n), "Size") == n


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=5))
def test_parse_decimal_leading_zeros_are_still_decimal(n, zeros):
    assert parse_decimal("0" * zeros + str(n), "Size") == n


@pytest.mark.parametrize("value", ["", " ", "+1", "-1", "-0", " 1", "1 ", "1\n", "\t1", "0x10", "0b1", "1.0", "1e3",
                                   "1_000", "1,000", "abc", "12a", "\u0661\u0662", "\uff11", "\u00b2", "∞", "NaN"])
def test_parse_decimal_refuses_non_decimal_strings(value):
    with pytest.raises(BadFileFormat) as info:
        parse_decimal(value, "Size")
    assert status_of(info) == 400
    assert "Size" in info.value.message


@pytest.mark.parametrize("value", [0, 1, 1.0, 2.5, True, False, None, [], {}, ["1"], {"Size": "1"}])
def test_parse_decimal_refuses_non_strings(value):
    # A C++ peer answers BadFileFormat for numbers where strings are expected (protocol.md section 2).
    with pytest.raises(BadFileFormat) as info:
        parse_decimal(value, "Offset")
    assert status_of(info) == 400


@given(st.text().filter(lambda s: not (s and all(c in string.digits for c in s))))
def test_parse_decimal_refuses_every_other_text(value):
    with pytest.raises(BadFileFormat):
        parse_decimal(value, "Size")


def test_parse_decimal_maximum():
    assert parse_decimal(str(MAX_UINT64), "Size") == MAX_UINT64
    with pytest.raises(ParameterOutOfRange) as info:
        parse_decimal(str(MAX_UINT64 + 1), "Size")
    assert status_of(info) == 400
    assert parse_decimal("10", "x", maximum=10) == 10
    with pytest.raises(ParameterOutOfRange):
        parse_decimal("11", "x", maximum=10)


# --- compression and levels ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["none", "gzip"])
def test_parse_compression_ok(value):
    assert parse_compression(value) == value


@pytest.mark.parametrize("value", ["None", "NONE", "GZIP", "Gzip", "zstd", "", " gzip", "deflate"])
def test_parse_compression_unknown(value):
    with pytest.raises(ParameterOutOfRange) as info:
        parse_compression(value)
    assert status_of(info) == 400


@pytest.mark.parametrize("value", [None, 1, True, ["gzip"]])
def test_parse_compression_not_a_string(value):
    with pytest.raises(BadFileFormat) as info:
        parse_compression(value)
    assert status_of(info) == 400


LEVEL_ALIASES = {
    "Patient": "Patient", "Patients": "Patient",
    "Study": "Study", "Studies": "Study",
    "Series": "Series",
    "Instance": "Instance", "Instances": "Instance", "Image": "Instance", "Images": "Instance",
}


@pytest.mark.parametrize("alias,level", sorted(LEVEL_ALIASES.items()))
def test_levels_and_aliases_ignore_case(alias, level):
    for variant in {alias, alias.lower(), alias.upper(), alias.swapcase(), alias[:1].lower() + alias[1:].upper()}:
        assert parse_level(variant) == level, variant


@pytest.mark.parametrize("value", ["", "Patient ", " Study", "Serie", "Instancee", "Img", "Resource", "Seriess",
                                   "Patient\n"])
def test_unknown_level(value):
    with pytest.raises(ParameterOutOfRange) as info:
        parse_level(value)
    assert status_of(info) == 400


@pytest.mark.parametrize("value", [None, 1, ["Study"], {"Level": "Study"}])
def test_level_not_a_string(value):
    with pytest.raises(BadFileFormat) as info:
        parse_level(value)
    assert status_of(info) == 400


# --- Resource ------------------------------------------------------------------------------------------

def test_resource_normalises_level_and_keeps_extra_keys():
    item = {"Level": "studies", "ID": ID1, "Comment": "keep me", "Nested": {"a": [1, 2]}}
    r = Resource.from_json(item)
    assert (r.level, r.id) == ("Study", ID1)
    assert dict(r.extra) == {"Comment": "keep me", "Nested": {"a": [1, 2]}}
    assert r.to_json() == {"Level": "Study", "ID": ID1, "Comment": "keep me", "Nested": {"a": [1, 2]}}


def test_resource_without_extra_keys():
    assert Resource.from_json({"ID": ID2, "Level": "Instance"}).to_json() == {"Level": "Instance", "ID": ID2}


@pytest.mark.parametrize("item", [
    [], "Study", None, 3,
    {"ID": ID1}, {"Level": "Study"},
    {"Level": 1, "ID": ID1}, {"Level": "Study", "ID": 5}, {"Level": "Study", "ID": None},
    {"Level": "Study", "ID": [ID1]},
])
def test_resource_bad_shape(item):
    with pytest.raises(BadFileFormat) as info:
        Resource.from_json(item)
    assert status_of(info) == 400


def test_resource_bad_level_is_out_of_range():
    with pytest.raises(ParameterOutOfRange) as info:
        Resource.from_json({"Level": "Frame", "ID": ID1})
    assert status_of(info) == 400


def test_parse_resources():
    rs = parse_resources([{"Level": "Patient", "ID": "a"}, {"Level": "images", "ID": "b"}])
    assert [(r.level, r.id) for r in rs] == [("Patient", "a"), ("Instance", "b")]
    assert parse_resources([]) == []
    for bad in ({"Level": "Patient", "ID": "a"}, "x", None, 1):
        with pytest.raises(BadFileFormat):
            parse_resources(bad)
    with pytest.raises(BadFileFormat) as info:
        parse_resources([{"Level": "Study", "ID": "a"}, {"Level": "Study"}])
    assert "Resources[1]" in info.value.message


# --- InstanceInfo, Chunk, Bucket -----------------------------------------------------------------------

@given(infos)
def test_instance_info_json_round_trip(info):
    wire = json.loads(json.dumps(info.to_json()))
    assert wire == {"ID": info.id, "MD5": info.md5, "Size": str(info.size)}
    assert isinstance(wire["Size"], str)
    assert InstanceInfo.from_json(wire) == info


@pytest.mark.parametrize("item", [
    {"ID": ID1, "Size": 768, "MD5": MD5_HELLO},
    {"ID": ID1, "Size": "-1", "MD5": MD5_HELLO},
    {"ID": ID1, "Size": "7.5", "MD5": MD5_HELLO},
    {"Size": "1", "MD5": MD5_HELLO},
    {"ID": ID1, "MD5": MD5_HELLO},
    {"ID": ID1, "Size": "1"},
    {"ID": ID1, "Size": "1", "MD5": None},
    {"ID": 1, "Size": "1", "MD5": MD5_HELLO},
    [ID1, "1", MD5_HELLO],
])
def test_instance_info_strict(item):
    with pytest.raises(BadFileFormat) as info:
        InstanceInfo.from_json(item)
    assert status_of(info) == 400


@given(chunks)
def test_chunk_json_round_trip(chunk):
    wire = json.loads(json.dumps(chunk.to_json()))
    assert wire == {"ID": chunk.instance_id, "Offset": str(chunk.offset), "Size": str(chunk.size)}
    assert Chunk.from_json(wire) == chunk


@pytest.mark.parametrize("item", [
    {"ID": ID1, "Offset": 0, "Size": "1"},
    {"ID": ID1, "Offset": "0", "Size": 1},
    {"ID": ID1, "Offset": "0"},
    {"ID": ID1, "Size": "0"},
    {"Offset": "0", "Size": "0"},
    {"ID": ID1, "Offset": " 0", "Size": "1"},
    "chunk",
])
def test_chunk_strict(item):
    with pytest.raises(BadFileFormat):
        Chunk.from_json(item)


@given(st.lists(chunks, max_size=8))
def test_bucket_json_round_trip(chunk_list):
    bucket = Bucket(tuple(chunk_list))
    wire = json.loads(json.dumps(bucket.to_json()))
    assert isinstance(wire, list) and len(wire) == len(chunk_list)
    assert Bucket.from_json(wire) == bucket
    assert bucket.total_size == sum(c.size for c in chunk_list)


def test_bucket_payload_layout_rules_are_not_checked_on_parse():
    # protocol.md 2.3: a receiver does not check the planner's layout rules when it parses a bucket.
    wire = [{"ID": ID2, "Offset": "5", "Size": "0"}, {"ID": ID1, "Offset": "7", "Size": "3"}]
    assert Bucket.from_json(wire).total_size == 3


@pytest.mark.parametrize("value", [{}, "[]", None, [[]], [{"ID": "a", "Offset": "0"}]])
def test_bucket_strict(value):
    with pytest.raises(BadFileFormat):
        Bucket.from_json(value)


def test_empty_bucket():
    assert Bucket.from_json([]) == Bucket()
    assert Bucket().total_size == 0 and Bucket().to_json() == []


# --- chunks request ------------------------------------------------------------------------------------

def test_chunk_request_defaults():
    q = ChunkRequest.parse(ID1, {})
    assert q == ChunkRequest((ID1,), 0, 0, "none")


def test_chunk_request_values_and_order():
    q = ChunkRequest.parse(f"{ID2}.{ID1}", {"offset": "12", "size": "3456", "compression": "gzip", "x": "y"})
    assert q.ids == (ID2, ID1)  # URL order, not sorted
    assert (q.offset, q.size, q.compression) == (12, 3456, "gzip")


def test_chunk_request_large_values():
    q = ChunkRequest.parse(ID1, {"offset": str(2**40), "size": str(MAX_UINT64)})
    assert (q.offset, q.size) == (2**40, MAX_UINT64)


@pytest.mark.parametrize("joined", ["", ".", "a..b", ".a", "a.", "ABC", "a/b", "a b", "a.G", "xyz", "a,b", "ab",
                                    ID1.upper(), ID1[:-1], ID1 + "0", ID1.replace("-", ""), f"{ID1}.", f"../{ID1}",
                                    f"{ID1}/..", "/tmp/x", "f" * 5000, f"{ID1}\x00", "\u00e9" * 44])
def test_chunk_request_bad_ids(joined):
    with pytest.raises(BadRequest) as info:
        ChunkRequest.parse(joined, {})
    assert status_of(info) == 400


@pytest.mark.parametrize("name", ["offset", "size"])
@pytest.mark.parametrize("value", ["", "-1", "+1", "1.5", "abc", " 1", "0x1", "1e2", str(MAX_UINT64 + 1), "\u0661"])
def test_chunk_request_bad_numbers(name, value):
    with pytest.raises(BadParameterType) as info:
        ChunkRequest.parse(ID1, {name: value})
    assert status_of(info) == 400
    assert name in info.value.message


@pytest.mark.parametrize("value", ["GZIP", "None", "", "deflate"])
def test_chunk_request_bad_compression(value):
    with pytest.raises(ParameterOutOfRange) as info:
        ChunkRequest.parse(ID1, {"compression": value})
    assert status_of(info) == 400


def test_parse_instance_ids():
    assert parse_instance_ids(f"{ID1}.{ID2}.{ID1}") == [ID1, ID2, ID1]


# --- TransferQuery -------------------------------------------------------------------------------------

def query(**overrides):
    q = {"Resources": [{"Level": "Study", "ID": ID1}], "Peer": "remote", "Compression": "gzip"}
    q.update(overrides)
    return {k: v for k, v in q.items() if v is not ...}


def test_transfer_query_minimal():
    q = TransferQuery.from_json(query())
    assert q.peer == "remote" and q.compression == "gzip"
    assert q.resources == (Resource("Study", ID1),)
    assert q.priority == 0 and q.originator is None and q.sender_transfer_id is None


@pytest.mark.parametrize("priority", [0, 5, -7, 2**31 - 1, -2**31])
def test_transfer_query_priority_int(priority):
    assert TransferQuery.from_json(query(Priority=priority)).priority == priority


@pytest.mark.parametrize("priority", [2**31, -2**31 - 1, 2**40, 10**4000])
def test_transfer_query_priority_out_of_range(priority):
    with pytest.raises(ParameterOutOfRange):
        TransferQuery.from_json(query(Priority=priority))


@pytest.mark.parametrize("priority", [True, False, 1.0, 2.5, "1", None, [1]])
def test_transfer_query_priority_not_int(priority):
    with pytest.raises(BadFileFormat) as info:
        TransferQuery.from_json(query(Priority=priority))
    assert status_of(info) == 400


def test_transfer_query_optional_strings():
    q = TransferQuery.from_json(query(Originator="e12ee203-3705-4f1e-b159-f88239b57b9c", SenderTransferID="s-1"))
    assert q.originator == "e12ee203-3705-4f1e-b159-f88239b57b9c"
    assert q.sender_transfer_id == "s-1"


@pytest.mark.parametrize("key", ["Originator", "SenderTransferID"])
@pytest.mark.parametrize("value", [1, None, True, ["x"]])
def test_transfer_query_optional_strings_wrong_type(key, value):
    with pytest.raises(BadFileFormat):
        TransferQuery.from_json(query(**{key: value}))


@pytest.mark.parametrize("overrides", [
    {"Resources": ...}, {"Peer": ...}, {"Compression": ...},
    {"Resources": {"Level": "Study", "ID": ID1}}, {"Peer": 1}, {"Peer": None}, {"Compression": None},
    {"Compression": 1},
])
def test_transfer_query_required_keys(overrides):
    with pytest.raises(BadFileFormat) as info:
        TransferQuery.from_json(query(**overrides))
    assert status_of(info) == 400


@pytest.mark.parametrize("value", ["GZIP", "None", "zlib"])
def test_transfer_query_bad_compression(value):
    with pytest.raises(ParameterOutOfRange) as info:
        TransferQuery.from_json(query(Compression=value))
    assert status_of(info) == 400


@pytest.mark.parametrize("value", [[], "x", None, 1])
def test_transfer_query_not_an_object(value):
    with pytest.raises(BadFileFormat):
        TransferQuery.from_json(value)


def test_transfer_query_round_trip():
    wire = query(Priority=-3, Originator="o", SenderTransferID="s",
                 Resources=[{"Level": "Series", "ID": ID2, "Extra": 1}])
    q = TransferQuery.from_json(wire)
    out = q.to_json()
    assert out["Resources"] == [{"Level": "Series", "ID": ID2, "Extra": 1}]
    assert (out["Peer"], out["Compression"], out["Originator"], out["SenderTransferID"]) == ("remote", "gzip", "o", "s")
    assert TransferQuery.from_json(json.loads(json.dumps(out))) == q
    plain = TransferQuery.from_json(query()).to_json()
    assert "Originator" not in plain and "SenderTransferID" not in plain


# --- PushDescriptor ------------------------------------------------------------------------------------

@given(st.lists(infos, max_size=5), st.lists(st.lists(chunks, max_size=3), max_size=4),
       st.sampled_from(["none", "gzip"]))
def test_push_descriptor_round_trip(instances, buckets, compression):
    assume(sum(len(b) for b in buckets) <= len(instances) + len(buckets))  # the count bound, tested below
    d = PushDescriptor(tuple(instances), tuple(Bucket(tuple(b)) for b in buckets), compression)
    wire = json.loads(dumps_compact(d.to_json()))
    assert set(wire) == {"Instances", "Buckets", "Compression"}
    assert all(isinstance(i["Size"], str) for i in wire["Instances"])
    assert all(isinstance(c["Offset"], str) and isinstance(c["Size"], str) for b in wire["Buckets"] for c in b)
    assert PushDescriptor.from_json(wire) == d


@pytest.mark.parametrize("instances,buckets,chunks,refused", [
    (3, 2, 5, False), (3, 2, 6, True), (0, 4, 4, False), (0, 4, 5, True), (10, 1, 11, False)])
def test_push_descriptor_chunks_are_bounded_by_instances_and_buckets(instances, buckets, chunks, refused):
    """Every plan has at most one chunk per instance plus one per bucket (a split): more is refused before
    anything is parsed (a descriptor of many tiny chunks would otherwise hold much memory)."""
    ids = [f"{i:08x}-00000000-00000000-00000000-00000000" for i in range(instances)]
    per_bucket = [chunks // buckets + (1 if b < chunks % buckets else 0) for b in range(buckets)]
    wire = {"Instances": [{"ID": i, "Size": "0", "MD5": MD5_HELLO} for i in ids], "Compression": "none",
            "Buckets": [[{"ID": "not parsed yet", "Offset": "0", "Size": "0"}] * n for n in per_bucket]}
    with pytest.raises(BadFileFormat) as info:
        PushDescriptor.from_json(wire)
    assert ("chunks" in info.value.message) == refused


@pytest.mark.parametrize("key,n", [("Instances", 11), ("Buckets", 11)])
def test_push_descriptor_counts_are_bounded(key, n):
    wire = {"Instances": [], "Buckets": [], "Compression": "none", key: [{}] * n}
    with pytest.raises(PayloadTooLarge) as info:
        PushDescriptor.from_json(wire, Limits(max_instances=10))
    assert status_of(info) == 413 and "MaxTransferInstances" in info.value.message
    with pytest.raises(BadFileFormat):  # within the bound, the items are parsed (and these are wrong)
        PushDescriptor.from_json({**wire, key: [{}] * 10}, Limits(max_instances=10))


def test_push_descriptor_empty_transfer():
    d = PushDescriptor.from_json({"Instances": [], "Buckets": [], "Compression": "none"})
    assert d.instances == () and d.buckets == ()


def test_push_descriptor_appendix_example():
    # protocol.md's example, with whole Orthanc IDs instead of its shortened ones
    body = ('{"Buckets":[[{"ID":"0a","Offset":"0","Size":"768"},{"ID":"5e","Offset":"0","Size":"1048576"}]],'
            '"Compression":"gzip","Instances":[{"ID":"0a","MD5":"b81af6768a606259904a7fe7a5eea85f","Size":"768"},'
            '{"ID":"5e","MD5":"00000000000000000000000000000000","Size":"1048576"}]}'
            ).replace('"0a"', f'"{ID1}"').replace('"5e"', f'"{ID2}"')
    d = PushDescriptor.from_json(json.loads(body))
    assert [i.size for i in d.instances] == [768, 1048576]
    assert d.buckets[0].total_size == 768 + 1048576
    assert dumps_compact(d.to_json()).decode() == body


@pytest.mark.parametrize("wire", [
    {"Buckets": [], "Compression": "none"},
    {"Instances": [], "Compression": "none"},
    {"Instances": [], "Buckets": []},
    {"Instances": {}, "Buckets": [], "Compression": "none"},
    {"Instances": [], "Buckets": [{}], "Compression": "none"},
    {"Instances": [{"ID": "a", "Size": 1, "MD5": MD5_HELLO}], "Buckets": [], "Compression": "none"},
    {"Instances": [], "Buckets": [[{"ID": "a", "Offset": 0, "Size": "1"}]], "Compression": "none"},
    [],
])
def test_push_descriptor_strict(wire):
    with pytest.raises(BadFileFormat) as info:
        PushDescriptor.from_json(wire)
    assert status_of(info) == 400


def test_push_descriptor_bad_compression():
    with pytest.raises(ParameterOutOfRange):
        PushDescriptor.from_json({"Instances": [], "Buckets": [], "Compression": "GZIP"})


# --- lookup answer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bytes,mb", [
    (0, 0), (1, 0), (MB // 2 - 1, 0), (MB // 2, 1), (MB, 1), (MB + MB // 2 - 1, 1), (MB + MB // 2, 2),
    (1049344, 1), (9500000, 9), (10 * MB - 1, 10),
])
def test_round_mb(n_bytes, mb):
    assert round_mb(n_bytes) == mb


@given(st.integers(min_value=0, max_value=2**50))
def test_round_mb_is_nearest_with_halves_up(n_bytes):
    exact = Fraction(n_bytes, MB)
    assert round_mb(n_bytes) == int(exact + Fraction(1, 2))  # floor(x + 1/2) for x >= 0


@given(st.lists(st.integers(min_value=0, max_value=3 * MB), max_size=6))
def test_lookup_answer(sizes):
    instances = [InstanceInfo(f"{i:02x}", s, MD5_HELLO) for i, s in enumerate(sizes)]
    answer = json.loads(dumps_compact(lookup_answer(instances, "me")))
    total = sum(sizes)
    assert answer["CountInstances"] == len(sizes)
    assert answer["TotalSize"] == str(total)
    assert answer["TotalSizeMB"] == int(Fraction(total, MB) + Fraction(1, 2))
    assert answer["Originator"] == "me"
    assert answer["Instances"] == [{"ID": f"{i:02x}", "MD5": MD5_HELLO, "Size": str(s)} for i, s in enumerate(sizes)]


def test_lookup_answer_appendix_example():
    a = InstanceInfo("0a", 768, "b81af6768a606259904a7fe7a5eea85f")
    b = InstanceInfo("5e", 1048576, MD5_HELLO)
    expected = ('{"CountInstances":2,"Instances":[{"ID":"0a","MD5":"b81af6768a606259904a7fe7a5eea85f","Size":"768"},'
                '{"ID":"5e","MD5":"' + MD5_HELLO + '","Size":"1048576"}],'
                '"Originator":"e12ee203-3705-4f1e-b159-f88239b57b9c","TotalSize":"1049344","TotalSizeMB":1}')
    assert dumps_compact(lookup_answer([a, b], "e12ee203-3705-4f1e-b159-f88239b57b9c")).decode() == expected


def test_lookup_answer_types():
    answer = lookup_answer([], "o")
    assert answer == {"CountInstances": 0, "Instances": [], "Originator": "o", "TotalSize": "0", "TotalSizeMB": 0}
    assert isinstance(answer["CountInstances"], int) and isinstance(answer["TotalSizeMB"], int)


# --- sorted_unique and JSON helpers --------------------------------------------------------------------

@given(st.lists(st.text(alphabet="0123456789abcdefABC-", min_size=1, max_size=6), max_size=12))
def test_sorted_unique(id_list):
    infos_in = [InstanceInfo(i, len(i), MD5_HELLO) for i in id_list]
    out = sorted_unique(infos_in)
    assert [i.id for i in out] == sorted(set(id_list), key=lambda s: s.encode("utf-8"))
    assert all(i == InstanceInfo(i.id, len(i.id), MD5_HELLO) for i in out)


def test_sorted_unique_is_byte_wise():
    out = sorted_unique([InstanceInfo(i, 1, MD5_HELLO) for i in ["b", "a0", "a-", "B", "a", "b"]])
    assert [i.id for i in out] == ["B", "a", "a-", "a0", "b"]


def test_parse_json_body():
    assert parse_json_body(b'[{"Level": "Study", "ID": "x"}]') == [{"Level": "Study", "ID": "x"}]
    assert parse_json_body('{"a": 1}') == {"a": 1}
    for bad in (b"", b"[", b"{'a': 1}", b"\xff\xfe\x00", b"[1,]"):
        with pytest.raises(BadJson) as info:
            parse_json_body(bad, "lookup body")
        assert status_of(info) == 400 and info.value.orthanc_code == 28
        assert "lookup body" in info.value.message


@settings(max_examples=50)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                    max_leaves=10))
def test_dumps_compact_and_styled(value):
    compact = dumps_compact(value)
    styled = dumps_styled(value)
    assert json.loads(compact) == value and json.loads(styled) == value
    assert styled.endswith(b"\n")
    assert b"\n" not in compact


def test_dumps_compact_sorts_keys():
    assert dumps_compact({"b": 1, "a": [1, {"d": "x", "c": "y"}]}) == b'{"a":[1,{"c":"y","d":"x"}],"b":1}'


# --- hostile JSON, IDs and numbers -----------------------------------------------------------------------

def nested(depth: int, kind: str = "array") -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("depth", [2 * MAX_JSON_DEPTH + 1, 550, 1000, 100_000, 1_000_000])
def test_deep_json_is_refused_before_it_is_parsed(monkeypatch, kind, depth):
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(BadRequest) as info:
        parse_json_body(nested(depth, kind), "lookup body")
    if depth <= 100_000:
        assert status_of(info) == 400 and "nested too deeply" in info.value.message
    else:  # more arrays and objects than any transfer holds: refused by the count, before the shape
        assert status_of(info) == 413 and "arrays and objects" in info.value.message


@pytest.mark.parametrize("body", [b'["' + b'", "' * 3_000_000 + b'"]', b"[" + b"[]," * 900_000 + b"1]"])
def test_json_with_more_items_than_a_transfer_holds_is_refused_at_once(monkeypatch, body):
    """Counting quotes and brackets (C speed) bounds the work of the shape check on any body."""
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(PayloadTooLarge) as info:
        parse_json_body(body, "push descriptor")
    assert "MaxTransferInstances" in info.value.message


@pytest.mark.parametrize("text", [b"[NaN]", b"[Infinity]", b"[-Infinity]", b'{"a": 1e999}', b"[-1e400]"])
def test_json_that_is_not_strict_json_is_refused(text):
    with pytest.raises(BadJson):
        parse_json_body(text, "x")


@pytest.mark.parametrize("depth", [1, 4, MAX_JSON_DEPTH])
def test_json_of_a_reasonable_depth_is_parsed(depth):
    assert parse_json_body(nested(depth, "object"), "x") is not None
    wrapped = b'{"Resources": ' + nested(depth) + b', "Peer": "[[[[{{{{", "x": "\\\"]]]]"}'
    assert parse_json_body(wrapped, "x")["Peer"] == "[[[[{{{{"


@pytest.mark.parametrize("body", [b"[[[[", b"]]]]", b"[}", b'{"a": [1, 2}', b"[" * 5000, b"]" * 5000 + b"[" * 5000,
                                  b'["unterminated ]]]'])
def test_json_whose_brackets_do_not_match_is_refused_without_parsing(monkeypatch, body):
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(BadJson) as info:
        parse_json_body(body, "x")
    assert status_of(info) == 400


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"a": "[" * 10000, "b": ["]" * 3, "\\", '"{']}).encode()
    assert parse_json_body(text, "x")["a"] == "[" * 10000


def test_json_larger_than_the_limit_is_refused():
    with pytest.raises(PayloadTooLarge) as info:
        parse_json_body(b"[" + b"1," * MB + b"1]", "push descriptor", Limits(max_json_bytes=MB))
    assert status_of(info) == 413 and "MaxJsonBodySize" in info.value.message
    assert parse_json_body(b"[" + b"1," * 1000 + b"1]", "x", Limits(max_json_bytes=MB))[-1] == 1


@pytest.mark.parametrize("value", ["9" * 21, "1" + "0" * 4299, "9" * 5000])
def test_parse_decimal_refuses_more_digits_than_64_bits_hold(value):
    with pytest.raises(ParameterOutOfRange) as info:
        parse_decimal(value, "Size")
    assert status_of(info) == 400 and len(info.value.message) < 200


@pytest.mark.parametrize("name", ["offset", "size"])
def test_chunk_request_refuses_huge_numbers(name):
    with pytest.raises(BadParameterType) as info:
        ChunkRequest.parse(ID1, {name: "9" * 5000})
    assert status_of(info) == 400 and len(info.value.message) < 300


HOSTILE_IDS = ["", "/tmp/x/abs", "../../x", "..", "%2e%2e%2f", ID1 + "/..", ID1 + "\x00", ID1.upper(), "a" * 300,
               "f" * 5000, "\u00e9t\u00e9/" + ID1, ID1[:-1] + "\u0660", " " + ID1, ID1 + "\n"]


@pytest.mark.parametrize("value", HOSTILE_IDS + [None, 5, ["x"]])
def test_hostile_instance_ids_are_refused(value):
    with pytest.raises(BadFileFormat) as info:
        check_orthanc_id(value, "ID")
    assert status_of(info) == 400 and len(info.value.message) < 250
    with pytest.raises(BadFileFormat):
        InstanceInfo.from_json({"ID": value, "Size": "0", "MD5": MD5_HELLO})
    with pytest.raises(BadFileFormat):
        Chunk.from_json({"ID": value, "Offset": "0", "Size": "0"})


@pytest.mark.parametrize("value", HOSTILE_IDS + [ID1, "E12EE203-3705-4F1E-B159-F88239B57B9C"])
def test_hostile_transaction_ids_are_refused(value):
    with pytest.raises(BadRequest) as info:
        check_uuid(value, "The push transaction ID")
    assert status_of(info) == 400
    assert check_uuid("e12ee203-3705-4f1e-b159-f88239b57b9c", "x") == "e12ee203-3705-4f1e-b159-f88239b57b9c"


@pytest.mark.parametrize("key,value", [("Peer", ""), ("Peer", "a\nb"), ("Peer", "x" * 300),
                                       ("SenderTransferID", "a\r\nX-Injected: 1"), ("SenderTransferID", "\u00e9"),
                                       ("Originator", "\x00")])
def test_transfer_query_strings_that_would_be_logged_or_sent_as_headers(key, value):
    with pytest.raises(BadFileFormat):
        TransferQuery.from_json(query(**{key: value}))


def test_transfer_query_keeps_a_non_ascii_peer_name():
    assert TransferQuery.from_json(query(Peer="h\u00f4pital-b")).peer == "h\u00f4pital-b"


def test_resources_are_bounded():
    with pytest.raises(PayloadTooLarge):
        parse_resources([{"Level": "Study", "ID": ID1}] * 11, Limits(max_instances=10))
    assert len(parse_resources([{"Level": "Study", "ID": ID1}] * 10, Limits(max_instances=10))) == 10


def test_the_extra_keys_of_a_resource_are_kept_but_bounded():
    kept = Resource.from_json({"Level": "Study", "ID": ID1, "Label": "for the archive"})
    assert kept.to_json() == {"Level": "Study", "ID": ID1, "Label": "for the archive"}
    with pytest.raises(PayloadTooLarge):
        Resource.from_json({"Level": "Study", "ID": ID1, "Note": "x" * 2000})
