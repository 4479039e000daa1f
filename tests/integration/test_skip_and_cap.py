"""Issue 14, items 1 and 2: what the target already holds is not moved again; a job's bandwidth cap.

Two of our servers, A (source) and B (target), each reaching the other through a counting TCP proxy, so that
the bytes a transfer moves are measured on the wire (both directions, HTTP headers and JSON included).
"""

import hashlib
import time

import pytest
from transfer_helpers import load_study, new_instance_changes, study_of, wait_job

from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

N = 12  # instances of the study, about 130 KB each


@pytest.fixture(scope="module")
def peers(module_orthanc_factory):
    port_a, port_b = free_port(), free_port()
    to_a, to_b = TcpProxy(port_a).start(), TcpProxy(port_b).start()
    a = module_orthanc_factory("a", http_port=port_a, transfers={"BucketSize": 256},
                               extra_config={"JobsHistorySize": 100},
                               peers={"b": {"Url": to_b.url},
                                      "b-pull": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
    b = module_orthanc_factory("b", http_port=port_b, transfers={"BucketSize": 256},
                               extra_config={"JobsHistorySize": 100}, peers={"a": {"Url": to_a.url}})
    files = load_study(a, N, rows=256, seed=1414)
    study = study_of(a, next(iter(files)))
    yield a, b, files, study, to_a, to_b
    to_a.stop()
    to_b.stop()


def wire(proxy) -> int:
    return proxy.downstream_bytes + proxy.upstream_bytes


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")


def assert_holds(server, files):
    assert sorted(server.instances()) == sorted(files)
    for iid, data in files.items():
        assert hashlib.md5(server.get(f"/instances/{iid}/file").content).digest() == hashlib.md5(data).digest()


def transfer(a, b, mode, study, **options):
    """A pull at B, or a push from A, of the study without compression; the finished job."""
    body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "none", **options}
    if mode == "pull":
        r = b.post("/transfers/pull", json=dict(body, Peer="a"))
        server = b
    else:
        r = a.post("/transfers/send", json=dict(body, Peer="b"))
        server = a
    assert r.status_code == 200, r.text
    job = wait_job(server, r.json()["ID"], timeout=60)
    assert job["State"] == "Success", job
    return job


def skipped_metric(server) -> float:
    """``orthanc_transfers_skipped_instances_count`` in the server's /tools/metrics-prometheus."""
    for line in server.get("/tools/metrics-prometheus").text.splitlines():
        if line.startswith("orthanc_transfers_skipped_instances_count "):
            return float(line.split()[1])
    return 0.0


def wait_skipped_metric(server, expected: float) -> None:
    deadline = time.monotonic() + 10  # published once a second
    while skipped_metric(server) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert skipped_metric(server) == expected


def moved(proxy, fn):
    before = wire(proxy)
    result = fn()
    return result, wire(proxy) - before


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_a_resend_moves_almost_nothing_and_a_half_finished_one_only_what_is_missing(peers, mode):
    a, b, files, study, to_a, to_b = peers
    proxy = to_a if mode == "pull" else to_b
    size = sum(len(d) for d in files.values())
    clear(b)
    job, first = moved(proxy, lambda: transfer(a, b, mode, study))
    assert job["Content"]["SkippedInstances"] == 0 and job["Content"]["TotalInstances"] == N
    assert first >= size  # the proxy sees the whole study the first time
    assert_holds(b, files)

    since = b.get_json("/changes?last")["Last"]
    skipper = b if mode == "pull" else a  # the job's server, which published the count
    counted = skipped_metric(skipper)
    job, again = moved(proxy, lambda: transfer(a, b, mode, study))
    assert job["Content"]["SkippedInstances"] == N and job["Content"]["TotalInstances"] == 0, job["Content"]
    wait_skipped_metric(skipper, counted + N)
    assert again <= 0.05 * size, (again, size)
    assert new_instance_changes(b, since) == {}  # nothing stored again
    assert_holds(b, files)

    # Half of the study is there (a transfer that stopped half way, or instances that came another way).
    clear(b)
    ids = sorted(files)
    half = {iid: files[iid] for iid in ids[::2]}
    for data in half.values():
        b.upload(data)
    missing = size - sum(len(d) for d in half.values())
    job, rest = moved(proxy, lambda: transfer(a, b, mode, study))
    assert job["Content"]["SkippedInstances"] == len(half)
    assert job["Content"]["TotalInstances"] == N - len(half)
    assert missing <= rest <= missing + 0.05 * size, (rest, missing, size)
    assert_holds(b, files)


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_skip_existing_false_moves_everything(peers, mode):
    a, b, files, study, to_a, to_b = peers
    proxy = to_a if mode == "pull" else to_b
    size = sum(len(d) for d in files.values())
    if sorted(b.instances()) != sorted(files):
        transfer(a, b, mode, study)
    job, everything = moved(proxy, lambda: transfer(a, b, mode, study, SkipExisting=False))
    assert job["Content"]["SkippedInstances"] == 0 and job["Content"]["TotalInstances"] == N
    assert everything >= size
    assert_holds(b, files)


def test_a_send_in_pull_mode_passes_skip_existing_on_to_our_peer(peers):
    a, b, files, study, to_a, to_b = peers
    size = sum(len(d) for d in files.values())
    if sorted(b.instances()) != sorted(files):
        transfer(a, b, "pull", study)
    body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "none", "Peer": "b-pull",
            "Synchronous": True}
    r, skipped = moved(to_a, lambda: a.post("/transfers/send", json=body))
    assert r.status_code == 200, r.text
    assert r.json()["RemoteContent"]["SkippedInstances"] == N and skipped <= 0.05 * size
    r, everything = moved(to_a, lambda: a.post("/transfers/send", json=dict(body, SkipExisting=False,
                                                                           MaxBandwidthKBs=0)))
    assert r.status_code == 200, r.text
    assert r.json()["RemoteContent"]["SkippedInstances"] == 0 and everything >= size


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_a_capped_transfer_completes_and_is_not_faster_than_its_cap(peers, mode):
    a, b, files, study, to_a, to_b = peers
    proxy = to_a if mode == "pull" else to_b
    clear(b)
    cap = 1024  # KB/s: the 1.6 MB study takes about 1.5 s
    started = time.monotonic()
    job, n = moved(proxy, lambda: transfer(a, b, mode, study, MaxBandwidthKBs=cap))
    elapsed = time.monotonic() - started
    assert job["Content"]["TotalInstances"] == N
    assert_holds(b, files)
    # Only a bound that a slow machine cannot break: the limiter lets a quarter of a second's worth pass at
    # once, and the proxy counts headers and JSON, which are not capped.
    assert n / elapsed <= cap * 1024 * 1.5, (n, elapsed)


