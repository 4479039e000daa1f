"""Issue 15 item 2, many small instances: nothing a pull or a push does per bucket or per save grows with the
instance count, and the skip-existing partition is one function for both jobs."""

import copy
import hashlib
import json
import threading

import pytest

from transfers_plugin.config import PeerConfig, parse_configuration
from transfers_plugin.download_area import DownloadArea
from transfers_plugin.errors import BadFileFormat
from transfers_plugin.holdings import partition, skipped_content
from transfers_plugin.jobs.pull import PullJobType
from transfers_plugin.metrics import SKIPPED_INSTANCES, Metrics
from transfers_plugin.planner import chunks_uri, pull_buckets
from transfers_plugin.protocol import InstanceInfo, TransferQuery, pack_instances, unpack_instances

PEER = PeerConfig("a", "http://a/")


def instance(k: int, size: int = 0) -> InstanceInfo:
    data = bytes([k % 256]) * (size or 1000 + k)
    return InstanceInfo(f"{k:08x}-00000000-00000000-00000000-00000000", len(data), hashlib.md5(data).hexdigest())


def data_of(info: InstanceInfo) -> bytes:
    return bytes([int(info.id[:8], 16) % 256]) * info.size


# -- the skip-existing partition -----------------------------------------------------------------------


def test_partition_keeps_the_order_and_counts_what_it_leaves_out():
    instances = [instance(k) for k in range(10)]
    held = [instances[7].id, instances[2].id, "not-one-of-them"]
    parts = partition(instances, held)
    assert parts.transfer == [i for k, i in enumerate(instances) if k not in (2, 7)]
    assert parts.skipped == [instances[2], instances[7]]
    assert parts.resume_state() == {"SkippedInstances": 2, "SkippedBytes": instances[2].size + instances[7].size}
    metrics = Metrics()
    parts.count(metrics)
    assert metrics.value(SKIPPED_INSTANCES) == 2


def test_partition_with_nothing_held_transfers_everything():
    instances = [instance(k) for k in range(3)]
    parts = partition(instances, ())
    assert parts.transfer == instances and parts.skipped == []
    assert parts.resume_state() == {"SkippedInstances": 0, "SkippedBytes": 0}


def test_skipped_content_comes_from_the_resume_state():
    assert skipped_content({"SkippedInstances": 3, "SkippedBytes": 5 * 1024 * 1024}) == \
        {"SkippedInstances": 3, "SkippedSizeMB": 5}
    assert skipped_content({}) == {"SkippedInstances": 0, "SkippedSizeMB": 0}, "a state of an earlier version"


# -- the instances in the resume state -------------------------------------------------------------------


def test_packed_instances_come_back_the_same():
    instances = [instance(k) for k in range(100)]
    packed = pack_instances(instances)
    assert unpack_instances(packed) == instances
    assert unpack_instances(pack_instances([])) == []


def test_packed_instances_are_copied_for_nothing_and_saved_smaller():
    instances = [instance(k) for k in range(1000)]
    packed = pack_instances(instances)
    assert copy.deepcopy({"Instances": packed})["Instances"] is packed, "a save copies no instance"
    assert len(json.dumps(packed)) < len(json.dumps([i.to_json() for i in instances]))


def test_the_resume_state_of_an_earlier_version_is_read():
    instances = [instance(k) for k in range(5)]
    assert unpack_instances([i.to_json() for i in instances]) == instances


@pytest.mark.parametrize("bad", [
    42, None, {"ID": "x"},
    "../../../../etc/passwd 10 0123456789abcdef0123456789abcdef",
    "00000001-00000000-00000000-00000000-00000000 -1 0123456789abcdef0123456789abcdef",
    "00000001-00000000-00000000-00000000-00000000 10 nothex",
    "00000001-00000000-00000000-00000000-00000000 10",
    "00000001-00000000-00000000-00000000-00000000 10 0123456789abcdef0123456789abcdef extra",
    "00000001-00000000-00000000-00000000-00000000 10 0123456789abcdef0123456789abcdef\n",
])
def test_a_damaged_packed_list_is_refused(bad):
    with pytest.raises(BadFileFormat):
        unpack_instances(bad)


# -- the download of a pull --------------------------------------------------------------------------------


