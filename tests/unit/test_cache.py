"""Source instance cache (protocol.md section 11): LRU by bytes, one load per missing instance, entries checked
before they are served."""

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfers_plugin.cache import CachedInstance, InstanceCache

WAIT = 10  # seconds; only reached when something is broken


class Loader:
    """Returns ``size`` bytes for an ID from a table, counting the calls."""

    def __init__(self, sizes: Dict[str, int]):
        self.sizes = sizes
        self.calls: List[str] = []
        self.lock = threading.Lock()

    def __call__(self, instance_id: str) -> CachedInstance:
        with self.lock:
            self.calls.append(instance_id)
        return CachedInstance.from_bytes(instance_id, instance_id[:1].encode() * self.sizes[instance_id])


class BlockingLoader:
    """Blocks every call until ``release`` is set; ``entered`` is set as soon as a call starts."""

    def __init__(self, data: bytes = b"payload", error: BaseException = None):
        self.data = data
        self.error = error
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, instance_id: str) -> CachedInstance:
        with self.lock:
            self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released the loader"
        if self.error is not None:
            raise self.error
        return CachedInstance.from_bytes(instance_id, self.data)


def run_threads(n: int, target) -> List[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def join_all(threads) -> None:
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive(), "a thread is stuck"


# --- CachedInstance ------------------------------------------------------------------------------------

def test_cached_instance_md5_and_size():
    e = CachedInstance.from_bytes("i", b"Hello")
    assert e.md5 == "8b1a9953c4611296a827abf8c47804d7"  # protocol.md appendix A
    assert e.size == 5
    assert CachedInstance.from_bytes("e", b"").md5 == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity):
    with pytest.raises(ValueError):
        InstanceCache(capacity, Loader({}))


# --- LRU by bytes --------------------------------------------------------------------------------------

def test_lru_eviction_by_bytes():
    loader = Loader({"a": 4, "b": 4, "c": 4, "d": 2})
    cache = InstanceCache(10, loader)
    cache.get("a")
    cache.get("b")
    assert cache.used_bytes == 8 and len(cache) == 2
    cache.get("a")  # hit: "a" becomes the most recent, "b" the least
    cache.get("c")  # 12 > 10: "b" goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.used_bytes == 8
    cache.get("d")  # 8 + 2 = 10 fits exactly
    assert {"a", "c", "d"} == {i for i in "abcd" if i in cache}
    assert cache.used_bytes == 10
    assert loader.calls == ["a", "b", "c", "d"]


def test_eviction_removes_as_many_as_needed():
    cache = InstanceCache(10, Loader({"a": 3, "b": 3, "c": 3, "d": 9}))
    for i in "abc":
        cache.get(i)
    cache.get("d")
    assert len(cache) == 1 and "d" in cache and cache.used_bytes == 9


def test_entry_larger_than_capacity_is_kept_alone():
    cache = InstanceCache(10, Loader({"a": 3, "b": 3, "big": 25, "c": 1}))
    cache.get("a")
    cache.get("b")
    big = cache.get("big")
    assert big.size == 25
    assert len(cache) == 1 and "big" in cache and cache.used_bytes == 25
    assert cache.get("big") is big and cache.hits == 1
    cache.get("c")  # the oversized entry goes to make room
    assert len(cache) == 1 and "c" in cache and cache.used_bytes == 1


def test_hit_and_miss_counters():
    loader = Loader({"a": 1, "b": 1})
    cache = InstanceCache(100, loader)
    assert (cache.hits, cache.misses) == (0, 0)
    first = cache.get("a")
    assert (cache.hits, cache.misses) == (0, 1)
    assert cache.get("a") is first
    assert cache.get("a") is first
    assert (cache.hits, cache.misses) == (2, 1)
    cache.get("b")
    assert (cache.hits, cache.misses) == (2, 2)
    assert loader.calls == ["a", "b"]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=40),
       st.lists(st.sampled_from("abcdefgh"), max_size=40),
       st.dictionaries(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=30), min_size=8))
