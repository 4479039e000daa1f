"""``ProgressiveCommit`` without Orthanc: the option and the request field, the committer, the push receiver
importing as buckets arrive (a fake store, tmp_path as download root; the real servers are in
tests/integration/test_progressive_commit.py)."""

import dataclasses
import time
from typing import Dict

import pytest
from job_context import FakeJobContext
from test_receiver import WAIT, FakeStore, Transfer, journal_over, make_receiver, put_all

from transfers_plugin.capabilities import PROGRESSIVE_COMMIT, Capabilities, local_capabilities
from transfers_plugin.config import ConfigError, PeerConfig, TransfersConfig, parse_configuration
from transfers_plugin.download_area import DownloadArea
from transfers_plugin.errors import BadFileFormat, OrthancUnavailable, TransfersError
from transfers_plugin.jobs.push import PushJobType
from transfers_plugin.progressive import ProgressiveCommitter
from transfers_plugin.protocol import PushDescriptor, TransferQuery

QUERY = {"Resources": [{"Level": "Study", "ID": "0" * 8 + "-" + "1" * 8 + "-" + "2" * 8 + "-" + "3" * 8 + "-"
                        + "4" * 8}], "Peer": "a", "Compression": "gzip"}


# --- the option and the fields ---------------------------------------------------------------------------

def test_the_option_is_false_by_default():
    assert parse_configuration({}).progressive_commit is False
    assert TransfersConfig().progressive_commit is False


@pytest.mark.parametrize("value", [True, False])
def test_the_option_is_taken_without_a_warning(value):
    config = parse_configuration({"Transfers": {"ProgressiveCommit": value}})
    assert config.progressive_commit is value
    assert config.warnings == ()


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}])
def test_a_wrong_option_is_refused_naming_it(value):
    with pytest.raises(ConfigError) as info:
        parse_configuration({"Transfers": {"ProgressiveCommit": value}})
    assert any("Transfers.ProgressiveCommit" in p for p in info.value.problems)


def test_the_request_field_round_trips_and_is_absent_unless_given():
    assert TransferQuery.from_json(QUERY).progressive_commit is None
    assert "ProgressiveCommit" not in TransferQuery.from_json(QUERY).to_json()
    for value in (True, False):
        query = TransferQuery.from_json(dict(QUERY, ProgressiveCommit=value))
        assert query.progressive_commit is value
        assert TransferQuery.from_json(query.to_json()).progressive_commit is value


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_a_wrong_request_field_is_a_bad_request(value):
    with pytest.raises(BadFileFormat):
        TransferQuery.from_json(dict(QUERY, ProgressiveCommit=value))


def test_a_descriptor_carries_the_field_only_when_asked():
    descriptor = Transfer().descriptor
    assert "ProgressiveCommit" not in descriptor.to_json()  # what a C++ receiver gets: its own keys only
    asked = dataclasses.replace(descriptor, progressive_commit=True)
    assert asked.to_json()["ProgressiveCommit"] is True
    assert PushDescriptor.from_json(asked.to_json()).progressive_commit is True
    assert PushDescriptor.from_json(descriptor.to_json()).progressive_commit is False
    with pytest.raises(BadFileFormat):
        PushDescriptor.from_json(dict(descriptor.to_json(), ProgressiveCommit="yes"))


def test_our_capabilities_list_the_feature():
    assert PROGRESSIVE_COMMIT in local_capabilities("0")["Features"]


# --- the committer ---------------------------------------------------------------------------------------

def filled_area(tmp_path, transfer: Transfer) -> DownloadArea:
    area = DownloadArea(tmp_path / "area", transfer.descriptor.instances)
    area.prepare()
    for index, bucket in enumerate(transfer.descriptor.buckets):
        area.write_bucket(bucket, [transfer.raw(index)])
    return area


def test_the_committer_imports_what_it_is_given_and_tells_created_from_already_there(tmp_path):
    transfer = Transfer("none")
    ids = sorted(transfer.files)
    store = FakeStore(transfer.files)
    store.stored[ids[0]] = transfer.files[ids[0]]  # Orthanc had it before
    imported, created = [], []
    committer = ProgressiveCommitter(filled_area(tmp_path, transfer), store, 2, imported, created)
    for info in transfer.descriptor.instances:
        committer.submit(info)
        committer.submit(info)  # once only
    committer.finish()
    assert sorted(imported) == ids and sorted(created) == ids[1:]
    assert sorted(store.calls) == ids


def test_a_failure_of_the_committer_is_raised_at_its_finish_and_nothing_is_rolled_back_by_it(tmp_path):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    store.fail_at = 2
    imported, created = [], []
    committer = ProgressiveCommitter(filled_area(tmp_path, transfer), store, 1, imported, created)
    for info in transfer.descriptor.instances:
        committer.submit(info)
    with pytest.raises(TransfersError):
        committer.finish()
    assert len(created) == 1 and store.deleted == []  # the caller decides


# --- the push receiver -----------------------------------------------------------------------------------

def progressive(transfer: Transfer) -> PushDescriptor:
    return dataclasses.replace(transfer.descriptor, progressive_commit=True)


