"""The push receiver (protocol.md 2.4, R6 to R9, 7) without Orthanc: a fake store, tmp_path as download root.

Covers descriptor validation (the C++ 1.4 descriptors pass, broken ones get a 4xx), create/put/commit,
bad PUTs, commits that must leave nothing stored (missing bucket, bad MD5, store failure with rollback),
idempotent and concurrent commits, discards, the table of MaxPushTransactions (503 when every
transaction is busy, eviction of an idle one, idle timeout) and 409 for a PUT or DELETE during a commit.
"""

import copy
import gzip
import hashlib
import json
import random
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from change_log import ChangeLog

from transfers_plugin.codec import CodecError, get_codec
from transfers_plugin.download_area import DownloadArea
from transfers_plugin.errors import (
    BadRequest,
    Conflict,
    CorruptedFile,
    NotFound,
    OrthancUnavailable,
    TransfersError,
    Unavailable,
)
from transfers_plugin.journal import CommitJournal
from transfers_plugin.protocol import Bucket, Chunk, InstanceInfo, PushDescriptor
from transfers_plugin.receiver import IDLE_EVICTION, PushReceiver, validate_descriptor

WAIT = 10.0  # seconds: upper bound for anything a test waits for


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- a fake Orthanc store --------------------------------------------------------------------------------

class StoreFailure(TransfersError):
    status = 500


class FakeStore:
    """``store_instance``/``delete_instance`` as the receiver calls them; knows the IDs by content.

    ``fail_at`` makes the n-th call (1-based) raise ``failure``; ``gate``, when set, holds every
    ``store_instance`` call until it is set; ``entered`` is set as soon as one call has started.
    """

    def __init__(self, files: Dict[str, bytes]):
        self.ids = {md5(data): iid for iid, data in files.items()}
        self.lock = threading.Lock()
        self.calls: List[str] = []  # instance IDs, one per store_instance call
        self.stored: Dict[str, bytes] = {}
        self.deleted: List[str] = []
        self.fail_at: Optional[int] = None
        self.failure: BaseException = StoreFailure("the disk is full")
        self.answer_id: Optional[str] = None  # answer this ID instead of the right one
        self.gate: Optional[threading.Event] = None
        self.change_log = ChangeLog()  # Orthanc's /changes: a NewInstance per instance created
        self.entered = threading.Event()

    def store_instance(self, data: bytes) -> Dict[str, Any]:
        iid = self.ids.get(md5(data), f"unknown-bytes-{md5(data)}")
        with self.lock:
            self.calls.append(iid)
            n = len(self.calls)
        if iid not in self.ids.values():
            raise StoreFailure("Orthanc would refuse these bytes: they are no instance of the test")
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the store's gate"
        if n == self.fail_at:
            raise self.failure
        stored_id = self.answer_id or iid
        with self.lock:
            status = "AlreadyStored" if stored_id in self.stored else "Success"
            self.stored[stored_id] = bytes(data)
            if status == "Success":
                self.change_log.new_instance(stored_id)
        return {"ID": stored_id, "Status": status}

    def core_get_json(self, uri: str) -> Any:
        with self.lock:
            return self.change_log.get_json(uri)

    def delete_instance(self, instance_id: str) -> None:
        with self.lock:
            self.deleted.append(instance_id)
            if instance_id not in self.stored:
                raise NotFound(f"Unknown instance {instance_id}")
            del self.stored[instance_id]


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- test data -------------------------------------------------------------------------------------------

