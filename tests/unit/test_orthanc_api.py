"""The Orthanc boundary against a fake ``orthanc`` module (unit tests only: no Orthanc process).

The fake imitates the Python plugin 4.0 where it matters: ``OrthancException(code, message)``,
``RestApiGet`` returning bytes, REST callbacks called as ``callback(output, uri, **kwargs)``, and a
``RestOutput.SendHttpStatus`` that only takes ``(status, str, len)``.
"""

import json
import threading
import time
import types
from typing import Any, Dict, List, Optional

import pytest

from transfers_plugin.errors import BadRequest, NotFound, OrthancUnavailable, TransfersError
from transfers_plugin.orthanc_api import OrthancApi, translate_orthanc_exception
from transfers_plugin.routes import Request, Response, Router, error_response


class FakeOrthancException(Exception):
    """Raised as the plugin raises it: ``OrthancException(code, description)``."""


def oid(n: int) -> str:
    return f"{n:08x}-4f66fb14-03f4081b-f9341db2-53925988"


PATIENT = oid(1)
STUDY_A, STUDY_B = oid(2), oid(3)
SERIES_A1, SERIES_B1, SERIES_B2 = oid(4), oid(5), oid(6)
I1, I2, I3, I4 = oid(10), oid(11), oid(12), oid(13)

RESOURCES = {
    f"/patients/{PATIENT}": {"ID": PATIENT, "Type": "Patient", "Studies": [STUDY_A, STUDY_B]},
    f"/studies/{STUDY_A}": {"ID": STUDY_A, "Type": "Study", "Series": [SERIES_A1]},
    f"/studies/{STUDY_B}": {"ID": STUDY_B, "Type": "Study", "Series": [SERIES_B1, SERIES_B2]},
    f"/series/{SERIES_A1}": {"ID": SERIES_A1, "Type": "Series", "Instances": [I1, I2]},
    f"/series/{SERIES_B1}": {"ID": SERIES_B1, "Type": "Series", "Instances": [I3]},
    f"/series/{SERIES_B2}": {"ID": SERIES_B2, "Type": "Series", "Instances": [I4]},
    f"/instances/{I1}/attachments/dicom/info": {
        "CompressedMD5": "aa" * 16, "CompressedSize": 10, "ContentType": 1,
        "UncompressedMD5": "8b1a9953c4611296a827abf8c47804d7", "UncompressedSize": 5, "Uuid": "u1"},
    f"/instances/{I2}/attachments/dicom/info": {
        "CompressedSize": 7, "ContentType": 1, "UncompressedMD5": "", "UncompressedSize": 7, "Uuid": "u2"},
    f"/instances/{I3}/attachments/dicom/info": {"UncompressedSize": 3, "Uuid": "u3"},
    "/plugins": ["python", "dicom-web"],
}
FILES = {I1: b"Hello", I2: b"seven b"}


class FakePeers:
    def __init__(self, peers):
        self.peers = peers

    def GetPeersCount(self):
        return len(self.peers)

    def GetPeerName(self, i):
        return self.peers[i][0]

    def GetPeerUrl(self, i):
        return self.peers[i][1]

    def GetPeerUserProperty(self, i, key):
        return self.peers[i][2].get(key)


def make_module(configuration: Optional[Dict[str, Any]] = None, peers=None) -> types.SimpleNamespace:
    logs: List[tuple] = []
    gets: List[str] = []
    callbacks: Dict[str, Any] = {}
    change_callbacks: List[Any] = []

    def rest_api_get(uri):
        gets.append(uri)
        if uri not in RESOURCES:
            raise FakeOrthancException(17, "Unknown resource")
        return json.dumps(RESOURCES[uri]).encode()

    def get_dicom_for_instance(instance_id):
        if instance_id not in FILES:
            raise FakeOrthancException(17, "Unknown resource")
        return FILES[instance_id]

    def register_rest_callback(pattern, callback):
        callbacks[pattern] = callback

    return types.SimpleNamespace(
        OrthancException=FakeOrthancException,
        LogInfo=lambda m: logs.append(("info", m)),
        LogWarning=lambda m: logs.append(("warning", m)),
        LogError=lambda m: logs.append(("error", m)),
        GetConfiguration=lambda: json.dumps(configuration or {}),
        GetPeers=lambda: peers,
        RestApiGet=rest_api_get,
        GetDicomForInstance=get_dicom_for_instance,
        RegisterRestCallback=register_rest_callback,
        RegisterOnChangeCallback=change_callbacks.append,
        # values of the real enumerations
        ChangeType=types.SimpleNamespace(COMPLETED_SERIES=0, DELETED=1, NEW_CHILD_INSTANCE=2, NEW_INSTANCE=3,
                                         NEW_PATIENT=4, NEW_SERIES=5, NEW_STUDY=6, STABLE_PATIENT=7),
        ResourceType=types.SimpleNamespace(PATIENT=0, STUDY=1, SERIES=2, INSTANCE=3, NONE=4),
        logs=logs, gets=gets, callbacks=callbacks, change_callbacks=change_callbacks,
    )


