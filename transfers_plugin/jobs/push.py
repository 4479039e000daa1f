"""The ``PushTransfer`` job: local lookup, push buckets, a transaction at the peer, PUTs, commit.

Phases, recorded in the job's resume state (a pause, an Orthanc restart or a retry goes on from there):

1. plan: the resources expanded locally (sizes and MD5s from Orthanc's records) and planned in push
   buckets with our ``BucketSize``;
2. create: ``POST /transfers/push`` with the descriptor (a receiver that is full answers 503: the job waits
   and asks again, up to ``PeerCommitTimeout``); the answer's ``Path`` and cookies are kept;
3. upload: ``Threads`` workers PUT the buckets (encoded as the query asks, read ahead of their turn), each
   with ``MaxHttpRetries``; a PUT whose body is sent lets the next one start while it waits for its answer,
   so at most ``Threads`` bodies are being sent and ``2 * Threads`` requests are open;
4. commit: ``POST <Path>/commit`` within ``PeerCommitTimeout``: 200 means the receiver checked every MD5 and
   imported everything.

A failed or canceled job DELETEs its remote transaction.
"""

import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from .. import capabilities, holdings
from .. import metadata as meta
from ..bandwidth import RateLimiter, cap_kbs
from ..config import PeerConfig, TransfersConfig
from ..download_area import instances_of
from ..errors import NetworkProtocol, NotFound, TransfersError
from ..holdings import partition, skipped_content
from ..metrics import PUSH_SENT_BYTES, Metrics
from ..planner import push_buckets, request_order
from ..protocol import (
    PEER_ID,
    Bucket,
    InstanceInfo,
    PushDescriptor,
    TransferQuery,
    dumps_compact,
    pack_instances,
    round_mb,
    unpack_instances,
)
from ..transport import (
    HttpAnswer,
    PeerError,
    PeerTransport,
    StoppableBody,
    as_transfer_error,
    parse_peer_json,
    transfer_headers,
)
from ..workers import Place, Prefetcher, run_pool
from .engine import JobContext
from .meter import progress_content, remaining_seconds
from .model import JobRecord
from .pull import STOP_GRACE, network_speed_kbs, progress

JOB_TYPE = "PushTransfer"
BUSY_WAIT = 3.0  # seconds between two creation attempts while the receiver is full


class TransactionLost(PeerError):
    """The receiver answers 404 for the job's transaction: it restarted, or discarded it (idle, evicted, a
    disk failure). The job opens a new one, once per run."""


def transaction_id(created: Any) -> Optional[str]:
    """The ID of a push creation answer ``{"ID": id, "Path": "/transfers/push/<id>"}``, None if it is not one
    (an ID must be one path segment: it goes into the URLs of the PUTs, the commit and the DELETE)."""
    tid = created.get("ID") if isinstance(created, dict) else None
    if isinstance(tid, str) and PEER_ID.fullmatch(tid) and created.get("Path") == f"/transfers/push/{tid}":
        return tid
    return None


def lost_if_unknown(error: Exception, peer: PeerConfig, path: str) -> Exception:
    if isinstance(error, PeerError) and error.http_status == 404:
        return TransactionLost(f"Peer {peer.name!r} does not know the push transaction {path} any more "
                               f"(restarted, or the transaction was discarded; behind a load balancer, every request "
                               f"of a push must reach the node that created it: route on the sender-transfer-id "
                               f"header or use sticky cookies)", 404, retryable=False)
    return error


