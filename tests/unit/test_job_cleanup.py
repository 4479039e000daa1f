"""What a finished transfer job leaves in its record: nothing to resume, so every later save stays small."""

import pytest
from change_log import ChangeLog

from transfers_plugin.config import parse_configuration
from transfers_plugin.jobs.model import JobRecord
from transfers_plugin.jobs.pull import PullJobType
from transfers_plugin.jobs.push import PushJobType
from transfers_plugin.protocol import InstanceInfo

INSTANCES = [InstanceInfo(f"{k:08x}-00000000-00000000-00000000-00000000", 1000 + k, "0" * 32).to_json()
             for k in range(50)]


def config(tmp_path):
    return parse_configuration({"StorageDirectory": str(tmp_path)})


def test_a_successful_pull_keeps_no_resume_state_and_no_download_area(tmp_path):
    job = PullJobType(config(tmp_path), lambda: {}, None, None, tmp_path / "area")
    record = JobRecord("j1", job.name, {"Peer": "a"}, content={"TotalInstances": 50})
    record.resume_state.update(Instances=INSTANCES, Verified=[i["ID"] for i in INSTANCES], DoneBuckets=[0, 1],
                               Imported=[i["ID"] for i in INSTANCES], Created=[i["ID"] for i in INSTANCES])
    (tmp_path / "area" / "j1").mkdir(parents=True)
    job.cleanup(record, "success")
    assert record.resume_state == {}
    assert record.content == {"TotalInstances": 50}, "what the user sees stays"
    assert not (tmp_path / "area" / "j1").exists()


def test_a_failed_pull_keeps_what_a_resubmit_needs(tmp_path):
    job = PullJobType(config(tmp_path), lambda: {}, None, None, tmp_path / "area")
    record = JobRecord("j2", job.name, {"Peer": "a"})
    record.resume_state.update(Instances=INSTANCES, Verified=[INSTANCES[0]["ID"]], DoneBuckets=[0])
    (tmp_path / "area" / "j2").mkdir(parents=True)
    job.cleanup(record, "failure")
    assert record.resume_state["Verified"] == [INSTANCES[0]["ID"]]
    assert (tmp_path / "area" / "j2").exists()


def test_a_successful_push_keeps_no_resume_state(tmp_path):
    job = PushJobType(config(tmp_path), lambda: {}, None, None)
    record = JobRecord("j3", job.name, {"Peer": "b"})
    record.resume_state.update(Instances=INSTANCES, DoneBuckets=[0, 1, 2], Transaction="/transfers/push/x",
                               Committed=True)
    job.cleanup(record, "success")
    assert record.resume_state == {}


def test_cleanup_replaces_the_resume_state_instead_of_changing_it(tmp_path):
    # The engine may be deep-copying the old dict to save it at that moment, without the job's lock:
    # changing it in place could break that copy ("dictionary changed size during iteration").
    pull = PullJobType(config(tmp_path), lambda: {}, None, None, tmp_path / "area")
    push = PushJobType(config(tmp_path), lambda: {}, None, None)
    for job, reason in ((pull, "success"), (pull, "discarded"), (push, "success"), (push, "failure")):
        record = JobRecord("j4", job.name, {"Peer": "a"})
        record.resume_state.update(Instances=INSTANCES, DoneBuckets=[0])
        old = record.resume_state
        job.cleanup(record, reason)
        assert old == {"Instances": INSTANCES, "DoneBuckets": [0]}, (job.name, reason)
        assert record.resume_state == {}


# --- the commit of a pull, interrupted then resumed -------------------------------------------------------

class ImportStore:
    """store_instance/delete_instance and Orthanc's change log of NewInstance changes."""

    def __init__(self, ids_by_data, fail_at=None, failure=None):
        self.ids_by_data = ids_by_data
        self.stored = {}
        self.change_log = ChangeLog()  # Orthanc's /changes: a NewInstance per instance created
        self.calls = 0
        self.fail_at = fail_at
        self.failure = failure
        self.deleted = []

    def store_instance(self, data):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.failure
        iid = self.ids_by_data[data]
        status = "AlreadyStored" if iid in self.stored else "Success"
        self.stored[iid] = data
        if status == "Success":
            self.change_log.new_instance(iid)
        return {"ID": iid, "Status": status}

    def delete_instance(self, instance_id):
        self.deleted.append(instance_id)
        self.stored.pop(instance_id, None)

    def core_get_json(self, uri):
        return self.change_log.get_json(uri)