def wait_stored(store: FakeStore, n: int) -> None:
    deadline = time.monotonic() + WAIT
    while len(store.stored) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_receiver_imports_each_instance_once_its_buckets_are_in(tmp_path):
    transfer = Transfer("gzip")
    store = FakeStore(transfer.files)
    receiver = make_receiver(tmp_path / "root", store)
    tid = receiver.create(progressive(transfer))
    # Buckets 0 and 1 carry instance b whole: after them, b alone is in Orthanc.
    receiver.put(tid, 0, transfer.body(0))
    time.sleep(0.2)
    assert store.stored == {}
    receiver.put(tid, 1, transfer.body(1))
    wait_stored(store, 1)
    b = transfer.descriptor.buckets[0].chunks[0].instance_id
    assert list(store.stored) == [b]
    put_all(receiver, tid, transfer, range(2, transfer.n_buckets))
    receiver.commit(tid)
    assert store.stored == transfer.files
    assert sorted(store.calls) == sorted(transfer.files)  # each imported once


def test_a_discard_deletes_what_the_receiver_imported_and_keeps_what_was_there(tmp_path):
    transfer = Transfer("none")
    ids = sorted(transfer.files)
    store = FakeStore(transfer.files)
    store.stored[ids[0]] = transfer.files[ids[0]]
    properties: Dict[int, str] = {}
    receiver = make_receiver(tmp_path / "root", store, journal=journal_over(properties))
    tid = receiver.create(progressive(transfer))
    put_all(receiver, tid, transfer, range(transfer.n_buckets - 1))
    wait_stored(store, len(ids) - 1)
    assert len(store.stored) >= 2
    receiver.discard(tid)
    assert set(store.stored) == {ids[0]}
    assert journal_over(properties, owner="run-2").entries() == {}


def test_a_progressive_transaction_is_in_the_journal_from_its_creation(tmp_path):
    """A crash (here: a new receiver over the same database) rolls back what was imported progressively."""
    transfer = Transfer("none")
    ids = sorted(transfer.files)
    store = FakeStore(transfer.files)
    store.stored[ids[0]] = transfer.files[ids[0]]
    properties: Dict[int, str] = {}
    receiver = make_receiver(tmp_path / "root", store, journal=journal_over(properties))
    tid = receiver.create(progressive(transfer))
    assert list(journal_over(properties, owner="run-2").entries()) == [tid]
    put_all(receiver, tid, transfer, range(transfer.n_buckets - 1))
    wait_stored(store, len(ids) - 1)
    after = make_receiver(tmp_path / "root", store, journal=journal_over(properties, owner="run-2"))
    assert after.recover() >= 1
    assert set(store.stored) == {ids[0]}


def test_a_failed_progressive_import_fails_the_commit_and_leaves_nothing(tmp_path):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    store.fail_at = 2
    properties: Dict[int, str] = {}
    receiver = make_receiver(tmp_path / "root", store, journal=journal_over(properties))
    tid = receiver.create(progressive(transfer))
    put_all(receiver, tid, transfer)
    with pytest.raises(TransfersError):
        receiver.commit(tid)
    assert store.stored == {}
    assert journal_over(properties, owner="run-2").entries() == {}


def test_orthanc_stopping_leaves_the_journal_entry_for_the_next_start(tmp_path):
    transfer = Transfer("none")
    store = FakeStore(transfer.files)
    store.fail_at = 3
    store.failure = OrthancUnavailable("the database is closed")
    properties: Dict[int, str] = {}
    receiver = make_receiver(tmp_path / "root", store, journal=journal_over(properties))
    tid = receiver.create(progressive(transfer))
    put_all(receiver, tid, transfer)
    with pytest.raises(OrthancUnavailable):
        receiver.commit(tid)
    receiver.close_all()
    assert len(store.stored) == 2  # nothing rolled back while Orthanc stops
    store.fail_at = None
    after = make_receiver(tmp_path / "root", store, journal=journal_over(properties, owner="run-2"))
    assert after.recover() == 2 and store.stored == {}


# --- who is asked: a C++ receiver never sees the field ---------------------------------------------------

class RecordingContext(FakeJobContext):
    def __init__(self, state=None):
        super().__init__(state)
        self.content = {}

    def update_content(self, **values):
        self.content.update(values)


class NoCallTransport:
    def call(self, *args, **kwargs):
        raise AssertionError(f"no request may be made: {args}")


PEER = PeerConfig("p", "http://p/")
OURS = Capabilities("orthanc-transfers-py", "0.1.0", frozenset({PROGRESSIVE_COMMIT}), ("none",))
OLDER = Capabilities("orthanc-transfers-py", "0.0.9", frozenset({"skip-existing"}), ("none",))


@pytest.mark.parametrize("caps, expected", [(None, False), (OLDER, False), (OURS, True)],
                         ids=["cxx", "ours-without-the-feature", "ours"])
