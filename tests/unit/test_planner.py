"""Bucket planner: protocol.md section 5, the recorded C++ 1.4 layout, boundaries and properties."""

import json
import random
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfers_plugin.errors import BadParameterType, ParameterOutOfRange
from transfers_plugin.planner import (
    MAX_PULL_URL_LENGTH,
    chunks_uri,
    chunks_url,
    plan_buckets,
    pull_buckets,
    push_buckets,
)
from transfers_plugin.protocol import Bucket, Chunk, InstanceInfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cxx-1.4"  # the C++ 1.4 recordings, in the repository
FIXTURE_BASE_URL = "http://127.0.0.1:38142/"


def bucket(*chunks: Tuple[str, int, int]) -> Bucket:
    return Bucket(tuple(Chunk(i, o, s) for i, o, s in chunks))


def layout(buckets: List[Bucket]) -> List[List[Tuple[str, int, int]]]:
    return [[(c.instance_id, c.offset, c.size) for c in b.chunks] for b in buckets]


def reference_plan(sizes: Dict[str, int], bucket_size_kb: int, base_url: str = "",
                   compression: str = "none") -> List[List[Tuple[str, int, int]]]:
    """A direct transcription of protocol.md's pseudo-code, building the URL string each time."""
    g = bucket_size_kb * 1024
    s = 2 * g
    out: List[List[Tuple[str, int, int]]] = []
    small = []
    for iid in sorted(sizes):
        n = sizes[iid]
        if n < g:
            small.append(iid)
        elif n < s:
            out.append([(iid, 0, n)])
        else:
            k = -(-n // s)  # ceil(n / s)
            piece = n // k
            for i in range(k):
                out.append([(iid, i * piece, piece if i < k - 1 else n - i * piece)])
    cur: List[Tuple[str, int, int]] = []
    total = 0
    for iid in small:
        if sizes[iid] > 0:
            cur.append((iid, 0, sizes[iid]))
            total += sizes[iid]
        full = total >= g
        if not full and base_url != "" and cur:
            url = (base_url + "/transfers/chunks/" + ".".join(c[0] for c in cur)
                   + "?offset=0&size=" + str(total) + "&compression=" + compression)
            full = len(url) >= 1956
        if full:
            out.append(cur)
            cur = []
            total = 0
    if cur:
        out.append(cur)
    return out


# --- protocol.md worked example -------------------------------------------------------------------------

WORKED = {"0a": 500000, "1b": 5000000, "2c": 20000000, "3d": 3000000, "4e": 1500000, "5f": 8388608}
WORKED_LAYOUT = [
    [("1b", 0, 5000000)],
    [("2c", 0, 6666666)],
    [("2c", 6666666, 6666666)],
    [("2c", 13333332, 6666668)],
    [("5f", 0, 8388608)],
    [("0a", 0, 500000), ("3d", 0, 3000000), ("4e", 0, 1500000)],
]


def test_worked_example_push():
    buckets = push_buckets(WORKED, 4096)
    assert layout(buckets) == WORKED_LAYOUT
    assert buckets[5].total_size == 5000000


def test_worked_example_pull_urls():
    buckets = pull_buckets(WORKED, 4096, "http://orthanc-b:8042/", "gzip")
    assert layout(buckets) == WORKED_LAYOUT
    assert chunks_uri(buckets[3], "gzip") == (
        "/transfers/chunks/2c?offset=13333332&size=6666668&compression=gzip")
    assert chunks_uri(buckets[5], "gzip") == (
        "/transfers/chunks/0a.3d.4e?offset=0&size=5000000&compression=gzip")
    assert chunks_url("http://orthanc-b:8042/", buckets[0], "none") == (
        "http://orthanc-b:8042//transfers/chunks/1b?offset=0&size=5000000&compression=none")


def test_input_forms_are_equivalent():
    pairs = list(WORKED.items())
    random.Random(7).shuffle(pairs)
    infos = [InstanceInfo(i, n, "0" * 32) for i, n in pairs]
    expected = plan_buckets(WORKED, 4096)
    assert plan_buckets(pairs, 4096) == expected
    assert plan_buckets(iter(pairs), 4096) == expected
    assert plan_buckets(infos, 4096) == expected
    assert plan_buckets(list(reversed(pairs)) + pairs, 4096) == expected  # identical duplicates are merged


# --- the recorded C++ 1.4 exchanges ---------------------------------------------------------------------

FIXTURE_LAYOUT = [
    [("a36d4be2-f419c44c-5157e814-171573f6-d151a103", 0, 105286)],
    [("a36d4be2-f419c44c-5157e814-171573f6-d151a103", 105286, 105286)],
    [("a36d4be2-f419c44c-5157e814-171573f6-d151a103", 210572, 105286)],
    [("a36d4be2-f419c44c-5157e814-171573f6-d151a103", 315858, 105286)],
    [("a36d4be2-f419c44c-5157e814-171573f6-d151a103", 421144, 105288)],
    [("05790313-0cf6912d-a46d83e8-12e91143-c99106b6", 0, 3812),
     ("339979f1-6bf315e6-23860507-baec2024-0428667f", 0, 3812),
     ("88241a3c-87775685-25ff2c11-3f1a82e4-b88ca0ac", 0, 3810),
     ("d344e612-d98d2ae9-9be8d19d-6a75896c-12f34f73", 0, 3812)],
]


def fixture_sizes() -> Dict[str, int]:
    data = json.loads((FIXTURES / "instances" / "instances.json").read_text())
    return {iid: info["size"] for iid, info in data.items()}


def test_fixture_layout_table():
    buckets = push_buckets(fixture_sizes(), 64)
    assert layout(buckets) == FIXTURE_LAYOUT
    assert [b.total_size for b in buckets] == [105286] * 4 + [105288, 15246]


@pytest.mark.parametrize("scenario", ["push-gzip", "push-none"])
def test_fixture_push_descriptor(scenario):
    sizes = fixture_sizes()
    descriptor = json.loads((FIXTURES / scenario / "req-002.json").read_bytes())
    recorded = [Bucket.from_json(b) for b in descriptor["Buckets"]]
    assert push_buckets(sizes, 64) == recorded


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_fixture_pull_urls(compression):
    sizes = fixture_sizes()
    exchanges = json.loads((FIXTURES / f"pull-{compression}" / "exchange.json").read_text())
    requests = [e["request"] for e in exchanges if e["request"]["path"].startswith("//transfers/chunks/")]
    assert len(requests) == 6
    buckets = pull_buckets(sizes, 64, FIXTURE_BASE_URL, compression)
    assert layout(buckets) == FIXTURE_LAYOUT
    # The recorded path is relative to the peer URL's "/" and keeps the double slash.
    assert {chunks_uri(b, compression) for b in buckets} == {
        r["path"][1:] + "?" + r["query"] for r in requests}
    assert {chunks_url(FIXTURE_BASE_URL, b, compression) for b in buckets} == {
        FIXTURE_BASE_URL[:-1] + r["path"] + "?" + r["query"] for r in requests}


# --- boundaries -----------------------------------------------------------------------------------------

G = 1024
S = 2 * G


@pytest.mark.parametrize("size, expected", [
    (0, []),
    (1, [[("x", 0, 1)]]),
    (G - 1, [[("x", 0, G - 1)]]),
    (G, [[("x", 0, G)]]),
    (S - 1, [[("x", 0, S - 1)]]),
    (S, [[("x", 0, S)]]),
    (S + 1, [[("x", 0, G)], [("x", G, G + 1)]]),
    (2 * S, [[("x", 0, S)], [("x", S, S)]]),
    (2 * S + 1, [[("x", 0, 1365)], [("x", 1365, 1365)], [("x", 2730, 1367)]]),
])
@pytest.mark.parametrize("base_url", ["", "http://h:8042/"])
def test_single_instance_boundaries(size, expected, base_url):
    assert layout(plan_buckets({"x": size}, 1, base_url, "gzip")) == expected


def test_small_instances_come_after_big_ones():
    sizes = {"0": 10, "1": S, "2": 20, "3": G}
    assert layout(push_buckets(sizes, 1)) == [
        [("1", 0, S)], [("3", 0, G)], [("0", 0, 10), ("2", 0, 20)]]


def test_group_closes_after_reaching_g():
    assert layout(push_buckets({"a": G - 1, "b": 1, "c": 5}, 1)) == [
        [("a", 0, G - 1), ("b", 0, 1)], [("c", 0, 5)]]
    assert layout(push_buckets({"a": G - 1, "b": G - 1, "c": 5}, 1)) == [
        [("a", 0, G - 1), ("b", 0, G - 1)], [("c", 0, 5)]]
    assert layout(push_buckets({"a": G - 2, "b": 1, "c": 5}, 1)) == [
        [("a", 0, G - 2), ("b", 0, 1), ("c", 0, 5)]]


def test_push_has_no_url_limit():
    sizes = {f"{i:044d}": 1 for i in range(3000)}
    buckets = push_buckets(sizes, 64)
    assert len(buckets) == 1
    assert len(buckets[0].chunks) == 3000


def test_size_zero_instances_add_no_chunk():
    assert push_buckets({"a": 0, "b": 0}, 1) == []
    # Pull mode: a group of only empty instances must not crash (upstream edge bug), nor give an empty bucket.
    assert pull_buckets({"a": 0, "b": 0}, 1, "http://h/", "none") == []
    assert layout(pull_buckets({"a": 0, "b": 3, "c": 0, "d": S}, 1, "http://h/", "none")) == [
        [("d", 0, S)], [("b", 0, 3)]]


def orthanc_id(i: int) -> str:
    h = f"{i:040x}"
    return "-".join(h[j:j + 8] for j in range(0, 40, 8))


def test_url_limit_with_orthanc_ids():
    base = "http://orthanc-b:8042/"
    ids = [orthanc_id(i) for i in range(100)]
    assert all(len(i) == 44 for i in ids)
    sizes = dict.fromkeys(ids, 10000)

    def url(k: int) -> str:
        return (base + "/transfers/chunks/" + ".".join(ids[:k]) + "?offset=0&size=" + str(10000 * k)
                + "&compression=gzip")

    # Derive the group size from the rule: the first count whose URL reaches the limit.
    per_group = next(k for k in range(1, 100) if len(url(k)) >= MAX_PULL_URL_LENGTH)
    assert per_group == 42 and len(url(42)) == 1967  # protocol.md's figures
    assert len(url(41)) < MAX_PULL_URL_LENGTH

    buckets = pull_buckets(sizes, 1 << 20, base, "gzip")
    assert [len(b.chunks) for b in buckets] == [42, 42, 16]
    assert [c.instance_id for b in buckets for c in b.chunks] == ids
    assert len(chunks_url(base, buckets[0], "gzip")) == 1967
    # Push mode puts them all together.
    assert len(push_buckets(sizes, 1 << 20)) == 1


@pytest.mark.parametrize("second_id_length, expected_groups", [(1894, 2), (1893, 1)])
def test_url_limit_is_reached_at_exactly_1956(second_id_length, expected_groups):
    base = "http://h/"
    # URL = base + "/transfers/chunks/" + "0" + "." + "1"*m + "?offset=0&size=2&compression=none"
    sizes = {"0": 1, "1" * second_id_length: 1, "2": 1}
    first_two = Bucket((Chunk("0", 0, 1), Chunk("1" * second_id_length, 0, 1)))
    assert len(chunks_url(base, first_two, "none")) == second_id_length + 62
    buckets = pull_buckets(sizes, 1, base, "none")
    assert len(buckets) == expected_groups
    if expected_groups == 2:
        assert buckets[0] == first_two


def test_url_limit_counts_compression_and_base_url():
    ids = [orthanc_id(i) for i in range(50)]
    sizes = dict.fromkeys(ids, 10)
    short = pull_buckets(sizes, 1 << 20, "http://a/", "none")
    long = pull_buckets(sizes, 1 << 20, "http://" + "a" * 200 + "/", "none")
    assert len(short[0].chunks) > len(long[0].chunks)


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kb", [0, -1, -4096])
def test_bucket_size_out_of_range(kb):
    with pytest.raises(ParameterOutOfRange):
        plan_buckets({"a": 1}, kb)


@pytest.mark.parametrize("kb", [1.5, "64", True, None])
def test_bucket_size_bad_type(kb):
    with pytest.raises(BadParameterType):
        plan_buckets({"a": 1}, kb)


def test_bad_inputs():
    with pytest.raises(ParameterOutOfRange):
        pull_buckets({"a": 1}, 1, "http://h/", "GZIP")
    with pytest.raises(ParameterOutOfRange):
        pull_buckets({"a": 1}, 1, "", "gzip")
    with pytest.raises(ParameterOutOfRange):
        plan_buckets({"a": -1}, 1)
    with pytest.raises(ParameterOutOfRange):
        plan_buckets([("a", 1), ("a", 2)], 1)
    with pytest.raises(BadParameterType):
        plan_buckets([("a", "1")], 1)
    with pytest.raises(BadParameterType):
        plan_buckets([("", 1)], 1)
    with pytest.raises(ParameterOutOfRange):
        chunks_uri(Bucket(()), "none")
    with pytest.raises(ParameterOutOfRange):
        chunks_uri(bucket(("a", 0, 1)), "zstd")


def test_chunks_uri_argument_order_and_offset():
    b = bucket(("a", 7, 3), ("b", 0, 10))
    assert chunks_uri(b, "none") == "/transfers/chunks/a.b?offset=7&size=13&compression=none"


# --- properties -----------------------------------------------------------------------------------------

ID_ALPHABET = "0123456789abcdef-"
ids_strategy = st.text(ID_ALPHABET, min_size=1, max_size=60)
LONG_BASE = "https://" + "x" * 300 + "/"


@st.composite
def plans(draw):
    kb = draw(st.integers(1, 3))
    g = kb * 1024
    edges = st.sampled_from([g - 1, g, 2 * g - 1, 2 * g, 2 * g + 1])
    size = st.one_of(st.just(0), st.integers(1, 64), st.integers(0, 7 * g), edges)
    sizes = draw(st.dictionaries(ids_strategy, size, max_size=80))
    base_url = draw(st.sampled_from(["", "", "http://h/", "http://orthanc-b:8042/", LONG_BASE]))
    compression = draw(st.sampled_from(["none", "gzip"]))
    return sizes, kb, base_url, compression


def url_of(base_url: str, chunks, compression: str) -> str:
    return chunks_url(base_url, Bucket(tuple(chunks)), compression)


@settings(max_examples=300, deadline=None)
@given(plans())
def test_matches_reference_transcription(plan):
    sizes, kb, base_url, compression = plan
    expected = reference_plan(sizes, kb, base_url, compression)
    assert layout(plan_buckets(sizes, kb, base_url, compression)) == expected


@settings(max_examples=300, deadline=None)
@given(plans())
def test_layout_properties(plan):
    sizes, kb, base_url, compression = plan
    g = kb * 1024
    buckets = plan_buckets(sizes, kb, base_url, compression)

    # Every byte of every instance is covered exactly once, by contiguous chunks in order.
    covered: Dict[str, int] = {}
    for b in buckets:
        assert b.chunks, "empty bucket"
        for c in b.chunks:
            assert c.size > 0, "zero-size chunk"
            assert c.offset == covered.get(c.instance_id, 0), "gap or overlap"
            covered[c.instance_id] = c.offset + c.size
    assert covered == {i: n for i, n in sizes.items() if n > 0}

    # Layout rules of protocol.md 2.3 (our planner never uses the first chunk's exemption).
    for b in buckets:
        for j, c in enumerate(b.chunks):
            if j > 0:
                assert c.offset == 0, "only the first chunk may have a non-zero offset"
            if j < len(b.chunks) - 1:
                assert c.size == sizes[c.instance_id], "a partial chunk is followed by another chunk"
            assert c.offset + c.size <= sizes[c.instance_id]

    # Big buckets (one chunk >= G) first, then groups of whole small instances in ascending ID order.
    kinds = ["big" if b.chunks[0].size >= g else "group" for b in buckets]
    assert kinds == sorted(kinds)
    groups = [b for b, k in zip(buckets, kinds) if k == "group"]
    big = [b for b, k in zip(buckets, kinds) if k == "big"]
    assert all(len(b.chunks) == 1 for b in big)
    assert [b.chunks[0].instance_id for b in big] == sorted(b.chunks[0].instance_id for b in big)
    grouped_ids = [c.instance_id for b in groups for c in b.chunks]
    assert grouped_ids == sorted(i for i, n in sizes.items() if 0 < n < g)

    for index, b in enumerate(groups):
        assert b.total_size < 2 * g
        # No proper prefix of a group is full...
        for k in range(1, len(b.chunks)):
            prefix = b.chunks[:k]
            assert sum(c.size for c in prefix) < g
            if base_url:
                assert len(url_of(base_url, prefix, compression)) < MAX_PULL_URL_LENGTH
        # ...and every group but the last one is.
        if index < len(groups) - 1:
            assert b.total_size >= g or (
                base_url != "" and len(chunks_url(base_url, b, compression)) >= MAX_PULL_URL_LENGTH)


@settings(max_examples=200, deadline=None)
@given(plans(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_input_order(plan, rnd):
    sizes, kb, base_url, compression = plan
    pairs = list(sizes.items())
    rnd.shuffle(pairs)
    expected = plan_buckets(sizes, kb, base_url, compression)
    assert plan_buckets(pairs, kb, base_url, compression) == expected
    assert plan_buckets(dict(pairs), kb, base_url, compression) == expected


@settings(max_examples=200, deadline=None)
@given(plans())
def test_empty_instances_change_nothing(plan):
    sizes, kb, base_url, compression = plan
    non_empty = {i: n for i, n in sizes.items() if n > 0}
    expected = plan_buckets(non_empty, kb, base_url, compression)
    assert plan_buckets(sizes, kb, base_url, compression) == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(ID_ALPHABET, min_size=30, max_size=60), min_size=30, max_size=120, unique=True),
       st.sampled_from(["http://h/", "http://orthanc-b:8042/"]))
def test_many_long_ids_hit_the_url_limit(ids, base_url):
    sizes = dict.fromkeys(ids, 1)
    buckets = pull_buckets(sizes, 1 << 20, base_url, "none")
    assert layout(buckets) == reference_plan(sizes, 1 << 20, base_url, "none")
    for b in buckets[:-1]:
        assert len(chunks_url(base_url, b, "none")) >= MAX_PULL_URL_LENGTH
        assert len(url_of(base_url, b.chunks[:-1], "none")) < MAX_PULL_URL_LENGTH
