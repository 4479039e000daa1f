"""The ``PullTransfer`` job: look up resources at a peer, download buckets, verify, commit all or nothing.

Phases, each recorded in the job's resume state so that a pause, a restart of Orthanc or a resubmit goes
on from where it stopped:

1. lookup: ``POST /transfers/lookup`` at the peer (instances, sizes, MD5s, the peer's Originator);
2. download: pull buckets planned with our ``BucketSize``, fetched by ``Threads`` workers over kept-alive
   connections, decoded as they stream in and written into the download area; each instance is verified
   (size and MD5) as soon as its last bucket is in, and its buckets are fetched again if it is wrong;
3. commit: once every instance is verified, each is read back and stored in Orthanc by
   ``CommitThreadsCount`` workers. If one cannot be stored, the instances this job created are deleted again.

With ``"ProgressiveCommit": true`` (:mod:`progressive`), phase 3 overlaps phase 2: each verified instance is
imported at once, and a failure or a cancel deletes what the job created.
"""

import dataclasses
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import capabilities
from .. import codec as codecs
from .. import metadata as meta
from ..bandwidth import RateLimiter, cap_kbs, capped_bucket_kb
from ..commitment import CommitmentError
from ..config import PeerConfig, TransfersConfig
from ..download_area import DownloadArea, check_room, free_space, instances_of
from ..errors import (
    BadRequest,
    CorruptedFile,
    DiskError,
    NetworkProtocol,
    NotFound,
    OrthancUnavailable,
    TransfersError,
)
from ..holdings import held, partition, skipped_content
from ..importer import import_instances, rollback
from ..journal import created_since, last_change
from ..metrics import PULL_RECEIVED_BYTES, RETRIES, Metrics
from ..planner import chunks_uri, pull_buckets, request_order
from ..progressive import ProgressiveCommitter
from ..protocol import (
    DEFAULT_LIMITS,
    Bucket,
    InstanceInfo,
    Limits,
    TransferQuery,
    check_count,
    dumps_compact,
    pack_instances,
    round_mb,
    shown,
    unpack_instances,
)
from ..transport import (
    ERROR_BODY_LIMIT,
    AnswerTail,
    HttpAnswer,
    PeerError,
    PeerTransport,
    as_transfer_error,
    check_answer,
    read_body,
    transfer_headers,
)
from ..workers import Place, run_pool
from .engine import JobContext, JobStopped
from .meter import progress_content, remaining_seconds
from .model import JobRecord

JOB_TYPE = "PullTransfer"
# What the resume state keeps of a commit in progress; forgotten once the commit is rolled back.
COMMIT_PROGRESS = ("Imported", "Created", "CommitSince")
STREAM_PIECE = 128 * 1024
STOP_GRACE = 1.0  # seconds a stop waits for the workers before leaving those blocked on a peer


def progress(completed: int, scheduled: int) -> float:
    """The C++ plugin's progress while buckets move: (1 + completed) / (2 + scheduled)."""
    return (1 + completed) / (2 + scheduled)


def network_speed_kbs(n_bytes: int, seconds: float) -> int:
    ms = seconds * 1000
    return 0 if ms < 10 else int(n_bytes * 1000 / (1024 * ms))


def forget_damaged(ctx: Any, area: DownloadArea, buckets: List[Bucket],
                   log_warning: Callable[[str], None] = lambda m: None) -> Set[str]:
    """A resumed pull: the instances whose files in the download area are gone or damaged (deleted by hand,
    a disk problem) lose their progress, so that their buckets are fetched again rather than a commit
    failing (or, for a file of the right size that was never written, a resubmit failing forever)."""
    state = ctx.resume_state
    carried = instances_of(buckets)
    done = set(state.get("DoneBuckets", []))
    started = {iid for index in done for iid in carried.get(index, ())}
    damaged = area.damaged(state.get("Verified", []), started)
    if damaged:
        log_warning(f"Transfers: job {ctx.id}: {len(damaged)} instance(s) are missing or damaged in the download "
                    f"area; fetching them again")
        area.forget(damaged)
        ctx.update_resume_state(
            Verified=[i for i in state.get("Verified", []) if i not in damaged],
            DoneBuckets=sorted(index for index in done if not (carried.get(index, set()) & damaged)))
    return damaged


