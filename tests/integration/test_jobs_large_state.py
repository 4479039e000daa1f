"""A pull whose resume state is large (its instance list in a global property of its own, jobs/store.py):
saved as it runs, it goes on after a kill -9 from what was saved, on a real Orthanc."""

import json
import sqlite3
import time

import pytest
from transfer_helpers import assert_same_instances, load_study, new_instance_changes, pull, study_of, wait_job

from tools.net_proxy import TcpProxy
from transfers_plugin.jobs.store import BLOB_IDS, BLOB_MIN_CHARS, JOBS_PROPERTY
from transfers_plugin.protocol import unpack_instances

pytestmark = pytest.mark.integration

INSTANCES = 1000  # their list in the resume state (one "ID SIZE MD5" line each) is about 85 KB: more than the
# 64 KB kept inline


def saved_properties(server) -> dict:
    """Orthanc's global properties, read from its SQLite index while it is down."""
    with sqlite3.connect(str(server.workdir / "storage" / "index")) as db:
        return dict(db.execute("SELECT property, value FROM GlobalProperties"))


def test_a_pull_with_a_large_resume_state_goes_on_after_kill_9(orthanc_factory):
    source = orthanc_factory("source")
    files = load_study(source, INSTANCES, rows=16, seed=31)
    study = study_of(source, next(iter(files)))
    total = sum(len(d) for d in files.values())
    proxy = TcpProxy(source.http_port, rate=total // 8).start()  # about 8 s
    try:
        target = orthanc_factory("target", transfers={"Threads": 2, "BucketSize": 64},
                                 peers={"a": {"Url": proxy.url}})
        job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
        wait_job(target, job_id, ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 6,
                 timeout=60)
        time.sleep(1.5)  # at least one periodic save with progress
        target.kill()
        assert proxy.downstream_bytes < total, "killed before the end of the download"

        properties = saved_properties(target)
        index = json.loads(properties[JOBS_PROPERTY])
        assert index["Version"] == 2
        (job,) = [j for j in index["Jobs"] if j["ID"] == job_id]
        blob = job["Blobs"]["Instances"]
        assert blob in BLOB_IDS and "Instances" not in job["ResumeState"]
        saved = json.loads(properties[blob])
        assert saved["Job"] == job_id and len(unpack_instances(saved["Value"])) == INSTANCES
        assert len(json.dumps(saved["Value"])) >= BLOB_MIN_CHARS
        assert job["ResumeState"]["DoneBuckets"], "progress was saved"

        target.start()
        job = wait_job(target, job_id, timeout=120)
        assert job["State"] == "Success", job
        assert_same_instances(target, files)
        assert all(n == 1 for n in new_instance_changes(target).values()), "an instance was imported twice"
    finally:
        proxy.stop()
