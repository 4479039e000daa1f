"""A small worker pool: ``threads`` threads take items from a queue until it is empty, the job is asked to
stop, or an item failed for good (then the others finish the item they hold and take no more).

Pull downloads and push uploads both move their buckets with it; the items may be put back in the queue
while the pool runs (a bucket to fetch again).
"""

import queue
import threading
from typing import Any, Callable, List


def run_pool(work: "queue.Queue[Any]", threads: int, handle: Callable[[Any], None],
             stop_event: threading.Event, name: str = "transfers-worker") -> List[BaseException]:
    """Runs ``handle(item)`` for the queued items; returns the errors that ended the work (first first)."""
    failures: List[BaseException] = []
    abort = threading.Event()

    def worker() -> None:
        while not (stop_event.is_set() or abort.is_set()):
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            try:
                handle(item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which decides
                if not stop_event.is_set():
                    failures.append(e)
                abort.set()
                return

    pool = [threading.Thread(target=worker, name=f"{name}-{n}", daemon=True)
            for n in range(max(1, min(threads, work.qsize())))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return failures

