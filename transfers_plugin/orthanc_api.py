"""The one boundary with Orthanc: the only module that touches the ``orthanc`` module.

Everything else receives an :class:`OrthancApi` (or a fake with the same methods in unit tests).
Native SDK calls hold the GIL in the Python plugin 4.0, so each method makes few, short calls.
"""

import atexit
import json
import re
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import sdk_leaks
from .errors import BadRequest, MethodNotAllowed, NotFound, OrthancUnavailable, TransfersError
from .protocol import shown
from .routes import Request, Response

_NOT_FOUND_CODES = {7, 13, 17, 21}
_BAD_REQUEST_CODES = {3, 5, 8, 12, 15, 28}
# "Error with the database engine": what a global property write gets from the PostgreSQL index when a
# concurrent transaction (another node, Orthanc's own imports) conflicts with it; worth a few retries.
_DATABASE_ERROR = 11
PROPERTY_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)  # seconds before each new attempt
_DATABASE_UNAVAILABLE = 2038  # "Plugin trying to call the database during its initialization" (or its end)
_ORTHANC_ID = re.compile(r"[0-9a-f-]{1,64}")
_LEVEL_URIS = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}
_CHILDREN = {"Patient": ("Studies", "Study"), "Study": ("Series", "Series"), "Series": ("Instances", None)}


