"""PeerTransport.call against a local HTTP server: retries with backoff, what is not retried, stop_event."""

import json
import socket
import threading
import time
import types
from typing import List

import pytest
import requests
from werkzeug import Response as WResponse

from transfers_plugin import transport as transport_module
from transfers_plugin.config import PeerConfig, TransfersConfig
from transfers_plugin.errors import NetworkProtocol
from transfers_plugin.transport import (
    MAX_BACKOFF,
    PeerError,
    PeerTransport,
    check_answer,
    describe_network_error,
    until_stopped,
)

LOOKUP = "/transfers/lookup"


class Sleeps:
    """Stands for time.sleep inside the transport module: records the delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: List[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps(monkeypatch):
    s = Sleeps()
    monkeypatch.setattr(transport_module, "time", types.SimpleNamespace(sleep=s.sleep))
    return s


def peer_at(url: str, name: str = "remote") -> PeerConfig:
    return PeerConfig(name, url if url.endswith("/") else url + "/")


def make_transport(**kwargs) -> PeerTransport:
    return PeerTransport(TransfersConfig(http_timeout=10, **kwargs))


@pytest.fixture
def peer(httpserver):
    return peer_at(httpserver.url_for("/"))


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_200_first_time_is_one_request(httpserver, peer, sleeps):
    httpserver.expect_request(LOOKUP, method="POST", data=b"[]").respond_with_data('{"Instances": []}')
    answer = make_transport().call(peer, "POST", LOOKUP, body=b"[]", retries=3, expect_json=True)
    assert answer.status == 200 and answer.content == b'{"Instances": []}'
    assert len(httpserver.log) == 1
    assert httpserver.log[0][0].get_data() == b"[]"
    assert sleeps.delays == []


def test_503_then_200_succeeds_after_two_requests(httpserver, peer, sleeps):
    httpserver.expect_ordered_request(LOOKUP).respond_with_data("busy", status=503)
    httpserver.expect_ordered_request(LOOKUP).respond_with_data("{}", status=200)
    answer = make_transport().call(peer, "POST", LOOKUP, retries=2)
    assert answer.status == 200
    assert len(httpserver.log) == 2
    assert sleeps.delays == [1.0]
    httpserver.check_assertions()


def test_503_then_200_with_the_real_backoff(httpserver, peer):
    """Once with real waiting: the first delay is one second."""
    httpserver.expect_ordered_request(LOOKUP).respond_with_data("busy", status=503)
    httpserver.expect_ordered_request(LOOKUP).respond_with_data("{}", status=200)
    answer = make_transport().call(peer, "POST", LOOKUP, retries=2)
    assert answer.status == 200
    assert len(httpserver.log) == 2


def test_retries_default_to_max_http_retries(httpserver, peer, sleeps):
    httpserver.expect_request(LOOKUP).respond_with_data("busy", status=503)
    with pytest.raises(PeerError):
        make_transport(max_http_retries=2).call(peer, "POST", LOOKUP)
    assert len(httpserver.log) == 3
    httpserver.clear_log()
    with pytest.raises(PeerError):
        make_transport().call(peer, "POST", LOOKUP)  # MaxHttpRetries defaults to 0
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_not_retried(httpserver, peer, sleeps, status):
    httpserver.expect_request(LOOKUP).respond_with_data("Unauthorized", status=status)
    with pytest.raises(PeerError) as e:
        make_transport().call(peer, "POST", LOOKUP, retries=3)
    assert len(httpserver.log) == 1
    assert sleeps.delays == []
    assert "credentials" in e.value.message and "'remote'" in e.value.message
    assert e.value.http_status == status and e.value.retryable is False


@pytest.mark.parametrize("status", [400, 404, 405, 415])
def test_other_client_errors_are_not_retried(httpserver, peer, sleeps, status):
    httpserver.expect_request(LOOKUP).respond_with_data("nope", status=status)
    with pytest.raises(PeerError) as e:
        make_transport().call(peer, "POST", LOOKUP, retries=3)
    assert len(httpserver.log) == 1
    assert e.value.http_status == status and not e.value.retryable
    assert f"HTTP {status}" in e.value.message and "nope" in e.value.message


@pytest.mark.parametrize("status", sorted(transport_module.RETRYABLE_STATUSES))
def test_retryable_statuses(httpserver, peer, sleeps, status):
    httpserver.expect_request(LOOKUP).respond_with_data("later", status=status)
    with pytest.raises(PeerError) as e:
        make_transport().call(peer, "POST", LOOKUP, retries=1)
    assert len(httpserver.log) == 2
    assert e.value.retryable and e.value.http_status == status


def test_retries_exhausted_raise_the_last_error_with_growing_delays(httpserver, peer, sleeps):
    httpserver.expect_request(LOOKUP).respond_with_data("overloaded", status=503)
    with pytest.raises(PeerError) as e:
        make_transport().call(peer, "POST", LOOKUP, retries=6)
    assert len(httpserver.log) == 7
    assert sleeps.delays == [1.0, 2.0, 4.0, 8.0, MAX_BACKOFF, MAX_BACKOFF]
    assert e.value.http_status == 503
    assert "'remote'" in e.value.message and "HTTP 503" in e.value.message and "overloaded" in e.value.message
    assert isinstance(e.value, NetworkProtocol)


def test_a_body_that_is_not_json_is_retried_when_json_is_expected(httpserver, peer, sleeps):
    httpserver.expect_ordered_request(LOOKUP).respond_with_data("<html>proxy</html>", status=200)
    httpserver.expect_ordered_request(LOOKUP).respond_with_data('{"ok": true}', status=200)
    answer = make_transport().call(peer, "POST", LOOKUP, retries=1, expect_json=True)
    assert answer.content == b'{"ok": true}'
    assert len(httpserver.log) == 2


def test_not_json_when_exhausted(httpserver, peer, sleeps):
    httpserver.expect_request(LOOKUP).respond_with_data("<html>proxy</html>", status=200)
    with pytest.raises(PeerError, match="not valid JSON"):
        make_transport().call(peer, "POST", LOOKUP, retries=0, expect_json=True)


def test_connection_refused_names_the_peer(sleeps):
    peer = peer_at(f"http://127.0.0.1:{closed_port()}/", name="gone-peer")
    with pytest.raises(PeerError) as e:
        make_transport().call(peer, "GET", "/plugins", retries=0)
    assert "'gone-peer'" in e.value.message and peer.url in e.value.message
    assert "cannot be reached" in e.value.message
    assert e.value.http_status is None and e.value.retryable


def test_connection_refused_is_retried(sleeps):
    peer = peer_at(f"http://127.0.0.1:{closed_port()}/", name="gone-peer")
    with pytest.raises(PeerError, match="gone-peer"):
        make_transport().call(peer, "GET", "/plugins", retries=2)
    assert sleeps.delays == [1.0, 2.0]


def test_a_stop_event_already_set_stops_at_once(httpserver, peer):
    httpserver.expect_request(LOOKUP).respond_with_data("busy", status=503)
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    with pytest.raises(PeerError) as e:
        make_transport().call(peer, "POST", LOOKUP, retries=5, stop_event=stop)
    assert time.monotonic() - t0 < 0.9  # the first backoff is 1 s, the ones after much longer
    assert len(httpserver.log) == 1
    assert e.value.http_status == 503


def test_a_stop_event_set_while_waiting_ends_the_wait(httpserver, peer):
    httpserver.expect_request(LOOKUP).respond_with_data("busy", status=503)
    stop = threading.Event()
    calls: List[float] = []
    real_wait = stop.wait

    def wait(timeout=None):  # the backoff: set the event from elsewhere shortly after it starts
        calls.append(timeout)
        threading.Timer(0.05, stop.set).start()
        return real_wait(timeout)

    stop.wait = wait
    t0 = time.monotonic()
    with pytest.raises(PeerError):
        make_transport().call(peer, "POST", LOOKUP, retries=5, stop_event=stop)
    assert time.monotonic() - t0 < 0.9
    assert calls == [1.0]
    assert len(httpserver.log) == 1


def test_a_stop_event_that_stays_clear_waits_the_backoff(httpserver, peer):
    httpserver.expect_request(LOOKUP).respond_with_data("busy", status=503)

    class RecordingEvent:
        def __init__(self) -> None:
            self.timeouts: List[float] = []

        def wait(self, timeout=None) -> bool:
            self.timeouts.append(timeout)
            return False

    stop = RecordingEvent()
    with pytest.raises(PeerError):
        make_transport().call(peer, "POST", LOOKUP, retries=3, stop_event=stop)
    assert stop.timeouts == [1.0, 2.0, 4.0]
    assert len(httpserver.log) == 4


def test_check_answer():
    from transfers_plugin.transport import HttpAnswer

    peer = peer_at("http://p:8042")
    assert check_answer(peer, "GET", "/x", HttpAnswer(200, {}, b"not json")) is None
    error = check_answer(peer, "GET", "/x", HttpAnswer(500, {}, b"x" * 1000))
    assert error.retryable and error.http_status == 500 and len(error.message) < 400
    said = json.dumps({"HttpStatus": 507, "Message": "The download area /var/x is full\n(No space)"}).encode()
    error = check_answer(peer, "PUT", "/x", HttpAnswer(507, {}, said))
    assert not error.retryable and error.http_status == 507
    assert error.message.endswith("answered HTTP 507 to PUT /x: The download area /var/x is full (No space)")
    error = check_answer(peer, "PUT", "/x", HttpAnswer(500, {}, b"[" * 100000))  # what it says is bounded too
    assert error.message.endswith("[" * 300 + "...")


def test_a_body_factory_gives_each_attempt_a_fresh_body(httpserver, peer, sleeps):
    httpserver.expect_ordered_request(LOOKUP, data=b"payload").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request(LOOKUP, data=b"payload").respond_with_data("{}", status=200)
    made: List[bytes] = []

    def body() -> bytes:
        made.append(b"payload")
        return made[-1]

    assert make_transport().call(peer, "POST", LOOKUP, body=body, retries=2).status == 200
    assert len(made) == 2
    assert [r.get_data() for r, _ in httpserver.log] == [b"payload", b"payload"]
    httpserver.check_assertions()


# --- StoppableBody: the bodies of push PUTs ----------------------------------------------------------------

def test_a_stoppable_body_goes_out_whole_with_its_length_not_chunked(httpserver, peer):
    data = bytes(range(256)) * 4099  # not a multiple of the piece size
    httpserver.expect_request("/transfers/push/t/0", method="PUT").respond_with_data("{}")
    stop = threading.Event()
    answer = make_transport().call(peer, "PUT", "/transfers/push/t/0",
                                   body=lambda: transport_module.StoppableBody(data, stop), stop_event=stop)
    assert answer.status == 200
    request, _ = httpserver.log[0]
    assert request.headers.get("Content-Length") == str(len(data))
    assert "Transfer-Encoding" not in request.headers
    assert request.get_data() == data


def test_a_stoppable_body_is_iterated_in_slices_of_its_buffer_from_the_start_each_time():
    data = bytes(range(256)) * 2049
    body = transport_module.StoppableBody(data, threading.Event())
    assert len(body) == len(data)
    pieces = list(body)
    assert [len(p) for p in pieces[:-1]] == [body.PIECE] * (len(pieces) - 1)
    assert 0 < len(pieces[-1]) <= body.PIECE
    assert all(isinstance(p, memoryview) and p.obj is data for p in pieces)  # no copies
    assert b"".join(pieces) == data
    assert b"".join(body) == data  # iterated again: the whole body again


def test_a_stop_event_set_during_an_upload_aborts_it(httpserver, peer):
    data = bytes(4 * 1024 * 1024)
    httpserver.expect_request("/transfers/push/t/0", method="PUT").respond_with_data("{}")
    stop = threading.Event()
    sent: List[int] = []

    class Body(transport_module.StoppableBody):
        def __iter__(self):
            for piece in super().__iter__():
                sent.append(len(piece))
                if len(sent) == 2:
                    stop.set()  # asked to stop after the second piece
                yield piece

    done: List[bool] = []
    with pytest.raises(PeerError):
        make_transport().call(peer, "PUT", "/transfers/push/t/0", retries=3, stop_event=stop,
                              body=lambda: Body(data, stop, on_sent=lambda: done.append(True)))
    assert len(sent) == 2  # the third piece was never sent, and nothing was retried
    assert done == [], "an aborted body is not reported as sent"
    assert all(r.get_data() != data for r, _ in httpserver.log)


def test_a_stoppable_body_says_when_its_last_byte_is_sent(httpserver, peer):
    data = bytes(range(256)) * 3000
    events: List[str] = []

    def answer(request):
        events.append("answered")
        return WResponse("{}")

    httpserver.expect_request("/transfers/push/t/0", method="PUT").respond_with_handler(answer)
    body = transport_module.StoppableBody(data, threading.Event(), on_sent=lambda: events.append("sent"))
    assert make_transport().call(peer, "PUT", "/transfers/push/t/0", body=body).status == 200
    assert sorted(events) == ["answered", "sent"], "called once, after the last piece"


@pytest.mark.parametrize("exc,words", [
    (requests.ConnectTimeout("x"), "cannot be reached: the connection timed out"),
    (requests.ReadTimeout("HTTPConnectionPool(host='h', port=1): Read timed out. (read timeout=2)"),
     "gave no answer within the timeout"),
    (requests.ConnectionError("HTTPConnectionPool(host='h', port=1): Read timed out."),
     "gave no answer within the timeout"),
    (requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get "
                                  "local issuer certificate (_ssl.c:992)"), "TLS certificate is not trusted"),
    (requests.exceptions.SSLError("CertificateError(\"hostname '127.0.0.1' doesn't match 'localhost'\")"),
     "does not match its host name"),
    (requests.ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused"),
     "cannot be reached: the connection was refused"),
    (requests.ConnectionError("[Errno -2] Name or service not known"), "host name cannot be resolved"),
    (requests.ConnectionError("('Connection aborted.', RemoteDisconnected('Remote end closed connection'))"),
     "closed the connection before the answer ended"),
    (requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(10 bytes read)"),
     "closed the connection before the answer ended"),
    (requests.ConnectionError("something new"), "cannot be reached: the connection failed"),
])
def test_network_errors_are_said_in_words(exc, words):
    message = describe_network_error(peer_at("http://h:1/", name="b"), exc)
    assert message.startswith("Peer 'b' (http://h:1/) ") and words in message
    assert "[Errno" not in message and "Pool" not in message and "0x" not in message


def test_a_request_that_stalls_is_abandoned_at_a_stop():
    stop = threading.Event()
    unblock = threading.Event()
    threading.Timer(0.2, stop.set).start()
    try:
        with pytest.raises(PeerError) as e:
            until_stopped(lambda: unblock.wait(30), stop, "POST /transfers/lookup to peer 'b'")
        assert "abandoned" in e.value.message and not e.value.retryable and not unblock.is_set()
    finally:
        unblock.set()
    assert until_stopped(lambda: 42, threading.Event(), "x") == 42
    with pytest.raises(KeyError):
        until_stopped(lambda: {}["k"], threading.Event(), "x")


def test_a_request_abandoned_by_a_stop_that_succeeds_later_is_undone():
    stop, unblock, undone = threading.Event(), threading.Event(), []
    threading.Timer(0.2, stop.set).start()
    with pytest.raises(PeerError):
        until_stopped(lambda: unblock.wait(30) and "created", stop, "POST /transfers/push", on_abandoned=undone.append)
    unblock.set()
    deadline = time.monotonic() + 5
    while not undone and time.monotonic() < deadline:
        time.sleep(0.01)
    assert undone == ["created"]
    undone.clear()
    assert until_stopped(lambda: "kept", threading.Event(), "x", on_abandoned=undone.append) == "kept"
    time.sleep(0.1)
    assert undone == [], "a request that was not abandoned is not undone"