def test_a_push_asks_for_it_only_of_a_receiver_with_the_feature(caps, expected):
    job = PushJobType(parse_configuration({}), lambda: {"p": PEER}, NoCallTransport(), None)
    ctx = RecordingContext({"PeerCapabilities": None if caps is None else caps.to_json()})
    query = TransferQuery.from_json(dict(QUERY, Peer="p", ProgressiveCommit=True))
    assert job.progressive_commit(ctx, query, PEER) is expected
    assert ctx.content["ProgressiveCommit"] is expected


@pytest.mark.parametrize("configured, field, expected", [(False, None, False), (True, None, True),
                                                         (True, False, False), (False, True, True)])
def test_a_push_follows_the_field_else_the_configuration(configured, field, expected):
    config = parse_configuration({"Transfers": {"ProgressiveCommit": configured}})
    job = PushJobType(config, lambda: {"p": PEER}, NoCallTransport(), None)
    ctx = RecordingContext({"PeerCapabilities": OURS.to_json()})
    body = dict(QUERY, Peer="p") if field is None else dict(QUERY, Peer="p", ProgressiveCommit=field)
    assert job.progressive_commit(ctx, TransferQuery.from_json(body), PEER) is expected
    if not expected:
        assert "ProgressiveCommit" not in ctx.content  # a job without it: its Content as before


# --- the push's plan: sliced ends, kept in the resume state ---------------------------------------------

def run_push_plan(monkeypatch, state, **fields):
    """The descriptor a push job would send, from a resume state that already has its instances."""
    job = PushJobType(parse_configuration({}), lambda: {"p": PEER}, NoCallTransport(), None)
    ctx = RecordingContext(state)
    ctx.parameters = dict(QUERY, Peer="p", **fields)
    sent = []
    monkeypatch.setattr(job, "send", lambda ctx, query, peer, descriptor: sent.append(descriptor))
    job.run(ctx)
    return ctx, sent[0]


def planned_state(**extra):
    from transfers_plugin.protocol import InstanceInfo, pack_instances
    infos = [InstanceInfo(f"{i:08x}-00000000-00000000-00000000-00000000", 1024 * 1024, "0" * 32)
             for i in range(40)]
    return dict({"Instances": pack_instances(infos), "BucketSizeKB": 4096, "PlanThreads": 4, "DoneBuckets": [],
                 "UploadedBytes": 0, "PeerCapabilities": OURS.to_json()}, **extra)


def test_a_progressive_push_slices_its_first_and_last_rounds_and_keeps_that_plan(monkeypatch):
    ctx, descriptor = run_push_plan(monkeypatch, planned_state(), ProgressiveCommit=True)
    assert descriptor.progressive_commit and ctx.resume_state["PlanProgressive"] is True
    sizes = [b.total_size for b in descriptor.buckets]  # 10 buckets of 4 MB: 4 cut in 4, 2 whole, 4 cut in 4
    assert sizes == [1024 * 1024] * 16 + [4 * 1024 * 1024] * 2 + [1024 * 1024] * 16
    # Resumed with the option gone (or the peer unreachable): the same plan, the same flag.
    state = dict(ctx.resume_state, Transaction="/transfers/push/x")
    _, again = run_push_plan(monkeypatch, state)
    assert again.buckets == descriptor.buckets and again.progressive_commit


def test_a_push_without_it_and_an_older_transaction_keep_the_whole_buckets(monkeypatch):
    ctx, plain = run_push_plan(monkeypatch, planned_state())
    assert ctx.resume_state["PlanProgressive"] is False and not plain.progressive_commit
    assert len(plain.buckets) == 8 + 2 * 2  # the ragged last round: 2 buckets, each cut in 2 for 4 workers
    # A transaction created by an earlier version (no PlanProgressive saved): planned as it was then.
    _, older = run_push_plan(monkeypatch, planned_state(Transaction="/transfers/push/x"), ProgressiveCommit=True)
    assert older.buckets == plain.buckets and not older.progressive_commit


# --- a push to this Orthanc itself: nothing skipped, its receiver not even asked ------------------------

@pytest.mark.parametrize("server, asked", [("this-run", False), ("another-run", True)],
                         ids=["to-itself", "to-another-process"])
def test_a_push_to_itself_skips_nothing_and_asks_no_holds(server, asked):
    from transfers_plugin.protocol import InstanceInfo
    caps = Capabilities("orthanc-transfers-py", "0.3.0", frozenset({"skip-existing"}), ("none",), server)
    holds = []

    class HoldsTransport:
        def call(self, peer, method, uri, **kwargs):
            holds.append(uri)
            raise AssertionError("stop here: the holds were asked")

    job = PushJobType(parse_configuration({}), lambda: {"p": PEER}, HoldsTransport(), None,
                      server_id="this-run")
    ctx = RecordingContext({"PeerCapabilities": caps.to_json()})
    query = TransferQuery.from_json(dict(QUERY, Peer="p"))
    instances = [InstanceInfo("00000001-00000000-00000000-00000000-00000000", 10, "0" * 32)]
    if asked:
        with pytest.raises(AssertionError, match="holds were asked"):
            job.held_by_peer(ctx, query, PEER, instances)
        assert holds == ["/transfers/holds"]
    else:
        assert job.held_by_peer(ctx, query, PEER, instances) == set()
        assert holds == []
