"""GET /transfers/peers against real peers: plain Orthanc, plugin peers, dead and silent peers."""

import socket
import time

import pytest

pytestmark = pytest.mark.integration

TIMEOUT = 2


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def closed_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_peer_classification_within_the_timeout(orthanc_factory, silent_port, closed_port):
    plain = orthanc_factory("plain", with_plugin=False)
    plugin = orthanc_factory("plugin")
    secured = orthanc_factory("secured", extra_config={
        "AuthenticationEnabled": True, "RegisteredUsers": {"alice": "s3cret"}})
    peers = {
        "a-plain": plain.peer_entry(),
        "b-plugin": plugin.peer_entry(),
        "c-bidirectional": plugin.peer_entry(RemoteSelf="main"),
        "d-closed": [f"http://127.0.0.1:{closed_port}/"],
        "e-silent": {"Url": f"http://127.0.0.1:{silent_port}", "Timeout": 60},
        "f-auth-ok": secured.peer_entry(Username="alice", Password="s3cret"),
        "g-auth-wrong": secured.peer_entry(Username="alice", Password="wrong"),
        "h-auth-list-form": [secured.url, "alice", "s3cret"],
        "i-headers": plugin.peer_entry(HttpHeaders={"X-Test": "1"}, Timeout=5),
    }
    main = orthanc_factory("main", transfers={"PeerConnectivityTimeout": TIMEOUT}, peers=peers)
    expected = {
        "a-plain": "disabled",
        "b-plugin": "installed",
        "c-bidirectional": "bidirectional",
        "d-closed": "disabled",
        "e-silent": "disabled",
        "f-auth-ok": "installed",
        "g-auth-wrong": "disabled",
        "h-auth-list-form": "installed",
        "i-headers": "installed",
    }
    for _ in range(2):  # a second call must not be slowed down by the first one's silent peer
        start = time.monotonic()
        r = main.get("/transfers/peers")
        elapsed = time.monotonic() - start
        assert r.status_code == 200, r.text
        assert r.json() == expected
        assert list(r.json()) == sorted(expected)
        assert elapsed <= TIMEOUT + 1, f"took {elapsed:.2f} s"
    # The plain Orthanc does not list the plugin; the plugin peers do.
    assert "transfers" not in plain.get_json("/plugins")
    assert "transfers" in plugin.get_json("/plugins")


def test_no_peers(orthanc_factory):
    main = orthanc_factory("lonely")
    assert main.get_json("/transfers/peers") == {}


def test_each_probe_carries_credentials_and_headers(orthanc_factory, httpserver):
    httpserver.expect_request("/plugins", headers={"X-Site": "north"}).respond_with_json(["transfers"])
    main = orthanc_factory("main", peers={
        "fake": {"Url": httpserver.url_for("/"), "Username": "u", "Password": "p",
                 "HttpHeaders": {"X-Site": "north"}}})
    assert main.get_json("/transfers/peers") == {"fake": "installed"}
    request, _ = httpserver.log[0]
    assert request.authorization.username == "u" and request.authorization.password == "p"
    assert request.path == "/plugins"
