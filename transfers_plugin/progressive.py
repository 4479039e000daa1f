"""``ProgressiveCommit``: verified instances imported while the rest of a transfer still moves.

Without it (the default), a transfer's instances go into Orthanc only once all of them are in and verified,
all or nothing (:mod:`importer`). With it, each instance is imported as soon as it is complete and verified
(a pull's download, a push receiver's PUTs), by ``CommitThreadsCount`` background workers; the final commit
only imports what is left. The final state is still all or nothing: if the transfer fails or is cancelled,
the instances it created are deleted again (:func:`importer.rollback`), never those Orthanc held before
(Orthanc answers ``AlreadyStored`` for them, and they are not counted as created).

The rollback survives a crash because what may have been imported is known durably before the first import:
a pull job saves ``CommitSince`` (the last change of Orthanc's log) in its resume state, a push receiver
records the transaction in its commit journal (:class:`journal.CommitJournal`); after a ``kill -9``, the
``NewInstance`` changes after that number name what the transfer created (:func:`journal.created_since`),
whatever the saved lists had not recorded yet.
"""

import queue
import threading
from typing import Any, Callable, List, Optional, Set

from .download_area import DownloadArea
from .errors import CorruptedFile, TransfersError
from .protocol import InstanceInfo


class ProgressiveCommitter:
    """Background workers importing the instances given to :meth:`submit`.

    ``imported`` and ``created`` are the caller's lists (e.g. kept in a job's resume state), appended to as
    instances are stored: ``created`` holds only those Orthanc did not have before. A failure stops the
    workers (what is submitted afterwards is dropped); :meth:`finish` raises it. Nothing is ever rolled back
    here: the caller decides (a failure, a cancel) or leaves it to the next start (Orthanc stopping)."""

    def __init__(self, area: DownloadArea, store: Any, threads: int, imported: List[str], created: List[str],
                 on_imported: Callable[[str, bool], None] = lambda instance_id, new: None, name: str = "progressive"):
        self.area = area
        self.store = store
        self.imported = imported
        self.created = created
        self.on_imported = on_imported
        self._queue: "queue.Queue[Optional[InstanceInfo]]" = queue.Queue()
        self._lock = threading.Lock()
        self._submitted: Set[str] = set(imported)
        self._stop = threading.Event()
        self.failure: Optional[BaseException] = None
        self._threads = [threading.Thread(target=self._work, name=f"transfers-{name}-{n}", daemon=True)
                         for n in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, info: InstanceInfo) -> None:
        """Queues a verified instance (once; one already imported is ignored). Never raises: a failure
        is the caller's at :meth:`finish`."""
        with self._lock:
            if info.id in self._submitted:
                return
            self._submitted.add(info.id)
        self._queue.put(info)

    def _work(self) -> None:
        while True:
            info = self._queue.get()
            if info is None:
                return
            if self._stop.is_set() or self.failure is not None:
                continue
            try:
                self._store(info)
            except BaseException as e:  # noqa: BLE001 - given to the caller by submit/finish
                with self._lock:
                    if self.failure is None:
                        self.failure = e
                self._stop.set()

    def _store(self, info: InstanceInfo) -> None:
        data = self.area.read(info.id)
        if len(data) != info.size:
            raise CorruptedFile(f"Instance {info.id} changed in the download area before its import")
        answer = self.store.store_instance(data)
        del data
        stored_id = answer.get("ID")
        new = answer.get("Status") == "Success"
        with self._lock:
            if new:
                self.created.append(stored_id)
            if stored_id == info.id:
                self.imported.append(info.id)
        if stored_id != info.id:
            raise CorruptedFile(f"Orthanc stored instance {info.id} under another ID, {stored_id}")
        self.on_imported(info.id, new)

    def _join(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def finish(self) -> None:
        """Waits until every submitted instance is imported; raises the first failure."""
        self._join()
        if self.failure is not None:
            error = self.failure
            if isinstance(error, TransfersError):
                raise error
            raise CorruptedFile(f"Importing the transfer into Orthanc failed: {error}") from error

    def stop(self) -> None:
        """Stops after the instances being stored now; the rest of the queue is dropped."""
        self._stop.set()
        self._join()
