"""HTTP to peers: credentials, headers, URL joining, timeouts, TLS options (a local HTTP server and a fake)."""

import base64
import threading
import types
from typing import Any, Dict, List

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug import Response as WResponse

from transfers_plugin.config import PeerConfig, TransfersConfig, parse_configuration
from transfers_plugin.transport import HttpAnswer, PeerError, PeerTransport


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --- against a real local server -----------------------------------------------------------------------

def test_session_sends_credentials_headers_and_identity_encoding(httpserver):
    httpserver.expect_request("/plugins", method="GET").respond_with_data(b'["transfers"]')
    config = parse_configuration({"OrthancPeers": {"p": {
        "Url": httpserver.url_for("/"), "Username": "alice", "Password": "s3cret",
        "HttpHeaders": {"X-Token": "abc", "X-Other": "2"}}}})
    transport = PeerTransport(config)
    answer = transport.request(config.peers["p"], "GET", "/plugins")
    assert answer.status == 200
    assert answer.content == b'["transfers"]'
    (request, _), = httpserver.log
    assert request.headers["Authorization"] == basic("alice", "s3cret")
    assert request.headers["X-Token"] == "abc" and request.headers["X-Other"] == "2"
    assert request.headers["Accept-Encoding"] == "identity"
    assert request.path == "/plugins"


def test_list_form_credentials(httpserver):
    httpserver.expect_request("/x").respond_with_data("ok")
    config = parse_configuration({"OrthancPeers": {"p": [httpserver.url_for("/"), "bob", "pw"]}})
    PeerTransport(config).request(config.peers["p"], "GET", "x")
    (request, _), = httpserver.log
    assert request.headers["Authorization"] == basic("bob", "pw")


def test_no_credentials_no_authorization(httpserver):
    httpserver.expect_request("/x").respond_with_data("ok")
    peer = PeerConfig("p", httpserver.url_for("/"))
    PeerTransport(TransfersConfig()).request(peer, "GET", "/x")
    (request, _), = httpserver.log
    assert "Authorization" not in request.headers
    assert request.headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("base", ["/", "/orthanc/", "/orthanc", "/a/b/"])
def test_no_double_slash_on_the_wire(httpserver, base):
    prefix = base.rstrip("/")
    httpserver.expect_request(f"{prefix}/transfers/lookup", method="POST").respond_with_json({"ok": 1})
    config = parse_configuration({"OrthancPeers": {"p": [httpserver.url_for(base)]}})
    peer = config.peers["p"]
    assert peer.url.endswith("/")
    answer = PeerTransport(config).request(peer, "POST", "/transfers/lookup", body=b"[]",
                                           headers={"Content-Type": "application/json"})
    assert answer.status == 200
    (request, _), = httpserver.log
    assert "//" not in request.path
    assert request.path == f"{prefix}/transfers/lookup"
    assert request.get_data() == b"[]"
    assert request.headers["Content-Type"] == "application/json"


def test_errors_are_answers_not_exceptions(httpserver):
    httpserver.expect_request("/missing").respond_with_data("nope", status=404, content_type="text/plain")
    answer = PeerTransport(TransfersConfig()).request(PeerConfig("p", httpserver.url_for("/")), "GET", "/missing")
    assert answer == HttpAnswer(404, answer.headers, b"nope")
    assert answer.headers["Content-Type"].startswith("text/plain")


def test_redirects_are_not_followed(httpserver):
    httpserver.expect_request("/from").respond_with_response(
        WResponse("", status=302, headers={"Location": httpserver.url_for("/to")}))
    httpserver.expect_request("/to").respond_with_data("moved")
    answer = PeerTransport(TransfersConfig()).request(PeerConfig("p", httpserver.url_for("/")), "GET", "/from")
    assert answer.status == 302
    assert len(httpserver.log) == 1


# --- URL joining ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("base,uri,expected", [
    ("http://h:8042/", "/plugins", "http://h:8042/plugins"),
    ("http://h:8042/", "plugins", "http://h:8042/plugins"),
    ("http://h:8042/orthanc/", "/transfers/chunks/a.b?offset=0", "http://h:8042/orthanc/transfers/chunks/a.b?offset=0"),
    ("https://h/", "/transfers/push/abc/0", "https://h/transfers/push/abc/0"),
])
def test_url_joining(base, uri, expected):
    assert PeerTransport(TransfersConfig()).url(PeerConfig("p", base), uri) == expected


@given(st.sampled_from(["http://h:8042/", "http://h/o/", "https://h:1/a/b/"]),
       st.lists(st.text(alphabet="abc.?=0", min_size=1, max_size=5), min_size=1, max_size=4),
       st.booleans())
