"""REST handlers and the router: methods, JSON errors with Orthanc's keys, the source routes (R1, R2, R5)."""

import gzip
import json
import re
import zlib
from typing import List

import pytest

from transfers_plugin import errors
from transfers_plugin.codec import get_codec
from transfers_plugin.config import TransfersConfig
from transfers_plugin.errors import (
    BadRequest,
    CorruptedFile,
    MethodNotAllowed,
    NotFound,
    TransfersError,
)
from transfers_plugin.protocol import ChunkRequest, InstanceInfo, Resource
from transfers_plugin.routes import JSON_TYPE, Request, Response, Router, build_source_routes, error_response

ERROR_KEYS = {"HttpError", "HttpStatus", "Message", "Method", "OrthancError", "OrthancStatus", "Uri"}
ID1 = "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"
ID2 = "5e0bf3b7-8a3c5a2f-16d6b2e0-1b6a7d3c-0f2b4e91"


def body_json(response: Response):
    assert response.content_type == JSON_TYPE
    return json.loads(response.body)


# --- errors --------------------------------------------------------------------------------------------

# protocol.md 3.1: Orthanc error code -> HTTP status, for the error classes the plugin answers with.
@pytest.mark.parametrize("cls,status,code", [
    (errors.BadRequest, 400, 8),
    (errors.BadJson, 400, 28),
    (errors.BadFileFormat, 400, 15),
    (errors.ParameterOutOfRange, 400, 3),
    (errors.BadParameterType, 400, 5),
    (errors.NotFound, 404, 17),
    (errors.CorruptedFile, 500, 20),
    (errors.NetworkProtocol, 500, 9),
    (errors.TransfersError, 500, -1),
])
def test_error_classes(cls, status, code):
    e = cls("what happened")
    assert (e.status, e.orthanc_code, e.message, str(e)) == (status, code, "what happened", "what happened")
    body = e.to_json("GET", "/x")
    assert set(body) == ERROR_KEYS
    assert body["HttpStatus"] == status and body["OrthancStatus"] == code
    assert body["Message"] == "what happened" and body["Method"] == "GET" and body["Uri"] == "/x"
    assert body["HttpError"] == errors.HTTP_REASONS[status]
    assert body["OrthancError"] == errors.ORTHANC_ERRORS[code]


def test_error_overrides_and_details():
    e = BadRequest("m", status=413, orthanc_code=3, details="more")
    assert (e.status, e.orthanc_code) == (413, 3)
    body = e.to_json()
    assert body["Details"] == "more" and body["HttpError"] == "Payload Too Large"
    assert body["OrthancError"] == "Parameter out of range"
    # the class attributes are not changed by one instance
    assert BadRequest("n").status == 400 and BadRequest("n").orthanc_code == 8


def test_error_with_unknown_codes():
    body = TransfersError("m", status=418, orthanc_code=12345).to_json()
    assert body["HttpStatus"] == 418 and body["OrthancStatus"] == 12345
    assert isinstance(body["HttpError"], str) and isinstance(body["OrthancError"], str)


def test_method_not_allowed_error():
    e = MethodNotAllowed("GET", "POST")
    assert e.status == 405 and e.allowed == "GET" and "POST" in e.message


def test_error_response():
    r = error_response(NotFound("no such instance"), Request("GET", "/transfers/chunks/ab"))
    assert r.status == 404 and r.headers == {}
    body = body_json(r)
    assert set(body) == ERROR_KEYS
    assert body["Uri"] == "/transfers/chunks/ab" and body["Method"] == "GET"
    assert body["OrthancStatus"] == 17
    r.body.decode("ascii")  # error bodies are ASCII (orthanc_api sends them as str to plugin 4.0)


def test_error_response_of_non_ascii_message_is_ascii():
    r = error_response(BadRequest("résumé ✓"), Request("POST", "/x"))
    r.body.decode("ascii")
    assert body_json(r)["Message"] == "résumé ✓"