@pytest.fixture
def module():
    return make_module()


@pytest.fixture
def api(module) -> OrthancApi:
    return OrthancApi(module=module)


# --- fake RestOutput objects ---------------------------------------------------------------------------

class Output40:
    """RestOutput of the Python plugin 4.0: ``SendHttpStatus(status, body: str, length: int)`` only."""

    def __init__(self):
        self.calls: List[tuple] = []

    def AnswerBuffer(self, body, content_type):
        self.calls.append(("AnswerBuffer", body, content_type))

    def SendMethodNotAllowed(self, allowed):
        self.calls.append(("SendMethodNotAllowed", allowed))

    def SetHttpHeader(self, name, value):
        self.calls.append(("SetHttpHeader", name, value))

    def SendHttpStatusCode(self, status):
        self.calls.append(("SendHttpStatusCode", status))

    def SendHttpStatus(self, *args):
        if len(args) != 3:
            raise TypeError(f"function takes exactly 3 arguments ({len(args)} given)")
        status, body, length = args
        if not isinstance(status, int) or not isinstance(body, str) or not isinstance(length, int):
            raise TypeError("argument 2 must be str, not bytes")
        self.calls.append(("SendHttpStatus", status, body, length))


class OutputNew(Output40):
    """Newer plugins: ``SendHttpStatus(status, body)``; the 3-argument form is refused."""

    def SendHttpStatus(self, *args):
        if len(args) != 2:
            raise TypeError(f"function takes exactly 2 arguments ({len(args)} given)")
        self.calls.append(("SendHttpStatus", *args))


class OutputCodeOnly(Output40):
    def SendHttpStatus(self, *args):
        raise TypeError("no body form works")


def sent_status(output) -> tuple:
    return next(c for c in output.calls if c[0] in ("SendHttpStatus", "SendHttpStatusCode"))


# --- translate_orthanc_exception -----------------------------------------------------------------------

@pytest.mark.parametrize("code,cls,status", [
    (7, NotFound, 404), (13, NotFound, 404), (17, NotFound, 404), (21, NotFound, 404),
    (3, BadRequest, 400), (5, BadRequest, 400), (8, BadRequest, 400), (12, BadRequest, 400),
    (15, BadRequest, 400), (28, BadRequest, 400),
    (-1, TransfersError, 500), (1, TransfersError, 500), (2, TransfersError, 500), (6, TransfersError, 500),
    (9, TransfersError, 500), (14, TransfersError, 500), (16, TransfersError, 500), (20, TransfersError, 500),
    (35, TransfersError, 500),
])
def test_translate_orthanc_exception_keeps_the_code(code, cls, status):
    e = translate_orthanc_exception(FakeOrthancException(code, "Orthanc's description"), "/studies/x")
    assert type(e) is cls
    assert e.status == status and e.orthanc_code == code
    assert "Orthanc's description" in e.message and "/studies/x" in e.message
    assert e.to_json()["OrthancStatus"] == code


def test_translate_without_a_code():
    e = translate_orthanc_exception(FakeOrthancException("just a message"))
    assert type(e) is TransfersError and e.status == 500 and e.orthanc_code == -1
    assert e.message == "just a message"
    e = translate_orthanc_exception(FakeOrthancException())
    assert e.status == 500 and e.orthanc_code == -1


