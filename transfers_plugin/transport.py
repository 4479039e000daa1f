"""HTTP to peers: credentials, configured headers, TLS options and timeouts of each peer.

One ``requests.Session`` per thread and peer keeps connections alive between requests.
"""

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from .config import PeerConfig, TransfersConfig
from .errors import BadRequest, NetworkProtocol, TransfersError
from .protocol import DECIMAL, MB, Limits, parse_json_body, shown

# Statuses worth another attempt; any other non-200 answer will not change by asking again.
RETRYABLE_STATUSES = {408, 429, 500, 502, 503, 504}
MAX_BACKOFF = 10.0


class PeerError(NetworkProtocol):
    """A request to a peer failed for good; the message says which peer and why (502 to a REST caller)."""

    status = 502

    def __init__(self, message: str, status: Optional[int] = None, retryable: bool = True):
        super().__init__(message)
        self.http_status = status
        self.retryable = retryable


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    content: bytes
    cookies: Tuple[str, ...] = ()  # "name=value" of each Set-Cookie header, in order
    document: Any = None  # the JSON body, parsed within the limits, when the caller expects JSON


ERROR_BODY_LIMIT = 1 * MB  # what is read of a peer's error answer


def content_length(value: Optional[str]) -> Optional[int]:
    """The value of a Content-Length header, None when absent or not a plain decimal number."""
    return int(value) if value is not None and DECIMAL.fullmatch(str(value).strip()) else None


def refuse_content_encoding(response: Any, peer: PeerConfig, what: str) -> None:
    """We ask for ``identity``: an answer compressed anyway would be inflated by the HTTP client before any
    of our bounds applies (a few hundred bytes of nested gzip make gigabytes), so it is refused."""
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        response.close()
        raise PeerError(f"Peer {peer.name!r} ({peer.url}) answered {what} with Content-Encoding {shown(encoding)}, "
                        f"which was not asked for (a proxy compressing answers?)", retryable=False)


def read_body(response: Any, limit: int, peer: PeerConfig, what: str) -> bytes:
    """The body of a streamed answer, refused beyond ``limit`` bytes (a peer cannot make us hold more)."""
    length = content_length(response.headers.get("Content-Length"))
    if length is not None and length > limit:
        response.close()
        raise PeerError(f"Peer {peer.name!r} ({peer.url}) answered {what} with {length} bytes, more than "
                        f"the {limit // MB} MB accepted (Transfers.MaxJsonBodySize)", retryable=False)
    parts, size = [], 0
    for piece in response.iter_content(256 * 1024):
        size += len(piece)
        if size > limit:
            response.close()
            raise PeerError(f"Peer {peer.name!r} ({peer.url}) answered {what} with more than the "
                            f"{limit // MB} MB accepted (Transfers.MaxJsonBodySize)", retryable=False)
        parts.append(piece)
    return b"".join(parts)


def parse_peer_json(peer: PeerConfig, body: bytes, what: str, limits: Limits) -> Any:
    """A JSON document from a peer, bounded as a client's; a bad one is the peer's protocol error."""
    try:
        return parse_json_body(body, what, limits)
    except BadRequest as e:
        raise PeerError(f"Peer {peer.name!r} ({peer.url}) gave a bad {what}: {e.message}") from None


def set_cookies(raw_headers: Any) -> Tuple[str, ...]:
    """The ``name=value`` part of every ``Set-Cookie`` header (urllib3 keeps them apart)."""
    getlist = getattr(raw_headers, "getlist", None)
    values = getlist("Set-Cookie") if getlist else []
    return tuple(v.split(";", 1)[0].strip() for v in values if v.split(";", 1)[0].strip())


