"""What the other end supports, learned one way, and never asked of a C++ peer.

Our plugin's ``GET /plugins/transfers`` answer carries one key the C++ plugin's has not,
``"Capabilities": "/transfers/capabilities"``. ``GET /plugins/transfers`` is a route of Orthanc's core (the
C++ plugin's answer is the core's description of the plugin, and an Orthanc without the plugin answers 404),
so asking it is harmless for any peer; only a peer whose answer names that route is then asked
``GET /transfers/capabilities``:

    {"Implementation": "orthanc-transfers-py", "Version": "0.1.0", "Server": "<a UUID>",
     "Features": ["bandwidth-cap", "metadata", "skip-existing"], "Compression": ["none", "gzip"]}

``Server`` is a random identifier that the plugin makes when it starts (one per Orthanc process; absent in
older peers of ours): a job whose peer answers the identifier of its own process is a transfer of this
Orthanc to itself (upstream's own tests of the C++ plugin do that, as do administrators checking a setup),
which then moves everything, as the C++ plugin does, instead of skipping every instance as held
(:func:`same_server`).

A job asks once per peer (``PeerCapabilities`` caches the answer, and a job keeps it in its resume state:
:func:`of_job`).
Every answer is a peer's, hence hostile: at most ``MAX_ANSWER_BYTES``, its types checked, its lists bounded;
a peer that answers anything else is treated as a C++ peer (it gets everything, as today). Features:

- ``skip-existing``: the peer answers ``POST /transfers/holds`` (:mod:`holdings`), so a sender leaves out
  what it already holds; it also takes ``"SkipExisting"`` in ``/transfers/pull`` (a send in pull mode);
- ``bandwidth-cap``: the peer takes ``"MaxBandwidthKBs"`` in ``/transfers/pull``;
- ``metadata``: the peer answers ``POST /transfers/metadata`` (a source), takes
  ``POST /transfers/push/{id}/metadata`` (a receiver) and ``"Metadata"`` in ``/transfers/pull`` (:mod:`metadata`);
- ``progressive-commit``: the peer takes ``"ProgressiveCommit"`` in ``/transfers/pull`` and in a push
  descriptor (:mod:`progressive`).

"Compression" lists the wire codecs the peer encodes and decodes: ``zstd-shuffle`` only where ``zstandard``
imports. :func:`choose_compression` turns what a client asked for into what goes on the wire: ``none`` and
``gzip`` as asked; ``auto`` and ``zstd-shuffle`` give ``zstd-shuffle`` when both ends list it, else ``gzip``
(a C++ peer, an older peer of ours, or no zstandard at one end), with a log line when it was asked by name.
"""

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

from .codec import AUTO, ZSTD_SHUFFLE, codec_names
from .errors import TransfersError

CAPABILITIES_URI = "/transfers/capabilities"
PLUGIN_INFO_URI = "/plugins/transfers"
IMPLEMENTATION = "orthanc-transfers-py"
SKIP_EXISTING = "skip-existing"
BANDWIDTH_CAP = "bandwidth-cap"
METADATA = "metadata"
PROGRESSIVE_COMMIT = "progressive-commit"
FEATURES: Tuple[str, ...] = (SKIP_EXISTING, BANDWIDTH_CAP, METADATA, PROGRESSIVE_COMMIT)
MAX_ANSWER_BYTES = 64 * 1024
JOB_STATE_KEY = "PeerCapabilities"  # where a job keeps its peer's answer (of_job)
MAX_ITEMS = 64
MAX_TEXT = 64


@dataclass(frozen=True)
class Capabilities:
    implementation: str
    version: str
    features: FrozenSet[str]
    compression: Tuple[str, ...]
    server: Optional[str] = None  # the peer's process (see the module's description); None: an older peer

    def supports(self, feature: str) -> bool:
        return feature in self.features

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"Implementation": self.implementation, "Version": self.version}
        if self.server is not None:
            out["Server"] = self.server
        out.update(Features=sorted(self.features), Compression=list(self.compression))
        return out


def local_capabilities(version: str, server: Optional[str] = None) -> Dict[str, Any]:
    """The answer of our ``GET /transfers/capabilities``."""
    return Capabilities(IMPLEMENTATION, version, frozenset(FEATURES), codec_names(), server).to_json()


def same_server(caps: Optional[Capabilities], server: Optional[str]) -> bool:
    """Whether ``caps`` are the answer of this very process (``server``: its identifier): a transfer of an
    Orthanc to itself. False for a C++ peer, an older peer of ours, or when ``server`` is unknown."""
    return bool(server) and caps is not None and caps.server == server


def to_itself_note(job_id: str, peer_name: str) -> str:
    """The log line of a job that skips nothing because its peer is this Orthanc itself (:func:`same_server`)."""
    return (f"Transfers: job {job_id}: peer {peer_name!r} is this Orthanc itself: nothing is skipped, everything "
            f"is transferred")


def needs_peer(requested: str) -> bool:
    """Whether the wire compression of ``requested`` depends on the peer (``auto``, ``zstd-shuffle``)."""
    return requested in (AUTO, ZSTD_SHUFFLE)