def test_translate_without_context():
    assert translate_orthanc_exception(FakeOrthancException(17, "Unknown resource")).message == "Unknown resource"


# --- logs, configuration, peers ------------------------------------------------------------------------

def test_logs(api, module):
    api.log_info("i")
    api.log_warning("w")
    api.log_error("e")
    assert module.logs == [("info", "i"), ("warning", "w"), ("error", "e")]


def test_configuration():
    cfg = {"Transfers": {"Threads": 3}, "OrthancPeers": {"a": ["http://a/"]}}
    assert OrthancApi(module=make_module(cfg)).configuration() == cfg


def test_registered_peers():
    peers = FakePeers([("a", "http://a:8042/", {"RemoteSelf": "me"}), ("b", "http://b:8042/", {"Other": "x"})])
    api = OrthancApi(module=make_module(peers=peers))
    assert api.registered_peers() == [("a", "http://a:8042/", {"RemoteSelf": "me"}),
                                      ("b", "http://b:8042/", {})]
    assert OrthancApi(module=make_module(peers=None)).registered_peers() == []
    assert OrthancApi(module=make_module(peers=FakePeers([]))).registered_peers() == []


def test_core_plugins(api, module):
    assert api.core_plugins() == ["python", "dicom-web"]
    assert module.gets == ["/plugins"]


# --- reading instances ---------------------------------------------------------------------------------

@pytest.mark.parametrize("level,rid,expected", [
    ("Patient", PATIENT, [I1, I2, I3, I4]),
    ("Study", STUDY_A, [I1, I2]),
    ("Study", STUDY_B, [I3, I4]),
    ("Series", SERIES_A1, [I1, I2]),
    ("Series", SERIES_B2, [I4]),
])
def test_child_instances_walks_the_hierarchy(api, module, level, rid, expected):
    assert sorted(api.child_instances(level, rid)) == expected


def test_child_instances_of_a_patient_asks_each_level_once(api, module):
    api.child_instances("Patient", PATIENT)
    assert sorted(module.gets) == sorted([
        f"/patients/{PATIENT}", f"/studies/{STUDY_A}", f"/studies/{STUDY_B}",
        f"/series/{SERIES_A1}", f"/series/{SERIES_B1}", f"/series/{SERIES_B2}"])


@pytest.mark.parametrize("level,rid", [
    ("Patient", oid(99)), ("Study", oid(99)), ("Series", oid(99)),
    ("Study", PATIENT),  # a patient's ID is not a study
])
def test_child_instances_unknown(api, level, rid):
    with pytest.raises(NotFound) as info:
        api.child_instances(level, rid)
    assert info.value.status == 404


@pytest.mark.parametrize("rid", ["", "../instances", "ABCDEF", "a/b", "a" * 65, "x y", "..", "a?b=c"])
def test_child_instances_bad_ids_never_reach_orthanc(api, module, rid):
    with pytest.raises(NotFound):
        api.child_instances("Study", rid)
    assert module.gets == []


def test_child_instances_of_an_instance_level_is_not_found(api, module):
    with pytest.raises(NotFound):
        api.child_instances("Instance", I1)
    assert module.gets == []


def test_child_instances_other_errors_keep_their_status():
    module = make_module()

    def failing_get(uri):
        raise FakeOrthancException(9, "Error in the network protocol")

    module.RestApiGet = failing_get
    with pytest.raises(TransfersError) as info:
        OrthancApi(module=module).child_instances("Study", STUDY_A)
    assert info.value.status == 500 and info.value.orthanc_code == 9


def test_attachment_info(api, module):
    assert api.attachment_info(I1) == (5, "8b1a9953c4611296a827abf8c47804d7")
    assert module.gets == [f"/instances/{I1}/attachments/dicom/info"]
    assert api.attachment_info(I2) == (7, None)  # MD5 not stored ("StoreMD5ForAttachments": false)
    assert api.attachment_info(I3) == (3, None)


def test_attachment_info_unknown_and_bad_ids(api, module):
    with pytest.raises(NotFound) as info:
        api.attachment_info(oid(99))
    assert info.value.status == 404
    module.gets.clear()
    with pytest.raises(NotFound):
        api.attachment_info("../../tools/reset")
    assert module.gets == []