class PeerTransport:
    def __init__(self, config: TransfersConfig, requests_module: Any = None):
        if requests_module is None:
            import requests as requests_module  # a runtime dependency: python3-requests in Debian
        self._requests = requests_module
        self.config = config
        self._local = threading.local()
        self.on_retry: Callable[[], None] = lambda: None  # called before each retry of call() (the metrics)

    def url(self, peer: PeerConfig, uri: str) -> str:
        return peer.url.rstrip("/") + "/" + uri.lstrip("/")

    def _session(self, peer: PeerConfig):
        sessions: Optional[Dict[str, Any]] = getattr(self._local, "sessions", None)
        if sessions is None:
            sessions = self._local.sessions = {}
        key = (peer.name, peer.url)
        session = sessions.get(key)
        if session is None:
            session = self._requests.Session()
            session.trust_env = False
            if peer.username is not None:
                session.auth = (peer.username, peer.password or "")
            session.headers.update({"Accept-Encoding": "identity", "User-Agent": "orthanc-transfers-py"})
            session.headers.update(peer.headers)
            if peer.certificate_file:
                session.cert = ((peer.certificate_file, peer.certificate_key_file)
                                if peer.certificate_key_file else peer.certificate_file)
            if not self.config.https_verify_peers:
                session.verify = False
            elif self.config.https_ca_certificates:
                session.verify = self.config.https_ca_certificates
            if self.config.http_proxy:
                session.proxies = {"http": self.config.http_proxy, "https": self.config.http_proxy}
            sessions[key] = session
        return session

    def _send(self, peer: PeerConfig, method: str, uri: str, body: Any, headers: Optional[Mapping[str, str]],
              timeout: Optional[float], stream: bool = False):
        """One request; a kept-alive connection the peer closed meanwhile is replaced once, at no cost to the
        retry budget (Orthanc closes idle connections after a second)."""
        if timeout is None:
            timeout = self.config.peer_timeout(peer)
        session = self._session(peer)
        for attempt in (0, 1):
            try:
                response = session.request(method, self.url(peer, uri), data=body() if callable(body) else body,
                                           headers=dict(headers or {}), timeout=timeout, allow_redirects=False,
                                           stream=stream)
            except self._requests.ConnectionError as e:
                if attempt or not is_stale_connection(e):
                    raise
                continue
            refuse_content_encoding(response, peer, f"{method} {uri}")
            return response
        raise AssertionError("unreachable")

    def request(self, peer: PeerConfig, method: str, uri: str, *, body: Any = None,
                headers: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                max_bytes: Optional[int] = None) -> HttpAnswer:
        """One HTTP request; network failures raise ``requests`` exceptions for the caller to handle.
        ``body`` may be a function giving a fresh body for each attempt. The answer's body is read up to
        ``max_bytes``, by default ``Transfers.MaxJsonBodySize`` (1 MB for an error), and refused beyond (a
        ``PeerError``)."""
        r = self._send(peer, method, uri, body, headers, timeout, stream=True)
        try:
            limit = (max_bytes or self.config.limits.max_json_bytes) if r.status_code == 200 else ERROR_BODY_LIMIT
            content = read_body(r, limit, peer, f"{method} {uri}")
        finally:
            r.close()
        raw_headers = getattr(getattr(r, "raw", None), "headers", None)
        return HttpAnswer(r.status_code, r.headers, content, set_cookies(raw_headers))

    def stream(self, peer: PeerConfig, uri: str, *, headers: Optional[Mapping[str, str]] = None,
               timeout: Optional[float] = None):
        """A GET whose body is read by the caller (``iter_content``); the caller closes it."""
        return self._send(peer, "GET", uri, None, headers, timeout, stream=True)

    def call(self, peer: PeerConfig, method: str, uri: str, *, body: Any = None,
             headers: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
             retries: Optional[int] = None, stop_event: Any = None, expect_json: bool = False,
             abandon_on_stop: bool = False, on_abandoned: Optional[Callable[[HttpAnswer], None]] = None,
             max_bytes: Optional[int] = None) -> HttpAnswer:
        """A request that must answer 200, tried up to ``1 + retries`` times with a growing delay between
        attempts (1, 2, 4... seconds, at most 10); a set ``stop_event`` ends the waiting at once.
        ``body`` may be a function giving a fresh body for each attempt (a stoppable upload). With
        ``abandon_on_stop``, a set ``stop_event`` also ends the wait for an answer (a peer that stalls): the
        request goes on in a thread of its own, and its answer is dropped (given to ``on_abandoned``).
        ``max_bytes`` bounds the answer's body below ``Transfers.MaxJsonBodySize`` (see ``request``)."""
        if retries is None:
            retries = self.config.max_http_retries
        error: Optional[PeerError] = None
        for attempt in range(retries + 1):
            try:
                if abandon_on_stop and stop_event is not None:
                    answer = until_stopped(lambda: self.request(peer, method, uri, body=body, headers=headers,
                                                                timeout=timeout, max_bytes=max_bytes), stop_event,
                                           f"{method} {uri} to peer {peer.name!r}", on_abandoned=on_abandoned)
                else:
                    answer = self.request(peer, method, uri, body=body, headers=headers, timeout=timeout,
                                          max_bytes=max_bytes)
                error = check_answer(peer, method, uri, answer)
                if error is None and expect_json:
                    document = parse_peer_json(peer, answer.content, f"answer to {method} {uri}",
                                               self.config.limits)
                    return dataclasses.replace(answer, document=document)
                if error is None:
                    return answer
            except PeerError as e:
                error = e
            except self._requests.RequestException as e:
                error = PeerError(describe_network_error(peer, e))
            if not error.retryable or attempt == retries:
                break
            delay = min(MAX_BACKOFF, 2.0 ** attempt)
            self.on_retry()
            if stop_event is not None:
                if stop_event.wait(delay):
                    break
            else:
                time.sleep(delay)
        assert error is not None
        raise error

    def close(self) -> None:
        for session in (getattr(self._local, "sessions", None) or {}).values():
            session.close()
        self._local.sessions = {}