def test_a_resumed_commit_counts_as_created_what_its_lost_last_second_imported(tmp_path):
    import hashlib

    from transfers_plugin.download_area import DownloadArea
    from transfers_plugin.errors import CorruptedFile, OrthancUnavailable
    from transfers_plugin.jobs.engine import JobContext, JobEngine
    from transfers_plugin.protocol import Bucket, Chunk

    datas = {f"{k:08x}-00000000-00000000-00000000-00000000": bytes([k]) * (100 + k) for k in range(6)}
    instances = [InstanceInfo(i, len(d), hashlib.md5(d).hexdigest()) for i, d in sorted(datas.items())]
    area = DownloadArea(tmp_path / "area", instances)
    area.prepare()
    for info in instances:
        area.write_bucket(Bucket((Chunk(info.id, 0, info.size),)), datas[info.id])
    ids = [i.id for i in instances]
    store = ImportStore({d: i for i, d in datas.items()}, fail_at=4, failure=OrthancUnavailable("stopping"))
    job = PullJobType(config(tmp_path), lambda: {}, None, store, tmp_path)
    engine = JobEngine({job.name: job})
    record = JobRecord("j5", job.name, {"Peer": "a"})
    ctx = JobContext(engine, record)
    with pytest.raises(OrthancUnavailable):  # Orthanc stops after three imports
        job.commit(ctx, instances, area)
    assert list(store.stored) == ids[:3]
    # What the saved state says: only the first import was recorded before the crash.
    record.resume_state["Imported"] = ids[:1]
    record.resume_state["Created"] = ids[:1]
    # After the restart the commit goes on, and then an import fails for good: the rollback must remove
    # every instance this job created, the three of before the crash included.
    store.calls, store.fail_at, store.failure = 0, 4, CorruptedFile("disk full")
    with pytest.raises(CorruptedFile):
        job.commit(JobContext(engine, record), instances, area)
    assert store.stored == {}, "the rollback left instances of the interrupted commit"
    assert "CommitSince" not in record.resume_state  # a resubmit commits from the start


def test_a_pull_whose_metadata_cannot_be_applied_rolls_its_import_back(tmp_path):
    """``"Metadata": true``: applying them is part of the commit; when Orthanc refuses, what the commit
    imported is deleted again and the job fails."""
    import hashlib

    from transfers_plugin.download_area import DownloadArea
    from transfers_plugin.errors import BadRequest
    from transfers_plugin.jobs.engine import JobContext, JobEngine
    from transfers_plugin.protocol import Bucket, Chunk

    class RefusingMetadata:
        def apply(self, document, warn):
            raise BadRequest("Orthanc refuses this metadata")

    datas = {f"{k:08x}-00000000-00000000-00000000-00000000": bytes([k]) * (100 + k) for k in range(4)}
    instances = [InstanceInfo(i, len(d), hashlib.md5(d).hexdigest()) for i, d in sorted(datas.items())]
    area = DownloadArea(tmp_path / "area", instances)
    area.prepare()
    for info in instances:
        area.write_bucket(Bucket((Chunk(info.id, 0, info.size),)), datas[info.id])
    store = ImportStore({d: i for i, d in datas.items()})
    job = PullJobType(config(tmp_path), lambda: {}, None, store, tmp_path, metadata_store=RefusingMetadata())
    record = JobRecord("j6", job.name, {"Peer": "a"})
    with pytest.raises(BadRequest):
        job.commit(JobContext(JobEngine({job.name: job}), record), instances, area, {"Instances": {}})
    assert store.stored == {} and sorted(store.deleted) == sorted(datas)
    assert "CommitSince" not in record.resume_state  # a resubmit commits from the start