def choose_compression(requested: str, caps: Optional[Capabilities], peer_name: str,
                       log_warning: Callable[[str], None] = lambda m: None) -> str:
    """The wire compression of a transfer with a peer of capabilities ``caps`` (None: a C++ peer)."""
    if not needs_peer(requested):
        return requested
    if ZSTD_SHUFFLE in codec_names() and caps is not None and ZSTD_SHUFFLE in caps.compression:
        return ZSTD_SHUFFLE
    if requested == ZSTD_SHUFFLE:
        why = ("zstandard is not installed here" if ZSTD_SHUFFLE not in codec_names()
               else "it does not list it (a C++ peer, an older one, or one without zstandard)")
        log_warning(f"Transfers: {ZSTD_SHUFFLE} asked for with peer {peer_name!r}, but {why}: the transfer uses gzip")
    return "gzip"


def advertises(plugin_info: Any) -> bool:
    """Whether a ``GET /plugins/transfers`` answer is our plugin's (it names the capabilities route)."""
    return isinstance(plugin_info, dict) and plugin_info.get("Capabilities") == CAPABILITIES_URI


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or not value.isprintable():
        raise ValueError(f"{what} must be a short printable string")
    return value


def _texts(value: Any, what: str) -> Tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise ValueError(f"{what} must be a JSON array of at most {MAX_ITEMS} strings")
    return tuple(_text(v, f"an item of {what}") for v in value)


def parse_capabilities(document: Any) -> Capabilities:
    """A peer's capabilities answer, checked; ``ValueError`` says what is wrong. Unknown features and
    compressions are kept (a newer peer), unknown keys ignored."""
    if not isinstance(document, dict):
        raise ValueError("the capabilities answer must be a JSON object")
    server = document.get("Server")
    return Capabilities(_text(document.get("Implementation"), "Implementation"),
                        _text(document.get("Version"), "Version"),
                        frozenset(_texts(document.get("Features"), "Features")),
                        _texts(document.get("Compression"), "Compression"),
                        None if server is None else _text(server, "Server"))


def ask(transport: Any, peer: Any, stop_event: Any = None,
        log_warning: Callable[[str], None] = lambda m: None,
        timeout: Optional[float] = None) -> Optional[Capabilities]:
    """The capabilities of ``peer``, None for a C++ peer, a peer without the plugin, a peer that cannot be
    reached or does not answer within ``timeout`` (``PeerConnectivityTimeout``, as the ``/plugins`` probes;
    the transfer itself then says what is wrong with the peer) or one whose answer is not valid: it gets
    everything. A stop (pause, cancel) does not wait for the answer."""
    def get(uri: str) -> Any:
        return transport.call(peer, "GET", uri, expect_json=True, retries=0, stop_event=stop_event, timeout=timeout,
                              max_bytes=MAX_ANSWER_BYTES, abandon_on_stop=stop_event is not None).document

    try:
        if not advertises(get(PLUGIN_INFO_URI)):
            return None
        return parse_capabilities(get(CAPABILITIES_URI))
    except TransfersError as e:
        log_warning(f"Transfers: the capabilities of peer {peer.name!r} are unknown ({e.message}): it is treated as "
                    f"a C++ peer")
    except ValueError as e:
        log_warning(f"Transfers: peer {peer.name!r} gave a bad capabilities answer ({e}): it is treated as a C++ "
                    f"peer")
    return None


def of_job(ctx: Any, transport: Any, peer: Any, log_warning: Callable[[str], None],
           timeout: Optional[float]) -> Optional[Capabilities]:
    """The capabilities of a job's peer (see :func:`ask`), asked once per job and kept in its resume state
    (``PeerCapabilities``: a resumed job decides as it did); ``ctx`` is a ``JobContext``, checked after (a
    stop ends the job there)."""
    state = ctx.resume_state
    if JOB_STATE_KEY in state:
        caps = from_state(state[JOB_STATE_KEY])
    else:
        caps = ask(transport, peer, ctx.stop_event, log_warning, timeout)
        ctx.check()  # a stop during the question: nothing kept (the peer is asked again when the job resumes)
        ctx.update_resume_state(**{JOB_STATE_KEY: caps.to_json() if caps is not None else None})
    ctx.check()
    return caps


def from_state(value: Any) -> Optional[Capabilities]:
    """Capabilities kept in a job's resume state (``Capabilities.to_json`` or None)."""
    if value is None:
        return None
    try:
        return parse_capabilities(value)
    except ValueError:
        return None


class PeerCapabilities:
    """Each peer asked once: the cache of one job (or of one send in pull mode)."""

    def __init__(self, transport: Any, log_warning: Callable[[str], None] = lambda m: None,
                 timeout: Optional[float] = None):
        self.transport = transport
        self.log_warning = log_warning
        self.timeout = timeout
        self._lock = threading.Lock()
        self._known: Dict[str, Optional[Capabilities]] = {}

    def of(self, peer: Any, stop_event: Any = None) -> Optional[Capabilities]:
        with self._lock:
            if peer.name in self._known:
                return self._known[peer.name]
        found = ask(self.transport, peer, stop_event, self.log_warning, self.timeout)
        with self._lock:
            self._known[peer.name] = found
        return found
