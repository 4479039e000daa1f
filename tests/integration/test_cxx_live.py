"""Live transfers between our plugin and a real C++ Transfers accelerator, in both directions and both modes.

The C++ plugin is not part of the project and no Debian package ships it, so these tests run only where
``TRANSFERS_CXX_PLUGINS`` names builds of it (``[LABEL=]PATH``, separated by ``:``), e.g.
``TRANSFERS_CXX_PLUGINS=1.4=/opt/cxx-1.4/libOrthancTransfers.so:mainline=/opt/cxx/libOrthancTransfers.so``.
``scripts/test.sh`` (CI) builds release 1.4 and mainline from ``../shared/cxx-transfers`` where it is present
and sets it. Elsewhere they are skipped; the recorded C++ exchanges of ``test_cxx_puller_replay.py`` and
``test_push_receiver.py`` (``tests/fixtures/cxx-1.4``) stand for them there.
"""

import os
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from transfer_helpers import assert_same_instances, load_study, pull, study_of, wait_job

from tools.bench import cxx_build
from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import HOST, free_port

# Small buckets: many of them, and instances split across several.
TRANSFERS = {"BucketSize": 128, "Threads": 3}


def cxx_builds() -> List[Tuple[str, str]]:
    builds = []
    for spec in filter(None, os.environ.get("TRANSFERS_CXX_PLUGINS", "").split(":")):
        label, path = cxx_build(spec)  # the same [LABEL=]PATH as the benchmark's --cxx-plugin
        builds.append((label or Path(path).parent.name, path))
    return builds


BUILDS = cxx_builds()
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not BUILDS, reason="no C++ Transfers plugin build given in TRANSFERS_CXX_PLUGINS "
                                                   "(scripts/test.sh builds them from ../shared/cxx-transfers "
                                                   "where it is present)")]


@pytest.fixture(params=BUILDS or [("none", "")], ids=lambda b: b[0])
def cxx(request):
    label, path = request.param
    assert os.path.isfile(path), f"TRANSFERS_CXX_PLUGINS: no such file {path}"
    return path


def start_pair(factory, cxx_library: str, source_is_cxx: bool):
    """A (source) and B (destination), one of them running the C++ plugin, each the other's peer
    (``a``/``b`` without RemoteSelf: /transfers/send pushes)."""
    ports = {"a": free_port(), "b": free_port()}
    servers = {}
    for name, other in (("a", "b"), ("b", "a")):
        cxx_here = (name == "a") == source_is_cxx
        # The C++ builds are linked against the host's Orthanc framework: they run on the host's Orthanc.
        servers[name] = factory(name, with_plugin=not cxx_here, transfers=TRANSFERS, http_port=ports[name],
                                extra_config={"Plugins": [cxx_library]} if cxx_here else {},
                                platform=HOST if cxx_here else None,
                                peers={other: {"Url": f"http://127.0.0.1:{ports[other]}/"}})
    a, b = servers["a"], servers["b"]
    assert "transfers" in a.get_json("/plugins") and "transfers" in b.get_json("/plugins")
    return a, b


def source_files(a) -> Dict[str, bytes]:
    files = load_study(a, 12, rows=256, seed=7)  # about 128 KB each: grouped and split
    files.update(load_study(a, 3, rows=512, seed=8))  # about 512 KB each: split in several buckets
    return files


def resources(a, files) -> list:
    return [{"Level": "Study", "ID": s} for s in sorted({study_of(a, i) for i in files})]


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize("source_is_cxx", [True, False], ids=["cxx-source-py-puller", "py-source-cxx-puller"])
def test_pull_between_cxx_and_python(orthanc_factory, cxx, source_is_cxx, compression):
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx)
    files = source_files(a)
    job = wait_job(b, pull(b, "a", resources(a, files), compression), timeout=300)
    assert job["State"] == "Success", job
    assert_same_instances(b, files)


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize("source_is_cxx", [True, False], ids=["cxx-sender-py-receiver", "py-sender-cxx-receiver"])
def test_push_between_cxx_and_python(orthanc_factory, cxx, source_is_cxx, compression):
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx)
    files = source_files(a)
    r = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": compression, "Peer": "b"})
    assert r.status_code == 200, r.text
    job = wait_job(a, r.json()["ID"], timeout=300)
    assert job["State"] == "Success", job
    assert job["Type"] == "PushTransfer"
    assert_same_instances(b, files)


# -- zstd-shuffle and "auto" (issue 15): a C++ peer only ever gets gzip --------------------------------------


