"""The receiving side of push mode: transactions created, filled bucket by bucket, committed or discarded.

Compared with the C++ receiver (protocol.md 7), on the same wire:
- the descriptor is validated: unique instances, chunks inside their instances, every byte covered;
- no lock is held across decompression, disk writes or a commit: one big commit stalls nobody else;
- the table of ``MaxPushTransactions`` evicts the least recently used transaction only when it is idle
  (no bucket for ``IDLE_EVICTION`` seconds); when every transaction is busy, creation answers 503 and a
  sender retries later. Transactions idle for ``PushTransactionTimeout`` seconds are discarded;
- a commit repeated after a lost answer gets 200 again (recently committed IDs are remembered), and a
  commit that arrives while the same one runs waits for it;
- a failed commit leaves nothing imported, and neither does one interrupted by a crash: it is recorded in
  a journal while it runs and rolled back at the next start;
- with ``"ProgressiveCommit": true`` in the descriptor (our senders only, :mod:`progressive`), each instance
  is imported as soon as its buckets are in and it is verified; the transaction is in the journal from its
  creation, and a discard, an expiry, an eviction or a failed commit deletes what it imported.
"""

import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from . import codec as codecs
from .commitment import CommitmentError
from .download_area import DownloadArea, check_room, free_space
from .errors import (
    BadFileFormat,
    BadRequest,
    Conflict,
    CorruptedFile,
    DiskError,
    NotFound,
    OrthancUnavailable,
    ParameterOutOfRange,
    TransfersError,
    Unavailable,
)
from .importer import import_instances, rollback
from .journal import CommitJournal, created_since, last_change
from .metadata import parse_document
from .progressive import ProgressiveCommitter
from .protocol import MB, PushDescriptor

IDLE_EVICTION = 30.0  # seconds without a bucket after which a transaction may give its place
REMEMBERED_COMMITS = 1000
DECODE_STEP = 1024 * 1024  # the largest piece of a bucket held in memory while it is written
FOLDER_PREFIX = "push-"  # a transaction's folder in the download area: push-<transaction ID>


def validate_descriptor(descriptor: PushDescriptor) -> None:
    """Every instance once; every chunk of a known instance and inside it; every byte of every instance
    covered exactly once by the buckets."""
    sizes: Dict[str, int] = {}
    for info in descriptor.instances:
        if info.id in sizes:
            raise BadFileFormat(f"Instance {info.id} is listed twice in the push descriptor")
        sizes[info.id] = info.size
    ranges: Dict[str, List[tuple]] = {i: [] for i in sizes}
    for b, bucket in enumerate(descriptor.buckets):
        for chunk in bucket.chunks:
            if chunk.instance_id not in sizes:
                raise BadFileFormat(f"Bucket {b} refers to instance {chunk.instance_id}, not in Instances")
            if chunk.offset + chunk.size > sizes[chunk.instance_id]:
                raise ParameterOutOfRange(f"Bucket {b}: chunk ({chunk.instance_id}, {chunk.offset}, {chunk.size}) "
                                          f"goes past the end of the instance ({sizes[chunk.instance_id]} bytes)")
            if chunk.size:
                ranges[chunk.instance_id].append((chunk.offset, chunk.size))
    for instance_id, parts in ranges.items():
        position = 0
        for offset, size in sorted(parts):
            if offset != position:
                what = "overlap" if offset < position else "a gap"
                raise BadFileFormat(f"The buckets leave {what} at byte {min(offset, position)} of instance "
                                    f"{instance_id}: every byte must be sent exactly once")
            position += size
        if position != sizes[instance_id]:
            raise BadFileFormat(f"The buckets cover {position} of the {sizes[instance_id]} bytes of instance "
                                f"{instance_id}")


