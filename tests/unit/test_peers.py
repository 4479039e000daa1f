"""Peer detection (protocol.md section 9): parallel probes under one deadline, classification, order."""

import threading
import time
from typing import Dict, List

import pytest

from transfers_plugin.config import PeerConfig
from transfers_plugin.peers import BIDIRECTIONAL, DISABLED, INSTALLED, classify, has_transfers_plugin, probe_peers


def peer(name: str, remote_self=None) -> PeerConfig:
    props = () if remote_self is None else (("RemoteSelf", remote_self),)
    return PeerConfig(name, f"http://{name}:8042/", user_properties=props)


def peers_of(*items: PeerConfig) -> Dict[str, PeerConfig]:
    return {p.name: p for p in items}


# --- has_transfers_plugin ------------------------------------------------------------------------------

@pytest.mark.parametrize("status,body", [
    (200, b'["transfers"]'),
    (200, b'["dicom-web", "python", "transfers"]'),
    (200, b' [ "transfers" ] \n'),
    (200, b'[1, null, {"a": 1}, "transfers"]'),
])
def test_has_transfers_plugin_yes(status, body):
    assert has_transfers_plugin(status, body) is True


@pytest.mark.parametrize("status,body", [
    (200, b"[]"),
    (200, b'["python"]'),
    (200, b'["Transfers"]'),
    (200, b'["transfers-accelerator"]'),
    (200, b'[["transfers"]]'),
    (200, b'{"transfers": true}'),
    (200, b'"transfers"'),
    (200, b"transfers"),
    (200, b""),
    (200, b"null"),
    (200, b"\xff\xfe\x00"),
    (200, b'["transfers"'),
    (201, b'["transfers"]'),
    (204, b'["transfers"]'),
    (401, b'["transfers"]'),
    (404, b'["transfers"]'),
    (500, b'["transfers"]'),
])
def test_has_transfers_plugin_no(status, body):
    assert has_transfers_plugin(status, body) is False


def test_classify():
    assert classify(peer("a"), True) == INSTALLED == "installed"
    assert classify(peer("a", "me"), True) == BIDIRECTIONAL == "bidirectional"
    assert classify(peer("a", ""), True) == BIDIRECTIONAL  # any value of RemoteSelf
    assert classify(peer("a"), False) == DISABLED == "disabled"
    assert classify(peer("a", "me"), False) == DISABLED


# --- probe_peers ---------------------------------------------------------------------------------------

def test_probes_run_in_parallel():
    started: List[str] = []
    lock = threading.Lock()

    def probe(p, timeout):
        with lock:
            started.append(p.name)
        time.sleep(0.5)
        return True

    peers = peers_of(*(peer(f"p{k}") for k in range(5)))
    t0 = time.monotonic()
    result = probe_peers(peers, 5.0, probe)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5, f"5 probes of 0.5 s took {elapsed:.2f} s: they did not run in parallel"
    assert result == {f"p{k}": INSTALLED for k in range(5)}
    assert sorted(started) == sorted(peers)


def test_a_hanging_probe_is_disabled_and_does_not_delay_the_answer():
    release = threading.Event()
    logged: List[str] = []

    def probe(p, timeout):
        if p.name == "hang":
            release.wait(30)
            return True
        return p.name != "plain"

    peers = peers_of(peer("hang"), peer("ok"), peer("bidi", "me"), peer("plain"))
    timeout = 0.5
    try:
        t0 = time.monotonic()
        result = probe_peers(peers, timeout, probe, logged.append)
        elapsed = time.monotonic() - t0
    finally:
        release.set()
    assert elapsed < timeout + 0.5
    assert result == {"bidi": BIDIRECTIONAL, "hang": DISABLED, "ok": INSTALLED, "plain": DISABLED}
    assert any("hang" in m for m in logged)


def test_several_hanging_probes_share_one_deadline():
    release = threading.Event()

    def probe(p, timeout):
        if p.name.startswith("hang"):
            release.wait(30)
        return True

    peers = peers_of(*(peer(f"hang{k}") for k in range(4)), peer("ok"))
    try:
        t0 = time.monotonic()
        result = probe_peers(peers, 0.4, probe)
        elapsed = time.monotonic() - t0
    finally:
        release.set()
    assert elapsed < 0.4 + 0.5, "each hanging probe must not get its own full timeout"
    assert result == {**{f"hang{k}": DISABLED for k in range(4)}, "ok": INSTALLED}


def test_an_exception_means_disabled_and_is_logged():
    logged: List[str] = []

    def probe(p, timeout):
        if p.name == "dead":
            raise ConnectionError("connection refused")
        return True

    result = probe_peers(peers_of(peer("dead"), peer("alive")), 2.0, probe, logged.append)
    assert result == {"alive": INSTALLED, "dead": DISABLED}
    assert len(logged) == 1 and "dead" in logged[0] and "connection refused" in logged[0]


def test_a_failing_peer_does_not_hide_the_others():
    # The C++ plugin stops at the first failure (protocol.md section 9); every peer is answered here.
    def probe(p, timeout):
        if p.name == "a-first":
            raise TimeoutError("timed out")
        return True

    peers = peers_of(peer("a-first"), *(peer(f"b{k}") for k in range(6)))
    result = probe_peers(peers, 2.0, probe)
    assert result["a-first"] == DISABLED
    assert all(result[f"b{k}"] == INSTALLED for k in range(6))


def test_probe_gets_the_timeout_and_the_peer():
    seen = []

    def probe(p, timeout):
        seen.append((p.name, p.url, timeout))
        return False

    assert probe_peers(peers_of(peer("x")), 2.0, probe) == {"x": DISABLED}
    assert seen == [("x", "http://x:8042/", 2.0)]


def test_bidirectional_when_remote_self_is_set():
    peers = peers_of(peer("with", "main"), peer("empty", ""), peer("without"), peer("down", "main"))
    result = probe_peers(peers, 2.0, lambda p, t: p.name != "down")
    assert result == {"down": DISABLED, "empty": BIDIRECTIONAL, "with": BIDIRECTIONAL, "without": INSTALLED}


def test_truthy_answers_count_as_installed():
    result = probe_peers(peers_of(peer("a"), peer("b")), 2.0, lambda p, t: 1 if p.name == "a" else None)
    assert result == {"a": INSTALLED, "b": DISABLED}


def test_result_sorted_by_name():
    names = ["zeta", "Beta", "alpha", "b", "a-1", "a0", "mu"]
    peers = peers_of(*(peer(n) for n in names))
    result = probe_peers(peers, 2.0, lambda p, t: True)
    assert list(result) == sorted(names)
    assert list(result) == ["Beta", "a-1", "a0", "alpha", "b", "mu", "zeta"]


def test_no_peers():
    assert probe_peers({}, 1.0, lambda p, t: True) == {}
