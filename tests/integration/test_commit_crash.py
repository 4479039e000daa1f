"""A crash in the middle of a commit leaves nothing half-imported.

The push receiver's transactions do not survive a restart, so a commit that `kill -9` interrupts is rolled
back at the next start (the commit journal, with Orthanc's change log naming what the commit created); the
sender's job fails, and a resubmit sends everything again.
"""

import time

import pytest
from transfer_helpers import assert_same_instances, load_study, study_of, wait_job

from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

N = 500  # small instances: the commit takes about a second, long enough to be interrupted


def test_kill_9_during_a_push_commit_leaves_nothing_then_resubmit_succeeds(orthanc_factory):
    port_b = free_port()
    a = orthanc_factory("a", peers={"b": {"Url": f"http://127.0.0.1:{port_b}/"}}, transfers={"Threads": 2},
                        extra_config={"HttpTimeout": 10})
    b = orthanc_factory("b", http_port=port_b)
    files = load_study(a, N, rows=64, seed=7)
    study = study_of(a, next(iter(files)))
    preexisting = sorted(files)[:5]  # B already has these: they must stay
    for instance_id in preexisting:
        b.upload(files[instance_id])

    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "none",
                                        "Peer": "b"})
    assert r.status_code == 200, r.text
    job_id = r.json()["ID"]
    deadline = time.monotonic() + 60
    count = len(preexisting)
    while time.monotonic() < deadline:
        count = int(b.get_json("/statistics")["CountInstances"])
        if count >= len(preexisting) + 20:
            break
        time.sleep(0.005)
    assert len(preexisting) + 20 <= count < N, f"the commit was not caught in the middle ({count} of {N})"
    b.kill()

    b.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "deleted again" not in b.log_text():
        time.sleep(0.1)
    assert "deleted again" in b.log_text(), b.log_tail(40)
    assert sorted(b.instances()) == sorted(preexisting), "the interrupted commit left instances behind"

    job = wait_job(a, job_id)
    assert job["State"] == "Failure", job
    assert a.post(f"/jobs/{job_id}/resubmit").status_code == 200
    job = wait_job(a, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(b, files)