class PullJobType:
    name = JOB_TYPE

    def __init__(self, config: TransfersConfig, peers: Callable[[], Dict[str, PeerConfig]],
                 transport: PeerTransport, store: Any, download_root: Path,
                 log_info: Callable[[str], None] = lambda m: None,
                 log_warning: Callable[[str], None] = lambda m: None, metrics: Optional[Metrics] = None,
                 metadata_store: Optional[meta.MetadataStore] = None, server_id: Optional[str] = None):
        self.config = config
        self.metadata_store = metadata_store
        self.server_id = server_id  # this process in our capabilities answer (capabilities.same_server)
        self.peers = peers
        self.transport = transport
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.download_root = Path(download_root)
        self.log_info = log_info
        self.log_warning = log_warning

    def area_for(self, record: JobRecord, instances: List[InstanceInfo]) -> DownloadArea:
        return DownloadArea(self.download_root / record.id, instances)

    # -- the job -------------------------------------------------------------------------------------

    def run(self, ctx: JobContext) -> None:
        query = TransferQuery.from_json(ctx.parameters)
        peer = self.peers().get(query.peer)
        if peer is None:
            raise NotFound(f"Peer {query.peer!r} is not configured any more")
        query = self.wire_query(ctx, query, peer)
        content: Dict[str, Any] = {"Resources": [r.to_json() for r in query.resources], "Peer": query.peer,
                                   "Compression": query.compression}
        if query.originator is not None:
            content["Originator"] = query.originator
        ctx.update_content(**content)
        state = ctx.resume_state

        if "Instances" not in state:
            instances = self.lookup(ctx, query, peer)
            # What this Orthanc already holds with the same size and MD5 is left out before any byte moves; the
            # rest is transferred, and committed all or nothing, as before.
            held_ids = held(self.store, instances, query.resources) if query.skip_existing else []
            if held_ids and self.from_itself(ctx, peer):
                held_ids = []
            parts = partition(instances, held_ids)
            instances = parts.transfer
            ctx.check()
            # Fails at once, before any file is created, when the instances do not fit.
            check_room(self.download_root, sum(i.size for i in instances), free_space(self.download_root),
                       "transfer")
            bucket_kb = capped_bucket_kb(self.config.bucket_size_kb,
                                         cap_kbs(query.max_bandwidth_kbs, self.config.max_bandwidth_kbs))
            ctx.update_resume_state(Instances=pack_instances(instances), BucketSizeKB=bucket_kb,
                                    DoneBuckets=[], Verified=[], DownloadedBytes=0, Imported=[], Created=[],
                                    **parts.resume_state())
            ctx.save_now()
            parts.count(self.metrics)
        instances = unpack_instances(state["Instances"])
        total = sum(i.size for i in instances)
        ctx.update_content(TotalInstances=len(instances), TotalSizeMB=round_mb(total), **skipped_content(state))
        if not instances:
            ctx.update_content(CompletedHttpQueries=0, DownloadedSizeMB=0, NetworkSpeedKBs=0,
                               **progress_content(0, 0, 0), RemainingSeconds=0)
            return
        buckets = pull_buckets([(i.id, i.size) for i in instances], state["BucketSizeKB"], peer.url,
                               query.compression)
        area = self.area_for(ctx.record, instances)
        if area.prepare():
            if state.get("DoneBuckets"):
                self.log_warning(f"Transfers: job {ctx.id}: the download area was lost, downloading everything again")
                ctx.update_resume_state(DoneBuckets=[], Verified=[])
        else:
            forget_damaged(ctx, area, buckets, self.log_warning)
        t0 = time.monotonic()
        progressive = query.progressive_commit if query.progressive_commit is not None \
            else self.config.progressive_commit
        if progressive:  # only then: the Content of a job without it stays as it was
            ctx.update_content(ProgressiveCommit=True)
        if len(state["Verified"]) < len(instances):
            committer = self.start_progressive(ctx, instances, area) if progressive else None
            try:
                self.download(ctx, query, peer, instances, buckets, area,
                              committer.submit if committer is not None else None)
                if committer is not None:
                    committer.finish()
            except (JobStopped, OrthancUnavailable):
                if committer is not None:
                    committer.stop()
                raise
            except Exception:
                if committer is not None:
                    committer.stop()
                if ctx.stop_reason is None:  # a failure, not a pause or a shutdown met by the download
                    self.leave_only_verified(ctx, area, buckets)
                    if committer is not None and not isinstance(committer.failure, OrthancUnavailable):
                        self.rollback_progressive(ctx)
                raise
        t1 = time.monotonic()
        try:
            document = self.fetch_metadata(ctx, query, peer, instances) if query.metadata else None
            t1 = time.monotonic()
            self.commit(ctx, instances, area, document)
        except (JobStopped, OrthancUnavailable):
            raise
        except Exception:
            if progressive and ctx.stop_reason is None:  # e.g. the metadata: what was imported goes too
                self.rollback_progressive(ctx)
            raise
        self.log_info(f"Transfers: job {ctx.id}: {len(buckets)} buckets downloaded and verified in {t1 - t0:.2f} s, "
                      f"{len(instances)} instances committed in {time.monotonic() - t1:.2f} s")

    def wire_query(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig) -> TransferQuery:
        """The query with its wire compression: "auto" and zstd-shuffle resolved with the source's capabilities
        (capabilities.choose_compression), once per job (kept in its resume state: the plan depends on it)."""
        if not capabilities.needs_peer(query.compression):
            return query
        state = ctx.resume_state
        if "WireCompression" not in state:
            caps = self.peer_capabilities(ctx, peer)
            ctx.update_resume_state(WireCompression=capabilities.choose_compression(
                query.compression, caps, peer.name, self.log_warning))
        return dataclasses.replace(query, compression=state["WireCompression"])

    def from_itself(self, ctx: JobContext, peer: PeerConfig) -> bool:
        """Whether the source is this Orthanc itself (its capabilities name this process), asked only when
        something would be skipped: a pull from itself then moves everything, as the C++ plugin's does, rather
        than skipping every instance as held."""
        if not capabilities.same_server(self.peer_capabilities(ctx, peer), self.server_id):
            return False
        self.log_info(capabilities.to_itself_note(ctx.id, peer.name))
        return True

    def peer_capabilities(self, ctx: JobContext, peer: PeerConfig) -> Optional[capabilities.Capabilities]:
        """The source's capabilities, asked once per job (whichever of the compression, the check of a pull
        from itself and the metadata needs them first) and kept in its resume state."""
        return capabilities.of_job(ctx, self.transport, peer, self.log_warning,
                                   float(self.config.peer_connectivity_timeout))

    def lookup(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig) -> List[InstanceInfo]:
        body = dumps_compact([r.to_json() for r in query.resources])
        answer = self.transport.call(peer, "POST", "/transfers/lookup", body=body, stop_event=ctx.stop_event,
                                     headers=transfer_headers(query.sender_transfer_id, "application/json"),
                                     expect_json=True, abandon_on_stop=True)
        ctx.check()
        try:
            return parse_lookup_answer(answer.document, query.originator, peer, self.config.limits)
        except BadRequest as e:
            raise NetworkProtocol(f"Peer {peer.name!r} gave a bad lookup answer: {e.message}") from None

    def fetch_metadata(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig,
                       instances: List[InstanceInfo]) -> Optional[Dict[str, Any]]:
        """``"Metadata": true``: the user metadata and labels of the instances, asked of our source only when it
        lists the feature (a C++ source is never asked: the transfer goes on without them, and says so)."""
        caps = self.peer_capabilities(ctx, peer)
        if caps is None or not caps.supports(capabilities.METADATA) or self.metadata_store is None:
            self.log_warning(f"Transfers: job {ctx.id}: peer {peer.name!r} cannot give metadata and labels (a C++ "
                             f"peer, or an older one): the transfer goes without them")
            ctx.update_content(Metadata=meta.NOT_SUPPORTED)
            return None
        try:
            document = meta.ask_peer(self.transport, peer, [i.id for i in instances],
                                     transfer_headers(query.sender_transfer_id, "application/json"), ctx.stop_event)
        except BadRequest as e:
            raise NetworkProtocol(f"Peer {peer.name!r} gave a bad metadata answer: {e.message}") from None
        ctx.check()
        return document

    # -- download ------------------------------------------------------------------------------------

    def download(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig, instances: List[InstanceInfo],
                 buckets: list, area: DownloadArea,
                 on_verified: Optional[Callable[[InstanceInfo], None]] = None) -> None:
        """``on_verified`` (a progressive commit) is given each instance once it is verified."""
        state = ctx.resume_state
        lock = threading.Lock()
        done: Set[int] = set(state["DoneBuckets"])
        verified: Set[str] = set(state["Verified"])
        # The same instances in the order they were verified: what the resume state keeps, copied (not
        # sorted, not rebuilt from the set) at each publication, so that a bucket costs O(1) in the count.
        verified_order: List[str] = list(dict.fromkeys(state["Verified"]))
        carried = instances_of(buckets)
        buckets_of: Dict[str, Set[int]] = {i.id: set() for i in instances}
        for index, ids in carried.items():
            for iid in ids:
                buckets_of[iid].add(index)
        # Instances whose buckets are all in but that were not verified yet (e.g. stopped in between).
        pending_check = [i.id for i in instances if i.id not in verified and buckets_of[i.id] <= done]
        work: "queue.Queue[Tuple[int, Bucket]]" = queue.Queue()
        pieces_left: Dict[int, int] = {}
        for index, piece in request_order(buckets, done, self.config.threads, on_verified is not None):
            pieces_left[index] = pieces_left.get(index, 0) + 1
            work.put((index, piece))
        md5_failures: Dict[str, int] = {}
        downloaded = [int(state.get("DownloadedBytes", 0))]
        started = time.monotonic()
        last_completion = [started]
        moved_this_run = [0]
        codec = codecs.get_codec(query.compression)
        # Progress in the instances' own bytes: those of the verified instances, those of the buckets (and
        # slices of buckets) in, and those moved in this run (the rate of the time left).
        size_of = {i.id: i.size for i in instances}
        info_of = {i.id: i for i in instances} if on_verified is not None else {}
        total = sum(size_of.values())
        verified_bytes = [sum(size_of[i] for i in verified)]
        raw_done = [sum(buckets[index].total_size for index in done)]
        raw_moved = [0]
        limiter = RateLimiter.of_kbs(cap_kbs(query.max_bandwidth_kbs, self.config.max_bandwidth_kbs))

        def publish(final: bool = False) -> None:
            with lock:
                if ctx.stop_event.is_set() and not final:
                    return  # a worker left behind by a stop (see run_pool's abandon_after) changes nothing
                ctx.update_resume_state(DoneBuckets=sorted(done), Verified=list(verified_order),
                                        DownloadedBytes=downloaded[0])
                ctx.update_content(CompletedHttpQueries=len(done), DownloadedSizeMB=round_mb(downloaded[0]),
                                   NetworkSpeedKBs=network_speed_kbs(moved_this_run[0],
                                                                     last_completion[0] - started),
                                   **progress_content(total, verified_bytes[0], downloaded[0]))
                # Until every instance is verified, what is in counts, but never as everything.
                left = remaining_seconds(total, verified_bytes[0] if len(verified) == len(instances)
                                         else min(raw_done[0], max(0, total - 1)), raw_moved[0],
                                         time.monotonic() - started)
                if left is None:
                    ctx.drop_content("RemainingSeconds")
                else:
                    ctx.update_content(RemainingSeconds=left)
                ctx.set_progress(progress(len(done), len(buckets)))

        def check_instances(ids: List[str]) -> None:
            for iid in ids:
                try:
                    area.verify(iid)
                except CommitmentError as e:
                    with lock:
                        md5_failures[iid] = md5_failures.get(iid, 0) + 1
                        again = md5_failures[iid] <= self.config.max_http_retries
                        if again:
                            for index in buckets_of[iid]:
                                if index in done:
                                    raw_done[0] -= buckets[index].total_size
                                done.discard(index)
                                pieces_left[index] = 1
                                work.put((index, buckets[index]))
                    if not again:
                        raise CorruptedFile(f"Instance {iid} arrived corrupted: {e.message}") from None
                    self.log_warning(f"Transfers: job {ctx.id}: {e.message}; fetching its buckets again")
                    continue
                with lock:
                    if iid not in verified:
                        verified_bytes[0] += size_of[iid]
                        verified_order.append(iid)
                    verified.add(iid)
                if on_verified is not None:
                    on_verified(info_of[iid])

        def fetch(item: Tuple[int, Bucket], place: Place) -> None:
            index, bucket = item  # a whole bucket, or a slice of one (see planner.balance_last_round)
            uri = chunks_uri(bucket, query.compression)
            with lock:  # the instances of this bucket already verified: left as they are on disk
                skip = {c.instance_id for c in bucket.chunks if c.instance_id in verified}
            if ctx.stop_event.is_set():
                return
            if limiter is not None and not limiter.acquire(bucket.total_size, ctx.stop_event):
                return  # the bucket's bytes reserved before it is asked for; what gzip saves is given back below
            asked = time.monotonic()
            response = self.transport.stream(peer, uri)
            try:
                if response.status_code != 200:
                    content = read_body(response, ERROR_BODY_LIMIT, peer, f"GET {uri}")
                    raise check_answer(peer, "GET", uri, HttpAnswer(response.status_code, response.headers, content))
                tail = AnswerTail(response.headers.get("Content-Length"), time.monotonic() - asked)
                writer = area.writer(bucket, skip)
                decoder = codec.decoder(bucket.total_size)
                received = 0
                try:
                    for piece in response.iter_content(STREAM_PIECE):
                        if ctx.stop_event.is_set():
                            return
                        received += len(piece)
                        writer.write(decoder.update(piece))
                        if tail.hides_next_request(received, time.monotonic()):
                            place.release()  # the next bucket's request overlaps the end of this answer
                    if tail.length is not None and received < tail.length:
                        raise PeerError(f"Peer {peer.name!r} ({peer.url}) closed the connection after {received} "
                                        f"of the {tail.length} bytes of bucket {index}")
                    writer.write(decoder.finish())
                finally:
                    writer.close(complete=False)
                if limiter is not None:
                    limiter.refund(bucket.total_size - received)
                if writer.position != bucket.total_size:
                    raise NetworkProtocol(f"Bucket {index} from peer {peer.name!r} has {writer.position} bytes "
                                          f"instead of {bucket.total_size}")
            except TransfersError as e:
                if isinstance(e, (PeerError, CorruptedFile, DiskError)):
                    raise
                raise NetworkProtocol(f"Bucket {index} from peer {peer.name!r} ({peer.url}) is damaged: {e.message}"
                                      ) from None
            finally:
                response.close()
            with lock:
                if ctx.stop_event.is_set():
                    return  # stopped meanwhile: this bucket is fetched again if the job goes on
                downloaded[0] += received
                moved_this_run[0] += received
                raw_moved[0] += bucket.total_size
                last_completion[0] = time.monotonic()
                self.metrics.add(PULL_RECEIVED_BYTES, received)
                pieces_left[index] -= 1
                if pieces_left[index] > 0:
                    return
                if index not in done:
                    raw_done[0] += buckets[index].total_size
                done.add(index)
                complete = [iid for iid in carried[index]
                            if iid not in verified and buckets_of[iid] <= done]
            check_instances(complete)
            publish()

        def handle(item: Tuple[int, Bucket], place: Place) -> None:
            index = item[0]
            attempt = 0
            while True:
                try:
                    fetch(item, place)
                    return
                except CorruptedFile:
                    raise
                except Exception as e:  # noqa: BLE001 - network, codec or disk: retried, then reported
                    if ctx.stop_event.is_set():
                        return
                    error = as_transfer_error(peer, e)
                    if not getattr(error, "retryable", True) or attempt >= self.config.max_http_retries:
                        raise error from None
                    delay = min(10.0, 2.0 ** attempt)
                    attempt += 1
                    self.metrics.add(RETRIES)
                    self.log_warning(f"Transfers: job {ctx.id}: bucket {index} failed ({error}); "
                                     f"attempt {attempt + 1} in {delay:.0f} s")
                    if ctx.stop_event.wait(delay) or not place.hold():  # a retry takes a place again
                        return

        if pending_check:
            check_instances(pending_check)
        publish(final=True)
        failures: List[BaseException] = []
        while not work.empty() and not failures:
            # Buckets put back by a failed MD5 check after the workers ended: go round again. A stop does not
            # wait more than a second for workers blocked on a peer that stalls.
            failures = run_pool(work, self.config.threads, handle, ctx.stop_event, f"transfers-pull-{ctx.id[:8]}",
                                overlap=True, abandon_after=STOP_GRACE)
            ctx.check()
        publish(final=True)
        if failures:
            raise failures[0]
        ctx.check()
        missing = [i.id for i in instances if i.id not in verified]
        if missing:
            raise NetworkProtocol(f"{len(missing)} instance(s) could not be downloaded, e.g. {missing[0]}")

    # -- commit --------------------------------------------------------------------------------------

    def start_progressive(self, ctx: JobContext, instances: List[InstanceInfo],
                          area: DownloadArea) -> ProgressiveCommitter:
        """``ProgressiveCommit``: the commit's progress (``CommitSince`` saved before any import, so that a
        crash loses nothing of what to roll back) and the workers importing each instance once verified;
        those verified by an earlier run go first."""
        state = ctx.resume_state
        imported, created = self.commit_progress(ctx, instances)
        committer = ProgressiveCommitter(area, self.store, self.config.commit_threads_count, imported, created,
                                         lambda instance_id, new: ctx.touch(), f"progressive-{ctx.id[:8]}")
        verified = set(state.get("Verified", []))
        for info in instances:
            if info.id in verified:
                committer.submit(info)
        return committer

    def commit_progress(self, ctx: JobContext, instances: List[InstanceInfo]) -> Tuple[List[str], List[str]]:
        """The lists of what this job's commit imported and created, saved before any import: the first time,
        with the last change of Orthanc's log (``CommitSince``); after a crash, completed from that log. The
        imports of an interrupted commit's last second may be missing from the saved state; Orthanc's change
        log knows them: they count as created by this job (a rollback removes them) and, not being in
        Imported, are stored again (Orthanc answers AlreadyStored). The lists are appended to, never copied
        (no O(n^2))."""
        state = ctx.resume_state
        imported: List[str] = list(state.get("Imported", []))
        created: List[str] = list(state.get("Created", []))
        if "CommitSince" not in state:
            ctx.update_resume_state(CommitSince=last_change(self.store.core_get_json))
        else:
            for instance_id in created_since(self.store.core_get_json, int(state["CommitSince"]),
                                             [i.id for i in instances]):
                if instance_id not in created:
                    created.append(instance_id)
        ctx.update_resume_state(Imported=imported, Created=created)
        ctx.save_now()
        return imported, created

    def rollback_progressive(self, ctx: JobContext) -> None:
        """A progressive commit whose transfer failed: what it created goes (a resubmit starts again)."""
        created = list(ctx.resume_state.get("Created", []))
        deleted = rollback(self.store, created)
        if deleted:
            self.log_warning(f"Transfers: job {ctx.id}: the transfer failed; the {deleted} instance(s) its "
                             f"progressive commit had imported were deleted again")
        ctx.drop_resume_state(*COMMIT_PROGRESS)
        ctx.save_now()

    def commit(self, ctx: JobContext, instances: List[InstanceInfo], area: DownloadArea,
               document: Optional[Dict[str, Any]] = None) -> None:
        imported, created = self.commit_progress(ctx, instances)
        lock = threading.Lock()

        def on_imported(instance_id: str, new: bool) -> None:
            with lock:
                imported.append(instance_id)
            ctx.touch("Imported", "Created")

        try:
            import_instances(area, instances, self.store, self.config.commit_threads_count, ctx.stop_event,
                             set(imported), created, on_imported)
            if document is not None and not ctx.stop_event.is_set():  # a stop: applied when the commit goes on
                try:
                    self.apply_metadata(ctx, document)
                except OrthancUnavailable:
                    raise
                except Exception:
                    rollback(self.store, created)  # part of the commit: what it imported goes again
                    raise
        except OrthancUnavailable:
            raise  # Orthanc is stopping: nothing was rolled back, the commit goes on after the restart
        except Exception:
            # Rolled back by import_instances: a resubmit commits from the start, with a new CommitSince.
            ctx.drop_resume_state(*COMMIT_PROGRESS)
            raise
        finally:
            ctx.save_now()
        ctx.check()

    def apply_metadata(self, ctx: JobContext, document: Dict[str, Any]) -> None:
        warnings: List[str] = []

        def warn(message: str) -> None:
            self.log_warning(f"Transfers: job {ctx.id}: {message}")
            if len(warnings) < meta.MAX_WARNINGS:
                warnings.append(message)

        written = self.metadata_store.apply(document, warn)
        ctx.update_content(Metadata=written, **({"MetadataWarnings": warnings} if warnings else {}))

    def rollback(self, record: JobRecord) -> None:
        """Deletes the instances this job created, so that a canceled transfer leaves nothing."""
        created = list(record.resume_state.get("Created", []))
        deleted = rollback(self.store, created)
        if deleted:
            self.log_warning(f"Transfers: job {record.id}: {deleted} imported instance(s) deleted again")
        # A new dict, never a change in place: the engine may be copying the old one to save it.
        record.resume_state = {k: v for k, v in record.resume_state.items() if k not in COMMIT_PROGRESS}

    # -- end of the job ------------------------------------------------------------------------------

    def cleanup(self, record: JobRecord, reason: str) -> None:
        """Success, cancel, or the job leaving the history: its download area goes. (A failure keeps what a
        resubmit reuses: see :meth:`keep_verified`.)"""
        if reason not in ("success", "canceled", "discarded"):
            return
        instances = unpack_instances(record.resume_state.get("Instances", []))
        if reason == "canceled":
            self.rollback(record)
        try:
            self.area_for(record, instances).remove()
        finally:
            # Nothing of it is needed any more, and every save of the jobs writes it (a finished job stays
            # in the history): its instance lists would make each save as large as the transfers. A new
            # dict, never a change in place: the engine may be copying the old one to save it.
            record.resume_state = {}

    def leave_only_verified(self, ctx: JobContext, area: DownloadArea, buckets: List[Bucket]) -> None:
        try:
            self.keep_verified(ctx, area, buckets)
        except TransfersError as e:
            self.log_warning(f"Transfers: job {ctx.id}: the partial files of the failed download could not be "
                             f"deleted: {e}")

    def keep_verified(self, ctx: JobContext, area: DownloadArea, buckets: List[Bucket]) -> None:
        """A download failed: the files of instances not verified (partial, or never checked) are deleted
        and the buckets that carried them count as not done, so that a resubmit fetches them again and
        reuses the rest; with nothing verified, the whole folder goes."""
        state = ctx.resume_state
        verified = set(state.get("Verified", []))
        if not verified:
            area.remove()
            ctx.update_resume_state(DoneBuckets=[], Verified=[])
            return
        partial = area.files() - verified
        area.forget(partial)
        carried = instances_of(buckets)
        ctx.update_resume_state(DoneBuckets=[index for index in state.get("DoneBuckets", [])
                                             if carried.get(index, set()) <= verified])
        if partial:
            self.log_info(f"Transfers: job {ctx.id}: {len(partial)} partial file(s) deleted; {len(verified)} "
                          f"verified instance(s) kept for a resubmit")


def parse_lookup_answer(answer: Any, expected_originator: Optional[str], peer: PeerConfig,
                        limits: Limits = DEFAULT_LIMITS) -> List[InstanceInfo]:
    """The instances of a source's lookup answer (already parsed within the limits), each ID in Orthanc's
    format, each once, at most ``limits.max_instances`` of them."""
    if not isinstance(answer, dict) or not isinstance(answer.get("Instances"), list) \
            or not isinstance(answer.get("Originator"), str):
        raise BadRequest("the answer needs an Instances array and an Originator string")
    if expected_originator is not None and answer["Originator"] != expected_originator:
        raise BadRequest(f"invalid originator {shown(answer['Originator'])}, expected {expected_originator!r}: "
                         f"peer {peer.name!r} is not the server that asked for this transfer")
    check_count(len(answer["Instances"]), "instances in the lookup answer", limits)
    instances = [InstanceInfo.from_json(x, f"Instances[{n}]") for n, x in enumerate(answer["Instances"])]
    ids = [i.id for i in instances]
    if len(set(ids)) != len(ids):
        raise BadRequest("an instance is listed twice")
    return sorted(instances, key=lambda i: i.id)