def fake_id(n: int) -> str:
    h = hashlib.sha1(str(n).encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


class Transfer:
    """Instances of random bytes and a descriptor whose buckets mix split, whole and grouped instances."""

    def __init__(self, compression: str = "gzip", seed: int = 0):
        rnd = random.Random(seed)
        a, b, c, d = (fake_id(seed * 10 + k) for k in range(4))
        sizes = {a: 1000, b: 5000, c: 300, d: 2500}
        # Compressible but not trivial bytes, so that gzip really works.
        self.files = {i: bytes(rnd.choice(b"ACGT\x00\x01") for _ in range(n)) for i, n in sizes.items()}
        layout = [[(b, 0, 2000)], [(b, 2000, 3000)], [(a, 0, 1000), (c, 0, 300)], [(d, 0, 1200)],
                  [(d, 1200, 1300)]]
        self.compression = compression
        self.descriptor = PushDescriptor(
            tuple(InstanceInfo(i, len(self.files[i]), md5(self.files[i])) for i in sorted(self.files)),
            tuple(Bucket(tuple(Chunk(i, o, s) for i, o, s in bucket)) for bucket in layout),
            compression)

    @property
    def n_buckets(self) -> int:
        return len(self.descriptor.buckets)

    def raw(self, index: int) -> bytes:
        return b"".join(self.files[c.instance_id][c.offset:c.offset + c.size]
                        for c in self.descriptor.buckets[index].chunks)

    def body(self, index: int) -> bytes:
        return get_codec(self.compression).encode(self.raw(index))

    def encode(self, raw: bytes) -> bytes:
        return get_codec(self.compression).encode(raw)


def files_under(root: Path) -> List[Path]:
    return sorted(root.rglob("*")) if root.exists() else []


def put_all(receiver: PushReceiver, tid: str, transfer: Transfer, order: Optional[Sequence[int]] = None) -> None:
    for i in order if order is not None else range(transfer.n_buckets):
        receiver.put(tid, i, transfer.body(i))


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "download-root"


def make_receiver(root: Path, store: FakeStore, max_transactions: int = 4, **kwargs: Any) -> PushReceiver:
    return PushReceiver(max_transactions, root, store, **kwargs)


def run_in_thread(fn, *args) -> Tuple[threading.Thread, Dict[str, Any]]:
    """Starts fn(*args) in a thread; the dict gets "result" or "error"."""
    outcome: Dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, outcome


def finish(thread: threading.Thread, outcome: Dict[str, Any]) -> Any:
    thread.join(WAIT)
    assert not thread.is_alive(), "the thread is still blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def block_writes(receiver: PushReceiver, tid: str) -> Tuple[threading.Event, threading.Event]:
    """Makes the transaction's bucket writes wait for ``release``; ``started`` is set when one waits."""
    area = receiver._transactions[tid].area
    original = area.write_bucket
    started, release = threading.Event(), threading.Event()

    def write_bucket(*args: Any, **kwargs: Any) -> None:
        started.set()
        assert release.wait(WAIT), "the test never released the write"
        original(*args, **kwargs)

    area.write_bucket = write_bucket
    return started, release


# --- validate_descriptor ---------------------------------------------------------------------------------

def cxx_descriptor(fixtures_dir: Path, scenario: str = "push-gzip") -> Dict[str, Any]:
    return json.loads((fixtures_dir / scenario / "req-002.json").read_bytes())


@pytest.mark.parametrize("scenario", ["push-gzip", "push-none"])
def test_cxx_descriptors_are_accepted(fixtures_dir, scenario):
    descriptor = PushDescriptor.from_json(cxx_descriptor(fixtures_dir, scenario))
    assert len(descriptor.instances) == 5 and len(descriptor.buckets) == 6
    assert descriptor.compression == scenario.split("-")[1]
    validate_descriptor(descriptor)


def test_empty_and_zero_sized_transfers_are_accepted():
    validate_descriptor(PushDescriptor.from_json({"Instances": [], "Buckets": [], "Compression": "none"}))
    iid = fake_id(1)
    empty = {"Instances": [{"ID": iid, "MD5": md5(b""), "Size": "0"}], "Buckets": [], "Compression": "gzip"}
    validate_descriptor(PushDescriptor.from_json(empty))
    empty["Buckets"] = [[{"ID": iid, "Offset": "0", "Size": "0"}]]
    validate_descriptor(PushDescriptor.from_json(empty))


SPLIT = "a36d4be2-f419c44c-5157e814-171573f6-d151a103"  # 526432 bytes in buckets 0 to 4
UNKNOWN = "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"


def _duplicate_instance(d):
    d["Instances"].append(copy.deepcopy(d["Instances"][1]))


def _duplicate_instance_other_size(d):
    twin = copy.deepcopy(d["Instances"][0])
    twin["Size"] = "10"
    d["Instances"].insert(1, twin)


def _unknown_instance_in_bucket(d):
    d["Buckets"][5][1]["ID"] = UNKNOWN


def _extra_chunk_of_unknown_instance(d):
    d["Buckets"].append([{"ID": UNKNOWN, "Offset": "0", "Size": "0"}])


def _chunk_past_the_end(d):
    d["Buckets"][4][0]["Size"] = "105289"


def _chunk_starting_past_the_end(d):
    d["Buckets"].append([{"ID": SPLIT, "Offset": "526433", "Size": "0"}])


def _gap_in_the_middle(d):
    del d["Buckets"][2]


def _gap_at_the_end(d):
    d["Buckets"][4][0]["Size"] = "105287"


def _instance_never_sent(d):
    del d["Buckets"][5][2]


def _overlap_same_bucket_twice(d):
    d["Buckets"].append(copy.deepcopy(d["Buckets"][0]))


def _overlap_shifted(d):
    d["Buckets"][1][0]["Offset"] = "105285"
    d["Buckets"][1][0]["Size"] = "105287"


def _md5_too_short(d):
    d["Instances"][2]["MD5"] = d["Instances"][2]["MD5"][:31]


def _md5_too_long(d):
    d["Instances"][2]["MD5"] += "0"


def _md5_empty(d):
    d["Instances"][0]["MD5"] = ""


BAD_DESCRIPTORS = [
    (_duplicate_instance, ["twice", "339979f1"]),
    (_duplicate_instance_other_size, ["twice", "05790313"]),
    (_unknown_instance_in_bucket, ["not in Instances", UNKNOWN]),
    (_extra_chunk_of_unknown_instance, ["not in Instances", UNKNOWN]),
    (_chunk_past_the_end, ["past the end", SPLIT]),
    (_chunk_starting_past_the_end, ["past the end", SPLIT]),
    (_gap_in_the_middle, ["gap", "210572", SPLIT]),
    (_gap_at_the_end, ["526431", SPLIT]),
    (_instance_never_sent, ["0 of the 3810", "88241a3c"]),
    (_overlap_same_bucket_twice, ["overlap", SPLIT]),
    (_overlap_shifted, ["overlap", "105285", SPLIT]),
]
MALFORMED_DESCRIPTORS = [
    (_md5_too_short, ["MD5", "Instances[2]"]),
    (_md5_too_long, ["MD5", "Instances[2]"]),
    (_md5_empty, ["MD5", "Instances[0]"]),
]


@pytest.mark.parametrize("mutate,words", MALFORMED_DESCRIPTORS,
                         ids=[m.__name__.strip("_") for m, _ in MALFORMED_DESCRIPTORS])
def test_malformed_descriptors_are_refused_when_parsed(fixtures_dir, mutate, words):
    raw = cxx_descriptor(fixtures_dir)
    mutate(raw)
    with pytest.raises(TransfersError) as e:
        PushDescriptor.from_json(raw)
    assert e.value.status == 400
    for word in words:
        assert word.lower() in e.value.message.lower(), (word, e.value.message)


@pytest.mark.parametrize("mutate,words", BAD_DESCRIPTORS, ids=[m.__name__.strip("_") for m, _ in BAD_DESCRIPTORS])
def test_bad_descriptors_are_refused_with_a_4xx(fixtures_dir, root, mutate, words):
    raw = cxx_descriptor(fixtures_dir)
    mutate(raw)
    descriptor = PushDescriptor.from_json(raw)  # the structure is fine: validation is what refuses it
    with pytest.raises(TransfersError) as e:
        validate_descriptor(descriptor)
    assert 400 <= e.value.status < 500, e.value.status
    for word in words:
        assert word.lower() in e.value.message.lower(), (word, e.value.message)
    # create refuses it the same way, before anything reaches the disk or the table
    receiver = make_receiver(root, FakeStore({}))
    with pytest.raises(TransfersError) as e2:
        receiver.create(descriptor)
    assert e2.value.status == e.value.status
    assert receiver.active == 0 and receiver.created_count == 0
    assert files_under(root) == []


# --- create / put / commit -------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["push-gzip", "push-none"])
def test_cxx_recorded_push(fixtures_dir, root, scenario):
    """The C++ 1.4 sender's descriptor and bucket bodies, in the recorded order: the 5 exact files."""
    folder = fixtures_dir / scenario
    expected = {iid: (fixtures_dir / "instances" / f"{iid}.dcm").read_bytes()
                for iid in json.loads((fixtures_dir / "instances" / "instances.json").read_text())}
    store = FakeStore(expected)
    receiver = make_receiver(root, store)
    tid = receiver.create(PushDescriptor.from_json(json.loads((folder / "req-002.json").read_bytes())))
    assert (root / f"push-{tid}").is_dir()
    puts = 0
    for exchange in json.loads((folder / "exchange.json").read_text()):
        rq = exchange["request"]
        if rq["method"] == "PUT":
            index = int(rq["path"].rsplit("/", 1)[1])
            receiver.put(tid, index, (folder / rq["body"]).read_bytes())
            puts += 1
    assert puts == 6
    receiver.commit(tid)
    assert store.stored == expected
    assert sorted(store.calls) == sorted(expected)  # each instance stored once
    assert store.deleted == []
    assert receiver.active == 0 and receiver.committed_count == 1
    assert files_under(root) == []


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize("threads", [1, 3])
def test_create_put_commit(root, compression, threads):
    transfer = Transfer(compression)
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store, commit_threads=threads)
    tid = receiver.create(transfer.descriptor)
    assert len(tid) == 36 and tid.count("-") == 4
    put_all(receiver, tid, transfer, order=[4, 2, 0, 3, 1])
    assert store.calls == []  # nothing reaches Orthanc before the commit
    receiver.commit(tid)
    assert store.stored == transfer.files
    assert sorted(store.calls) == sorted(transfer.files)
    assert receiver.active == 0
    assert files_under(root) == []