class Transaction:
    def __init__(self, tid: str, descriptor: PushDescriptor, area: DownloadArea, now: float):
        self.id = tid
        self.descriptor = descriptor
        self.area = area
        self.created = now
        self.last_used = now
        self.received: Set[int] = set()
        self.total = sum(i.size for i in descriptor.instances)
        self.written = 0  # bytes of the received buckets
        self.writers = 0  # PUTs writing right now
        self.committing = False
        self.closed = False  # discarded, evicted or committed: nothing more is written
        self.failure: Optional[TransfersError] = None  # why it was discarded, when a disk error did it
        self.metadata: Optional[Dict[str, Any]] = None  # POST <Path>/metadata (our senders): applied at the commit
        self.lock = threading.Condition()
        # ProgressiveCommit: the instances of each bucket, the buckets of each instance, what was imported.
        self.committer: Optional[ProgressiveCommitter] = None
        self.imported: List[str] = []
        self.created_ids: List[str] = []
        self.carried: Dict[int, List[str]] = {}
        self.buckets_of: Dict[str, Set[int]] = {}
        self.offered: Set[str] = set()  # instances verified and given to the committer
        if descriptor.progressive_commit:
            for index, bucket in enumerate(descriptor.buckets):
                ids = list(dict.fromkeys(c.instance_id for c in bucket.chunks))
                self.carried[index] = ids
                for iid in ids:
                    self.buckets_of.setdefault(iid, set()).add(index)


def unknown_transaction(tid: str) -> str:
    """Why a request names a transaction this node does not have, and what to do behind a load balancer."""
    return (f"Unknown push transaction {tid} on this Orthanc: a push transaction lives in the memory and "
            f"download area of the node that created it; behind a load balancer, its buckets and its commit "
            f"must reach that node (route on the sender-transfer-id header, or use sticky cookies)")