class Response:
    def __init__(self, body: bytes):
        self.body = body
        self.status_code = 200
        self.headers = {"Content-Length": str(len(body))}

    def iter_content(self, n):
        for start in range(0, len(self.body), n):
            yield self.body[start:start + n]

    def close(self):
        pass


class Transport:
    """Serves the buckets of a pull from the instances' bytes."""

    def __init__(self, buckets, instances):
        by_id = {i.id: data_of(i) for i in instances}
        self.answers = {chunks_uri(b, "none"): b"".join(by_id[c.instance_id][c.offset:c.offset + c.size]
                                                        for c in b.chunks) for b in buckets}
        self.asked = []

    def stream(self, peer, uri):
        self.asked.append(uri)
        return Response(self.answers[uri])


class Context:
    """What a job's run uses of its JobContext, without an engine."""

    def __init__(self, state):
        self.id = "job-small"
        self.resume_state = state
        self.content = {}
        self.stop_event = threading.Event()
        self.stop_reason = None
        self.saves = 0

    def update_resume_state(self, **values):
        self.resume_state.update(values)

    def update_content(self, **values):
        self.content.update(values)

    def drop_content(self, *keys):
        for key in keys:
            self.content.pop(key, None)

    def set_progress(self, fraction):
        pass

    def check(self):
        pass

    def touch(self):
        pass

    def save_now(self):
        self.saves += 1


class CountingArea(DownloadArea):
    """Records, for each bucket written, the skip set it was given."""

    def __init__(self, *args):
        super().__init__(*args)
        self.skips = []

    def writer(self, bucket, skip=None):
        self.skips.append((bucket, set(skip or ())))
        return super().writer(bucket, skip)


def download(tmp_path, instances, verified=(), bucket_kb=16):
    config = parse_configuration({"StorageDirectory": str(tmp_path), "Transfers": {"Threads": 2}})
    buckets = pull_buckets([(i.id, i.size) for i in instances], bucket_kb, PEER.url, "none")
    transport = Transport(buckets, instances)
    job = PullJobType(config, lambda: {"a": PEER}, transport, None, tmp_path / "area")
    area = CountingArea(tmp_path / "area" / "j", instances)
    area.prepare()
    for info in instances:
        if info.id in verified:
            area.path(info.id).write_bytes(data_of(info))
    done = [n for n, b in enumerate(buckets) if {c.instance_id for c in b.chunks} <= set(verified)]
    ctx = Context({"Verified": list(verified), "DoneBuckets": done, "DownloadedBytes": 0})
    query = TransferQuery.from_json({"Resources": [{"Level": "Instance", "ID": instances[0].id}], "Peer": "a",
                                     "Compression": "none"})
    job.download(ctx, query, PEER, instances, buckets, area)
    return ctx, area, buckets


def test_a_pull_verifies_every_instance_once_and_keeps_them_in_its_state(tmp_path):
    instances = [instance(k) for k in range(200)]
    ctx, area, buckets = download(tmp_path, instances)
    verified = ctx.resume_state["Verified"]
    assert sorted(verified) == sorted(i.id for i in instances) and len(set(verified)) == len(verified)
    assert ctx.resume_state["DoneBuckets"] == list(range(len(buckets)))
    for info in instances:
        area.verify(info.id)
        assert area.read(info.id) == data_of(info)


def test_each_bucket_is_given_only_its_own_verified_instances_to_leave_alone(tmp_path):
    """A resumed pull: the instances verified before are not written again, and a bucket's writer is given
    those of its own chunks, never the whole verified set (a copy per bucket made a pull O(n^2))."""
    instances = [instance(k, size=3000) for k in range(120)]
    already = [i.id for i in instances[::3]]
    ctx, area, buckets = download(tmp_path, instances, verified=already)
    assert len(area.skips) >= 10
    for bucket, skip in area.skips:
        carried = {c.instance_id for c in bucket.chunks}
        assert skip <= carried
        assert skip == carried & set(already)
    assert sorted(ctx.resume_state["Verified"]) == sorted(i.id for i in instances)
    assert ctx.resume_state["Verified"][:len(already)] == already, "appended to, in the order verified"
    for info in instances:
        area.verify(info.id)
