"""HTTP to peers: credentials, configured headers, TLS options and timeouts of each peer.

One ``requests.Session`` per thread and peer keeps connections alive between requests.
"""

import threading
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from .config import PeerConfig, TransfersConfig


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    content: bytes


class PeerTransport:
    def __init__(self, config: TransfersConfig, requests_module: Any = None):
        if requests_module is None:
            import requests as requests_module  # a runtime dependency: python3-requests in Debian
        self._requests = requests_module
        self.config = config
        self._local = threading.local()

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

    def request(self, peer: PeerConfig, method: str, uri: str, *, body: Optional[bytes] = None,
                headers: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None) -> HttpAnswer:
        """One HTTP request; network failures raise ``requests`` exceptions for the caller to handle."""
        if timeout is None:
            timeout = self.config.peer_timeout(peer)
        r = self._session(peer).request(method, self.url(peer, uri), data=body, headers=dict(headers or {}),
                                        timeout=timeout, allow_redirects=False)
        return HttpAnswer(r.status_code, r.headers, r.content)

    def close(self) -> None:
        for session in (getattr(self._local, "sessions", None) or {}).values():
            session.close()
        self._local.sessions = {}