def test_lru_against_a_model(capacity, accesses, sizes):
    loader = Loader(sizes)
    cache = InstanceCache(capacity, loader)
    model: OrderedDict[str, int] = OrderedDict()
    loads = hits = 0
    for i in accesses:
        if i in model:
            model.move_to_end(i)
            hits += 1
        else:
            loads += 1
            while model and sum(model.values()) + sizes[i] > capacity:
                model.popitem(last=False)
            model[i] = sizes[i]
        entry = cache.get(i)
        assert entry.id == i and entry.size == sizes[i]
        assert [k for k in "abcdefgh" if k in cache] == sorted(model)
        assert cache.used_bytes == sum(model.values())
    assert len(loader.calls) == loads == cache.misses
    assert cache.hits == hits


# --- concurrency ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", [8, 16])
def test_one_load_for_many_concurrent_requests(n_threads):
    loader = BlockingLoader(b"x" * 1000)
    cache = InstanceCache(10_000, loader)
    start = threading.Barrier(n_threads)
    results = [None] * n_threads

    def worker(k):
        start.wait(WAIT)
        results[k] = cache.get("same")

    threads = run_threads(n_threads, worker)
    assert loader.entered.wait(WAIT)
    time.sleep(0.3)  # every thread passed the barrier at once: let them all reach the cache
    assert loader.calls == 1
    loader.release.set()
    join_all(threads)
    assert loader.calls == 1
    assert all(r is results[0] for r in results)
    assert results[0].data == b"x" * 1000
    assert cache.misses == 1
    assert "same" in cache and cache.used_bytes == 1000


def test_concurrent_requests_for_different_instances_load_in_parallel():
    loader = BlockingLoader()
    cache = InstanceCache(10_000, loader)
    threads = run_threads(4, lambda k: cache.get(f"id{k}"))
    deadline = time.monotonic() + WAIT
    while loader.calls < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loader.calls == 4  # nobody waits for another instance's load
    loader.release.set()
    join_all(threads)
    assert len(cache) == 4


def test_loader_error_propagates_to_all_waiters_and_is_not_cached():
    error = RuntimeError("cannot read the file")
    loader = BlockingLoader(error=error)
    cache = InstanceCache(10_000, loader)
    n = 10
    start = threading.Barrier(n)
    outcomes = [None] * n

    def worker(k):
        start.wait(WAIT)
        try:
            outcomes[k] = cache.get("bad")
        except RuntimeError as e:
            outcomes[k] = e

    threads = run_threads(n, worker)
    assert loader.entered.wait(WAIT)
    time.sleep(0.3)
    loader.release.set()
    join_all(threads)
    assert loader.calls == 1
    assert all(isinstance(o, RuntimeError) and str(o) == "cannot read the file" for o in outcomes)
    assert "bad" not in cache and len(cache) == 0 and cache.used_bytes == 0
    assert cache.misses == 0
    # the next request tries again, and succeeds once the file can be read
    loader.error = None
    assert cache.get("bad").data == b"payload"
    assert loader.calls == 2 and "bad" in cache


# --- checks of cached entries before they are served -----------------------------------------------------

def test_still_valid_is_asked_on_hits_only():
    loader = Loader({"a": 4})
    cache = InstanceCache(100, loader)
    asked = []

    def still_valid(entry):
        asked.append(entry.id)
        return True

    cache.get("a", still_valid)  # a miss: the loader checks what it loads
    assert asked == []
    assert cache.get("a", still_valid).data == b"aaaa"
    assert asked == ["a"] and loader.calls == ["a"] and cache.hits == 1


def test_an_entry_that_is_no_longer_valid_is_loaded_again():
    sizes = {"a": 4}
    loader = Loader(sizes)
    cache = InstanceCache(100, loader)
    cache.get("a")
    sizes["a"] = 6  # replaced in the store
    entry = cache.get("a", lambda e: len(e.data) == sizes["a"])
    assert entry.data == b"aaaaaa" and loader.calls == ["a", "a"]
    assert cache.used_bytes == 6 and len(cache) == 1 and cache.stale_drops == 1