def test_url_joining_never_doubles_slashes(base, segments, leading):
    uri = ("/" if leading else "") + "/".join(segments)
    url = PeerTransport(TransfersConfig()).url(PeerConfig("p", base), uri)
    assert "//" not in url.split("://", 1)[1]
    assert url == base + "/".join(segments)


# --- with a fake requests module -----------------------------------------------------------------------

def fake_response(status: int, headers: Dict[str, str], body: bytes) -> types.SimpleNamespace:
    """What ``requests`` returns for a streamed request: the body is read with ``iter_content``."""
    return types.SimpleNamespace(status_code=status, headers=headers, raw=None, close=lambda: None,
                                 iter_content=lambda size: iter([body[i:i + size] for i in range(0, len(body), size)]))


class FakeSession:
    instances: List["FakeSession"] = []

    def __init__(self):
        self.headers: Dict[str, str] = {"User-Agent": "python-requests", "Accept-Encoding": "gzip, deflate"}
        self.auth = None
        self.cert = None
        self.verify = True
        self.proxies: Dict[str, str] = {}
        self.trust_env = True
        self.calls: List[Dict[str, Any]] = []
        self.closed = False
        FakeSession.instances.append(self)

    def request(self, method, url, **kwargs):
        self.calls.append({"method": method, "url": url, **kwargs})
        return fake_response(201, {"X": "y"}, b"body")

    def close(self):
        self.closed = True


@pytest.fixture
def fake_requests():
    FakeSession.instances = []
    return types.SimpleNamespace(Session=FakeSession)


def make(config: TransfersConfig, fake_requests) -> PeerTransport:
    return PeerTransport(config, requests_module=fake_requests)


@pytest.mark.parametrize("http_timeout,peer_timeout,expected", [
    (60, None, 60.0), (60, 7, 7.0), (0, None, None), (0, 9, 9.0), (5, 30, 30.0)])
def test_per_peer_timeout_by_default(fake_requests, http_timeout, peer_timeout, expected):
    transport = make(TransfersConfig(http_timeout=http_timeout), fake_requests)
    transport.request(PeerConfig("p", "http://h/", timeout=peer_timeout), "GET", "/x")
    assert FakeSession.instances[0].calls[0]["timeout"] == expected


def test_explicit_timeout_wins(fake_requests):
    transport = make(TransfersConfig(http_timeout=60), fake_requests)
    transport.request(PeerConfig("p", "http://h/", timeout=7), "GET", "/plugins", timeout=2.0)
    assert FakeSession.instances[0].calls[0]["timeout"] == 2.0


def test_request_arguments_and_answer(fake_requests):
    transport = make(TransfersConfig(), fake_requests)
    answer = transport.request(PeerConfig("p", "http://h:1/"), "PUT", "/transfers/push/t/0", body=b"payload",
                               headers={"Content-Type": "application/octet-stream"})
    assert answer == HttpAnswer(201, {"X": "y"}, b"body")
    call = FakeSession.instances[0].calls[0]
    assert call["method"] == "PUT" and call["url"] == "http://h:1/transfers/push/t/0"
    assert call["data"] == b"payload"
    assert call["headers"] == {"Content-Type": "application/octet-stream"}
    assert call["allow_redirects"] is False
    assert call["stream"] is True  # the answer is read within a bound (MaxJsonBodySize)


@pytest.mark.parametrize("status,length,limit_mb", [(200, 2 * 1024 * 1024 + 1, 2), (500, 1024 * 1024 + 1, 64)])
def test_an_answer_larger_than_the_limit_is_refused(monkeypatch, fake_requests, status, length, limit_mb):
    """A peer cannot make us hold more than MaxJsonBodySize of an answer (1 MB of an error), announced or not."""
    transport = make(TransfersConfig(max_json_body_size_mb=limit_mb), fake_requests)
    peer = PeerConfig("p", "http://h:1/")
    for headers in ({"Content-Length": str(length)}, {}):
        monkeypatch.setattr(FakeSession, "request",
                            lambda self, method, url, answer_headers=headers, **kw:
                            fake_response(status, answer_headers, b"x" * length))
        with pytest.raises(PeerError) as e:
            transport.request(peer, "POST", "/transfers/lookup")
        assert "'p'" in e.value.message and "MB" in e.value.message and not e.value.retryable
    monkeypatch.setattr(FakeSession, "request",
                        lambda self, method, url, **kw: fake_response(status, {}, b"x" * (length - 1)))
    assert transport.request(peer, "POST", "/transfers/lookup").content == b"x" * (length - 1)