# --- Router --------------------------------------------------------------------------------------------

def ok(request: Request) -> Response:
    return Response.json({"method": request.method, "groups": list(request.groups)})


def test_router_dispatches_by_full_match_and_sets_groups():
    router = Router()
    router.add(r"/things/([a-z]+)/(\d+)", GET=ok)
    r = router.dispatch(Request("GET", "/things/abc/42"))
    assert r.status == 200 and body_json(r) == {"method": "GET", "groups": ["abc", "42"]}
    for uri in ("/things/abc/42/", "/things/abc/", "x/things/abc/42", "/things/ABC/42"):
        r = router.dispatch(Request("GET", uri))
        assert r.status == 404, uri
        assert set(body_json(r)) == ERROR_KEYS


def test_router_405_with_allow_header_and_json_body():
    router = Router()
    router.add(r"/only-get", GET=ok)
    router.add(r"/two", get=ok, post=ok)
    r = router.dispatch(Request("POST", "/only-get"))
    assert r.status == 405
    assert r.headers["Allow"] == "GET"
    body = body_json(r)
    assert set(body) == ERROR_KEYS and body["HttpStatus"] == 405 and body["Method"] == "POST"
    assert body["Uri"] == "/only-get"
    r = router.dispatch(Request("DELETE", "/two"))
    assert r.status == 405
    assert {m.strip() for m in r.headers["Allow"].split(",")} == {"GET", "POST"}
    assert router.dispatch(Request("POST", "/two")).status == 200


def test_router_transfers_error_becomes_its_status():
    def fail(request):
        raise CorruptedFile("bad MD5", details="file 12")

    router = Router()
    router.add(r"/fail", PUT=fail)
    r = router.dispatch(Request("PUT", "/fail"))
    assert r.status == 500
    body = body_json(r)
    assert set(body) == ERROR_KEYS | {"Details"}
    assert (body["OrthancStatus"], body["Message"], body["Details"]) == (20, "bad MD5", "file 12")


def test_router_unexpected_exception_is_500_json_and_logged():
    logged: List[str] = []

    def crash(request):
        raise KeyError("surprise")

    debug: List[str] = []
    router = Router(logged.append, debug.append)
    router.add(r"/crash", GET=crash)
    r = router.dispatch(Request("GET", "/crash"))
    assert r.status == 500
    body = body_json(r)
    assert set(body) == ERROR_KEYS and body["HttpStatus"] == 500
    assert "KeyError" in body["Message"] and "log" in body["Message"]
    assert "surprise" not in body["Message"] and "Traceback" not in r.body.decode()  # the log has the details
    assert len(logged) == 1
    assert "/crash" in logged[0] and "surprise" in logged[0] and "Traceback" not in logged[0]
    assert len(debug) == 1 and "Traceback" in debug[0] and "surprise" in debug[0]


def test_router_expected_errors_are_not_logged():
    logged: List[str] = []

    def fail(request):
        raise NotFound("x")

    router = Router(logged.append)
    router.add(r"/f", GET=fail)
    assert router.dispatch(Request("GET", "/f")).status == 404
    assert logged == []


def test_response_json():
    styled = Response.json({"b": 1, "a": 2})
    assert styled.status == 200 and styled.content_type == JSON_TYPE
    assert b"\n" in styled.body and json.loads(styled.body) == {"a": 2, "b": 1}
    assert Response.json({"b": 1, "a": 2}, styled=False).body == b'{"a":2,"b":1}'


# --- the source routes ---------------------------------------------------------------------------------

class FakeSource:
    def __init__(self):
        self.read_requests: List[ChunkRequest] = []
        self.lookup_requests: List[List[Resource]] = []
        self.payload = b"DICM" * 1000 + bytes(range(256))
        self.instances = [InstanceInfo(ID1, 768, "b81af6768a606259904a7fe7a5eea85f"),
                          InstanceInfo(ID2, 1048576, "8b1a9953c4611296a827abf8c47804d7")]

    def read(self, request: ChunkRequest) -> bytes:
        self.read_requests.append(request)
        return self.payload

    def lookup(self, resources, limits=None) -> List[InstanceInfo]:
        self.lookup_requests.append(list(resources))
        return self.instances


