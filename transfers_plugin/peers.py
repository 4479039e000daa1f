"""Peer detection for ``GET /transfers/peers``: which peers run a transfers plugin (protocol.md 9).

Every peer is probed at once, each in its own thread, and the answer is given by a deadline: a peer
that has not answered within ``PeerConnectivityTimeout`` is ``disabled``, and no peer's failure changes
the result of another.
"""

import threading
import time
from typing import Callable, Dict, Mapping

from .config import PeerConfig
from .errors import BadRequest
from .protocol import parse_json_body

INSTALLED = "installed"
BIDIRECTIONAL = "bidirectional"
DISABLED = "disabled"

PLUGIN_NAME = "transfers"


def has_transfers_plugin(status: int, body: bytes) -> bool:
    """True when a ``GET /plugins`` answer is 200 with a JSON array holding ``"transfers"``."""
    if status != 200:
        return False
    try:
        plugins = parse_json_body(body, "answer to GET /plugins")
    except BadRequest:
        return False
    return isinstance(plugins, list) and PLUGIN_NAME in plugins


def classify(peer: PeerConfig, installed: bool) -> str:
    if not installed:
        return DISABLED
    return BIDIRECTIONAL if peer.remote_self is not None else INSTALLED


def probe_peers(peers: Mapping[str, PeerConfig], timeout: float,
                probe: Callable[[PeerConfig, float], bool],
                log_failure: Callable[[str], None] = lambda message: None) -> Dict[str, str]:
    """``{name: installed|bidirectional|disabled}`` in name order, within ``timeout`` seconds.

    ``probe(peer, timeout)`` returns whether the peer has the plugin; any exception means it has not.
    """
    results: Dict[str, bool] = {}
    lock = threading.Lock()

    def run(peer: PeerConfig) -> None:
        try:
            ok = bool(probe(peer, timeout))
        except Exception as e:  # noqa: BLE001 - a dead peer is an answer, reported in the log
            log_failure(f"Transfers: peer {peer.name!r} at {peer.url} cannot be reached: {e}")
            ok = False
        with lock:
            results[peer.name] = ok

    threads = []
    for peer in peers.values():
        t = threading.Thread(target=run, args=(peer,), name=f"transfers-probe-{peer.name}", daemon=True)
        t.start()
        threads.append(t)
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        done = dict(results)
    for name in peers:
        if name not in done:
            log_failure(f"Transfers: peer {name!r} did not answer within {timeout} s")
    return {name: classify(peers[name], done.get(name, False)) for name in sorted(peers)}