def test_read_dicom(api):
    assert api.read_dicom(I1) == b"Hello"
    with pytest.raises(NotFound) as info:
        api.read_dicom(oid(99))
    assert info.value.status == 404 and info.value.orthanc_code == 17
    with pytest.raises(NotFound):
        api.read_dicom("NOT-AN-ID")


# --- answers -------------------------------------------------------------------------------------------

def test_answer_200(api):
    out = Output40()
    api.answer(out, Response(200, b"\x00\x01bytes", "application/octet-stream"))
    assert out.calls == [("AnswerBuffer", b"\x00\x01bytes", "application/octet-stream")]


def test_answer_200_with_extra_headers(api):
    out = Output40()
    api.answer(out, Response(200, b"{}", "application/json", {"X-Extra": "1"}))
    assert out.calls == [("SetHttpHeader", "X-Extra", "1"), ("AnswerBuffer", b"{}", "application/json")]


def test_answer_405_uses_send_method_not_allowed(api):
    router = Router()
    router.add("/x", GET=lambda r: Response.json({}))
    response = router.dispatch(Request("POST", "/x"))
    out = Output40()
    api.answer(out, response)
    assert ("SendMethodNotAllowed", "GET") in out.calls
    assert not any(c[0] in ("AnswerBuffer", "SendHttpStatus", "SendHttpStatusCode") for c in out.calls)


@pytest.mark.parametrize("error,status", [(NotFound("Unknown instance"), 404), (BadRequest("bad"), 400),
                                          (TransfersError("broken"), 500)])
def test_answer_error_with_plugin_4_0(api, error, status):
    response = error_response(error, Request("GET", "/transfers/chunks/ab"))
    out = Output40()
    api.answer(out, response)
    assert ("SetHttpHeader", "Content-Type", "application/json") in out.calls
    call = sent_status(out)
    assert call[0] == "SendHttpStatus" and call[1] == status
    assert isinstance(call[2], str) and call[3] == len(call[2]) == len(response.body)
    assert json.loads(call[2]) == json.loads(response.body)
    assert not any(c[0] == "AnswerBuffer" for c in out.calls)


def test_answer_error_with_newer_plugins(api):
    response = error_response(NotFound("Unknown instance"), Request("GET", "/x"))
    out = OutputNew()
    api.answer(out, response)
    call = sent_status(out)
    assert call[0] == "SendHttpStatus" and len(call) == 3 and call[1] == 404
    body = call[2].encode() if isinstance(call[2], str) else call[2]
    assert json.loads(body) == json.loads(response.body)
    assert sum(1 for c in out.calls if c[0] in ("SendHttpStatus", "SendHttpStatusCode")) == 1


def test_answer_error_falls_back_to_the_status_code(api):
    out = OutputCodeOnly()
    api.answer(out, error_response(BadRequest("bad"), Request("GET", "/x")))
    assert sent_status(out) == ("SendHttpStatusCode", 400)


def test_answer_error_sends_exactly_once(api):
    out = Output40()
    api.answer(out, error_response(BadRequest("bad"), Request("GET", "/x")))
    assert sum(1 for c in out.calls if c[0] in ("SendHttpStatus", "SendHttpStatusCode", "AnswerBuffer")) == 1


# --- registration --------------------------------------------------------------------------------------