@pytest.mark.parametrize("route", ["/transfers/pull", "/transfers/send"])
@pytest.mark.parametrize("option", [{"SkipExisting": "no"}, {"SkipExisting": 0}, {"MaxBandwidthKBs": "100"},
                                    {"MaxBandwidthKBs": -1}, {"MaxBandwidthKBs": 10**12}, {"MaxBandwidthKBs": 1.5},
                                    {"MaxBandwidthKBs": True}])
def test_bad_options_are_refused_before_any_job(peers, route, option):
    a, b, files, study, to_a, to_b = peers
    server, peer = (b, "a") if route == "/transfers/pull" else (a, "b")
    jobs = len(server.get_json("/jobs"))
    r = server.post(route, json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "none",
                                 "Peer": peer, **option})
    assert r.status_code == 400, r.text
    assert r.headers["Content-Type"].startswith("application/json") and r.json()["HttpStatus"] == 400
    assert next(iter(option)) in r.json()["Message"]
    assert len(server.get_json("/jobs")) == jobs


def test_capabilities_and_holds_routes(peers):
    a, b, files, study, to_a, to_b = peers
    assert a.get_json("/plugins/transfers")["Capabilities"] == "/transfers/capabilities"
    caps = a.get_json("/transfers/capabilities")
    assert caps["Implementation"] == "orthanc-transfers-py" and "skip-existing" in caps["Features"]
    assert caps["Compression"] == ["none", "gzip", "zstd-shuffle"]  # python3-zstandard on both platforms
    iid, data = next(iter(files.items()))
    md5 = hashlib.md5(data).hexdigest()
    asked = [{"ID": iid, "Size": str(len(data)), "MD5": md5},
             {"ID": iid, "Size": str(len(data)), "MD5": "0" * 32}]
    r = a.post("/transfers/holds", json={"Instances": asked[:1]})
    assert r.status_code == 200 and r.json() == {"Held": [iid]}
    r = a.post("/transfers/holds", json={"Instances": asked[1:]})
    assert r.status_code == 200 and r.json() == {"Held": []}
    # With the resources they belong to: asked first, and each instance only when one of them is there.
    series = a.get_json(f"/instances/{iid}/series")["ID"]
    others = [{"ID": i, "Size": str(len(d)), "MD5": hashlib.md5(d).hexdigest()} for i, d in files.items()]
    r = a.post("/transfers/holds", json={"Instances": others, "Resources": [{"Level": "Study", "ID": study}]})
    assert r.status_code == 200 and sorted(r.json()["Held"]) == sorted(files)
    r = a.post("/transfers/holds", json={"Instances": others, "Resources": [{"Level": "Series", "ID": series}]})
    assert r.status_code == 200 and sorted(r.json()["Held"]) == sorted(files)
    absent = "0" * 8 + "-00000000" * 4
    r = a.post("/transfers/holds", json={"Instances": others, "Resources": [{"Level": "Study", "ID": absent}]})
    # A holds these instances, but not the study the asker says they are in: it trusts the claim (which can
    # only cost the asker a transfer) and asks none of them.
    assert r.status_code == 200 and r.json() == {"Held": []}
    for bad in ([], {"Instances": [{"ID": "x"}]}, {"Instances": [asked[0]] * 1001}, {"Instances": "all"},
                {"Instances": asked[:1], "Resources": [{"Level": "Study", "ID": "../../etc"}]},
                {"Instances": asked[:1], "Resources": [{"Level": "Volume", "ID": study}]},
                {"Instances": asked[:1], "Resources": {"Level": "Study", "ID": study}}):
        r = a.post("/transfers/holds", json=bad)
        assert r.status_code == 400 and r.json()["HttpStatus"] == 400, (bad, r.text)
    assert a.request("GET", "/transfers/holds").status_code == 405
