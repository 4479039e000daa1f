"""A study larger than 1 GB pulled with the receiving Orthanc's peak memory well under 400 MB."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from transfer_helpers import pull, wait_job

from tools.synthetic import generate_study

pytestmark = pytest.mark.integration

INSTANCES = 500  # 1024 x 1024 x 16 bits: about 2.1 MB each, 1.05 GB in all
LIMIT = 400 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """VmHWM of /proc/<pid>/status: the peak resident set size, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def test_one_gigabyte_study_with_bounded_memory(orthanc_factory):
    source = orthanc_factory("big-source")
    md5s = {}

    def upload(data):
        instance_id = source.upload(data)
        return instance_id, hashlib.md5(data).hexdigest(), len(data)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(upload, generate_study(INSTANCES, 1024, 1024, seed=99, noise=60)))
    total = sum(size for _, _, size in results)
    assert total >= 1_000_000_000
    md5s = {i: m for i, m, _ in results}
    study = source.get_json(f"/instances/{results[0][0]}/study")["ID"]

    target = orthanc_factory("big-target", peers={"source": source.peer_entry()})
    before = peak_rss(target.process.pid)
    job = wait_job(target, pull(target, "source", [{"Level": "Study", "ID": study}], "gzip"), timeout=900)
    assert job["State"] == "Success", job
    peak = peak_rss(target.process.pid)
    print(f"\nreceiver peak RSS: {peak / 1048576:.0f} MB (at start {before / 1048576:.0f} MB), "
          f"study {total / 1e9:.2f} GB, job runtime {job['EffectiveRuntime']} s")
    assert peak < LIMIT, f"peak RSS {peak / 1048576:.0f} MB"
    assert job["Content"]["TotalInstances"] == INSTANCES
    stored = target.instances()
    assert sorted(stored) == sorted(md5s)
    for instance_id in stored[::25]:
        assert hashlib.md5(target.get(f"/instances/{instance_id}/file").content).hexdigest() == md5s[instance_id]
    # Every instance's MD5 as Orthanc recorded it at import.
    for instance_id in stored:
        assert target.get(f"/instances/{instance_id}/attachments/dicom/md5").text == md5s[instance_id]
    assert not any((target.workdir / "storage" / "transfers-tmp").glob("*"))