class PushJobType:
    name = JOB_TYPE

    def __init__(self, config: TransfersConfig, peers: Callable[[], Dict[str, PeerConfig]],
                 transport: PeerTransport, source: Any, log_info: Callable[[str], None] = lambda m: None,
                 log_warning: Callable[[str], None] = lambda m: None, metrics: Optional[Metrics] = None,
                 metadata_store: Optional[meta.MetadataStore] = None, server_id: Optional[str] = None):
        self.config = config
        self.metadata_store = metadata_store
        self.server_id = server_id  # this process in our capabilities answer (capabilities.same_server)
        self.peers = peers
        self.transport = transport
        self.metrics = metrics if metrics is not None else Metrics()
        self.source = source
        self.log_info = log_info
        self.log_warning = log_warning

    def run(self, ctx: JobContext) -> None:
        query = TransferQuery.from_json(ctx.parameters)
        peer = self.peers().get(query.peer)
        if peer is None:
            raise NotFound(f"Peer {query.peer!r} is not configured any more")
        query = self.wire_query(ctx, query, peer)
        ctx.update_content(Resources=[r.to_json() for r in query.resources], Peer=query.peer,
                           Compression=query.compression)
        state = ctx.resume_state
        if "Instances" not in state:
            instances = self.source.lookup(query.resources, self.config.limits)
            held_ids = self.held_by_peer(ctx, query, peer, instances) if query.skip_existing and instances else set()
            parts = partition(instances, held_ids)
            ctx.update_resume_state(Instances=pack_instances(parts.transfer),
                                    BucketSizeKB=self.config.bucket_size_kb, PlanThreads=self.config.threads,
                                    DoneBuckets=[], UploadedBytes=0, **parts.resume_state())
            parts.count(self.metrics)
        instances = unpack_instances(state["Instances"])
        ctx.update_content(**skipped_content(state))
        if not instances:  # nothing to move (all skipped, or empty resources): no transaction at the peer
            ctx.update_content(TotalInstances=0, TotalSizeMB=0, CompletedHttpQueries=0, UploadedSizeMB=0,
                               NetworkSpeedKBs=0)
            return
        # The C++ plan, with its ragged last round cut in slices, or its first and last rounds with a
        # progressive commit (planner.request_order; any layout is valid for any receiver). The plan depends
        # only on what the resume state keeps, so it is the same after a restart (a transaction created
        # before PlanProgressive existed was planned without it).
        if "PlanProgressive" not in state:
            ctx.update_resume_state(PlanProgressive=False if "Transaction" in state
                                    else self.progressive_commit(ctx, query, peer))
        progressive = bool(state["PlanProgressive"])
        planned = push_buckets([(i.id, i.size) for i in instances], state["BucketSizeKB"])
        buckets = [b for _, b in request_order(planned, (), state.get("PlanThreads", 1), progressive)]
        ctx.update_content(TotalInstances=len(instances), TotalSizeMB=round_mb(sum(i.size for i in instances)))
        descriptor = PushDescriptor(tuple(instances), tuple(buckets), query.compression, progressive)
        for attempt in (1, 2):
            try:
                self.send(ctx, query, peer, descriptor)
                return
            except TransactionLost as e:
                if attempt == 2:
                    raise
                # The receiver restarted, or dropped the transaction: a new one, with every bucket, at once.
                self.log_warning(f"Transfers: job {ctx.id}: {e.message}; opening a new one")
                ctx.drop_resume_state("Transaction", "Cookie")

    def wire_query(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig) -> TransferQuery:
        """The query with its wire compression: "auto" and zstd-shuffle resolved with the receiver's
        capabilities (capabilities.choose_compression), once per job (kept in its resume state)."""
        if not capabilities.needs_peer(query.compression):
            return query
        state = ctx.resume_state
        if "WireCompression" not in state:
            caps = self.peer_capabilities(ctx, peer)
            ctx.update_resume_state(WireCompression=capabilities.choose_compression(
                query.compression, caps, peer.name, self.log_warning))
        return dataclasses.replace(query, compression=state["WireCompression"])

    def held_by_peer(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig,
                     instances: List[InstanceInfo]) -> Set[str]:
        """What the receiver already holds, asked only of our peers (a C++ receiver gets everything). The
        peer's capabilities are asked once per job and kept in its resume state. A push to this Orthanc itself
        moves everything, as the C++ plugin's does, rather than skipping every instance as held."""
        caps = self.peer_capabilities(ctx, peer)
        if caps is None or not caps.supports(capabilities.SKIP_EXISTING):
            return set()
        if capabilities.same_server(caps, self.server_id):
            self.log_info(capabilities.to_itself_note(ctx.id, peer.name))
            return set()
        found = holdings.ask_peer(self.transport, peer, instances, self.headers(query, {}, "application/json"),
                                  ctx.stop_event, query.resources)
        ctx.check()
        return found

    def progressive_commit(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig) -> bool:
        """``ProgressiveCommit`` (:mod:`progressive`) asked of the receiver only when it lists the feature (the
        descriptor of a C++ receiver never carries it: it commits at the end, as always)."""
        wanted = query.progressive_commit if query.progressive_commit is not None \
            else self.config.progressive_commit
        if not wanted:
            return False
        caps = self.peer_capabilities(ctx, peer)
        supported = caps is not None and caps.supports(capabilities.PROGRESSIVE_COMMIT)
        if not supported:
            self.log_warning(f"Transfers: job {ctx.id}: peer {peer.name!r} cannot commit progressively (a C++ "
                             f"peer, or an older one): it imports everything at the end")
        ctx.update_content(ProgressiveCommit=supported)
        return supported

    def peer_capabilities(self, ctx: JobContext, peer: PeerConfig) -> Optional[capabilities.Capabilities]:
        """The receiver's capabilities, asked once per job and kept in its resume state."""
        return capabilities.of_job(ctx, self.transport, peer, self.log_warning,
                                   float(self.config.peer_connectivity_timeout))

    def send_metadata(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig,
                      descriptor: PushDescriptor) -> None:
        """``"Metadata": true``: the user metadata and labels of the instances go to the transaction before its
        commit, only to a receiver that lists the feature (a C++ receiver never gets them: the transfer goes
        on without them, and says so)."""
        caps = self.peer_capabilities(ctx, peer)
        if caps is None or not caps.supports(capabilities.METADATA) or self.metadata_store is None:
            self.log_warning(f"Transfers: job {ctx.id}: peer {peer.name!r} cannot take metadata and labels (a C++ "
                             f"peer, or an older one): the transfer goes without them")
            ctx.update_content(Metadata=meta.NOT_SUPPORTED)
            return
        document = self.metadata_store.collect(i.id for i in descriptor.instances)
        ctx.check()
        path = ctx.resume_state["Transaction"]
        try:
            self.transport.call(peer, "POST", f"{path}/metadata", body=dumps_compact(document),
                                headers=self.headers(query, ctx.resume_state, "application/json"),
                                stop_event=ctx.stop_event)
        except PeerError as e:
            raise lost_if_unknown(e, peer, path) from None
        ctx.update_content(Metadata=meta.count(document))

    def send(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig, descriptor: PushDescriptor) -> None:
        """Creates the transaction unless the resume state has one, uploads the buckets not done yet, commits."""
        state = ctx.resume_state
        buckets = descriptor.buckets
        new = "Transaction" not in state
        done = set() if new else set(state.get("DoneBuckets", []))
        todo = [index for index in range(len(buckets)) if index not in done]
        # The first bodies are read while the transaction is created.
        bodies = self.prefetch_bodies(query, buckets, todo, f"transfers-push-prepare-{ctx.id[:8]}")
        try:
            if new:
                self.create(ctx, query, peer, descriptor)
            self.upload(ctx, query, peer, descriptor, todo, bodies)
        finally:
            bodies.close()
        if query.metadata:
            self.send_metadata(ctx, query, peer, descriptor)
        self.commit(ctx, query, peer)

    @staticmethod
    def headers(query: TransferQuery, state: Dict[str, Any], content_type: Optional[str]) -> Dict[str, str]:
        return transfer_headers(query.sender_transfer_id, content_type, state.get("Cookie"))

    def create(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig, descriptor: PushDescriptor) -> None:
        body = dumps_compact(descriptor.to_json())
        deadline = time.monotonic() + self.config.peer_commit_timeout

        def discard_late(answer: HttpAnswer) -> None:
            """A creation abandoned by a stop that succeeded after all: its transaction is nobody's."""
            if answer.status != 200:
                return
            tid = transaction_id(parse_peer_json(peer, answer.content, "push creation answer", self.config.limits))
            if tid is not None:
                self.transport.request(peer, "DELETE", f"/transfers/push/{tid}", headers=self.headers(query, {}, None))
                self.log_info(f"Transfers: job {ctx.id}: push transaction {tid}, created after the job stopped, "
                              f"discarded at {peer.name!r}")

        while True:
            ctx.check()
            try:
                answer = self.transport.call(peer, "POST", "/transfers/push", body=body, expect_json=True,
                                             headers=self.headers(query, {}, "application/json"),
                                             timeout=self.config.peer_commit_timeout, stop_event=ctx.stop_event,
                                             abandon_on_stop=True, on_abandoned=discard_late)
                break
            except PeerError as e:
                if e.http_status != 503 or time.monotonic() > deadline:
                    raise
                self.log_warning(f"Transfers: job {ctx.id}: peer {peer.name!r} is busy ({e.message}), asking again "
                                 f"in {BUSY_WAIT} s")
                ctx.wait(BUSY_WAIT)
        ctx.check()
        tid = transaction_id(answer.document)
        if tid is None:
            raise NetworkProtocol(f"Peer {peer.name!r} answered the push creation without a transaction ID and its "
                                  f"Path (/transfers/push/<ID>)")
        ctx.update_resume_state(Transaction=f"/transfers/push/{tid}", Cookie="; ".join(answer.cookies),
                                DoneBuckets=[], UploadedBytes=0)
        ctx.save_now()

    def prefetch_bodies(self, query: TransferQuery, buckets: Sequence[Bucket], todo: List[int],
                        name: str) -> Prefetcher:
        """The PUT bodies of the buckets of ``todo``, read and encoded ahead of their turn (at most ``Threads``
        ahead), while the current ones are on the wire; the first ones are started at once."""
        codec = self.config.codec(query.compression)

        def body(index: int) -> bytes:
            if codec.uses_layout:  # zstd-shuffle: the source cuts the instances around their pixel data
                return self.source.encoded_bucket(buckets[index], codec)
            return codec.encode(self.source.bucket_payload(buckets[index]))

        return Prefetcher(todo, body, self.config.threads, name).start()

    def upload(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig, descriptor: PushDescriptor,
               todo: List[int], bodies: Prefetcher) -> None:
        """PUTs the buckets of ``todo``, whose bodies ``bodies`` gives."""
        state = ctx.resume_state
        buckets = descriptor.buckets
        done: Set[int] = set(range(len(buckets))) - set(todo)
        uploaded = [int(state.get("UploadedBytes", 0))]
        moved = [0]
        started = time.monotonic()
        last = [started]
        work: "queue.Queue[int]" = queue.Queue()
        for index in todo:
            work.put(index)
        lock = threading.Lock()
        ended = [False]  # the upload returned: a PUT still waiting for its answer changes nothing any more
        path = state["Transaction"]
        # Progress in the instances' own bytes: an instance is completed once every bucket carrying a part
        # of it is acknowledged; the time left comes from the instance bytes acknowledged in this run.
        size_of = {i.id: i.size for i in descriptor.instances}
        total = sum(size_of.values())
        carried = instances_of(buckets)
        waiting: Dict[str, int] = {iid: 0 for iid in size_of}
        for index, ids in carried.items():
            if index not in done:
                for iid in ids:
                    waiting[iid] += 1
        completed = [sum(size for iid, size in size_of.items() if waiting[iid] == 0)]
        raw_done = [sum(buckets[index].total_size for index in done)]
        raw_moved = [0]
        limiter = RateLimiter.of_kbs(cap_kbs(query.max_bandwidth_kbs, self.config.max_bandwidth_kbs))

        def publish() -> None:  # with the lock held
            ctx.update_resume_state(DoneBuckets=sorted(done), UploadedBytes=uploaded[0])
            ctx.update_content(CompletedHttpQueries=len(done), UploadedSizeMB=round_mb(uploaded[0]),
                               NetworkSpeedKBs=network_speed_kbs(moved[0], last[0] - started),
                               **progress_content(total, completed[0], uploaded[0]))
            left = remaining_seconds(total, completed[0] if len(done) == len(buckets)
                                     else min(raw_done[0], max(0, total - 1)), raw_moved[0], time.monotonic() - started)
            if left is None:
                ctx.drop_content("RemainingSeconds")
            else:
                ctx.update_content(RemainingSeconds=left)
            ctx.set_progress(progress(len(done), len(buckets)))

        def handle(index: int, place: Place) -> None:
            try:
                body = bodies.take(index)

                def attempt() -> Any:
                    # Once its body is sent, a PUT gives its place to the next bucket while it waits for the
                    # answer (a round trip plus the receiver's work), so that the link does not idle; a
                    # retry takes a place again.
                    if not place.hold():
                        raise OSError("upload stopped: the job was asked to stop")
                    if not body:
                        return body
                    return StoppableBody(body, ctx.stop_event, on_sent=place.release, limiter=limiter)

                self.transport.call(peer, "PUT", f"{path}/{index}", body=attempt,
                                    headers=self.headers(query, state, "application/octet-stream"),
                                    stop_event=ctx.stop_event)
            except Exception as e:  # noqa: BLE001 - reported as the job's failure, unless asked to stop
                if ctx.stop_event.is_set():
                    return
                raise lost_if_unknown(as_transfer_error(peer, e), peer, path) from None
            with lock:
                if ended[0]:
                    return  # the job stopped meanwhile: this bucket is sent again if it goes on
                if index not in done:
                    raw_done[0] += buckets[index].total_size
                    raw_moved[0] += buckets[index].total_size
                    for iid in carried.get(index, ()):
                        waiting[iid] -= 1
                        if waiting[iid] == 0:
                            completed[0] += size_of[iid]
                done.add(index)
                uploaded[0] += len(body)
                moved[0] += len(body)
                last[0] = time.monotonic()
                self.metrics.add(PUSH_SENT_BYTES, len(body))
                publish()

        with lock:
            publish()
        # A stop or a failure does not wait for the PUTs that only wait for their answers: with a large send
        # buffer on a slow link, that could take long after a pause or a cancel.
        failures = run_pool(work, self.config.threads, handle, ctx.stop_event, f"transfers-push-{ctx.id[:8]}",
                            overlap=True, wait_released=False, abandon_after=STOP_GRACE)
        with lock:
            ended[0] = True
            publish()
        if failures:
            raise failures[0]
        ctx.check()

    def commit(self, ctx: JobContext, query: TransferQuery, peer: PeerConfig) -> None:
        state = ctx.resume_state
        path = state["Transaction"]
        try:
            self.transport.call(peer, "POST", f"{path}/commit", body=b"", headers=self.headers(query, state, None),
                                timeout=self.config.peer_commit_timeout, stop_event=ctx.stop_event)
        except PeerError as e:
            raise lost_if_unknown(e, peer, path) from None
        ctx.update_resume_state(Committed=True)

    def cleanup(self, record: JobRecord, reason: str) -> None:
        state = record.resume_state
        path = state.get("Transaction")
        if reason in ("failure", "canceled") and path and not state.get("Committed"):
            try:
                query = TransferQuery.from_json(record.parameters)
                peer = self.peers().get(query.peer)
                if peer is not None:
                    self.transport.call(peer, "DELETE", path, headers=self.headers(query, state, None))
                    self.log_info(f"Transfers: job {record.id}: push transaction {path} discarded at {peer.name!r}")
            except TransfersError as e:
                self.log_warning(f"Transfers: job {record.id}: cannot discard the push transaction {path}: {e}")
        # A resubmitted push starts again with a new transaction; a finished one needs nothing of it, and
        # every save of the jobs would write its instance list again. A new dict, never a change in place:
        # the engine may be copying the old one to save it.
        record.resume_state = {}