class FakeApp:
    originator = "e12ee203-3705-4f1e-b159-f88239b57b9c"
    config = TransfersConfig()

    def __init__(self, core=("python",)):
        self.source = FakeSource()
        self.core = list(core)
        self.peer_answers = {"b": "installed", "a": "disabled"}
        self.served = []

    def served_chunks(self, n_bytes):
        self.served.append(n_bytes)

    def codec_for(self, name):
        return get_codec(name)

    def probe_peers(self):
        return self.peer_answers

    def core_plugins(self):
        return list(self.core)

    def plugin_description(self):
        return {"ID": "transfers", "Version": "9.9"}


@pytest.fixture
def app() -> FakeApp:
    return FakeApp()


@pytest.fixture
def router(app) -> Router:
    r = Router()
    build_source_routes(r, app)
    return r


def test_route_patterns_match_whole_uris(router):
    def matching(uri):
        return [route.pattern for route in router.routes if re.fullmatch(route.pattern, uri)]

    assert len(matching(f"/transfers/chunks/{ID1}.{ID2}")) == 1
    assert len(matching("/transfers/lookup")) == 1
    assert len(matching("/transfers/peers")) == 1
    assert len(matching("/plugins")) == 1
    assert len(matching("/plugins/transfers")) == 1
    assert matching("/transfers/chunks/a/b") == []
    assert matching("/transfers/lookup/x") == []


@pytest.mark.parametrize("compression", [None, "none"])
def test_chunks_uncompressed(router, app, compression):
    args = {"offset": "10", "size": "20"}
    if compression:
        args["compression"] = compression
    r = router.dispatch(Request("GET", f"/transfers/chunks/{ID1}.{ID2}", args=args))
    assert r.status == 200
    assert r.content_type == "application/octet-stream"
    assert r.body == app.source.payload
    assert app.source.read_requests == [ChunkRequest((ID1, ID2), 10, 20, "none")]


def test_chunks_gzip_is_a_single_member(router, app):
    r = router.dispatch(Request("GET", f"/transfers/chunks/{ID1}", args={"compression": "gzip"}))
    assert r.status == 200
    assert r.content_type == "application/gzip"
    assert r.body[:2] == b"\x1f\x8b"
    d = zlib.decompressobj(31)
    assert d.decompress(r.body) == app.source.payload
    assert d.eof and d.unused_data == b""  # one member, nothing after it
    assert gzip.decompress(r.body) == app.source.payload
    assert app.source.read_requests[0].compression == "gzip"
    assert app.served == [len(r.body)]  # the metrics count the bytes on the wire


@pytest.mark.parametrize("args", [{"offset": "-1"}, {"size": "x"}, {"compression": "GZIP"}, {"offset": "1.5"}])
def test_chunks_bad_arguments_are_400(router, app, args):
    r = router.dispatch(Request("GET", f"/transfers/chunks/{ID1}", args=args))
    assert r.status == 400
    assert set(body_json(r)) == ERROR_KEYS
    assert app.source.read_requests == []


def test_chunks_bad_ids_are_400(router, app):
    for uri in ("/transfers/chunks/", "/transfers/chunks/a..b", "/transfers/chunks/XYZ"):
        r = router.dispatch(Request("GET", uri))
        assert r.status == 400, uri
    assert app.source.read_requests == []


def test_chunks_wrong_method(router):
    r = router.dispatch(Request("POST", f"/transfers/chunks/{ID1}"))
    assert r.status == 405 and r.headers["Allow"] == "GET"


def test_chunks_source_error(router, app):
    def missing(request):
        raise NotFound("Unknown instance")

    app.source.read = missing
    r = router.dispatch(Request("GET", f"/transfers/chunks/{ID1}"))
    assert r.status == 404 and body_json(r)["OrthancStatus"] == 17