@pytest.mark.parametrize("compression", ["auto", "zstd-shuffle"])
def test_a_cxx_peer_gets_gzip_for_auto_and_zstd_shuffle(orthanc_factory, cxx, compression):
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx=False)  # our sender, a C++ receiver
    files = source_files(a)
    r = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": compression, "Peer": "b"})
    assert r.status_code == 200, r.text
    job = wait_job(a, r.json()["ID"], timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["Compression"] == "gzip"
    assert_same_instances(b, files)
    a2, b2 = start_pair(orthanc_factory, cxx, source_is_cxx=True)  # a C++ source, our puller
    files = source_files(a2)
    job = wait_job(b2, pull(b2, "a", resources(a2, files), compression), timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["Compression"] == "gzip"
    assert_same_instances(b2, files)


# -- skipping what is there (issue 14): a C++ peer is never asked; it gets everything --------------------


def test_a_cxx_receiver_gets_everything_again(orthanc_factory, cxx):
    """Ours sends twice to a C++ receiver through a counting proxy: it is not asked what it holds (its
    description does not name our capabilities route), and it gets everything the second time too."""
    port_b = free_port()
    proxy = TcpProxy(port_b).start()
    try:
        b = orthanc_factory("b", with_plugin=False, transfers=TRANSFERS, http_port=port_b,
                            extra_config={"Plugins": [cxx]}, platform=HOST)
        a = orthanc_factory("a", transfers=TRANSFERS, peers={"b": {"Url": proxy.url}})
        assert "Capabilities" not in b.get_json("/plugins/transfers")
        files = source_files(a)
        size = sum(len(d) for d in files.values())
        for attempt in (1, 2):
            before = proxy.upstream_bytes
            r = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": "none",
                                                "Peer": "b"})
            assert r.status_code == 200, r.text
            job = wait_job(a, r.json()["ID"], timeout=300)
            assert job["State"] == "Success", job
            assert job["Content"]["SkippedInstances"] == 0 and job["Content"]["TotalInstances"] == len(files)
            assert proxy.upstream_bytes - before >= size, attempt  # everything, the second time too
        assert_same_instances(b, files)
    finally:
        proxy.stop()