def until_stopped(fn: Callable[[], Any], stop_event: Any, what: str, poll: float = 0.1,
                  on_abandoned: Optional[Callable[[Any], None]] = None) -> Any:
    """``fn()``, run in a daemon thread while the caller waits for it or for ``stop_event``, whichever comes
    first; when the stop comes first, raises a ``PeerError`` and leaves ``fn`` to end on its own (a blocked
    read ends at its timeout); if it then succeeds, ``on_abandoned(result)`` undoes what it did (a push
    transaction created for nobody), in that thread."""
    box: Dict[str, Any] = {}
    done = threading.Event()
    lock = threading.Lock()  # the result and the abandon are decided one at a time

    def run() -> None:
        try:
            value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            with lock:
                box["error"] = e
                done.set()
            return
        with lock:
            box["value"] = value
            done.set()
            late = box.get("abandoned", False)
        if late and on_abandoned is not None:
            try:
                on_abandoned(value)
            except Exception:  # noqa: BLE001 - best effort: the receiver's idle expiry is the fallback
                pass

    threading.Thread(target=run, daemon=True, name="transfers-request").start()
    while not done.wait(poll):
        if stop_event.is_set():
            with lock:
                if not done.is_set():
                    box["abandoned"] = True
                    raise PeerError(f"{what} was abandoned: the job was asked to stop", retryable=False)
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_answer(peer: PeerConfig, method: str, uri: str, answer: HttpAnswer) -> Optional[PeerError]:
    """None for a 200 answer; otherwise the error, with what the peer said about it (the ``Message`` of an
    Orthanc error body, or the start of its text)."""
    if answer.status == 200:
        return None
    if answer.status in (401, 403):
        return PeerError(f"Peer {peer.name!r} ({peer.url}) refused our credentials: HTTP {answer.status} "
                         f"to {method} {uri}", answer.status, retryable=False)
    said = error_text(answer.content)
    return PeerError(f"Peer {peer.name!r} ({peer.url}) answered HTTP {answer.status} to {method} {uri}"
                     + (f": {said}" if said else ""), answer.status,
                     retryable=answer.status in RETRYABLE_STATUSES)


def error_text(body: bytes, limit: int = 300) -> str:
    """What an error answer says, in one printable line of at most ``limit`` characters."""
    text = ""
    try:
        document = parse_json_body(body[:ERROR_BODY_LIMIT], "error answer")
        if isinstance(document, dict) and isinstance(document.get("Message"), str):
            text = document["Message"]
    except BadRequest:
        pass
    if not text:
        text = body[:limit + 1].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


def is_stale_connection(e: BaseException) -> bool:
    """A reused connection that the peer had closed: no answer at all, neither a timeout nor a refusal."""
    text = repr(e)
    return any(sign in text for sign in ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError",
                                         "Connection aborted"))


def transfer_headers(transfer_id: Optional[str], content_type: Optional[str] = None,
                     cookie: Optional[str] = None) -> Dict[str, str]:
    """The headers of a transfer's requests: ``sender-transfer-id``, the body's type, the sticky cookies."""
    headers = {"sender-transfer-id": transfer_id or ""}
    if content_type:
        headers["Content-Type"] = content_type
    if cookie:
        headers["Cookie"] = cookie
    return headers


def as_transfer_error(peer: PeerConfig, e: Exception) -> Exception:
    """Network exceptions of ``requests`` as a PeerError that names the peer; others unchanged."""
    if isinstance(e, TransfersError):
        return e
    if type(e).__module__.split(".")[0] in ("requests", "urllib3"):
        return PeerError(describe_network_error(peer, e))
    return e


