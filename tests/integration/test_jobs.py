"""Transfer jobs in Orthanc's own /jobs API, on real servers, with a transfer slowed down by a proxy."""

import time

import pytest
from transfer_helpers import (
    assert_same_instances,
    load_study,
    new_instance_changes,
    pull,
    study_of,
    wait_job,
)

from tools.net_proxy import TcpProxy

pytestmark = pytest.mark.integration

RATE = 3_000_000  # bytes per second through the proxy: the ~21 MB study takes about 7 s
TRANSFERS = {"Threads": 2, "BucketSize": 512}


@pytest.fixture(scope="module")
def source(module_orthanc_factory):
    server = module_orthanc_factory("source")
    files = load_study(server, 40, seed=7)
    return server, files, study_of(server, next(iter(files)))


@pytest.fixture
def proxy(source):
    p = TcpProxy(source[0].http_port, rate=RATE).start()
    yield p
    p.stop()


@pytest.fixture
def target(orthanc_factory, proxy):
    return orthanc_factory("target", transfers=TRANSFERS, peers={"a": {"Url": proxy.url}})


def running_with_progress(job):
    return job["Content"].get("CompletedHttpQueries", 0) >= 2


def test_pause_resume_then_success(source, proxy, target):
    server, files, study = source
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none", priority=7)
    wait_job(target, job_id, ["Running"], condition=running_with_progress)

    asked = time.monotonic()
    assert target.post(f"/jobs/{job_id}/pause").json() == {}
    job = wait_job(target, job_id, ["Paused"], timeout=10)
    assert time.monotonic() - asked < 2.0, "pause must take effect within a second"
    done_when_paused = job["Content"]["CompletedHttpQueries"]
    moved = proxy.downstream_bytes
    time.sleep(2)
    job = target.get_json(f"/jobs/{job_id}")
    assert job["State"] == "Paused"
    assert job["Content"]["CompletedHttpQueries"] == done_when_paused
    assert proxy.downstream_bytes == moved, "nothing moves while paused"
    assert target.instances() == [], "nothing is imported before the commit"
    assert target.post(f"/jobs/{job_id}/pause").status_code == 200  # pausing a paused job: no-op, as the core

    assert target.post(f"/jobs/{job_id}/resume").json() == {}
    assert target.post(f"/jobs/{job_id}/resume").status_code == 400  # not paused any more
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert job["Type"] == "PullTransfer" and job["Priority"] == 7 and job["Progress"] == 100
    assert job["ErrorCode"] == 0 and "CompletionTime" in job
    assert job["Content"]["TotalInstances"] == len(files)
    assert_same_instances(target, files)
    assert target.post(f"/jobs/{job_id}/resubmit").status_code == 400  # only a failed job can be resubmitted
    assert target.post(f"/jobs/{job_id}/resume").status_code == 400


def test_files_lost_from_a_paused_pull_are_fetched_again(source, proxy, target):
    """Files of a paused pull deleted or cut short in its download area (by hand, a disk problem): the
    resumed job fetches those instances again and commits every instance byte for byte; before, the commit
    failed, and every resubmit after it."""
    server, files, study = source
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
    wait_job(target, job_id, ["Running"], condition=lambda job: job["Content"].get("CompletedHttpQueries", 0) >= 6)
    assert target.post(f"/jobs/{job_id}/pause").json() == {}
    wait_job(target, job_id, ["Paused"], timeout=10)

    area = target.workdir / "storage" / "transfers-tmp" / job_id
    # The two files completed first: their buckets ended long before the pause, so both instances were
    # verified (the files of the buckets on the wire at the pause are the newest).
    whole = sorted((p for p in area.glob("*.dcm") if p.stat().st_size == len(files[p.stem])),
                   key=lambda p: p.stat().st_mtime_ns)
    assert len(whole) >= 3, f"the paused pull should have whole files in {area}"
    whole[0].unlink()
    with open(whole[1], "r+b") as f:
        f.truncate(1000)
    moved = proxy.downstream_bytes

    assert target.post(f"/jobs/{job_id}/resume").json() == {}
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(target, files)
    assert "2 instance(s) are missing or damaged in the download area" in target.log_text()
    assert proxy.downstream_bytes - moved >= len(files[whole[0].stem]) + len(files[whole[1].stem])


def test_cancel_then_resubmit(source, proxy, target):
    server, files, study = source
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
    wait_job(target, job_id, ["Running"], condition=running_with_progress)
    asked = time.monotonic()
    assert target.post(f"/jobs/{job_id}/cancel").json() == {}
    job = wait_job(target, job_id, ["Failure"], timeout=10)
    assert time.monotonic() - asked < 2.0, "cancel must take effect within a second"
    assert job["ErrorCode"] == 37 and job["ErrorDescription"] == "This job was canceled"
    assert target.instances() == []
    area = target.workdir / "storage" / "transfers-tmp" / job_id
    deadline = time.monotonic() + 5
    while area.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not area.exists(), "the download area of a canceled job is removed"
    assert target.post(f"/jobs/{job_id}/cancel").status_code == 200  # canceling a finished job: no-op

    assert target.post(f"/jobs/{job_id}/resubmit").json() == {}
    job = wait_job(target, job_id, ["Pending", "Running", "Success"])
    proxy.set_rate(None)
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(target, files)


