"""What a finished transfer job leaves in its record: nothing to resume, so every later save stays small."""

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
