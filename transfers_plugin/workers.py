"""A small worker pool: ``threads`` threads take items from a queue until it is empty, the job is asked to
stop, or an item failed for good (then the others finish the item they hold and take no more).

Pull downloads and push uploads both move their buckets with it; the items may be put back in the queue
while the pool runs (a bucket to fetch again).

With ``overlap``, a handler may give its place back before it ends: ``handle(item, release)``. Calling
``release()`` lets another item start while this one finishes. A download calls it when what is left of
its answer will take less time to arrive than a new request takes to get its first byte, so that the
connection's idle gap between two requests (a round trip plus the peer's preparation) is hidden behind
the tail of the previous answer. At most ``threads`` items hold a place at once, and at most
``2 * threads`` run at once.
"""

import queue
import threading
from typing import Any, Callable, List

_POLL = 0.1  # seconds between checks of the stop events while waiting for a place


class _Place:
    """One item's place in the pool, given back once (early, or when the item ends)."""

    def __init__(self, places: threading.Semaphore):
        self._places = places
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._places.release()


def run_pool(work: "queue.Queue[Any]", threads: int, handle: Callable[..., None],
             stop_event: threading.Event, name: str = "transfers-worker", overlap: bool = False
             ) -> List[BaseException]:
    """Runs ``handle(item)`` (``handle(item, release)`` with ``overlap``) for the queued items; returns
    the errors that ended the work (first first)."""
    threads = max(1, threads)
    failures: List[BaseException] = []
    abort = threading.Event()
    places = threading.Semaphore(threads)

    def take_place() -> bool:
        while not places.acquire(timeout=_POLL):
            if stop_event.is_set() or abort.is_set():
                return False
        return True

    def worker() -> None:
        while not (stop_event.is_set() or abort.is_set()):
            if not take_place():
                return
            place = _Place(places)
            try:
                item = work.get_nowait()
            except queue.Empty:
                place.release()
                return
            try:
                if overlap:
                    handle(item, place.release)
                else:
                    handle(item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which decides
                if not stop_event.is_set():
                    failures.append(e)
                abort.set()
                return
            finally:
                place.release()

    count = min(threads * 2 if overlap else threads, work.qsize())
    pool = [threading.Thread(target=worker, name=f"{name}-{n}", daemon=True) for n in range(max(1, count))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return failures