# Signs in the text of a network exception (requests wraps urllib3, which wraps the socket's error), first
# match wins, and what each says of the peer, in words for an administrator.
_NETWORK_REASONS = (
    (("Read timed out", "ReadTimeout"), "gave no answer within the timeout"),
    (("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "doesn't match", "hostname mismatch"),
     "cannot be reached: its TLS certificate is not trusted or does not match its host name (check "
     "HttpsCACertificates, HttpsVerifyPeers and the host name in the peer's URL)"),
    (("SSLError", "SSL:", "TLS"), "cannot be reached: the TLS handshake failed (is it HTTPS on that port?)"),
    (("Connection refused",), "cannot be reached: the connection was refused (is Orthanc running there, on that "
                              "port?)"),
    (("Name or service not known", "Temporary failure in name resolution", "nodename nor servname"),
     "cannot be reached: its host name cannot be resolved"),
    (("No route to host", "Network is unreachable"), "cannot be reached: its network cannot be reached"),
    (("Connection reset by peer",), "reset the connection"),
    (("RemoteDisconnected", "Connection aborted", "BrokenPipe", "IncompleteRead", "ProtocolError",
      "Connection broken"), "closed the connection before the answer ended"),
)


def network_reason(e: BaseException) -> str:
    """What went wrong with the peer, in words (the exception's own text holds object addresses and errno
    codes)."""
    name = type(e).__name__
    if "ConnectTimeout" in name:
        return "cannot be reached: the connection timed out"
    text = f"{name} {e!r} {e}"
    for signs, reason in _NETWORK_REASONS:
        if any(sign in text for sign in signs):
            return reason
    if "Timeout" in name:
        return "gave no answer within the timeout"
    return "cannot be reached: the connection failed" if "ConnectionError" in name else \
        f"cannot be reached: the request failed ({name})"


def describe_network_error(peer: PeerConfig, e: Exception) -> str:
    return f"Peer {peer.name!r} ({peer.url}) {network_reason(e)}"


class StoppableBody:
    """A request body that stops being sent once ``stop_event`` is set, aborting the upload at once.

    Iterated, not read: HTTP clients read a readable body in small blocks (8 KB in Python's http.client),
    one copy and one system call each; an iterable body goes out in ``PIECE``-sized slices of the buffer,
    without copies. ``__len__`` gives the Content-Length. Each iteration starts from the first byte, so a
    retry that reuses the object sends the whole body again.
    """

    PIECE = 256 * 1024

    def __init__(self, data: bytes, stop_event: Any, on_sent: Callable[[], None] = lambda: None,
                 limiter: Any = None):
        """``on_sent`` is called once the last byte is handed to the connection (before the answer);
        ``limiter`` (a ``bandwidth.RateLimiter`` shared by a job's workers) is asked for each slice first."""
        self._view = memoryview(data)
        self._stop = stop_event
        self._on_sent = on_sent
        self._limiter = limiter

    def __len__(self) -> int:
        return len(self._view)

    def __iter__(self) -> Iterator[memoryview]:
        for position in range(0, len(self._view), self.PIECE):
            if self._stop is not None and self._stop.is_set():
                raise OSError("upload stopped: the job was asked to stop")
            piece = self._view[position:position + self.PIECE]
            if self._limiter is not None and not self._limiter.acquire(len(piece), self._stop):
                raise OSError("upload stopped: the job was asked to stop")
            yield piece
        self._on_sent()


class AnswerTail:
    """When the rest of an answer will arrive sooner than a new request would get its first byte.

    ``length`` is the answer's Content-Length (None when unknown: never), ``first_byte_delay`` the time the
    request took to get its headers back (a round trip plus the peer's preparation of the answer). Once at
    least ``min_bytes`` arrived, the rate so far predicts how long the rest takes; when that is no more than
    ``first_byte_delay``, a new request sent now would get its first byte about when this answer ends, so
    the connection never idles between two buckets. On loopback the delay is tiny, so this happens at the
    very end; on a long link it happens a round trip before the end.
    """

    def __init__(self, length: Optional[str], first_byte_delay: float, started: Optional[float] = None,
                 min_bytes: int = 128 * 1024):
        self.length = content_length(length)
        self.first_byte_delay = max(0.0, first_byte_delay)
        self.started = time.monotonic() if started is None else started
        self.min_bytes = min_bytes

    def hides_next_request(self, received: int, now: float) -> bool:
        if self.length is None or received < self.min_bytes:
            return False
        remaining = self.length - received
        if remaining <= 0:
            return True
        elapsed = now - self.started
        if elapsed <= 0:
            return False
        return remaining * elapsed / received <= self.first_byte_delay

