"""Slices of a pull bucket are valid pull requests: a source serving their URLs (the C++ algorithm, as
source.read_range implements it) answers exactly the matching bytes of the bucket's payload."""

import types
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfers_plugin.errors import ParameterOutOfRange
from transfers_plugin.planner import chunks_uri, pull_buckets, slice_bucket, split_bucket
from transfers_plugin.source import read_range


def instance_bytes(n_instances_sizes):
    return {f"{i:08x}-0000": bytes((i * 7 + k) % 251 for k in range(size))
            for i, size in enumerate(n_instances_sizes)}


def payload(bucket, files):
    return b"".join(files[c.instance_id][c.offset:c.offset + c.size] for c in bucket.chunks)


def served(bucket, files):
    """What a source answers to the bucket's URL."""
    url = urlsplit(chunks_uri(bucket, "none"))
    ids = url.path.rsplit("/", 1)[1].split(".")
    args = {k: v[0] for k, v in parse_qs(url.query).items()}
    return read_range(lambda i: types.SimpleNamespace(data=files[i]), ids, int(args["offset"]), int(args["size"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=12), st.data())
def test_every_slice_is_served_exactly(sizes, data):
    files = instance_bytes(sizes)
    buckets = pull_buckets({i: len(b) for i, b in files.items()}, 1, "http://peer:8042/", "gzip")
    for bucket in buckets:
        whole = payload(bucket, files)
        assert served(bucket, files) == whole
        cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, bucket.total_size - 1)), max_size=4))))
        bounds = [0] + [c for c in cuts if 0 < c < bucket.total_size] + [bucket.total_size]
        pieces = [slice_bucket(bucket, a, b) for a, b in zip(bounds, bounds[1:])]
        assert b"".join(served(p, files) for p in pieces) == whole
        assert sum(p.total_size for p in pieces) == bucket.total_size


@given(st.integers(min_value=1, max_value=20000), st.integers(min_value=1, max_value=9),
       st.integers(min_value=0, max_value=5000))
def test_split_bucket_sizes(size, parts, minimum):
    files = instance_bytes([size])
    bucket = pull_buckets({i: len(b) for i, b in files.items()}, 64, "http://peer/", "none")[0]
    pieces = split_bucket(bucket, parts, minimum)
    assert b"".join(payload(p, files) for p in pieces) == payload(bucket, files)
    assert 1 <= len(pieces) <= parts
    if minimum and len(pieces) > 1:
        assert min(p.total_size for p in pieces) >= minimum
    assert max(p.total_size for p in pieces) - min(p.total_size for p in pieces) <= 1


def test_bad_slices_are_refused():
    files = instance_bytes([100])
    bucket = pull_buckets({i: len(b) for i, b in files.items()}, 64, "http://peer/", "none")[0]
    for start, end in ((0, 0), (-1, 10), (50, 101), (60, 50)):
        with pytest.raises(ParameterOutOfRange):
            slice_bucket(bucket, start, end)