def test_lookup(router, app):
    body = json.dumps([{"Level": "Study", "ID": ID1}, {"Level": "instances", "ID": ID2}]).encode()
    r = router.dispatch(Request("POST", "/transfers/lookup", body=body))
    assert r.status == 200 and r.content_type == JSON_TYPE
    assert app.source.lookup_requests == [[Resource("Study", ID1), Resource("Instance", ID2)]]
    expected = {
        "CountInstances": 2,
        "Instances": [{"ID": ID1, "MD5": "b81af6768a606259904a7fe7a5eea85f", "Size": "768"},
                      {"ID": ID2, "MD5": "8b1a9953c4611296a827abf8c47804d7", "Size": "1048576"}],
        "Originator": app.originator,
        "TotalSize": "1049344",
        "TotalSizeMB": 1,
    }
    assert json.loads(r.body) == expected
    # compact, keys sorted, as the C++ puller sends and expects (protocol.md appendix A)
    assert b" " not in r.body and b"\n" not in r.body
    assert r.body == json.dumps(expected, separators=(",", ":"), sort_keys=True).encode()


@pytest.mark.parametrize("body,status", [
    (b"not json", 400),
    (b"", 400),
    (b'{"Level": "Study", "ID": "x"}', 400),
    (b'[{"Level": "Study"}]', 400),
    (b'[{"Level": "Frame", "ID": "x"}]', 400),
    (b'[{"Level": "Study", "ID": 3}]', 400),
    (b"\xff\xfe[", 400),
])
def test_lookup_bad_bodies(router, app, body, status):
    r = router.dispatch(Request("POST", "/transfers/lookup", body=body))
    assert r.status == status
    assert set(body_json(r)) == ERROR_KEYS
    assert app.source.lookup_requests == []


def test_lookup_wrong_method(router):
    r = router.dispatch(Request("GET", "/transfers/lookup"))
    assert r.status == 405 and r.headers["Allow"] == "POST"


def test_lookup_unknown_resource_is_404(router, app):
    def unknown(resources, limits):
        raise NotFound("Unknown study")

    app.source.lookup = unknown
    r = router.dispatch(Request("POST", "/transfers/lookup", body=b'[{"Level": "Study", "ID": "ab"}]'))
    assert r.status == 404


@pytest.mark.parametrize("core,expected", [
    (["python"], ["python", "transfers"]),
    ([], ["transfers"]),
    (["transfers", "a"], ["a", "transfers"]),
    (["zeta", "alpha", "web-viewer"], ["alpha", "transfers", "web-viewer", "zeta"]),
])
def test_plugins_adds_transfers_once_and_sorts(core, expected):
    app = FakeApp(core)
    router = Router()
    build_source_routes(router, app)
    r = router.dispatch(Request("GET", "/plugins"))
    assert r.status == 200
    assert body_json(r) == expected
    assert router.dispatch(Request("POST", "/plugins")).status == 405


def test_plugin_description(router):
    r = router.dispatch(Request("GET", "/plugins/transfers"))
    assert r.status == 200 and body_json(r) == {"ID": "transfers", "Version": "9.9"}


def test_peers(router, app):
    r = router.dispatch(Request("GET", "/transfers/peers"))
    assert r.status == 200
    assert body_json(r) == {"a": "disabled", "b": "installed"}
    r = router.dispatch(Request("POST", "/transfers/peers"))
    assert r.status == 405 and r.headers["Allow"] == "GET"


def test_peers_crash_is_500(app):
    logged = []
    router = Router(logged.append)
    build_source_routes(router, app)

    def boom():
        raise OSError("no threads left")

    app.probe_peers = boom
    r = router.dispatch(Request("GET", "/transfers/peers"))
    assert r.status == 500 and "OSError" in body_json(r)["Message"]
    assert len(logged) == 1 and "no threads left" in logged[0]