def test_transactions_are_independent(root):
    t1, t2 = Transfer("gzip", seed=1), Transfer("none", seed=2)
    store = FakeStore({**t1.files, **t2.files})
    receiver = make_receiver(root, store)
    id1, id2 = receiver.create(t1.descriptor), receiver.create(t2.descriptor)
    assert id1 != id2
    for i in range(t1.n_buckets):
        receiver.put(id1, i, t1.body(i))
        receiver.put(id2, i, t2.body(i))
    receiver.commit(id2)
    assert store.stored == t2.files
    receiver.commit(id1)
    assert store.stored == {**t1.files, **t2.files}


# --- bad PUTs --------------------------------------------------------------------------------------------

def test_put_with_a_wrong_index_is_400(root):
    transfer = Transfer()
    receiver = make_receiver(root, FakeStore(transfer.files))
    tid = receiver.create(transfer.descriptor)
    for index in (transfer.n_buckets, transfer.n_buckets + 1, 10**20):
        with pytest.raises(BadRequest) as e:
            receiver.put(tid, index, transfer.body(0))
        assert e.value.status == 400 and "out of range" in e.value.message


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize("delta", [-1, 1, -300])
def test_put_with_a_wrong_length_is_4xx(root, compression, delta):
    transfer = Transfer(compression)
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    raw = transfer.raw(2)
    wrong = raw[:delta] if delta < 0 else raw + b"x" * delta
    with pytest.raises(TransfersError) as e:
        receiver.put(tid, 2, transfer.encode(wrong))
    assert 400 <= e.value.status < 500
    assert str(len(raw)) in e.value.message
    # nothing was counted as received: the commit refuses, then the right body is accepted
    put_all(receiver, tid, transfer, order=[0, 1, 3, 4])
    with pytest.raises(BadRequest):
        receiver.commit(tid)
    receiver.put(tid, 2, transfer.body(2))
    receiver.commit(tid)
    assert store.stored == transfer.files


def _gzip_with_trailing_bytes(transfer: Transfer) -> bytes:
    return transfer.body(2) + b"\x00\x00"


def _two_gzip_members(transfer: Transfer) -> bytes:
    raw = transfer.raw(2)
    return gzip.compress(raw[:100], mtime=0) + gzip.compress(raw[100:], mtime=0)


@pytest.mark.parametrize("make_body", [
    lambda t: b"",
    lambda t: b"\x1f\x8b",
    lambda t: b"this is not gzip at all, not at all, no",
    lambda t: t.raw(2),  # the raw bytes where gzip is expected
    lambda t: t.body(2)[:-9],  # truncated
    lambda t: t.body(2)[:10] + bytes(b ^ 0x55 for b in t.body(2)[10:]),  # corrupted deflate stream
    _gzip_with_trailing_bytes,
    _two_gzip_members,
], ids=["empty", "magic-only", "text", "raw", "truncated", "corrupted", "trailing", "two-members"])
def test_put_of_bad_gzip_is_4xx(root, make_body):
    transfer = Transfer("gzip")
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    with pytest.raises(TransfersError) as e:
        receiver.put(tid, 2, make_body(transfer))
    assert 400 <= e.value.status < 500, e.value
    assert "gzip" in e.value.message.lower() or "bytes" in e.value.message.lower()
    put_all(receiver, tid, transfer)
    receiver.commit(tid)
    assert store.stored == transfer.files