class OrthancApi:
    def __init__(self, module: Any = None):
        if module is None:
            import orthanc as module  # the only import of the orthanc module in the package
        self.orthanc = module
        self.leaks = sdk_leaks.LeakCompensation()
        # Every callback handed to the SDK, kept alive here: when the plugin is finalized, it drops its
        # references without holding the GIL while our threads may still run; freeing a callback there
        # crashed Orthanc 1.12.7 with Python plugin 5.0 (Python 3.13) on a stop during a transfer.
        self._callbacks: List[Callable[..., Any]] = []

    # -- logs ----------------------------------------------------------------------------------------

    def log_info(self, message: str) -> None:
        self.orthanc.LogInfo(message)

    def log_warning(self, message: str) -> None:
        self.orthanc.LogWarning(message)

    def log_error(self, message: str) -> None:
        self.orthanc.LogError(message)

    # -- metrics -------------------------------------------------------------------------------------

    def set_metric(self, name: str, value: float) -> None:
        """One value of ``/tools/metrics-prometheus`` (published by Orthanc when ``MetricsEnabled``)."""
        self.orthanc.SetMetricsValue(name, float(value), self.orthanc.MetricsType.DEFAULT)

    # -- configuration and peers ---------------------------------------------------------------------

    def configuration(self) -> Dict[str, Any]:
        return json.loads(self.orthanc.GetConfiguration())

    def registered_peers(self) -> List[Tuple[str, str, Dict[str, str]]]:
        """Peers as Orthanc knows them (configuration file or database): name, URL, RemoteSelf."""
        peers = self.orthanc.GetPeers()
        if peers is None:
            return []
        out = []
        for i in range(peers.GetPeersCount()):
            props = {}
            remote_self = peers.GetPeerUserProperty(i, "RemoteSelf")
            if remote_self is not None:
                props["RemoteSelf"] = remote_self
            out.append((peers.GetPeerName(i), peers.GetPeerUrl(i), props))
        return out

    def orthanc_version_at_least(self, major: int, minor: int, revision: int) -> bool:
        """Whether the Orthanc running the plugin is this version or a later one."""
        return bool(self.orthanc.CheckVersionAdvanced(major, minor, revision))

    def python_plugin_version(self) -> str:
        """The version of the Python plugin running this one (``GET /plugins/python``), "" if unknown."""
        try:
            return str(self.core_get_json("/plugins/python").get("Version", ""))
        except (TransfersError, ValueError, AttributeError):
            return ""

    def core_plugins(self) -> List[str]:
        """``GET /plugins`` of the core (plugin routes bypassed, so this does not call us back)."""
        return json.loads(self._call(self.orthanc.RestApiGet, "/plugins"))

    # -- the core REST API (plugin routes bypassed) ---------------------------------------------------

    def core_get_json(self, uri: str) -> Any:
        return self._get_json(uri)

    def core_post(self, uri: str, body: bytes) -> bytes:
        return self._call(self.orthanc.RestApiPost, uri, body)

    def core_request(self, method: str, uri: str, body: bytes = b"") -> bytes:
        fn = {"GET": lambda: self.orthanc.RestApiGet(uri), "POST": lambda: self.orthanc.RestApiPost(uri, body),
              "PUT": lambda: self.orthanc.RestApiPut(uri, body), "DELETE": lambda: self.orthanc.RestApiDelete(uri)}
        if method not in fn:
            raise MethodNotAllowed("GET,POST,PUT,DELETE", method)
        result = self._call(lambda _uri: fn[method](), uri)
        return b"{}" if result is None else result

    def store_instance(self, data: bytes) -> Dict[str, Any]:
        """``POST /instances`` on the core: the answer (``ID``, ``Status``...)."""
        return json.loads(self._call(self.orthanc.RestApiPost, "/instances", data))

    def delete_instance(self, instance_id: str) -> None:
        self._call(self.orthanc.RestApiDelete, f"/instances/{instance_id}")

    # -- global properties -----------------------------------------------------------------------------

    def get_global_property(self, property_id: int, default: str = "") -> str:
        return self._property_call(self.orthanc.GetGlobalProperty, property_id, default)

    def set_global_property(self, property_id: int, value: str) -> None:
        self._property_call(self.orthanc.SetGlobalProperty, property_id, value)

    def _property_call(self, fn: Callable, property_id: int, value: str) -> Any:
        """A global property read or write, tried again after a database error (a transaction conflict,
        seen with four concurrent push commits on a PostgreSQL cluster node); the last error is raised."""
        for delay in PROPERTY_RETRY_DELAYS + (None,):
            try:
                return self._call(fn, property_id, value)
            except TransfersError as e:
                if e.orthanc_code != _DATABASE_ERROR or delay is None:
                    raise
                self.log_warning(f"Transfers: global property {property_id}: {e.message}; trying again")
                time.sleep(delay)

    # -- reading instances ---------------------------------------------------------------------------

    def _call(self, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.orthanc.OrthancException as e:
            raise translate_orthanc_exception(e, args[0] if args else "") from None

    def _get_json(self, uri: str) -> Any:
        return json.loads(self._call(self.orthanc.RestApiGet, uri))

    def child_instances(self, level: str, resource_id: str) -> List[str]:
        if level not in _CHILDREN or not _ORTHANC_ID.fullmatch(resource_id):
            raise NotFound(f"Unknown {level.lower()} {shown(resource_id)}")
        pending = [(level, resource_id)]
        instances: List[str] = []
        while pending:
            lvl, rid = pending.pop()
            try:
                resource = self._get_json(f"/{_LEVEL_URIS[lvl]}/{rid}")
            except NotFound:
                raise NotFound(f"Unknown {lvl.lower()} {rid}") from None
            key, child_level = _CHILDREN[lvl]
            if child_level is None:
                instances.extend(resource[key])
            else:
                pending.extend((child_level, c) for c in resource[key])
        return instances

    def resource_exists(self, level: str, resource_id: str) -> bool:
        """Whether this Orthanc holds the patient, study, series or instance ``resource_id``."""
        if level not in _LEVEL_URIS or not _ORTHANC_ID.fullmatch(resource_id):
            return False
        try:
            self._call(self.orthanc.RestApiGet, f"/{_LEVEL_URIS[level]}/{resource_id}")
        except NotFound:
            return False
        return True

    def attachment_info(self, instance_id: str) -> Tuple[int, Optional[str]]:
        if not _ORTHANC_ID.fullmatch(instance_id):
            raise NotFound(f"Unknown instance {shown(instance_id)}")
        try:
            info = self._get_json(f"/instances/{instance_id}/attachments/dicom/info")
        except NotFound:
            raise NotFound(f"Unknown instance {instance_id}") from None
        return int(info["UncompressedSize"]), (info.get("UncompressedMD5") or None)

    def read_dicom(self, instance_id: str) -> bytes:
        if not _ORTHANC_ID.fullmatch(instance_id):
            raise NotFound(f"Unknown instance {shown(instance_id)}")
        try:
            return self._call(self.orthanc.GetDicomForInstance, instance_id)
        except NotFound:
            raise NotFound(f"Unknown instance {instance_id}") from None

    # -- registration --------------------------------------------------------------------------------

    def register_route(self, pattern: str, handler: Callable[[Request], Response]) -> None:
        def callback(output: Any, uri: str, **request: Any) -> None:
            try:
                req = Request(
                    method=request.get("method", "GET"),
                    uri=uri,
                    groups=tuple(request.get("groups") or ()),
                    args=dict(request.get("get") or {}),
                    headers=dict(request.get("headers") or {}),
                    body=request.get("body") or b"",
                )
                self.answer(output, handler(req))
            finally:
                self.leaks.release(request)

        self._callbacks.append(callback)
        self.orthanc.RegisterRestCallback(pattern, callback)

    def prepare_leak_probe(self) -> Callable[[], None]:
        """Registers a route of a random, unguessable URI (routes can only be registered while the plugin
        loads) and returns the probe to run once Orthanc answers: a GET and a POST to that route, whose
        arguments are measured once the SDK is done with them (:mod:`sdk_leaks`)."""
        uri = f"/transfers/probe-{uuid.uuid4()}"
        captured: List[Dict[str, Any]] = []
        measured = threading.Event()  # from then on the route keeps nothing, and gives back what leaks

        def callback(output: Any, uri: str, **request: Any) -> None:
            try:
                if not measured.is_set():
                    captured.append(dict(request))
                output.AnswerBuffer(b"{}", "application/json")
            finally:
                if measured.is_set():
                    self.leaks.release(request)

        self._callbacks.append(callback)
        self.orthanc.RegisterRestCallback(uri + "/(probe)", callback)

        def probe() -> None:
            try:
                self.orthanc.RestApiGetAfterPlugins(f"{uri}/probe?argument=value")
                self.orthanc.RestApiPostAfterPlugins(f"{uri}/probe", b"a probe body")
            except Exception as e:  # noqa: BLE001 - without a measure, nothing is given back
                measured.set()
                captured.clear()
                self.log_warning(f"Transfers: the probe of the Python plugin's references failed: {e}")
                return
            extra: Dict[str, List[int]] = {}
            for request in captured:
                for kind, counts in sdk_leaks.extra_references(request).items():
                    extra.setdefault(kind, []).extend(counts)
            captured.clear()
            measured.set()
            found = sdk_leaks.verdict(extra)
            if found:
                self.leaks.enable()
                self.log_warning("Transfers: this Python plugin leaks the arguments of REST callbacks (request "
                                 "bodies included; fixed in its version 4.1): the transfers routes give them back")
            elif found is None:
                self.log_warning(f"Transfers: unexpected reference counts of the Python plugin's REST "
                                 f"arguments ({extra}); left as they are")

        return probe

    def answer(self, output: Any, response: Response) -> None:
        for name, value in response.headers.items():
            output.SetHttpHeader(name, value)
        if response.status == 200:
            output.AnswerBuffer(response.body, response.content_type)
            return
        if response.status == 405 and "Allow" in response.headers:
            output.SendMethodNotAllowed(response.headers["Allow"])
            return
        output.SetHttpHeader("Content-Type", response.content_type)
        # Error bodies are ASCII JSON. Plugin 4.0 takes (status, str, length) and refuses bytes; from 4.2
        # on, the form is (status, body).
        text = response.body.decode("ascii", "replace")
        for args in ((response.status, text, len(text)), (response.status, text),
                     (response.status, response.body)):
            try:
                output.SendHttpStatus(*args)
                return
            except TypeError:
                continue
        output.SendHttpStatusCode(response.status)

    def extend_explorer(self, javascript: str) -> None:
        self.orthanc.ExtendOrthancExplorer(javascript)

    def register_lifecycle(self, on_started: Callable[[], None], on_stopped: Callable[[], None],
                           poll_interval: float = 0.1, max_poll_interval: float = 2.0) -> None:
        """``on_started`` once Orthanc's database can be called, ``on_stopped`` when the plugin is finalized.

        No change callback (``RegisterOnChangeCallback``) is used for this: with one registered, even an
        empty one, every import into Orthanc is slower (200 CT instances: 0.48 s without, 0.65 to 0.9 s
        with, on Orthanc 1.10.1 and plugin 4.0). Instead a thread polls the core until it answers (it
        answers error 2038 until the database is ready), and ``on_stopped`` runs when the plugin's Python
        is finalized, before its threads are (``threading._register_atexit``). By then the database can
        no longer be called: what must survive a restart is saved while the work goes on.

        Orthanc logs each refused call ("Exception while invoking plugin service"), so the first poll
        waits ``poll_interval`` (the database is usually open a few milliseconds after the plugin is
        loaded) and the next ones wait longer and longer, up to ``max_poll_interval``.
        """
        lock = threading.Lock()  # started and stopped are decided one at a time
        stopped = [False]
        probe_leaks = self.prepare_leak_probe()

        def wait_for_database() -> None:
            interval = poll_interval
            while True:
                time.sleep(interval)
                interval = min(max_poll_interval, interval * 1.5)
                with lock:
                    if stopped[0]:
                        return
                try:
                    self.orthanc.RestApiGet("/system")
                except self.orthanc.OrthancException as e:
                    if not (e.args and e.args[0] == _DATABASE_UNAVAILABLE):
                        self.log_error(f"Transfers: unexpected answer of Orthanc while starting: {e}")
                    continue
                with lock:
                    if stopped[0]:  # finalized meanwhile: start nothing
                        return
                    try:
                        probe_leaks()
                        on_started()
                    except Exception as e:  # noqa: BLE001 - reported; Orthanc goes on without background work
                        self.log_error(f"Transfers: starting the background work failed: {e}")
                return

        def at_exit() -> None:
            # Never raise here: the interpreter's own exit hooks (thread pools) run after this one.
            try:
                with lock:
                    stopped[0] = True
                    on_stopped()
            except Exception as e:  # noqa: BLE001
                try:
                    self.log_error(f"Transfers: stopping the background work failed: {e}")
                except Exception:  # noqa: BLE001 - the logger may be gone too
                    pass

        register = getattr(threading, "_register_atexit", None) or atexit.register
        register(at_exit)
        threading.Thread(target=wait_for_database, name="transfers-startup", daemon=True).start()


def translate_orthanc_exception(e: Exception, what: str = "") -> TransfersError:
    """An ``orthanc.OrthancException(code, message)`` as one of our errors, keeping Orthanc's code."""
    code = e.args[0] if e.args and isinstance(e.args[0], int) else -1
    message = str(e.args[1]) if len(e.args) > 1 else str(e)
    text = f"{message} ({what})" if what else message
    if code in _NOT_FOUND_CODES:
        return NotFound(text, orthanc_code=code)
    if code in _BAD_REQUEST_CODES:
        return BadRequest(text, orthanc_code=code)
    if code == _DATABASE_UNAVAILABLE:
        return OrthancUnavailable(text)
    return TransfersError(text, orthanc_code=code)