def test_register_route_builds_the_request(api, module):
    seen: List[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response(200, b"ok", "text/plain")

    api.register_route(r"/transfers/chunks/([^/]*)", handler)
    callback = module.callbacks[r"/transfers/chunks/([^/]*)"]
    out = Output40()
    callback(out, "/transfers/chunks/ab.cd", method="GET", groups=("ab.cd",),
             get={"offset": "3", "compression": "gzip"}, headers={"sender-transfer-id": "s1"})
    assert seen == [Request("GET", "/transfers/chunks/ab.cd", ("ab.cd",), {"offset": "3", "compression": "gzip"},
                            {"sender-transfer-id": "s1"}, b"")]
    assert out.calls == [("AnswerBuffer", b"ok", "text/plain")]


def test_register_route_post_body(api, module):
    seen: List[Request] = []
    api.register_route("/transfers/lookup", lambda r: seen.append(r) or Response.json({}))
    module.callbacks["/transfers/lookup"](Output40(), "/transfers/lookup", method="POST", groups=(),
                                          get={}, headers={"content-type": "application/json"},
                                          body=b'[{"Level":"Study","ID":"x"}]')
    (request,) = seen
    assert request.method == "POST" and request.groups == ()
    assert request.body == b'[{"Level":"Study","ID":"x"}]'
    assert request.args == {} and request.headers == {"content-type": "application/json"}


def test_register_route_with_missing_kwargs(api, module):
    seen: List[Request] = []
    api.register_route("/plugins", lambda r: seen.append(r) or Response.json([]))
    module.callbacks["/plugins"](Output40(), "/plugins", method="GET")
    assert seen[0] == Request("GET", "/plugins", (), {}, {}, b"")


def test_register_route_groups_become_a_tuple(api, module):
    seen: List[Request] = []
    api.register_route("/p/(a)/(b)", lambda r: seen.append(r) or Response.json([]))
    module.callbacks["/p/(a)/(b)"](Output40(), "/p/a/b", method="GET", groups=["a", "b"], get=None, headers=None)
    assert seen[0].groups == ("a", "b") and seen[0].args == {} and seen[0].headers == {}


def test_register_route_errors_are_answered(api, module):
    router = Router()
    router.add("/fail", GET=lambda r: (_ for _ in ()).throw(NotFound("nope")))
    api.register_route("/fail", lambda r: router.handle(router.routes[0], r))
    out = Output40()
    module.callbacks["/fail"](out, "/fail", method="GET", groups=(), get={}, headers={})
    call = sent_status(out)
    assert call[1] == 404
    assert json.loads(call[2])["Uri"] == "/fail"


def _database_ready_after(module, failures: int):
    """RestApiGet("/system") answers Orthanc's error 2038 ``failures`` times, then answers."""
    answers = {"n": 0}
    real_get = module.RestApiGet

    def rest_api_get(uri):
        if uri == "/system":
            answers["n"] += 1
            if answers["n"] <= failures:
                raise FakeOrthancException(2038, "Plugin trying to call the database during its initialization")
            return b"{}"
        return real_get(uri)

    module.RestApiGet = rest_api_get
    return answers


def test_lifecycle_starts_once_the_database_answers(api, module, monkeypatch):
    hooks = []
    monkeypatch.setattr(threading, "_register_atexit", hooks.append, raising=False)
    polls = _database_ready_after(module, 3)
    started = threading.Event()
    calls: List[str] = []
    api.register_lifecycle(lambda: calls.append("started") or started.set(), lambda: calls.append("stopped"),
                           poll_interval=0.01)
    assert started.wait(5)
    assert calls == ["started"] and polls["n"] == 4
    assert len(hooks) == 1
    hooks[0]()  # the plugin's Python is finalized
    assert calls == ["started", "stopped"]
    assert not [m for level, m in module.logs if level == "error"]


def test_lifecycle_uses_no_change_callback(api, module, monkeypatch):
    # A change callback slows every import into Orthanc: the lifecycle must not register one.
    monkeypatch.setattr(threading, "_register_atexit", lambda fn: None, raising=False)
    _database_ready_after(module, 0)
    started = threading.Event()
    api.register_lifecycle(started.set, lambda: None, poll_interval=0.01)
    assert started.wait(5)
    assert module.change_callbacks == []


def test_lifecycle_stopped_before_started_stops_polling(api, module, monkeypatch):
    hooks = []
    monkeypatch.setattr(threading, "_register_atexit", hooks.append, raising=False)
    polls = _database_ready_after(module, 10 ** 9)  # never ready
    calls: List[str] = []
    api.register_lifecycle(lambda: calls.append("started"), lambda: calls.append("stopped"), poll_interval=0.01)
    time.sleep(0.1)
    hooks[0]()
    time.sleep(0.05)
    n = polls["n"]
    time.sleep(0.1)
    assert polls["n"] <= n + 1 and calls == ["stopped"]


def test_lifecycle_reports_a_failing_start(api, module, monkeypatch):
    monkeypatch.setattr(threading, "_register_atexit", lambda fn: None, raising=False)
    _database_ready_after(module, 0)
    done = threading.Event()

    def broken_start():
        done.set()
        raise RuntimeError("cannot start")

    api.register_lifecycle(broken_start, lambda: None, poll_interval=0.01)
    assert done.wait(5)
    deadline = time.monotonic() + 5
    while not any("cannot start" in m for _, m in module.logs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(level == "error" and "cannot start" in m for level, m in module.logs)


def test_database_unavailable_is_its_own_error():
    error = translate_orthanc_exception(FakeOrthancException(2038, "Plugin trying to call the database"), "/x")
    assert isinstance(error, OrthancUnavailable) and error.orthanc_code == 2038 and error.status == 503


def test_lifecycle_stop_hook_never_raises(api, module, monkeypatch):
    # The interpreter's own exit hooks (thread pools) run after ours: an error must not skip them.
    hooks = []
    monkeypatch.setattr(threading, "_register_atexit", hooks.append, raising=False)
    _database_ready_after(module, 10 ** 9)

    def broken_stop():
        raise RuntimeError("cannot stop")

    api.register_lifecycle(lambda: None, broken_stop, poll_interval=0.01)
    hooks[0]()
    assert any(level == "error" and "cannot stop" in m for level, m in module.logs)


def test_callbacks_handed_to_the_sdk_stay_referenced_by_the_boundary():
    """The plugin drops its references to REST callbacks without the GIL when it is finalized (while our
    threads may still run): the boundary keeps its own, so that nothing is freed there."""
    import gc
    import weakref

    registered = []
    module = types.SimpleNamespace(RegisterRestCallback=lambda pattern, cb: registered.append(weakref.ref(cb)))
    api = OrthancApi(module)
    api.register_route("/transfers/x", lambda request: Response(200, b"{}"))
    api.prepare_leak_probe()
    gc.collect()
    assert len(registered) == 2 and all(ref() is not None for ref in registered)
    del api
    gc.collect()
    assert all(ref() is None for ref in registered), "the boundary, not the fake, held them"


# --- the Python plugin's version, and the transfer's resources -----------------------------------------

def test_python_plugin_version(api, module):
    assert api.python_plugin_version() == ""  # not listed by the fake: unknown, never an error
    assert module.gets == ["/plugins/python"]
    RESOURCES["/plugins/python"] = {"ID": "python", "Version": "5.0"}
    try:
        assert api.python_plugin_version() == "5.0"
    finally:
        del RESOURCES["/plugins/python"]


def test_resource_exists(api, module):
    assert api.resource_exists("Study", STUDY_A) and api.resource_exists("Patient", PATIENT)
    assert not api.resource_exists("Study", oid(99))
    module.gets.clear()
    assert not api.resource_exists("Study", "../../tools/reset") and not api.resource_exists("Volume", STUDY_A)
    assert module.gets == []  # a bad ID or level never reaches Orthanc


def test_a_global_property_write_is_tried_again_after_a_database_error(monkeypatch):
    import transfers_plugin.orthanc_api as boundary
    monkeypatch.setattr(boundary, "PROPERTY_RETRY_DELAYS", (0, 0))
    module = make_module()
    attempts = []

    def flaky_set(property_id, value):
        attempts.append(value)
        if len(attempts) < 3:
            raise FakeOrthancException(11, "Error with the database engine")

    module.SetGlobalProperty = flaky_set
    api = OrthancApi(module=module)
    api.set_global_property(23452, "{}")  # two conflicts, then written
    assert attempts == ["{}"] * 3
    assert [level for level, _ in module.logs] == ["warning", "warning"]
    attempts.clear()
    module.SetGlobalProperty = lambda p, v: (attempts.append(v), (_ for _ in ()).throw(
        FakeOrthancException(11, "Error with the database engine")))
    with pytest.raises(TransfersError) as info:  # always failing: the last error, after every attempt
        api.set_global_property(23452, "{}")
    assert info.value.orthanc_code == 11 and len(attempts) == 3
    attempts.clear()
    module.SetGlobalProperty = lambda p, v: (attempts.append(v), (_ for _ in ()).throw(
        FakeOrthancException(9, "Error in the network protocol")))
    with pytest.raises(TransfersError):  # another error: not tried again
        api.set_global_property(23452, "{}")
    assert len(attempts) == 1
