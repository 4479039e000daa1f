"""balance_last_round: whole buckets, and the ragged last round cut in slices so that no worker idles;
spread_ends, the order of a progressive commit."""

from transfers_plugin.planner import MIN_SLICE, balance_last_round, pull_buckets, request_order, spread_ends
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


# -- spread_ends: the order of a progressive commit ------------------------------------------------------

def completion_order(requests, threads):
    """When each bucket completes if ``threads`` workers take the requests in order, one size unit a second
    (a simple model of equal connections): bucket index -> time its last piece ends."""
    free = [0.0] * threads
    ends = {}
    for index, piece in requests:
        w = min(range(threads), key=lambda k: free[k])
        free[w] += piece.total_size
        ends[index] = max(ends.get(index, 0.0), free[w])
    return ends


def test_spread_ends_cuts_the_first_and_the_last_round_and_keeps_the_middle_whole():
    buckets = buckets_of(20)
    requests = spread_ends(buckets, set(), 4)
    by_bucket = covered(requests, buckets)
    assert sorted(by_bucket) == list(range(20))
    assert [len(by_bucket[i]) for i in range(20)] == [4] * 4 + [1] * 12 + [4] * 4
    assert [i for i, _ in requests] == sorted(i for i, _ in requests), "in bucket order"


def test_spread_ends_completes_the_first_bucket_a_slice_after_the_start_and_the_rest_one_by_one():
    buckets = buckets_of(20)
    whole = completion_order(balance_last_round(buckets, set(), 4), 4)
    spread = completion_order(spread_ends(buckets, set(), 4), 4)
    assert spread[0] == whole[0] / 4
    # The last round: buckets complete a slice apart, not all at once at the end.
    last = sorted(spread[i] for i in range(16, 20))
    assert len(set(last)) == 4 and last[-1] == max(whole.values())
    assert sorted(whole[i] for i in range(16, 20)) == [max(whole.values())] * 4


def test_spread_ends_with_few_buckets_or_one_thread():
    buckets = buckets_of(5)
    requests = spread_ends(buckets, {0}, 4)  # 4 left: all in the first round, each cut once
    assert [len(p) for p in covered(requests, buckets).values()] == [4] * 4
    assert spread_ends(buckets, set(), 1) == [(i, b) for i, b in enumerate(buckets)]
    small = buckets_of(3, size=MIN_SLICE + 10)  # one bucket of three instances: three slices at most
    assert [len(p) for p in covered(spread_ends(small, set(), 4), small).values()] == [3]
    assert len(spread_ends(buckets_of(1, size=MIN_SLICE + 10), set(), 4)) == 1


def test_request_order_chooses_by_the_commit():
    buckets = buckets_of(9)
    assert request_order(buckets, set(), 4) == balance_last_round(buckets, set(), 4)
    assert request_order(buckets, set(), 4, progressive=True) == spread_ends(buckets, set(), 4)
