"""A small worker pool: ``threads`` threads take items from a queue until it is empty, the job is asked to
stop, or an item failed for good (then the others finish the item they hold and take no more).

Pull downloads and push uploads both move their buckets with it; the items may be put back in the queue
while the pool runs (a bucket to fetch again).

With ``overlap``, a handler may give its place back before it ends: ``handle(item, place)``. Calling
``place.release()`` lets another item start while this one finishes (and ``place.hold()`` takes a place
again before the item starts over, e.g. a retry). A download calls it when what is left of
its answer will take less time to arrive than a new request takes to get its first byte, so that the
connection's idle gap between two requests (a round trip plus the peer's preparation) is hidden behind
the tail of the previous answer; a push calls it once a bucket's body is sent, while the answer is
awaited. At most ``threads`` items hold a place at once, and at most ``2 * threads`` run at once.
"""

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Set

_POLL = 0.1  # seconds between checks of the stop events while waiting for a place


class Place:
    """One item's place in the pool. ``release()`` gives it back early (idempotent); ``hold()`` takes one
    again before the item starts over (a retry), waiting as long as the pool is full; it answers False
    when the work is stopping instead (even with the place held: no new attempt then)."""

    def __init__(self, places: threading.Semaphore, stopping: Callable[[], bool]):
        self._places = places
        self._stopping = stopping
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._places.release()

    @property
    def held(self) -> bool:
        with self._lock:
            return self._held

    def hold(self) -> bool:
        if self._stopping():  # no new attempt once the work is ending, place or not
            return False
        with self._lock:
            if self._held:
                return True
        if not _acquire(self._places, self._stopping):
            return False
        with self._lock:
            self._held = True
        return True


def _acquire(places: threading.Semaphore, stopping: Callable[[], bool]) -> bool:
    while not places.acquire(timeout=_POLL):
        if stopping():
            return False
    if stopping():  # the place came free because the work is ending: take no more
        places.release()
        return False
    return True


def run_pool(work: "queue.Queue[Any]", threads: int, handle: Callable[..., None],
             stop_event: threading.Event, name: str = "transfers-worker", overlap: bool = False,
             wait_released: bool = True, abandon_after: Optional[float] = None) -> List[BaseException]:
    """Runs ``handle(item)`` (``handle(item, place)`` with ``overlap``) for the queued items; returns
    the errors that ended the work (first first).

    With ``wait_released`` False, work that is ending (stopped, or an item failed) returns as soon as no
    item holds a place: items that gave theirs back and only wait (a push waiting for the answer to a body
    it sent) are not waited for; their handler must then change nothing of the job.

    With ``abandon_after``, work asked to stop (``stop_event``, not a failure) returns that many seconds
    after the stop at the latest, even while items still run: a request blocked on a peer that stalls ends
    only at its timeout. Such an item's handler must change nothing of the job once ``stop_event`` is set."""
    threads = max(1, threads)
    failures: List[BaseException] = []
    abort = threading.Event()
    places = threading.Semaphore(threads)
    current: Dict[int, Place] = {}  # worker number -> the place of the item it runs

    def stopping() -> bool:
        return stop_event.is_set() or abort.is_set()

    def worker(number: int) -> None:
        while not stopping():
            if not _acquire(places, stopping):
                return
            place = Place(places, stopping)
            try:
                item = work.get_nowait()
            except queue.Empty:
                place.release()
                return
            current[number] = place
            try:
                if overlap:
                    handle(item, place)
                else:
                    handle(item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which decides
                if not stop_event.is_set():
                    failures.append(e)
                abort.set()
                return
            finally:
                place.release()
                current.pop(number, None)

    count = min(threads * 2 if overlap else threads, work.qsize())
    pool = [threading.Thread(target=worker, args=(n,), name=f"{name}-{n}", daemon=True)
            for n in range(max(1, count))]
    for t in pool:
        t.start()
    stopped_at: Optional[float] = None
    for t in pool:
        while t.is_alive():
            t.join(_POLL)
            if not wait_released and stopping() and not any(p.held for p in list(current.values())):
                return list(failures)
            if abandon_after is not None and stop_event.is_set():
                stopped_at = stopped_at if stopped_at is not None else time.monotonic()
                if time.monotonic() - stopped_at >= abandon_after:
                    return list(failures)
    return failures


class Prefetcher:
    """Prepares the values of keys ahead of their use, in the order of ``keys``.

    ``take(key)`` returns ``prepare(key)``, computed beforehand when it could be, and starts preparing the
    next keys not taken yet, so that at most ``ahead`` values are being prepared or wait to be taken. A push
    uses it to read and compress the next buckets while the current ones are on the wire, so that a
    connection does not idle while its next body is built. An error of ``prepare`` is raised by ``take``.
    """

    def __init__(self, keys: Sequence[Hashable], prepare: Callable[[Any], Any], ahead: int,
                 name: str = "transfers-prefetch"):
        self._keys = list(keys)
        self._prepare = prepare
        self._ahead = max(0, ahead)
        self._lock = threading.Lock()
        self._futures: Dict[Hashable, "Future[Any]"] = {}
        self._taken: Set[Hashable] = set()
        self._next = 0
        self._executor = ThreadPoolExecutor(max_workers=max(1, self._ahead), thread_name_prefix=name)
        self._closed = False

    def start(self) -> "Prefetcher":
        """Starts preparing the first keys before any is taken (a push: while its transaction is created)."""
        with self._lock:
            self._schedule()
        return self

    def take(self, key: Hashable) -> Any:
        with self._lock:
            self._taken.add(key)
            future = self._futures.pop(key, None)
            self._schedule()
        if future is not None:
            if not future.cancel():  # started or done: its value is coming
                return future.result()
            # still queued behind busy preparers: prepared here rather than waited for
        return self._prepare(key)

    def _schedule(self) -> None:
        while not self._closed and len(self._futures) < self._ahead and self._next < len(self._keys):
            key = self._keys[self._next]
            self._next += 1
            if key in self._taken or key in self._futures:
                continue
            self._futures[key] = self._executor.submit(self._prepare, key)

    def close(self) -> None:
        """Drops what was prepared and not taken; waits for nothing."""
        with self._lock:
            self._closed = True
            futures = list(self._futures.values())
            self._futures.clear()
        for f in futures:
            f.cancel()
        self._executor.shutdown(wait=False)