def test_an_error_of_the_check_drops_the_entry_and_propagates():
    cache = InstanceCache(100, Loader({"a": 4}))
    cache.get("a")

    def deleted(entry):
        raise KeyError("deleted")

    with pytest.raises(KeyError):
        cache.get("a", deleted)
    assert "a" not in cache and cache.used_bytes == 0


def test_a_failed_check_does_not_drop_a_newer_entry():
    sizes = {"a": 4}
    cache = InstanceCache(100, Loader(sizes))
    cache.get("a")

    def replaced_meanwhile(entry):
        # another request finds the entry stale and reloads the instance while this check runs
        sizes["a"] = 5
        cache.get("a", lambda e: False)
        return False

    assert cache.get("a", replaced_meanwhile).data == b"aaaaa"
    assert "a" in cache and cache.used_bytes == 5


# -- an instance leaves the cache once all its bytes were served ---------------------------------------


def test_an_instance_served_to_its_last_byte_leaves_the_cache():
    loader = Loader({"a": 100, "b": 100})
    cache = InstanceCache(1000, loader)
    a = cache.get("a")
    assert not cache.served(a, 0, 40)
    assert not cache.served(a, 60, 100)  # a hole remains: [40, 60)
    assert "a" in cache and cache.used_bytes == 100
    assert cache.served(a, 30, 70)
    assert "a" not in cache and cache.used_bytes == 0
    b = cache.get("b")
    assert cache.served(b, 0, 100)  # a whole instance in one answer
    assert len(cache) == 0 and cache.used_bytes == 0
    # Asked again (a retried bucket), it is loaded again: a miss, not a hit.
    cache.get("a")
    assert (cache.hits, cache.misses, loader.calls) == (0, 3, ["a", "b", "a"])


def test_ranges_served_in_any_order_and_overlapping_cover_the_instance():
    cache = InstanceCache(1000, Loader({"a": 90}))
    a = cache.get("a")
    for start, end in [(60, 90), (0, 10), (20, 30), (5, 25)]:
        assert not cache.served(a, start, end)
        assert cache.get("a") is a
    assert cache.served(a, 25, 61)
    assert "a" not in cache
    assert cache.hits == 4 and cache.misses == 1


def test_what_was_served_is_forgotten_with_the_entry():
    loader = Loader({"a": 100, "b": 100, "c": 100})
    cache = InstanceCache(200, loader)
    a = cache.get("a")
    cache.served(a, 0, 90)
    cache.get("b")
    cache.get("c")  # evicts a
    assert "a" not in cache
    assert not cache.served(a, 90, 100)  # the evicted entry: nothing recorded, nothing dropped
    again = cache.get("a")
    assert again is not a
    assert not cache.served(again, 90, 100)  # its first 90 bytes are to be served again
    assert "a" in cache
    assert cache.served(again, 0, 90)
    assert "a" not in cache
    assert "c" in cache and len(cache) == 1 and cache.used_bytes == 100  # b was evicted by a's reload


def test_a_range_of_a_replaced_entry_does_not_drop_the_new_one():
    cache = InstanceCache(1000, Loader({"a": 50}))
    old = cache.get("a", lambda e: True)
    assert cache.get("a", lambda e: False) is not old  # stale: dropped and loaded again
    assert not cache.served(old, 0, 50)
    assert "a" in cache


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 64)), max_size=12))
def test_the_entry_leaves_exactly_when_its_ranges_cover_it(ranges):
    cache = InstanceCache(1000, Loader({"a": 64}))
    entry = cache.get("a")
    covered = set()
    for start, end in ranges:
        left = cache.served(entry, min(start, end), max(start, end))
        covered.update(range(min(start, end), max(start, end)))
        assert left == (covered == set(range(64)))
        if left:
            break
        assert "a" in cache