def test_cancel_a_paused_job_and_priorities(source, proxy, orthanc_factory):
    server, files, study = source
    target = orthanc_factory("target", transfers=TRANSFERS, peers={"a": {"Url": proxy.url}},
                             extra_config={"ConcurrentJobs": 1})
    series = server.get_json(f"/studies/{study}")["Series"][0]
    first = pull(target, "a", [{"Level": "Study", "ID": study}], "none", priority=0)
    wait_job(target, first, ["Running"])
    low = pull(target, "a", [{"Level": "Series", "ID": series}], "none", priority=1)
    high = pull(target, "a", [{"Level": "Series", "ID": series}], "none", priority=50)
    assert target.get_json(f"/jobs/{low}")["State"] == "Pending"
    assert target.post(f"/jobs/{low}/pause").json() == {}
    assert target.get_json(f"/jobs/{low}")["State"] == "Paused"
    assert target.post(f"/jobs/{low}/cancel").json() == {}
    job = target.get_json(f"/jobs/{low}")
    assert job["State"] == "Failure" and job["ErrorCode"] == 37
    # ConcurrentJobs 1: the high-priority job waits for the first one, then runs.
    assert target.get_json(f"/jobs/{high}")["State"] == "Pending"
    proxy.set_rate(None)
    assert wait_job(target, first)["State"] == "Success"
    assert wait_job(target, high)["State"] == "Success"
    assert_same_instances(target, files)


def test_orthanc_api_client_and_core_jobs(source, target):
    from orthanc_api_client import OrthancApiClient

    server, files, study = source
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "gzip", priority=3)
    client = OrthancApiClient(target.url)
    job = client.jobs.get(job_id)
    assert job.wait_completed(timeout=120, polling_interval=0.2)
    assert job.info.status == "Success" and job.info.type == "PullTransfer"
    assert job.content["Compression"] == "gzip" and job.content["TotalInstances"] == len(files)
    assert job_id in client.jobs.get_all_ids()
    assert_same_instances(target, files)

    # A core job (an archive) goes through the same routes, untouched.
    r = target.post(f"/studies/{study}/archive", json={"Synchronous": False})
    assert r.status_code == 200
    core_id = r.json()["ID"]
    core_job = client.jobs.get(core_id)
    assert core_job.wait_completed(timeout=60, polling_interval=0.2)
    assert core_job.info.status == "Success" and core_job.info.type == "Archive"
    archive = target.get(f"/jobs/{core_id}/archive")
    assert archive.status_code == 200 and archive.content[:2] == b"PK"
    ids = target.get_json("/jobs")
    assert job_id in ids and core_id in ids
    expanded = {j["ID"]: j for j in target.get_json("/jobs?expand")}
    assert expanded[job_id]["Type"] == "PullTransfer" and expanded[core_id]["Type"] == "Archive"
    assert target.post(f"/jobs/{core_id}/resume").status_code == 400  # the core's answer: not paused
    assert target.post(f"/jobs/{core_id}/pause").status_code == 200
    assert target.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert target.post("/jobs/00000000-0000-0000-0000-000000000000/pause").status_code == 400
    r = target.get(f"/jobs/{job_id}/pause")  # read by the core as a job output: none such
    assert r.status_code == 404


def test_kill_9_restart_goes_on(source, proxy, target):
    server, files, study = source
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
    wait_job(target, job_id, ["Running"],
             condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 12)
    target.kill()
    moved_before = proxy.downstream_bytes
    total = sum(len(d) for d in files.values())
    assert moved_before < total, "killed before the end of the download"
    time.sleep(1.5)  # the job's state was saved at most a second before the kill

    target.start()
    deadline = time.monotonic() + 10
    while "1 unfinished" not in target.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "1 unfinished" in target.log_text()
    assert job_id in target.get_json("/jobs")
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(target, files)
    assert all(n == 1 for n in new_instance_changes(target).values()), "an instance was imported twice"
    moved_after = proxy.downstream_bytes - moved_before
    # It went on from where it stopped: at most the last second of progress (saved once a second) and the
    # buckets in flight were downloaded again, not the whole study.
    in_flight = TRANSFERS["Threads"] * 2 * 600_000
    assert moved_after < total - moved_before + RATE * 1.0 + in_flight, (moved_before, moved_after, total)
    assert moved_after < total * 0.9, (moved_before, moved_after, total)


def test_shutdown_during_a_transfer_is_prompt_and_resumes(source, proxy, target):
    server, files, study = source
    job_id = pull(target, "a", [{"Level": "Study", "ID": study}], "none")
    wait_job(target, job_id, ["Running"], condition=running_with_progress)
    asked = time.monotonic()
    assert target.stop() == 0
    assert time.monotonic() - asked < 10, "Orthanc must stop within a few seconds"
    target.start()
    proxy.set_rate(None)
    job = wait_job(target, job_id)
    assert job["State"] == "Success", job
    assert_same_instances(target, files)
