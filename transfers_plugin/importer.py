"""Commit: verified instances of a download area stored into Orthanc, all of them or none.

``store`` is the Orthanc boundary (``store_instance(bytes) -> answer of POST /instances``,
``delete_instance(id)``).

The caller has verified every instance (size and MD5) just before, and nothing writes to the area
meanwhile. Each instance is read back and stored with ``POST /instances`` by ``threads`` workers; its size
is checked once more, cheaply. Orthanc's answer must name the expected instance ID. If any instance fails, the
instances this commit created (not those Orthanc already had) are deleted again, and the error is raised.
"""

import queue
import threading
from typing import Any, Callable, Iterable, List, Optional, Sequence, Set

from .download_area import DownloadArea
from .errors import CorruptedFile, NotFound, OrthancUnavailable, TransfersError
from .protocol import InstanceInfo
from .workers import run_pool


def import_instances(area: DownloadArea, instances: Sequence[InstanceInfo], store: Any, threads: int = 1,
                     stop_event: Optional[threading.Event] = None, already_imported: Iterable[str] = (),
                     created: Optional[List[str]] = None,
                     on_imported: Callable[[str, bool], None] = lambda instance_id, new: None) -> List[str]:
    """Stores every instance not in ``already_imported``; returns the IDs this commit created.

    ``created`` (the IDs created by earlier, interrupted runs of the same commit) is extended as instances
    are created, so that a rollback removes them too. A set ``stop_event`` stops the workers after the
    instance each is storing; the caller decides what happens next.
    """
    created = created if created is not None else []
    done: Set[str] = set(already_imported)
    work: "queue.Queue[InstanceInfo]" = queue.Queue()
    for info in instances:
        if info.id not in done:
            work.put(info)
    lock = threading.Lock()

    def store_one(info: InstanceInfo) -> None:
        data = area.read(info.id)
        if len(data) != info.size:
            raise CorruptedFile(f"Instance {info.id} changed in the download area before its import")
        answer = store.store_instance(data)
        del data
        stored_id = answer.get("ID")
        new = answer.get("Status") == "Success"
        if new:
            with lock:
                created.append(stored_id)
        if stored_id != info.id:
            raise CorruptedFile(f"Orthanc stored instance {info.id} under another ID, {stored_id}")
        on_imported(info.id, new)

    failures = run_pool(work, threads, store_one, stop_event or threading.Event(), "transfers-commit")
    for error in failures:
        if isinstance(error, OrthancUnavailable):
            # Orthanc is stopping: no rollback (it could not be done); the commit goes on after the restart.
            raise error
    if failures:
        rollback(store, created)
        error = failures[0]
        if isinstance(error, TransfersError):
            raise error
        raise CorruptedFile(f"Importing the transfer into Orthanc failed: {error}") from error
    return created


def rollback(store: Any, created: List[str]) -> int:
    """Deletes the instances of ``created`` (emptied); returns how many were deleted."""
    deleted = 0
    while created:
        instance_id = created.pop()
        try:
            store.delete_instance(instance_id)
            deleted += 1
        except NotFound:
            pass
        except TransfersError:  # go on with the others: leave as little as possible behind
            continue
    return deleted
