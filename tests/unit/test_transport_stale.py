"""A kept-alive connection closed by the peer is replaced once, without using the retry budget."""

import http.client
import types

import pytest
import requests

from transfers_plugin.config import PeerConfig, TransfersConfig
from transfers_plugin.transport import PeerError, PeerTransport


class FakeSession:
    def __init__(self, failures):
        self.failures = list(failures)
        self.calls = []
        self.headers = {}
        self.auth = None
        self.trust_env = True

    def request(self, method, url, data=None, **kwargs):
        self.calls.append((method, url, data))
        if self.failures:
            raise self.failures.pop(0)
        return types.SimpleNamespace(status_code=200, headers={}, raw=None, close=lambda: None,
                                     iter_content=lambda size: iter([b"{}"]))


def transport_with(failures):
    session = FakeSession(failures)
    module = types.SimpleNamespace(Session=lambda: session, RequestException=requests.RequestException,
                                   ConnectionError=requests.ConnectionError)
    return PeerTransport(TransfersConfig(max_http_retries=0), requests_module=module), session


PEER = PeerConfig("p", "http://127.0.0.1:1/")
STALE = requests.ConnectionError(("Connection aborted.", http.client.RemoteDisconnected("closed")))
REFUSED = requests.ConnectionError("Max retries exceeded: [Errno 111] Connection refused")


def test_a_stale_connection_is_replaced_once():
    transport, session = transport_with([STALE])
    bodies = iter([b"first", b"second"])
    answer = transport.call(PEER, "PUT", "/x", body=lambda: next(bodies))
    assert answer.status == 200
    assert [c[2] for c in session.calls] == [b"first", b"second"], "a fresh body for the new attempt"


def test_twice_stale_is_an_error():
    transport, session = transport_with([STALE, STALE])
    with pytest.raises(PeerError):
        transport.call(PEER, "GET", "/x")
    assert len(session.calls) == 2


def test_a_refused_connection_is_not_retried_for_free():
    transport, session = transport_with([REFUSED])
    with pytest.raises(PeerError) as e:
        transport.call(PEER, "GET", "/x")
    assert len(session.calls) == 1 and "cannot be reached" in e.value.message
