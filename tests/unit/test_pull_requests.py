"""balance_last_round: whole buckets, and the ragged last round cut in slices so that no worker idles."""

from transfers_plugin.planner import MIN_SLICE, pull_buckets
from transfers_plugin.planner import balance_last_round as plan_requests

MB = 1024 * 1024


def buckets_of(n, size=4 * MB):
    return pull_buckets({f"{i:04d}": size for i in range(n)}, 4096, "http://peer/", "gzip")


def covered(requests, buckets):
    by_bucket = {}
    for index, piece in requests:
        by_bucket.setdefault(index, []).append(piece)
    for index, pieces in by_bucket.items():
        assert sum(p.total_size for p in pieces) == buckets[index].total_size
        chunks = [c for p in pieces for c in p.chunks]
        assert chunks[0].offset == buckets[index].chunks[0].offset
    return by_bucket


def test_full_rounds_stay_whole():
    buckets = buckets_of(8)
    requests = plan_requests(buckets, set(), 4)
    assert requests == [(i, b) for i, b in enumerate(buckets)]


def test_the_ragged_last_round_is_sliced():
    buckets = buckets_of(25)
    requests = plan_requests(buckets, set(), 4)
    by_bucket = covered(requests, buckets)
    assert all(len(by_bucket[i]) == 1 for i in range(24))
    assert len(by_bucket[24]) == 4 and len(requests) == 28
    assert [i for i, _ in requests][:24] == list(range(24)), "whole buckets first, in order"


def test_one_bucket_uses_every_worker_and_done_buckets_are_skipped():
    buckets = buckets_of(3)
    requests = plan_requests(buckets, {0, 1}, 4)
    assert {i for i, _ in requests} == {2} and len(requests) == 4
    covered(requests, buckets)


def test_small_buckets_are_not_cut_below_the_minimum():
    buckets = buckets_of(1, size=MIN_SLICE + 10)
    requests = plan_requests(buckets, set(), 8)
    assert len(requests) == 1
    assert plan_requests(buckets_of(2), set(), 2) == [(i, b) for i, b in enumerate(buckets_of(2))]
