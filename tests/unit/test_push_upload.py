"""PushJobType.upload with a fake peer: the overlap of a sent body's answer with the next bucket, retries,
and a stop that does not wait for the answers still coming."""

import threading
import time
from typing import Dict, List

import pytest
from job_context import FakeJobContext

from transfers_plugin.config import PeerConfig, parse_configuration
from transfers_plugin.errors import TransfersError
from transfers_plugin.jobs.push import PushJobType
from transfers_plugin.protocol import Bucket, Chunk, InstanceInfo, PushDescriptor, TransferQuery
from transfers_plugin.transport import HttpAnswer, PeerError

SLICE = 256 * 1024  # StoppableBody.PIECE
PEER = PeerConfig("b", "http://b.invalid/")


def upload_context() -> FakeJobContext:
    return FakeJobContext({"Transaction": "/transfers/push/t"})


class Peer:
    """Stands for the transport: sends a body slice by slice (``slice_time`` each), then waits
    ``answer_time`` for the answer. Counts the bodies being sent and the requests open at once."""

    def __init__(self, slice_time: float = 0.004, answer_time: float = 0.05, fail_once: frozenset = frozenset()):
        self.slice_time = slice_time
        self.answer_time = answer_time
        self.fail_once = set(fail_once)  # bucket indexes whose first attempt gets a 503 after its body
        self.lock = threading.Lock()
        self.sending = self.open = self.max_sending = self.max_open = 0
        self.attempts: Dict[int, int] = {}
        self.answered: List[int] = []

    def _count(self, name: str, delta: int) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + delta)
            top = "max_" + name
            setattr(self, top, max(getattr(self, top), getattr(self, name)))

    def call(self, peer, method, uri, *, body=None, headers=None, stop_event=None, **kwargs) -> HttpAnswer:
        index = int(uri.rsplit("/", 1)[1])
        while True:
            with self.lock:
                self.attempts[index] = self.attempts.get(index, 0) + 1
                first = self.attempts[index] == 1
            data = body()  # raises when the job stops: as the real transport, the error goes up
            self._count("open", 1)
            try:
                self._count("sending", 1)
                try:
                    for _ in data:
                        time.sleep(self.slice_time)
                finally:
                    self._count("sending", -1)
                time.sleep(self.answer_time)
            finally:
                self._count("open", -1)
            if first and index in self.fail_once:
                continue  # a 503 after the whole body: the transport tries again
            with self.lock:
                self.answered.append(index)
            return HttpAnswer(200, {}, b"{}", [])


class Source:
    def bucket_payload(self, bucket: Bucket) -> bytes:
        return bytes(bucket.total_size)


def upload(peer: Peer, ctx: FakeJobContext, buckets: int, threads: int, slices: int = 4) -> None:
    ids = [f"{k:08x}-00000000-00000000-00000000-00000000" for k in range(buckets)]
    descriptor = PushDescriptor(tuple(InstanceInfo(i, slices * SLICE, "0" * 32) for i in ids),
                                tuple(Bucket((Chunk(i, 0, slices * SLICE),)) for i in ids), "none")
    job = PushJobType(parse_configuration({"Transfers": {"Threads": threads}}), lambda: {"b": PEER}, peer,
                      Source())
    query = TransferQuery.from_json({"Resources": [{"Level": "Study", "ID": "x"}], "Peer": "b",
                                     "Compression": "none"})
    todo = list(range(buckets))
    bodies = job.prefetch_bodies(query, descriptor.buckets, todo, "test-prepare")
    try:
        job.upload(ctx, query, PEER, descriptor, todo, bodies)
    finally:
        bodies.close()


def test_a_sent_body_gives_its_place_to_the_next_bucket_while_its_answer_comes():
    peer, ctx = Peer(), upload_context()
    upload(peer, ctx, buckets=16, threads=3)
    assert sorted(peer.answered) == list(range(16))
    assert ctx.resume_state["DoneBuckets"] == list(range(16))
    assert peer.max_sending <= 3, "never more bodies on the wire than Threads"
    assert peer.max_open > 3, "requests waiting for their answers let the next buckets start"
    assert peer.max_open <= 6


def test_a_retry_after_a_whole_body_takes_a_place_again():
    # Sending dominates: a retry that sent without a place would overlap the bodies of the others.
    peer, ctx = Peer(slice_time=0.01, answer_time=0.002, fail_once=frozenset(range(0, 10, 2))), upload_context()
    upload(peer, ctx, buckets=10, threads=2)
    assert sorted(peer.answered) == list(range(10))
    assert peer.attempts[0] == 2 and peer.attempts[1] == 1
    assert peer.max_sending <= 2


def test_a_stop_does_not_wait_for_the_answers_still_coming_and_they_change_nothing():
    peer, ctx = Peer(answer_time=1.5), upload_context()
    done = threading.Event()

    def stop_once_bodies_are_sent() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and peer.max_open < 4:
            time.sleep(0.005)
        ctx.stop_event.set()

    threading.Thread(target=stop_once_bodies_are_sent, daemon=True).start()
    t0 = time.monotonic()
    try:
        upload(peer, ctx, buckets=12, threads=2)
    except TransfersError:
        pass
    finally:
        done.set()
    returned = time.monotonic()
    assert returned - t0 < 1.2, "the upload ended without waiting for the answers (1.5 s away)"
    assert peer.answered == []
    time.sleep(1.8)  # the answers arrive now, after the end of the upload
    assert sorted(peer.answered) and set(peer.answered) <= set(range(12))
    assert all(t <= returned for t in ctx.changes), "an answer after the end changed the job"
    assert ctx.resume_state["DoneBuckets"] == []


def test_a_failure_is_reported_without_waiting_for_the_answers_still_coming():
    class Failing(Peer):
        def call(self, peer, method, uri, **kwargs):
            if uri.endswith("/3"):
                time.sleep(0.05)
                raise PeerError("Peer 'b' answered HTTP 400 to PUT", 400, retryable=False)
            return super().call(peer, method, uri, **kwargs)

    peer, ctx = Failing(answer_time=2.0), upload_context()
    t0 = time.monotonic()
    with pytest.raises(PeerError, match="400"):
        upload(peer, ctx, buckets=8, threads=2)
    assert time.monotonic() - t0 < 1.5