def test_session_settings(fake_requests):
    config = parse_configuration({"OrthancPeers": {"p": {
        "Url": "https://h", "Username": "u", "Password": "", "HttpHeaders": {"X-A": "1"},
        "CertificateFile": "/c.pem", "CertificateKeyFile": "/k.pem"}}})
    make(config, fake_requests).request(config.peers["p"], "GET", "/x")
    (s,) = FakeSession.instances
    assert s.auth == ("u", "")
    assert s.headers["Accept-Encoding"] == "identity" and s.headers["X-A"] == "1"
    assert s.cert == ("/c.pem", "/k.pem")
    assert s.trust_env is False  # no proxy or .netrc credentials from the environment
    assert s.verify is True and s.proxies == {}


def test_certificate_without_key_and_tls_options(fake_requests):
    peer = PeerConfig("p", "https://h/", certificate_file="/both.pem")
    make(TransfersConfig(https_verify_peers=False, http_proxy="http://proxy:3128"), fake_requests).request(
        peer, "GET", "/x")
    s = FakeSession.instances[-1]
    assert s.cert == "/both.pem" and s.verify is False
    assert s.proxies == {"http": "http://proxy:3128", "https": "http://proxy:3128"}
    make(TransfersConfig(https_ca_certificates="/ca.pem"), fake_requests).request(peer, "GET", "/x")
    assert FakeSession.instances[-1].verify == "/ca.pem"


def test_peer_headers_can_replace_the_defaults(fake_requests):
    peer = PeerConfig("p", "http://h/", http_headers=(("User-Agent", "mine"),))
    make(TransfersConfig(), fake_requests).request(peer, "GET", "/x")
    assert FakeSession.instances[0].headers["User-Agent"] == "mine"


def test_one_session_per_thread_and_peer(fake_requests):
    transport = make(TransfersConfig(), fake_requests)
    a, b = PeerConfig("a", "http://a/"), PeerConfig("b", "http://b/")
    transport.request(a, "GET", "/1")
    transport.request(a, "GET", "/2")
    transport.request(b, "GET", "/3")
    assert len(FakeSession.instances) == 2
    assert [c["url"] for c in FakeSession.instances[0].calls] == ["http://a/1", "http://a/2"]
    t = threading.Thread(target=transport.request, args=(a, "GET", "/4"))
    t.start()
    t.join(10)
    assert len(FakeSession.instances) == 3  # another thread, another session
    # the same name at another URL (configuration changed) is another session
    transport.request(PeerConfig("a", "http://a2/"), "GET", "/5")
    assert len(FakeSession.instances) == 4


def test_close(fake_requests):
    transport = make(TransfersConfig(), fake_requests)
    transport.request(PeerConfig("a", "http://a/"), "GET", "/1")
    transport.request(PeerConfig("b", "http://b/"), "GET", "/1")
    transport.close()
    assert all(s.closed for s in FakeSession.instances)
    transport.request(PeerConfig("a", "http://a/"), "GET", "/1")
    assert len(FakeSession.instances) == 3
    transport.close()
    transport.close()


@pytest.mark.parametrize("encoding", ["gzip", "gzip, gzip", "deflate", "br", "x-anything"])
def test_a_compressed_answer_is_refused_before_it_is_inflated(monkeypatch, fake_requests, encoding):
    """We ask for identity; a Content-Encoding would be inflated by the HTTP client before our bounds."""
    transport = make(TransfersConfig(), fake_requests)
    monkeypatch.setattr(FakeSession, "request", lambda self, method, url, **kw: fake_response(
        200, {"Content-Encoding": encoding}, b"\x1f\x8b"))
    with pytest.raises(PeerError) as e:
        transport.request(PeerConfig("p", "http://h:1/"), "POST", "/transfers/lookup")
    assert "Content-Encoding" in e.value.message and not e.value.retryable
    monkeypatch.setattr(FakeSession, "request", lambda self, method, url, **kw: fake_response(
        200, {"Content-Encoding": "identity"}, b"[]"))
    assert transport.request(PeerConfig("p", "http://h:1/"), "POST", "/transfers/lookup").content == b"[]"


@pytest.mark.parametrize("length", ["\u00b2", "1\u00b2", "-5", "1e3", " ", "9" * 30])
def test_a_content_length_that_is_not_a_number_is_ignored(monkeypatch, fake_requests, length):
    transport = make(TransfersConfig(), fake_requests)
    monkeypatch.setattr(FakeSession, "request", lambda self, method, url, **kw: fake_response(
        200, {"Content-Length": length}, b"[]"))
    assert transport.request(PeerConfig("p", "http://h:1/"), "GET", "/plugins").content == b"[]"
