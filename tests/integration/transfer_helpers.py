"""Helpers for transfer tests: a source with a generated study, waiting for jobs, checking MD5s."""

import hashlib
import time
from pathlib import Path
from typing import Dict, Iterable, List

from tools.synthetic import generate_study

FINISHED = ("Success", "Failure")


def load_study(server, n: int, rows: int = 512, seed: int = 0) -> Dict[str, bytes]:
    """Uploads a generated CT study; returns instance ID -> file bytes."""
    files = {}
    for data in generate_study(n, rows, rows, seed=seed):
        files[server.upload(data)] = data
    return files


def study_of(server, instance_id: str) -> str:
    return server.get_json(f"/instances/{instance_id}/study")["ID"]


def wait_job(server, job_id: str, states: Iterable[str] = FINISHED, timeout: float = 120, condition=None):
    """Polls GET /jobs/{id} until its State is one of ``states`` (and ``condition(job)`` holds)."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = server.get_json(f"/jobs/{job_id}")
        if job["State"] in states and (condition is None or condition(job)):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {tuple(states)} after {timeout} s: {job}")


def assert_same_instances(server, files: Dict[str, bytes]) -> None:
    """The server holds exactly these instances, each byte-identical (MD5) to the original."""
    assert sorted(server.instances()) == sorted(files)
    for instance_id, data in files.items():
        stored = server.get(f"/instances/{instance_id}/file").content
        assert hashlib.md5(stored).hexdigest() == hashlib.md5(data).hexdigest(), instance_id


def new_instance_changes(server, since: int = 0) -> Dict[str, int]:
    """How many times each instance was stored (NewInstance events of /changes after ``since``)."""
    counts: Dict[str, int] = {}
    while True:
        page = server.get_json(f"/changes?since={since}&limit=1000")
        for change in page["Changes"]:
            if change["ChangeType"] == "NewInstance":
                counts[change["ID"]] = counts.get(change["ID"], 0) + 1
        if page["Done"]:
            return counts
        since = page["Last"]


def pull(server, peer: str, resources, compression: str = "gzip", priority: int = 0) -> str:
    r = server.post("/transfers/pull", json={"Resources": resources, "Compression": compression, "Peer": peer,
                                             "Priority": priority})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"ID", "Path"} and body["Path"] == f"/jobs/{body['ID']}"
    return body["ID"]


def area_files(server) -> List[Path]:
    """Every file below the server's download area (its transfers' folders included)."""
    root = server.download_area
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def assert_area_empty(server, timeout: float = 10.0) -> None:
    """Nothing is left in the download area (waiting a little for a cleanup running after the job's end)."""
    deadline = time.monotonic() + timeout
    while area_files(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert area_files(server) == [], f"files left in the download area of {server.name}"


def assert_alive(server) -> None:
    """The Orthanc process still runs and answers."""
    assert server.answers(), f"Orthanc {server.name} does not answer any more:\n{server.log_tail(60)}"