def test_a_pull_from_a_cxx_source_skips_what_is_there(orthanc_factory, cxx):
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx=True)  # C++ source, our puller
    files = source_files(a)
    job = wait_job(b, pull(b, "a", resources(a, files), "gzip"), timeout=300)
    assert job["State"] == "Success" and job["Content"]["SkippedInstances"] == 0, job
    job = wait_job(b, pull(b, "a", resources(a, files), "gzip"), timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["SkippedInstances"] == len(files) and job["Content"]["TotalInstances"] == 0
    assert_same_instances(b, files)


# -- a send in pull mode to a C++ peer, followed from our side ("Synchronous": false) ---------------------


def start_cxx_puller(factory, cxx_library: str):
    """A (ours, the source) sends in pull mode to B (C++): A knows B as ``b`` with RemoteSelf ``a``."""
    port_a, port_b = free_port(), free_port()
    b = factory("b", with_plugin=False, transfers=TRANSFERS, http_port=port_b,
                extra_config={"Plugins": [cxx_library], "JobsHistorySize": 100},
                peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}}, platform=HOST)
    a = factory("a", transfers=TRANSFERS, http_port=port_a,
                peers={"b": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
    return a, b


def test_follow_a_cxx_pull_job(orthanc_factory, cxx):
    a, b = start_cxx_puller(orthanc_factory, cxx)
    files = source_files(a)
    query = {"Resources": resources(a, files), "Compression": "gzip", "Peer": "b"}
    r = a.post("/transfers/send", json=query)
    assert set(r.json()) == {"Peer", "RemoteJob", "URL"}, r.text  # without the key: the C++ plugin's answer
    assert wait_job(b, r.json()["RemoteJob"], timeout=300)["State"] == "Success"
    for instance in b.instances():
        b.request("DELETE", f"/instances/{instance}")

    answer = a.post("/transfers/send", json={**query, "Synchronous": False}).json()
    assert set(answer) == {"ID", "Path", "Peer", "RemoteJob", "URL"}, answer
    job = wait_job(a, answer["ID"], timeout=300)
    remote = b.get_json(f"/jobs/{answer['RemoteJob']}")
    assert job["State"] == "Success" and remote["State"] == "Success" and remote["Type"] == "PullTransfer", job
    assert job["Type"] == "RemotePullTransfer" and job["Content"]["RemoteState"] == "Success"
    assert job["Content"]["RemoteContent"]["TotalInstances"] == remote["Content"]["TotalInstances"] == len(files)
    assert_same_instances(b, files)

    # A failure of the C++ job is mirrored: its error code, description and details.
    missing = {**query, "Resources": [{"Level": "Study", "ID": "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"}],
               "Synchronous": False}
    answer = a.post("/transfers/send", json=missing).json()
    job = wait_job(a, answer["ID"], timeout=120)
    remote = b.get_json(f"/jobs/{answer['RemoteJob']}")
    assert remote["State"] == "Failure" and job["State"] == "Failure", (remote, job)
    assert job["ErrorCode"] == remote["ErrorCode"] and remote["ErrorDescription"] in job["ErrorDescription"]
    assert job["ErrorDetails"] == remote.get("ErrorDetails", "")

    # "Synchronous": true waits for the C++ job's end.
    for instance in b.instances():
        b.request("DELETE", f"/instances/{instance}")
    r = a.post("/transfers/send", json={**query, "Synchronous": True}, timeout=300)
    assert r.status_code == 200 and r.json()["RemoteState"] == "Success", r.text
    assert_same_instances(b, files)


def test_cancel_follows_to_a_cxx_pull_job(orthanc_factory, cxx):
    from tools.net_proxy import TcpProxy

    port_a = free_port()
    proxy = TcpProxy(port_a, rate=300_000).start()
    try:
        port_b = free_port()
        b = orthanc_factory("b", with_plugin=False, transfers=TRANSFERS, http_port=port_b,
                            extra_config={"Plugins": [cxx], "JobsHistorySize": 100}, peers={"a": {"Url": proxy.url}},
                            platform=HOST)
        a = orthanc_factory("a", transfers=TRANSFERS, http_port=port_a,
                            peers={"b": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
        files = load_study(a, 12, rows=512, seed=9)
        answer = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": "none",
                                                 "Peer": "b", "Synchronous": False}).json()
        wait_job(a, answer["ID"], ["Running"], condition=lambda j: j["Content"].get("RemoteState") == "Running")
        assert a.post(f"/jobs/{answer['ID']}/cancel").status_code == 200
        job = wait_job(a, answer["ID"], ["Failure"], timeout=10)
        assert job["ErrorCode"] == 37
        remote = wait_job(b, answer["RemoteJob"], ["Failure"], timeout=30)
        assert remote["ErrorCode"] == 37, remote
        assert "was canceled too" in wait_job(a, answer["ID"], condition=lambda j: j["ErrorDetails"])["ErrorDetails"]
    finally:
        proxy.stop()


@pytest.mark.parametrize("source_is_cxx", [True, False], ids=["cxx-source-py-puller", "py-source-cxx-receiver"])
def test_metadata_true_with_a_cxx_peer_goes_without_them(orthanc_factory, cxx, source_is_cxx):
    """``"Metadata": true`` with a C++ peer: it is not asked for them nor sent them (its description does not
    name our capabilities route); the transfer succeeds without them, and its Content says so."""
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx)
    files = load_study(a, 3, rows=64, seed=9)
    body = {"Resources": resources(a, files), "Compression": "gzip", "Metadata": True}
    server = b if source_is_cxx else a
    route, peer = ("/transfers/pull", "a") if source_is_cxx else ("/transfers/send", "b")
    r = server.post(route, json=dict(body, Peer=peer))
    assert r.status_code == 200, r.text
    job = wait_job(server, r.json()["ID"], timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["Metadata"] == "not supported by the peer"
    assert_same_instances(b, files)


# -- ProgressiveCommit (issue 15) with a C++ peer ---------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_progressive_pull_from_a_cxx_source(orthanc_factory, cxx, compression):
    """Our puller with ``"ProgressiveCommit": true`` asks a C++ source for its first and last buckets cut in
    slices (``planner.spread_ends``): chunk ranges a C++ puller never asks for. Slowed down by the bandwidth
    cap, instances are in B while the job still runs; the end result is byte-identical."""
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx=True)
    files = source_files(a)  # about 3 MB: 3 to 4 s at the cap below
    r = b.post("/transfers/pull", json={"Resources": resources(a, files), "Compression": compression, "Peer": "a",
                                         "ProgressiveCommit": True, "MaxBandwidthKBs": 800})
    assert r.status_code == 200, r.text
    job_id = r.json()["ID"]
    seen = []
    deadline = time.monotonic() + 120
    while True:
        job = b.get_json(f"/jobs/{job_id}")
        if job["State"] in ("Success", "Failure") or time.monotonic() > deadline:
            break
        seen.append(int(b.get_json("/statistics")["CountInstances"]))
        time.sleep(0.05)
    assert job["State"] == "Success", job
    assert job["Content"]["ProgressiveCommit"] is True
    assert any(0 < n < len(files) for n in seen), f"no instance was imported before the end: {seen}"
    assert_same_instances(b, files)


def test_a_progressive_push_to_a_cxx_receiver_is_a_plain_push(orthanc_factory, cxx):
    """A C++ receiver does not list ``progressive-commit``: the push goes with the usual plan and commit, the
    job says ``ProgressiveCommit: false`` and the transfer succeeds."""
    a, b = start_pair(orthanc_factory, cxx, source_is_cxx=False)
    files = source_files(a)
    r = a.post("/transfers/send", json={"Resources": resources(a, files), "Compression": "gzip", "Peer": "b",
                                         "ProgressiveCommit": True})
    assert r.status_code == 200, r.text
    job = wait_job(a, r.json()["ID"], timeout=300)
    assert job["State"] == "Success", job
    assert job["Content"]["ProgressiveCommit"] is False
    assert_same_instances(b, files)