class PushReceiver:
    def __init__(self, max_transactions: int, download_root: Path, store: Any, commit_threads: int = 1,
                 idle_timeout: float = 3600.0, log_warning: Callable[[str], None] = lambda m: None,
                 clock: Callable[[], float] = time.monotonic, journal: Optional[CommitJournal] = None,
                 free_space: Callable[[Path], int] = free_space, metadata_store: Any = None):
        """``journal`` (with ``store.core_get_json``) records each commit while it runs, so that one a crash
        interrupts is rolled back at the next start (:meth:`recover`): transactions do not survive a
        restart, and their sender cannot finish them."""
        self.journal = journal
        self.metadata_store = metadata_store  # metadata.MetadataStore: applies what a sender gives (our peers)
        self.free_space = free_space
        self.max_transactions = max_transactions
        self.download_root = Path(download_root)
        self.store = store
        self.commit_threads = commit_threads
        self.idle_timeout = idle_timeout
        self.log_warning = log_warning
        self.clock = clock
        self._lock = threading.Lock()
        self._transactions: "OrderedDict[str, Transaction]" = OrderedDict()
        self._committed: "OrderedDict[str, bool]" = OrderedDict()
        # Transactions discarded by a disk error, and the error: what their sender sends next gets it (not a
        # 404, which the sender would take for a receiver that restarted).
        self._failed: "OrderedDict[str, TransfersError]" = OrderedDict()
        # The C++ plugin 1.7's metrics (a discard, an eviction or an expiry is an abort, never a commit),
        # and the bytes of the bucket bodies received (compressed or not, as they came).
        self.created_count = 0
        self.committed_count = 0
        self.aborted_count = 0
        self.committed_bytes = 0  # the instances' bytes of the committed transactions
        self.reception_ms = 0.0  # from creation to the start of the commit, committed transactions
        self.commit_ms = 0.0  # their commits
        self.body_bytes = 0

    # -- table ---------------------------------------------------------------------------------------

    def _get(self, tid: str) -> Transaction:
        with self._lock:
            t = self._transactions.get(tid)
            if t is None:
                if tid in self._failed:
                    raise self._failed[tid]
                raise NotFound(unknown_transaction(tid))
            t.last_used = self.clock()
            self._transactions.move_to_end(tid)
            return t

    def expire_idle(self) -> List[str]:
        """Discards transactions idle for longer than the idle timeout."""
        now = self.clock()
        with self._lock:
            candidates = [t for t in self._transactions.values() if now - t.last_used > self.idle_timeout]
        expired = []
        for t in candidates:
            with t.lock:  # checked again, and closed in the same critical section: no commit can start
                if t.closed or t.committing or t.writers or self.clock() - t.last_used <= self.idle_timeout:
                    continue
                t.closed = True
            self.log_warning(f"Transfers: push transaction {t.id} was idle for {now - t.last_used:.0f} s: discarded")
            self._discard(t)
            with self._lock:
                self.aborted_count += 1
            expired.append(t.id)
        return expired

    def owns(self, folder_name: str) -> bool:
        """Whether a folder of the download area belongs to a transaction of this run."""
        with self._lock:
            return folder_name.startswith(FOLDER_PREFIX) and folder_name[len(FOLDER_PREFIX):] in self._transactions

    def _check_room(self, needed: int, free: int, evicted: Optional[Transaction]) -> None:
        """Refuses a transaction the download area cannot hold: 507 if it does not fit in the free space at
        all, 503 (ask again later) if it fits only once the transactions in progress are done. Called with
        the table's lock held, in the critical section that adds the transaction (two pushes cannot both be
        given the same free space)."""
        promised = sum(max(0, t.total - t.written) for t in self._transactions.values() if t is not evicted)
        check_room(self.download_root, needed, free, "push")
        if needed + promised > free:
            raise Unavailable(f"The download area {self.download_root} has {free // MB} MB free, of which "
                              f"{promised // MB} MB are promised to the push transactions in progress; this push "
                              f"needs {(needed + MB - 1) // MB} MB: try again later")

    def create(self, descriptor: PushDescriptor) -> str:
        validate_descriptor(descriptor)
        codecs.get_codec(descriptor.compression)
        self.expire_idle()
        needed = sum(i.size for i in descriptor.instances)
        free = self.free_space(self.download_root)
        now = self.clock()
        with self._lock:
            evict = None
            if len(self._transactions) >= self.max_transactions:
                evict = next((t for t in self._transactions.values()
                              if not t.committing and t.writers == 0 and now - t.last_used >= IDLE_EVICTION),
                             None)
                if evict is None:
                    raise Unavailable(f"Too many push transactions in progress (MaxPushTransactions is "
                                      f"{self.max_transactions}); try again later")
            self._check_room(needed, free, evict)
            if evict is not None:
                self._transactions.pop(evict.id)
                self.aborted_count += 1
            tid = str(uuid.uuid4())
            area = DownloadArea(self.download_root / f"{FOLDER_PREFIX}{tid}", descriptor.instances)
            t = Transaction(tid, descriptor, area, now)
            self._transactions[tid] = t
            self.created_count += 1
        if evict is not None:
            self.log_warning(f"Transfers: push transaction {evict.id} evicted to make room for {tid}")
            self._discard(evict)
        try:
            area.prepare()
        except DiskError:
            self._discard(t)
            raise
        if descriptor.progressive_commit:
            try:
                self._start_progressive(t)
            except BaseException:
                self._discard(t)
                raise
        return tid

    def _start_progressive(self, t: Transaction) -> None:
        """In the journal before any import (a crash then rolls back whatever it imported), then the workers."""
        if self.journal is not None:
            self.journal.begin(t.id, last_change(self.store.core_get_json), [i.id for i in t.descriptor.instances])
        t.committer = ProgressiveCommitter(t.area, self.store, self.commit_threads, t.imported, t.created_ids,
                                           name=f"progressive-{t.id[:8]}")

    def _offer_complete(self, t: Transaction, index: int) -> None:
        """ProgressiveCommit: the instances that bucket ``index`` completed, verified and given to the
        committer; one that does not verify is left to the commit, which says so."""
        with t.lock:
            complete = [iid for iid in t.carried.get(index, ())
                        if iid not in t.offered and t.buckets_of[iid] <= t.received]
            t.offered.update(complete)
        for iid in complete:
            try:
                t.area.verify(iid)
            except (CommitmentError, DiskError):
                with t.lock:
                    t.offered.discard(iid)
                continue
            committer = t.committer
            if committer is not None:
                committer.submit(t.area.instances[iid])

    def _discard(self, t: Transaction, roll_back: bool = True) -> None:
        with t.lock:
            t.closed = True
            while t.writers:
                t.lock.wait()
        if t.committer is not None:
            self._roll_back_progressive(t, roll_back)
        with self._lock:
            if self._transactions.get(t.id) is t:
                del self._transactions[t.id]
            if t.failure is not None:
                self._failed[t.id] = t.failure
                while len(self._failed) > REMEMBERED_COMMITS:
                    self._failed.popitem(last=False)
        self._remove_files(t)

    def _roll_back_progressive(self, t: Transaction, roll_back: bool) -> None:
        """A progressive transaction that ends without its commit: what it imported goes, and its journal entry
        with it. Without ``roll_back`` (Orthanc stopping), the entry stays for the next start."""
        committer, t.committer = t.committer, None
        if committer is None:
            return
        committer.stop()
        if not roll_back:
            return
        try:
            deleted = rollback(self.store, t.created_ids)
        except OrthancUnavailable:
            return  # the journal entry stays: the next start rolls it back
        if deleted:
            self.log_warning(f"Transfers: push transaction {t.id} ended without its commit: the {deleted} "
                             f"instance(s) it had imported progressively were deleted again")
        self._end_journal(t.id)

    def _remove_files(self, t: Transaction) -> None:
        try:
            t.area.remove()
        except DiskError as e:
            self.log_warning(f"Transfers: the files of push transaction {t.id} could not all be deleted: {e}")

    # -- operations ----------------------------------------------------------------------------------

    def put(self, tid: str, index: int, body: bytes) -> None:
        t = self._get(tid)
        buckets = t.descriptor.buckets
        if index >= len(buckets):
            raise BadRequest(f"Bucket index {index} is out of range: transaction {tid} has {len(buckets)} buckets")
        bucket = buckets[index]
        decoder = codecs.get_codec(t.descriptor.compression).decoder(bucket.total_size)
        with t.lock:
            if t.failure is not None:
                raise t.failure
            if t.closed or t.committing:
                raise Conflict(f"Push transaction {tid} is {'being committed' if t.committing else 'closed'}")
            t.writers += 1
        written = False
        try:
            # Decoded and written piece by piece: a small gzip body that inflates to a huge bucket never sits
            # in memory. A body that turns out wrong leaves the bucket not received (to be sent again).
            t.area.write_bucket(bucket, decoder.pieces(body, DECODE_STEP))
            written = True
        except DiskError as e:
            failed = e
        else:
            failed = None
        finally:
            with t.lock:
                t.writers -= 1
                if written:
                    with self._lock:
                        self.body_bytes += len(body)
                    if index not in t.received:
                        t.written += bucket.total_size
                    t.received.add(index)
                    t.last_used = self.clock()
                t.lock.notify_all()
        if written and t.committer is not None:
            self._offer_complete(t, index)
        if failed is not None:
            # The transaction cannot be completed: its files go at once (a full disk is freed for the
            # others), and its sender is told why, now and for what it sends next.
            with t.lock:
                first, t.closed = not t.closed, True
                if first:
                    t.failure = failed
            if first:
                self.log_warning(f"Transfers: push transaction {tid} is discarded: {failed.message}")
                self._discard(t)
                with self._lock:
                    self.aborted_count += 1
            raise failed

    def put_metadata(self, tid: str, document: Any) -> None:
        """``POST /transfers/push/{id}/metadata`` (our senders only, see :mod:`metadata`): checked, kept, and
        applied by the commit after the import. Again after the commit (a sender resumed before it recorded
        the commit's answer): nothing to do, the commit applied what it was given."""
        with self._lock:
            if tid in self._committed and tid not in self._transactions:
                return
        t = self._get(tid)
        if self.metadata_store is None:
            raise NotFound("This receiver does not take metadata")
        checked = parse_document(document, (i.id for i in t.descriptor.instances), "The push metadata")
        with t.lock:
            if t.failure is not None:
                raise t.failure
            if t.closed or t.committing:
                raise Conflict(f"Push transaction {tid} is {'being committed' if t.committing else 'closed'}")
            t.metadata = checked

    def _apply_metadata(self, t: Transaction) -> None:
        if t.metadata is None or self.metadata_store is None:
            return
        self.metadata_store.apply(t.metadata, lambda m: self.log_warning(f"Transfers: push transaction {t.id}: {m}"))

    def commit(self, tid: str) -> None:
        with self._lock:
            if tid in self._committed and tid not in self._transactions:
                return  # a retry after a lost answer: it was committed
        t = self._get(tid)
        with t.lock:
            # The same commit running, or PUTs writing: wait for their end, then look again (the
            # transaction may have been committed or discarded meanwhile).
            while t.committing or t.writers:
                t.lock.wait()
            if t.closed:
                with self._lock:
                    if tid in self._committed:
                        return
                if t.failure is not None:
                    raise t.failure
                raise NotFound(f"Push transaction {tid} was discarded")
            t.committing = True
        commit_started = self.clock()
        try:
            missing = [i for i in range(len(t.descriptor.buckets)) if i not in t.received]
            if missing:
                raise BadRequest(f"Push transaction {tid}: {len(missing)} bucket(s) never arrived, e.g. {missing[0]}")
            with t.lock:
                offered = set(t.offered)
            for info in t.descriptor.instances:
                if info.id in offered:
                    continue  # verified when its last bucket came (ProgressiveCommit)
                try:
                    t.area.verify(info.id)
                except CommitmentError as e:  # what the sender sent is not what it announced: its error
                    if t.committer is not None:
                        self._roll_back_progressive(t, True)
                    raise CorruptedFile(e.message, status=400) from None
            progressive = t.committer is not None
            if self.journal is not None and not progressive:  # a progressive one is in it since its creation
                self.journal.begin(tid, last_change(self.store.core_get_json),
                                   [i.id for i in t.descriptor.instances])
            try:
                if progressive:
                    t.committer.finish()  # what is in flight; its failure is the commit's (rolled back below)
                    t.committer = None
                created = t.created_ids
                import_instances(t.area, t.descriptor.instances, self.store, self.commit_threads,
                                 already_imported=t.imported, created=created)
            except OrthancUnavailable:
                raise  # Orthanc is stopping: the journal entry stays, the next start rolls the commit back
            except BaseException:
                t.committer = None
                rollback(self.store, t.created_ids)  # import_instances rolled back, but not the committer's failure
                self._end_journal(tid)
                raise
            try:
                self._apply_metadata(t)  # part of the commit: if it fails, what was imported goes again
            except OrthancUnavailable:
                raise
            except BaseException:
                rollback(self.store, created)
                self._end_journal(tid)
                raise
            self._end_journal(tid)
        except BaseException:
            with t.lock:
                t.committing = False
                t.lock.notify_all()
            raise
        with self._lock:
            self._committed[tid] = True
            while len(self._committed) > REMEMBERED_COMMITS:
                self._committed.popitem(last=False)
            self.committed_count += 1
            self.committed_bytes += t.total
            self.reception_ms += (commit_started - t.created) * 1000
            self.commit_ms += (self.clock() - commit_started) * 1000
        with t.lock:
            t.committing = False
            t.closed = True
            t.lock.notify_all()
        with self._lock:
            self._transactions.pop(tid, None)
        self._remove_files(t)

    def _end_journal(self, tid: str) -> None:
        if self.journal is not None:
            self.journal.end(tid)

    def recover(self) -> int:
        """Rolls back the commits a crash or a stop interrupted (left in the journal); returns how many
        instances were deleted."""
        if self.journal is None:
            return 0
        deleted = 0
        for tid, (since, instance_ids) in self.journal.entries().items():
            created = created_since(self.store.core_get_json, since, instance_ids)
            removed = rollback(self.store, created)
            deleted += removed
            self.log_warning(f"Transfers: the commit of push transaction {tid} was interrupted by a restart; "
                             f"the {removed} instance(s) it had imported were deleted again, so that nothing "
                             f"of it stays half-imported (the sender must send it again)")
            self.journal.end(tid)
        return deleted

    def discard(self, tid: str) -> None:
        t = self._get(tid)
        with t.lock:
            if t.committing:
                raise Conflict(f"Push transaction {tid} is being committed and cannot be discarded now")
            if t.closed:
                return  # discarded meanwhile (expired, evicted, a disk error): counted then
            t.closed = True  # in the same critical section: no commit may start from now on
        self._discard(t)
        with self._lock:
            self.aborted_count += 1

    def close_all(self) -> None:
        with self._lock:
            transactions = list(self._transactions.values())
        for t in transactions:
            self._discard(t, roll_back=False)  # Orthanc stopping: the journal rolls progressive ones back at restart

    def metrics(self) -> Dict[str, float]:
        """The C++ plugin 1.7's push metrics (see the README)."""
        with self._lock:
            return {"orthanc_transfers_available_push_count": self.max_transactions - len(self._transactions),
                    "orthanc_transfers_created_push_count": self.created_count,
                    "orthanc_transfers_committed_push_count": self.committed_count,
                    "orthanc_transfers_aborted_push_count": self.aborted_count,
                    "orthanc_transfers_push_total_received_bytes_count": self.committed_bytes,
                    "orthanc_transfers_push_total_time_spent_in_reception_ms": int(self.reception_ms),
                    "orthanc_transfers_push_total_time_spent_in_commit_ms": int(self.commit_ms),
                    "orthanc_transfers_push_received_bytes_count": self.body_bytes}

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._transactions)
