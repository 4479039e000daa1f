"""The worker pool: every item handled once, at most ``threads`` at once (2x with early releases), errors
end the work, a stop is honoured; and AnswerTail, which decides when a download gives its place early."""

import queue
import threading
import time
from typing import List

import pytest

from transfers_plugin.transport import AnswerTail
from transfers_plugin.workers import Prefetcher, run_pool

WAIT = 10


def wait_for(condition, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def queue_of(items) -> "queue.Queue":
    q: "queue.Queue" = queue.Queue()
    for item in items:
        q.put(item)
    return q


class Meter:
    """Counts concurrent handlers: ``active`` (all) and ``holding`` (those that have not released)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = self.holding = 0
        self.max_active = self.max_holding = 0
        self.done: List[int] = []

    def enter(self):
        with self.lock:
            self.active += 1
            self.holding += 1
            self.max_active = max(self.max_active, self.active)
            self.max_holding = max(self.max_holding, self.holding)

    def give_back(self):
        with self.lock:
            self.holding -= 1

    def leave(self, item, held):
        with self.lock:
            self.active -= 1
            if held:
                self.holding -= 1
            self.done.append(item)


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_every_item_once_and_at_most_threads_at_once(threads):
    meter = Meter()

    def handle(item):
        meter.enter()
        time.sleep(0.005)
        meter.leave(item, True)

    assert run_pool(queue_of(range(40)), threads, handle, threading.Event()) == []
    assert sorted(meter.done) == list(range(40))
    assert meter.max_active <= threads
    if threads > 1:
        assert meter.max_active > 1


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_early_release_lets_the_next_item_overlap_the_tail(threads):
    meter = Meter()

    def handle(item, place):
        meter.enter()
        time.sleep(0.01)  # the body of the answer
        meter.give_back()
        place.release()
        place.release()  # twice is harmless
        time.sleep(0.01)  # its tail, overlapped with the next item
        meter.leave(item, False)

    assert run_pool(queue_of(range(40)), threads, handle, threading.Event(), overlap=True) == []
    assert sorted(meter.done) == list(range(40))
    assert meter.max_holding <= threads
    assert meter.max_active <= 2 * threads
    assert meter.max_active > threads, "released places were taken while the tails ran"


def test_without_a_release_overlap_changes_nothing():
    meter = Meter()

    def handle(item, place):
        meter.enter()
        time.sleep(0.005)
        meter.leave(item, True)

    assert run_pool(queue_of(range(20)), 2, handle, threading.Event(), overlap=True) == []
    assert meter.max_active <= 2 and len(meter.done) == 20


def test_a_failure_ends_the_work_and_is_returned():
    taken: List[int] = []
    lock = threading.Lock()

    def handle(item):
        with lock:
            taken.append(item)
        if item == 3:
            raise ValueError("bucket 3 is broken")
        time.sleep(0.01)

    failures = run_pool(queue_of(range(100)), 2, handle, threading.Event())
    assert len(failures) == 1 and "bucket 3" in str(failures[0])
    assert len(taken) < 100


def test_a_stop_ends_the_work_and_reports_nothing():
    stop = threading.Event()
    handled: List[int] = []

    def handle(item, place):
        handled.append(item)
        if item == 2:
            stop.set()
            raise ConnectionAbortedError("interrupted by the stop")

    assert run_pool(queue_of(range(50)), 1, handle, stop, overlap=True) == []
    assert handled == [0, 1, 2]


def test_waiting_for_a_place_honours_a_stop():
    stop = threading.Event()
    started = threading.Event()

    handled: List[int] = []

    def handle(item, place):
        handled.append(item)
        started.set()
        stop.wait(WAIT)  # holds its place until the stop

    def stopper():
        assert started.wait(WAIT)
        time.sleep(0.1)
        stop.set()

    threading.Thread(target=stopper, daemon=True).start()
    t0 = time.monotonic()
    assert run_pool(queue_of(range(10)), 1, handle, stop, overlap=True) == []
    assert time.monotonic() - t0 < 2
    # The place freed by the stop is not taken by a waiting worker: no item starts after the stop.
    assert handled == [0]


def test_no_item_starts_after_a_failure_frees_a_place():
    started: List[int] = []
    lock = threading.Lock()

    def handle(item, place):
        with lock:
            started.append(item)
        if item == 0:
            time.sleep(0.05)  # the others wait for this place
            raise ValueError("bucket 0 is broken")
        time.sleep(1.0)

    failures = run_pool(queue_of(range(10)), 1, handle, threading.Event(), overlap=True)
    assert len(failures) == 1
    assert started == [0]


def test_a_retry_after_a_release_takes_a_place_again():
    meter = Meter()
    attempts: List[int] = []
    lock = threading.Lock()

    def handle(item, place):
        meter.enter()
        meter.give_back()
        place.release()  # near the end of the answer...
        with lock:
            attempts.append(item)
        time.sleep(0.01)
        assert place.hold()  # ...which then fails: the retry holds a place again
        with meter.lock:
            meter.holding += 1
            meter.max_holding = max(meter.max_holding, meter.holding)
        time.sleep(0.01)
        meter.leave(item, True)

    assert run_pool(queue_of(range(30)), 2, handle, threading.Event(), overlap=True) == []
    assert sorted(meter.done) == list(range(30))
    assert meter.max_holding <= 2, "retries hold places like any item"


def test_a_held_place_refuses_a_new_attempt_once_the_work_stops():
    stop = threading.Event()
    answers: List[bool] = []

    def handle(item, place):
        answers.append(place.hold())  # held: yes
        stop.set()
        answers.append(place.hold())  # held still, but the work is ending: no new attempt

    run_pool(queue_of([1]), 1, handle, stop, overlap=True)
    assert answers == [True, False]


@pytest.mark.parametrize("wait_released", [True, False])
def test_a_stopped_pool_waits_for_released_items_only_if_asked(wait_released):
    stop = threading.Event()
    finished: List[int] = []

    def handle(item, place):
        place.release()  # sent: only waits for its answer now
        if item == 1:
            stop.set()
        time.sleep(0.6)
        finished.append(item)

    t0 = time.monotonic()
    run_pool(queue_of(range(4)), 2, handle, stop, overlap=True, wait_released=wait_released)
    elapsed = time.monotonic() - t0
    if wait_released:
        assert elapsed >= 0.55 and len(finished) >= 2
    else:
        assert elapsed < 0.45 and finished == [], "returned without waiting for the answers"


def test_a_pool_that_does_not_wait_for_released_items_still_waits_for_those_holding_a_place():
    stop = threading.Event()
    finished: List[int] = []

    def handle(item, place):
        stop.set()
        time.sleep(0.3)  # still holding its place (sending)
        finished.append(item)

    run_pool(queue_of([7]), 2, handle, stop, overlap=True, wait_released=False)
    assert finished == [7]


@pytest.mark.parametrize("overlap", [False, True])
def test_a_stop_abandons_items_blocked_on_a_peer_after_the_grace_period(overlap):
    """A request blocked on a peer that stalls ends only at its timeout: a stopped pool leaves it behind."""
    stop = threading.Event()
    blocked = threading.Event()
    unblock = threading.Event()

    def handle(item, place=None):
        blocked.set()
        unblock.wait(30)  # a recv that returns only at the peer's timeout

    threading.Timer(0.2, stop.set).start()
    try:
        assert run_pool(queue_of([1, 2]), 2, handle, stop, overlap=overlap, abandon_after=0.3) == []
        assert blocked.is_set() and not unblock.is_set(), "returned while the item still blocks"
    finally:
        unblock.set()


def test_a_failure_still_waits_for_every_item_even_with_abandon_after():
    """Only a stop abandons: after a failure, the job's cleanup needs every worker to have ended."""
    stop = threading.Event()
    finished: List[int] = []
    second_started = threading.Event()

    def handle(item):
        if item == 1:
            assert second_started.wait(5)
            raise ValueError("bucket 1 failed")
        second_started.set()
        time.sleep(0.5)
        finished.append(item)

    failures = run_pool(queue_of([1, 2]), 2, handle, stop, abandon_after=0.01)
    assert [str(f) for f in failures] == ["bucket 1 failed"] and finished == [2]


# --- AnswerTail -----------------------------------------------------------------------------------------

def test_tail_never_without_a_length():
    tail = AnswerTail(None, 1.0, started=0.0, min_bytes=0)
    assert not tail.hides_next_request(10, 5.0)


def test_tail_waits_for_enough_bytes_to_know_the_rate():
    tail = AnswerTail("1000000", 10.0, started=0.0, min_bytes=100_000)
    assert not tail.hides_next_request(99_999, 0.001)
    assert tail.hides_next_request(100_000, 0.1)  # 900 KB at 1 MB/s: 0.9 s, under 10 s


def test_tail_on_a_long_link():
    # 2 MB answer at 3.2 MB/s; a new request takes 80 ms to get its first byte.
    tail = AnswerTail(str(2_000_000), 0.080, started=0.0, min_bytes=128 * 1024)
    rate = 3_200_000
    released_at = next(n for n in range(128 * 1024, 2_000_001, 16 * 1024)
                       if tail.hides_next_request(n, n / rate))
    left = (2_000_000 - released_at) / rate
    assert 0.060 <= left <= 0.080  # released about one first-byte delay before the end


def test_tail_on_loopback_is_the_very_end():
    tail = AnswerTail(str(4_000_000), 0.0005, started=0.0, min_bytes=128 * 1024)
    rate = 1_000_000_000
    assert not tail.hides_next_request(3_000_000, 3_000_000 / rate)
    assert tail.hides_next_request(4_000_000, 4_000_000 / rate)


@pytest.mark.parametrize("value", ["", "-5", "12a", "1.5"])
def test_tail_ignores_a_bad_length(value):
    assert AnswerTail(value, 1.0).length is None


# --- Prefetcher ------------------------------------------------------------------------------------------

class Preparer:
    def __init__(self, delay: float = 0.0, fail: object = None):
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()
        self.calls: List[int] = []
        self.active = 0
        self.max_active = 0

    def __call__(self, key):
        with self.lock:
            self.calls.append(key)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if key == self.fail:
                raise OSError(f"cannot read bucket {key}")
            return f"body-{key}"
        finally:
            with self.lock:
                self.active -= 1


def test_prefetcher_gives_every_value_and_prepares_ahead():
    prepare = Preparer(delay=0.01)
    bodies = Prefetcher(list(range(10)), prepare, ahead=2)
    assert bodies.take(0) == "body-0"
    assert wait_for(lambda: len(prepare.calls) >= 3)  # the next two are prepared meanwhile
    time.sleep(0.05)
    with prepare.lock:
        assert sorted(prepare.calls) == [0, 1, 2]
    t0 = time.monotonic()
    assert bodies.take(1) == "body-1" and bodies.take(2) == "body-2"
    assert time.monotonic() - t0 < 0.01 + 0.05, "prepared ahead: no waiting"
    assert [bodies.take(k) for k in range(3, 10)] == [f"body-{k}" for k in range(3, 10)]
    assert sorted(prepare.calls) == list(range(10)), "each value prepared once"
    bodies.close()


def test_prefetcher_bounds_what_is_prepared_ahead():
    prepare = Preparer()
    bodies = Prefetcher(list(range(100)), prepare, ahead=3)
    bodies.take(0)
    time.sleep(0.1)
    assert len(prepare.calls) == 4  # the one taken and three ahead, not the whole list
    bodies.close()


def test_a_started_prefetcher_prepares_the_first_values_before_any_take():
    prepare = Preparer()
    bodies = Prefetcher(list(range(10)), prepare, ahead=3)
    time.sleep(0.05)
    assert prepare.calls == [], "nothing before start() or a take"
    assert bodies.start() is bodies
    assert wait_for(lambda: len(prepare.calls) >= 3)
    time.sleep(0.05)
    with prepare.lock:
        assert sorted(prepare.calls) == [0, 1, 2]
    assert [bodies.take(k) for k in range(10)] == [f"body-{k}" for k in range(10)]
    assert sorted(prepare.calls) == list(range(10)), "each value prepared once"
    bodies.close()


def test_prefetcher_with_nothing_ahead_prepares_on_take():
    prepare = Preparer()
    bodies = Prefetcher([5, 6], prepare, ahead=0)
    assert bodies.take(6) == "body-6" and bodies.take(5) == "body-5"
    assert prepare.calls == [6, 5]
    bodies.close()


def test_prefetcher_raises_the_error_of_a_prepared_value():
    bodies = Prefetcher(list(range(4)), Preparer(fail=2), ahead=2)
    assert bodies.take(0) == "body-0"
    time.sleep(0.05)
    assert bodies.take(1) == "body-1"
    with pytest.raises(OSError, match="bucket 2"):
        bodies.take(2)
    assert bodies.take(3) == "body-3"
    bodies.close()


def test_prefetcher_under_concurrent_takes():
    prepare = Preparer(delay=0.002)
    keys = list(range(60))
    bodies = Prefetcher(keys, prepare, ahead=4)
    got: List[str] = []
    lock = threading.Lock()

    def handle(key):
        value = bodies.take(key)
        with lock:
            got.append(value)

    assert run_pool(queue_of(keys), 4, handle, threading.Event()) == []
    bodies.close()
    assert sorted(got) == sorted(f"body-{k}" for k in keys)
    assert sorted(prepare.calls) == keys


def test_prefetcher_after_close_prepares_nothing_ahead():
    prepare = Preparer(delay=0.02)
    bodies = Prefetcher(list(range(20)), prepare, ahead=2)
    bodies.take(0)
    bodies.close()
    time.sleep(0.1)
    before = len(prepare.calls)
    assert before <= 3
    assert bodies.take(5) == "body-5"  # still usable, prepared on the spot
    time.sleep(0.1)
    assert len(prepare.calls) == before + 1, "nothing more is prepared ahead once closed"