def test_put_to_an_unknown_transaction_is_404(root):
    transfer = Transfer()
    receiver = make_receiver(root, FakeStore(transfer.files))
    with pytest.raises(NotFound) as e:
        receiver.put("0d2e3b4a-1111-4222-8333-444455556666", 0, transfer.body(0))
    assert e.value.status == 404
    tid = receiver.create(transfer.descriptor)
    receiver.discard(tid)
    with pytest.raises(NotFound):
        receiver.put(tid, 0, transfer.body(0))


def test_repeated_puts_are_harmless(root):
    transfer = Transfer("gzip")
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    put_all(receiver, tid, transfer, order=[3, 3, 0, 4, 1, 2, 2])
    receiver.commit(tid)
    assert store.stored == transfer.files
    assert sorted(store.calls) == sorted(transfer.files)


def test_a_good_put_after_a_corrupted_one_repairs_the_bucket(root):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    receiver.put(tid, 1, b"\xff" * len(transfer.raw(1)))
    receiver.put(tid, 1, transfer.body(1))
    receiver.commit(tid)
    assert store.stored == transfer.files


# --- commits that must store nothing ---------------------------------------------------------------------

def test_commit_with_missing_buckets_is_400_and_stores_nothing(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    with pytest.raises(BadRequest) as e:
        receiver.commit(tid)  # no bucket at all
    assert e.value.status == 400
    put_all(receiver, tid, transfer, order=[0, 1, 2, 4])
    with pytest.raises(BadRequest) as e:
        receiver.commit(tid)
    assert e.value.status == 400 and "never arrived" in e.value.message and "3" in e.value.message
    assert store.calls == []
    # the transaction is still there and can be completed
    receiver.put(tid, 3, transfer.body(3))
    receiver.commit(tid)
    assert store.stored == transfer.files


def test_commit_with_a_corrupted_bucket_is_corrupted_file_and_stores_nothing(root):
    transfer = Transfer("gzip")
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    raw = bytearray(transfer.raw(2))  # instances a and c
    raw[-1] ^= 0xFF
    receiver.put(tid, 2, transfer.encode(bytes(raw)))
    with pytest.raises(CorruptedFile) as e:
        receiver.commit(tid)
    assert e.value.status == 400 and e.value.orthanc_code == 20 and "MD5" in e.value.message  # the sender's error
    assert store.calls == [] and store.stored == {}
    assert receiver.active == 1
    receiver.put(tid, 2, transfer.body(2))
    receiver.commit(tid)
    assert store.stored == transfer.files


@pytest.mark.parametrize("failure", [StoreFailure("the disk is full"), RuntimeError("boom")],
                         ids=["transfers-error", "other-exception"])
def test_store_failure_midway_rolls_back(root, failure):
    transfer = Transfer("none")
    ids = sorted(transfer.files)
    store = FakeStore(transfer.files)
    store.stored[ids[1]] = transfer.files[ids[1]]  # Orthanc had this one already: it must stay
    store.fail_at = 3
    store.failure = failure
    receiver = make_receiver(root, store, commit_threads=1)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    with pytest.raises(TransfersError) as e:
        receiver.commit(tid)
    if isinstance(failure, TransfersError):
        assert e.value is failure
    else:
        assert isinstance(e.value, CorruptedFile) and "boom" in e.value.message
    assert store.calls == ids[:3]
    assert store.deleted == [ids[0]]  # created by this commit; ids[1] was AlreadyStored
    assert store.stored == {ids[1]: transfer.files[ids[1]]}
    # the transaction stays: once the store works again, the same commit succeeds
    store.fail_at = None
    receiver.commit(tid)
    assert store.stored == transfer.files


def test_store_answering_another_id_rolls_back(root):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    store.answer_id = fake_id(999)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    with pytest.raises(CorruptedFile) as e:
        receiver.commit(tid)
    assert fake_id(999) in e.value.message
    assert store.stored == {} and store.deleted == [fake_id(999)]


# --- repeated and concurrent commits ---------------------------------------------------------------------

def test_commit_repeated_after_success(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    receiver.commit(tid)
    receiver.commit(tid)
    receiver.commit(tid)
    assert sorted(store.calls) == sorted(transfer.files)
    assert receiver.committed_count == 1
    assert files_under(root) == []
    with pytest.raises(NotFound):  # a committed transaction takes no more buckets
        receiver.put(tid, 0, transfer.body(0))
    with pytest.raises(NotFound):
        receiver.discard(tid)
    with pytest.raises(NotFound):
        receiver.commit("0d2e3b4a-1111-4222-8333-444455556666")


def test_a_commit_during_the_same_commit_waits_then_returns(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    store.gate = threading.Event()
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    first = run_in_thread(receiver.commit, tid)
    assert store.entered.wait(WAIT)
    second = run_in_thread(receiver.commit, tid)
    time.sleep(0.3)
    assert second[0].is_alive(), "the second commit returned while the first was still storing"
    assert first[0].is_alive()
    store.gate.set()
    finish(*first)
    finish(*second)
    assert store.stored == transfer.files
    assert sorted(store.calls) == sorted(transfer.files)  # nothing stored twice
    assert files_under(root) == []


def test_two_commits_waiting_for_the_same_put_run_once(root):
    """Both commits wait for a PUT in progress; when it ends, only one of them may import."""
    transfer = Transfer()
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer, order=[0, 1, 2, 3])
    started, release = block_writes(receiver, tid)
    put = run_in_thread(receiver.put, tid, 4, transfer.body(4))
    assert started.wait(WAIT)
    commits = [run_in_thread(receiver.commit, tid) for _ in range(2)]
    time.sleep(0.3)
    assert all(c[0].is_alive() for c in commits), "a commit did not wait for the PUT in progress"
    assert store.calls == []
    release.set()
    finish(*put)
    for c in commits:
        finish(*c)
    assert store.stored == transfer.files
    assert sorted(store.calls) == sorted(transfer.files)  # nothing stored twice
    assert store.deleted == []


def test_a_discard_racing_a_commit_start_is_all_or_nothing(root):
    """A DELETE that has checked "not committing" must not remove the files of a commit that starts next.

    The discard is held just after its check; a commit then gets its chance to start. Either the commit
    is refused (the transaction is discarded: nothing stored) or the discard is refused (409) and the
    commit stores everything; never a commit running on files that disappear under it.
    """
    transfer = Transfer()
    store = FakeStore(transfer.files)
    store.gate = threading.Event()
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    in_discard, go = threading.Event(), threading.Event()
    original = receiver._discard

    def held_discard(t):
        in_discard.set()
        assert go.wait(WAIT)
        original(t)

    receiver._discard = held_discard
    discard = run_in_thread(receiver.discard, tid)
    assert in_discard.wait(WAIT)
    commit = run_in_thread(receiver.commit, tid)
    commit_started = store.entered.wait(0.5)
    go.set()
    discard[0].join(WAIT)
    store.gate.set()
    commit[0].join(WAIT)
    assert not discard[0].is_alive() and not commit[0].is_alive()
    if "error" in discard[1]:  # the commit won
        assert isinstance(discard[1]["error"], Conflict)
        assert "error" not in commit[1], commit[1]
        assert store.stored == transfer.files
    else:  # the discard won
        assert not commit_started, "a commit started on a transaction that was being discarded"
        assert isinstance(commit[1].get("error"), NotFound), commit[1]
        assert store.calls == [] and store.stored == {}
    assert files_under(root) == []


# --- discard ---------------------------------------------------------------------------------------------

def test_discard_after_some_puts_removes_everything(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    keep = receiver.create(Transfer(seed=5).descriptor)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer, order=[0, 2])
    written = {c.instance_id for b in (0, 2) for c in transfer.descriptor.buckets[b].chunks if c.size}
    assert 0 < len(written) < 4
    assert {p.stem for p in files_under(root / f"push-{tid}")} == written
    receiver.discard(tid)
    assert not (root / f"push-{tid}").exists()
    assert [p.name for p in root.iterdir()] == [f"push-{keep}"]
    for call in (lambda: receiver.put(tid, 1, transfer.body(1)), lambda: receiver.commit(tid),
                 lambda: receiver.discard(tid)):
        with pytest.raises(NotFound):
            call()
    receiver.discard(keep)
    assert files_under(root) == []
    assert store.calls == [] and receiver.active == 0


def test_discard_after_every_put(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    receiver.discard(tid)
    assert files_under(root) == []
    with pytest.raises(NotFound):
        receiver.commit(tid)
    assert store.calls == []


def test_discard_during_a_put_waits_for_it_then_removes_everything(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    receiver.put(tid, 0, transfer.body(0))
    started, release = block_writes(receiver, tid)
    put = run_in_thread(receiver.put, tid, 1, transfer.body(1))
    assert started.wait(WAIT)
    discard = run_in_thread(receiver.discard, tid)
    time.sleep(0.2)
    assert discard[0].is_alive(), "the discard did not wait for the PUT in progress"
    with pytest.raises((NotFound, Conflict)):  # no new PUT gets in meanwhile
        receiver.put(tid, 2, transfer.body(2))
    release.set()
    finish(*put)
    finish(*discard)
    assert files_under(root) == []
    with pytest.raises(NotFound):
        receiver.put(tid, 3, transfer.body(3))
    assert receiver.active == 0 and store.calls == []


def test_close_all_removes_every_area(root):
    store = FakeStore({})
    receiver = make_receiver(root, store)
    for seed in range(3):
        receiver.create(Transfer(seed=seed).descriptor)
    assert len(list(root.iterdir())) == 3
    receiver.close_all()
    assert files_under(root) == [] and receiver.active == 0


# --- MaxPushTransactions, eviction, idle timeout ---------------------------------------------------------

def test_full_of_busy_transactions_answers_503(root):
    clock = FakeClock()
    receiver = make_receiver(root, FakeStore({}), max_transactions=2, clock=clock)
    transfers = [Transfer(seed=s) for s in range(3)]
    ids = [receiver.create(t.descriptor) for t in transfers[:2]]
    clock.advance(IDLE_EVICTION - 1)  # neither has been idle for IDLE_EVICTION seconds
    with pytest.raises(Unavailable) as e:
        receiver.create(transfers[2].descriptor)
    assert e.value.status == 503 and "MaxPushTransactions" in e.value.message
    assert sorted(p.name for p in root.iterdir()) == sorted(f"push-{i}" for i in ids)
    assert receiver.active == 2 and receiver.aborted_count == 0
    for i, t in zip(ids, transfers):  # both still work
        receiver.put(i, 1, t.body(1))
    clock.advance(IDLE_EVICTION - 1)  # a PUT makes a transaction busy again
    with pytest.raises(Unavailable):
        receiver.create(transfers[2].descriptor)
    assert receiver.aborted_count == 0


def test_an_idle_transaction_is_evicted_lru_first(root):
    clock = FakeClock()
    warnings: List[str] = []
    receiver = make_receiver(root, FakeStore({}), max_transactions=2, clock=clock, log_warning=warnings.append)
    transfers = [Transfer(seed=s) for s in range(4)]
    first = receiver.create(transfers[0].descriptor)
    clock.advance(1)
    second = receiver.create(transfers[1].descriptor)
    clock.advance(1)
    receiver.put(first, 0, transfers[0].body(0))  # first is now the most recently used
    clock.advance(IDLE_EVICTION + 1)
    third = receiver.create(transfers[2].descriptor)
    assert receiver.aborted_count == 1
    assert sorted(p.name for p in root.iterdir()) == sorted([f"push-{first}", f"push-{third}"])
    assert any(second in w and "evicted" in w for w in warnings), warnings
    with pytest.raises(NotFound):
        receiver.put(second, 0, transfers[1].body(0))
    receiver.put(first, 1, transfers[0].body(1))
    # now first was just used and third is new: neither is idle, so the table is full
    with pytest.raises(Unavailable):
        receiver.create(transfers[3].descriptor)


def test_a_transaction_being_committed_is_never_evicted_nor_expired(root):
    clock = FakeClock()
    transfer = Transfer()
    store = FakeStore(transfer.files)
    store.gate = threading.Event()
    receiver = make_receiver(root, store, max_transactions=1, clock=clock, idle_timeout=100)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    commit = run_in_thread(receiver.commit, tid)
    try:
        assert store.entered.wait(WAIT)
        clock.advance(10 * (IDLE_EVICTION + 100))
        assert receiver.expire_idle() == []
        with pytest.raises(Unavailable):
            receiver.create(Transfer(seed=3).descriptor)
        assert receiver.aborted_count == 0
    finally:
        store.gate.set()
    finish(*commit)
    assert store.stored == transfer.files


def test_a_transaction_with_a_put_in_progress_is_not_evicted(root):
    clock = FakeClock()
    transfer = Transfer()
    receiver = make_receiver(root, FakeStore(transfer.files), max_transactions=1, clock=clock)
    tid = receiver.create(transfer.descriptor)
    started, release = block_writes(receiver, tid)
    put = run_in_thread(receiver.put, tid, 0, transfer.body(0))
    try:
        assert started.wait(WAIT)
        clock.advance(IDLE_EVICTION + 1)
        with pytest.raises(Unavailable):
            receiver.create(Transfer(seed=3).descriptor)
    finally:
        release.set()
    finish(*put)
    assert receiver.active == 1


def test_idle_timeout_expiry(root):
    clock = FakeClock()
    warnings: List[str] = []
    receiver = make_receiver(root, FakeStore({}), clock=clock, idle_timeout=60, log_warning=warnings.append)
    t1, t2 = Transfer(seed=1), Transfer(seed=2)
    id1 = receiver.create(t1.descriptor)
    clock.advance(50)
    id2 = receiver.create(t2.descriptor)
    clock.advance(10)
    assert receiver.expire_idle() == []  # idle for exactly 60 s: not more than the timeout
    clock.advance(1)
    assert receiver.expire_idle() == [id1]
    assert [p.name for p in root.iterdir()] == [f"push-{id2}"]
    assert any(id1 in w for w in warnings)
    with pytest.raises(NotFound):
        receiver.put(id1, 0, t1.body(0))
    receiver.put(id2, 0, t2.body(0))  # a PUT restarts the idle time
    clock.advance(60)
    assert receiver.expire_idle() == []
    clock.advance(1)
    assert receiver.expire_idle() == [id2]
    assert files_under(root) == [] and receiver.active == 0


def test_create_expires_idle_transactions_first(root):
    clock = FakeClock()
    receiver = make_receiver(root, FakeStore({}), max_transactions=4, clock=clock, idle_timeout=60)
    old = receiver.create(Transfer(seed=1).descriptor)
    clock.advance(61)
    receiver.create(Transfer(seed=2).descriptor)
    assert not (root / f"push-{old}").exists()
    assert receiver.active == 1


# --- 409 during a commit ---------------------------------------------------------------------------------

def test_put_and_delete_during_a_commit_are_409(root):
    transfer = Transfer()
    store = FakeStore(transfer.files)
    store.gate = threading.Event()
    receiver = make_receiver(root, store)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    commit = run_in_thread(receiver.commit, tid)
    try:
        assert store.entered.wait(WAIT)
        with pytest.raises(Conflict) as e:
            receiver.put(tid, 0, transfer.body(0))
        assert e.value.status == 409
        with pytest.raises(Conflict) as e:
            receiver.discard(tid)
        assert e.value.status == 409 and "committed" in e.value.message
        assert (root / f"push-{tid}").is_dir()
    finally:
        store.gate.set()
    finish(*commit)
    assert store.stored == transfer.files
    assert sorted(store.calls) == sorted(transfer.files)
    assert files_under(root) == []


def test_download_area_of_a_transaction_holds_a_file_per_instance_written(root):
    transfer = Transfer()
    receiver = make_receiver(root, FakeStore(transfer.files))
    tid = receiver.create(transfer.descriptor)
    area = DownloadArea(root / f"push-{tid}", transfer.descriptor.instances)
    assert area.exists() and files_under(area.root) == [], "files come with the buckets"
    put_all(receiver, tid, transfer)
    for info in transfer.descriptor.instances:
        assert area.read(info.id) == transfer.files[info.id]


def test_orthanc_stopping_during_a_commit_rolls_nothing_back(root):
    # Orthanc's database is closed to plugins while it stops: no rollback is tried (it could not work).
    transfer = Transfer("none")
    ids = sorted(transfer.files)
    store = FakeStore(transfer.files)
    store.fail_at = 2
    store.failure = OrthancUnavailable("Plugin trying to call the database during its initialization")
    receiver = make_receiver(root, store, commit_threads=1)
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    with pytest.raises(OrthancUnavailable):
        receiver.commit(tid)
    assert store.deleted == [] and list(store.stored) == ids[:1]


# --- the commit journal: an interrupted commit is rolled back at the next start --------------------------

def journal_over(properties: Dict[int, str], owner: str = "run-1") -> CommitJournal:
    return CommitJournal(lambda pid, default: properties.get(pid, default),
                         lambda pid, value: properties.__setitem__(pid, value), owner=owner)


def filled_with_journal(root: Path, store: FakeStore, transfer: Transfer, properties: Dict[int, str]):
    """A receiver keeping its journal in ``properties``, with one transaction whose buckets all arrived."""
    receiver = make_receiver(root, store, journal=journal_over(properties))
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer)
    return receiver, tid


def test_a_commit_is_in_the_journal_only_while_it_runs(root):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    store.gate = threading.Event()
    properties: Dict[int, str] = {}
    receiver, tid = filled_with_journal(root, store, transfer, properties)
    thread, outcome = run_in_thread(receiver.commit, tid)
    assert store.entered.wait(WAIT)
    assert receiver.recover() == 0 and store.deleted == [], "a running commit is not an interrupted one"
    seen_later = journal_over(properties, owner="run-2").entries()
    assert list(seen_later) == [tid] and sorted(seen_later[tid][1]) == sorted(transfer.files)
    store.gate.set()
    thread.join(WAIT)
    assert "error" not in outcome
    assert journal_over(properties, owner="run-2").entries() == {}


def test_a_failed_commit_leaves_no_journal_entry(root):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    store.fail_at = 2
    properties: Dict[int, str] = {}
    receiver, tid = filled_with_journal(root, store, transfer, properties)
    with pytest.raises(TransfersError):
        receiver.commit(tid)
    assert store.stored == {} and journal_over(properties, owner="run-2").entries() == {}


def test_a_commit_interrupted_by_a_stop_is_rolled_back_at_the_next_start(root):
    transfer = Transfer("none")
    ids = sorted(transfer.files)
    store = FakeStore(transfer.files)
    already = ids[0]
    store.stored[already] = transfer.files[already]  # Orthanc had it before: it must stay
    store.fail_at = 3
    store.failure = OrthancUnavailable("Plugin trying to call the database during its initialization")
    properties: Dict[int, str] = {}
    receiver, tid = filled_with_journal(root, store, transfer, properties)
    with pytest.raises(OrthancUnavailable):
        receiver.commit(tid)
    assert set(store.stored) == {ids[0], ids[1]}  # nothing rolled back while Orthanc stops
    # The next start: a new receiver over the same database.
    warnings: List[str] = []
    store.fail_at = None
    after = make_receiver(root, store, journal=journal_over(properties, owner="run-2"), log_warning=warnings.append)
    assert after.recover() == 1
    assert set(store.stored) == {already}
    assert journal_over(properties, owner="run-3").entries() == {}
    assert any(tid in w and "deleted again" in w for w in warnings)
    assert after.recover() == 0



def test_a_put_that_inflates_to_a_huge_bucket_holds_at_most_a_piece_in_memory(root):
    """A descriptor announcing one 128 MB instance, and a PUT of 128 KB of gzip: written piece by piece."""
    import gzip
    import tracemalloc

    size = 128 << 20
    iid = fake_id(77)
    descriptor = PushDescriptor.from_json({"Instances": [{"ID": iid, "Size": str(size), "MD5": "0" * 32}],
                                           "Buckets": [[{"ID": iid, "Offset": "0", "Size": str(size)}]],
                                           "Compression": "gzip"})
    receiver = make_receiver(root, FakeStore({}))
    tid = receiver.create(descriptor)
    body = gzip.compress(bytes(size), 9)
    tracemalloc.start()
    try:
        receiver.put(tid, 0, body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak >> 20} MB held while writing the bucket"
    assert (root / f"push-{tid}" / f"{iid}.dcm").stat().st_size == size


def test_a_wrong_gzip_body_leaves_the_bucket_not_received(root):
    transfer = Transfer("gzip")
    receiver = make_receiver(root, FakeStore(transfer.files))
    tid = receiver.create(transfer.descriptor)
    put_all(receiver, tid, transfer, [i for i in range(transfer.n_buckets) if i != 1])
    with pytest.raises(CodecError):
        receiver.put(tid, 1, transfer.body(1)[:-8])  # truncated: some bytes were written, not all
    with pytest.raises(BadRequest, match="never arrived"):
        receiver.commit(tid)
    receiver.put(tid, 1, transfer.body(1))
    receiver.commit(tid)


def open_files() -> List[str]:
    import os

    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed meanwhile
            pass
    return found


def one_instance_descriptor(size: int, seed: int = 5) -> PushDescriptor:
    iid = fake_id(seed)
    return PushDescriptor.from_json({"Instances": [{"ID": iid, "Size": str(size), "MD5": "0" * 32}],
                                     "Buckets": [[{"ID": iid, "Offset": "0", "Size": str(size)}]],
                                     "Compression": "none"})


def test_room_in_the_download_area_is_checked_and_promised(root):
    from transfers_plugin.errors import InsufficientStorage, Unavailable

    receiver = make_receiver(root, FakeStore({}), free_space=lambda folder: 100)
    with pytest.raises(InsufficientStorage) as e:
        receiver.create(one_instance_descriptor(101))
    assert e.value.status == 507 and str(root) in e.value.message and "MB free" in e.value.message
    first = receiver.create(one_instance_descriptor(60, 1))
    with pytest.raises(Unavailable) as e:  # fits alone, not with the 60 bytes promised to the first
        receiver.create(one_instance_descriptor(60, 2))
    assert e.value.status == 503 and "promised" in e.value.message
    receiver.put(first, 0, bytes(60))  # written: no longer promised (the free space now counts it)
    assert receiver.create(one_instance_descriptor(60, 3))
    assert files_under(root) and receiver.active == 2


def test_a_disk_error_discards_the_transaction_and_its_sender_keeps_being_told_why(root, monkeypatch):
    import errno
    import os

    from transfers_plugin import download_area
    from transfers_plugin.errors import InsufficientStorage

    receiver = make_receiver(root, FakeStore({}))
    tid = receiver.create(one_instance_descriptor(1000))
    real_pwrite = os.pwrite

    def full(fd, data, offset):
        real_pwrite(fd, bytes(data[:10]), offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_area.os, "pwrite", full)
    with pytest.raises(InsufficientStorage) as e:
        receiver.put(tid, 0, bytes(1000))
    assert e.value.status == 507 and "is full" in e.value.message and str(root) in e.value.message
    monkeypatch.setattr(download_area.os, "pwrite", real_pwrite)
    assert files_under(root) == [] and receiver.active == 0
    assert not [f for f in open_files() if str(root) in f], "a file of the discarded transaction is still open"
    for again in (lambda: receiver.put(tid, 0, bytes(1000)), lambda: receiver.commit(tid)):
        with pytest.raises(InsufficientStorage):  # the cause, not an "unknown transaction" (404)
            again()
    with pytest.raises(NotFound):
        receiver.put(str(__import__("uuid").uuid4()), 0, b"")


# --- metrics (the C++ plugin 1.7's names) ---------------------------------------------------------------

def test_the_push_metrics_count_a_commit_and_every_kind_of_abort(root):
    clock = FakeClock()
    transfers = [Transfer("gzip", seed=s) for s in range(4)]
    store = FakeStore({i: d for t in transfers for i, d in t.files.items()})
    receiver = make_receiver(root, store, max_transactions=2, idle_timeout=3600, clock=clock)
    m = receiver.metrics()
    assert m["orthanc_transfers_available_push_count"] == 2 and m["orthanc_transfers_created_push_count"] == 0
    committed = receiver.create(transfers[0].descriptor)
    put_all(receiver, committed, transfers[0])
    clock.advance(2.5)
    receiver.commit(committed)
    discarded = receiver.create(transfers[1].descriptor)
    receiver.put(discarded, 0, transfers[1].body(0))
    receiver.discard(discarded)
    with pytest.raises(NotFound):
        receiver.discard(discarded)  # a second DELETE: 404, counted once
    idle = [receiver.create(transfers[2].descriptor), receiver.create(transfers[3].descriptor)]
    clock.advance(4000)
    assert sorted(receiver.expire_idle()) == sorted(idle)  # two aborts
    m = receiver.metrics()
    raw = sum(len(d) for d in transfers[0].files.values())
    bodies = sum(len(transfers[0].body(i)) for i in range(transfers[0].n_buckets)) + len(transfers[1].body(0))
    assert m == {"orthanc_transfers_available_push_count": 2, "orthanc_transfers_created_push_count": 4,
                 "orthanc_transfers_committed_push_count": 1, "orthanc_transfers_aborted_push_count": 3,
                 "orthanc_transfers_push_total_received_bytes_count": raw,
                 "orthanc_transfers_push_total_time_spent_in_reception_ms": 2500,
                 "orthanc_transfers_push_total_time_spent_in_commit_ms": 0,
                 "orthanc_transfers_push_received_bytes_count": bodies}


def test_an_evicted_transaction_is_an_abort(root):
    clock = FakeClock()
    transfers = [Transfer("none", seed=s) for s in range(2)]
    receiver = make_receiver(root, FakeStore({}), max_transactions=1, clock=clock)
    receiver.create(transfers[0].descriptor)
    clock.advance(60)
    receiver.create(transfers[1].descriptor)  # evicts the idle one
    m = receiver.metrics()
    assert (m["orthanc_transfers_created_push_count"], m["orthanc_transfers_aborted_push_count"],
            m["orthanc_transfers_committed_push_count"], m["orthanc_transfers_available_push_count"]) == (2, 1, 0, 0)


# --- metadata (issue 14, item 5) -------------------------------------------------------------------------

class FakeMetadataStore:
    def __init__(self, failure: Optional[BaseException] = None):
        self.applied: List[Dict[str, Any]] = []
        self.failure = failure

    def apply(self, document, warn):
        if self.failure is not None:
            raise self.failure
        self.applied.append(document)
        return {}


def test_metadata_given_before_the_commit_is_applied_by_it(root):
    t = Transfer()
    store, metadata = FakeStore(t.files), FakeMetadataStore()
    receiver = make_receiver(root, store, metadata_store=metadata)
    tid = receiver.create(t.descriptor)
    first = t.descriptor.instances[0].id
    receiver.put_metadata(tid, {"Instances": {first: {"Sample": "a"}}})
    put_all(receiver, tid, t)
    assert metadata.applied == []
    receiver.commit(tid)
    assert [d["Instances"] for d in metadata.applied] == [{first: {"Sample": "a"}}]
    assert sorted(store.stored) == sorted(t.files)


def test_metadata_naming_an_instance_outside_the_transaction_is_400(root):
    t = Transfer()
    receiver = make_receiver(root, FakeStore(t.files), metadata_store=FakeMetadataStore())
    tid = receiver.create(t.descriptor)
    with pytest.raises(BadRequest):
        receiver.put_metadata(tid, {"Instances": {fake_id(999): {"Sample": "a"}}})
    with pytest.raises(NotFound):
        receiver.put_metadata(fake_id(998), {"Instances": {}})


def test_a_failing_metadata_commit_rolls_the_import_back(root):
    t = Transfer()
    store = FakeStore(t.files)
    receiver = make_receiver(root, store, metadata_store=FakeMetadataStore(StoreFailure("metadata refused")))
    tid = receiver.create(t.descriptor)
    receiver.put_metadata(tid, {"Instances": {}})
    put_all(receiver, tid, t)
    with pytest.raises(StoreFailure):
        receiver.commit(tid)
    assert store.stored == {} and sorted(store.deleted) == sorted(t.files)
    assert receiver.committed_count == 0


def test_metadata_given_again_after_the_commit_is_a_no_op(root):
    t = Transfer()
    metadata = FakeMetadataStore()
    receiver = make_receiver(root, FakeStore(t.files), metadata_store=metadata)
    tid = receiver.create(t.descriptor)
    receiver.put_metadata(tid, {"Instances": {}})
    put_all(receiver, tid, t)
    receiver.commit(tid)
    receiver.put_metadata(tid, {"Instances": {}})  # a sender resumed before it recorded the commit
    receiver.commit(tid)
    assert len(metadata.applied) == 1
