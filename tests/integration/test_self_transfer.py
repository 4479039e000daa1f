"""A transfer of an Orthanc to itself moves everything, as the C++ plugin's does, rather than skipping every
instance as held (``SkipExisting`` is on by default, and the target of a transfer to itself holds all of it).

Upstream's own tests of the C++ plugin (orthanc-tests, ``Plugins/Transfers/Run.py``) run against one Orthanc
whose peers are itself and expect one HTTP query and one instance in the job; administrators check a setup the
same way. One of our servers, its peers reaching itself through a counting TCP proxy, so that the bytes are
measured on the wire.
"""

import pytest
from transfer_helpers import assert_area_empty, assert_same_instances, load_study, study_of, wait_job

from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

N = 6  # instances of about 130 KB


@pytest.fixture(scope="module")
def me(module_orthanc_factory):
    port = free_port()
    proxy = TcpProxy(port).start()
    server = module_orthanc_factory("me", http_port=port, transfers={"BucketSize": 256},
                                    peers={"self": {"Url": proxy.url},
                                           "self-bidirectional": {"Url": proxy.url,
                                                                  "RemoteSelf": "self-bidirectional"}})
    files = load_study(server, N, rows=256, seed=77)
    yield server, proxy, files, study_of(server, next(iter(files)))
    proxy.stop()


def wire(proxy) -> int:
    return proxy.downstream_bytes + proxy.upstream_bytes


@pytest.mark.parametrize("mode", ["pull", "push", "pull-mode send"])
def test_a_transfer_to_itself_moves_everything(me, mode):
    server, proxy, files, study = me
    body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "none"}
    before = wire(proxy)
    if mode == "pull":
        r = server.post("/transfers/pull", json=dict(body, Peer="self"))
    else:
        r = server.post("/transfers/send", json=dict(body, Peer="self" if mode == "push" else "self-bidirectional"))
    assert r.status_code == 200, r.text
    answer = r.json()
    if mode == "pull-mode send":
        # The C++ plugin's answer, and its job is the pull that this Orthanc runs from itself.
        assert set(answer) == {"Peer", "RemoteJob", "URL"}, answer
        job = wait_job(server, answer["RemoteJob"])
        assert job["Type"] == "PullTransfer"
    else:
        job = wait_job(server, answer["ID"])
    assert job["State"] == "Success", job
    content = job["Content"]
    assert content["TotalInstances"] == N, content
    assert content.get("SkippedInstances", 0) == 0, content
    assert content["CompletedHttpQueries"] >= 1, content
    moved = wire(proxy) - before
    assert moved >= sum(len(d) for d in files.values()), (moved, content)
    assert_same_instances(server, files)
    assert_area_empty(server)
