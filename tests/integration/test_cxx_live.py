"""Live transfers between our plugin and a real C++ Transfers accelerator, in both directions and both modes.

The C++ plugin is not part of the project and no Debian package ships it, so these tests run only where
``TRANSFERS_CXX_PLUGINS`` names builds of it (``[LABEL=]PATH``, separated by ``:``), e.g.
``TRANSFERS_CXX_PLUGINS=1.4=/opt/cxx-1.4/libOrthancTransfers.so:mainline=/opt/cxx/libOrthancTransfers.so``.
``scripts/test.sh`` (CI) builds release 1.4 and mainline from ``../shared/cxx-transfers`` where it is present
and sets it. Elsewhere they are skipped; the recorded C++ exchanges of ``test_cxx_puller_replay.py`` and
``test_push_receiver.py`` (``tests/fixtures/cxx-1.4``) stand for them there.
"""

import os
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from transfer_helpers import assert_same_instances, load_study, pull, study_of, wait_job

from tools.bench import cxx_build
from tools.orthanc_launcher import free_port

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
        servers[name] = factory(name, with_plugin=not cxx_here, transfers=TRANSFERS, http_port=ports[name],
                                extra_config={"Plugins": [cxx_library]} if cxx_here else {},
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
