"""The references the Python plugin 4.0 leaks on REST callbacks: measured, and given back only when measured.

A fake SDK calls the callbacks as plugin 4.0 does (one reference too many on every argument, made with
``Py_IncRef``) or as 4.1 does (none); the real ``sys.getrefcount`` measures them.
"""

import ctypes
import threading

import pytest

from transfers_plugin import sdk_leaks
from transfers_plugin.orthanc_api import OrthancApi

incref = ctypes.pythonapi.Py_IncRef
incref.argtypes = [ctypes.py_object]


class Output:
    def AnswerBuffer(self, body, content_type):
        self.answer = (body, content_type)

    def SetHttpHeader(self, name, value):
        pass


class FakeSdk:
    """Calls registered callbacks with fresh argument objects, leaking one reference to each if ``leaks``."""

    class OrthancException(Exception):
        pass

    def __init__(self, leaks: bool):
        self.leaks = leaks
        self.callbacks = {}
        self.logs = []
        self.kept = []  # the arguments of the calls made while ``keep`` is set, to measure them afterwards
        self.keep = False

    def RegisterRestCallback(self, pattern, callback):
        self.callbacks[pattern] = callback

    def LogWarning(self, message):
        self.logs.append(message)

    LogInfo = LogError = LogWarning

    def _call(self, method, uri, body=None):
        path, _, query = uri.partition("?")
        pattern = next(p for p in self.callbacks if p.endswith("/(probe)") and path.startswith(p[:-len("/(probe)")]))
        kw = {"method": "".join([method[0], method[1:]]), "groups": ("".join(["pro", "be"]),),
              "headers": {"host": "".join(["local", "host"]), "user-agent": "".join(["fake", "-sdk"])}}
        if method == "GET":
            kw["get"] = {k: "".join([v, ""]) for k, v in (a.split("=") for a in query.split("&") if a)}
        if body is not None:
            kw["body"] = bytes(bytearray(body))
        if self.leaks:
            for _kind, container, key in list(sdk_leaks.locations(kw)):
                incref(container[key])
        if self.keep:
            self.kept.append({k: v for k, v in kw.items()})
        self.callbacks[pattern](Output(), path, **kw)

    def RestApiGetAfterPlugins(self, uri):
        self._call("GET", uri)

    def RestApiPostAfterPlugins(self, uri, body):
        self._call("POST", uri, body)


@pytest.mark.parametrize("leaks", [True, False])
def test_the_probe_measures_the_leak_and_the_callbacks_give_back_exactly_what_leaked(leaks):
    sdk = FakeSdk(leaks)
    api = OrthancApi(module=sdk)
    probe = api.prepare_leak_probe()
    probe()
    assert api.leaks.active is leaks
    assert any("leaks the arguments" in m for m in sdk.logs) is leaks
    # A request through a registered route: afterwards, only what the test keeps holds its arguments.
    seen = []
    api.register_route("/transfers/x/(probe)", lambda request: seen.append(request) or __import__(
        "transfers_plugin.routes", fromlist=["Response"]).Response(200, b"{}"))
    sdk.callbacks = {"/transfers/x/(probe)": sdk.callbacks["/transfers/x/(probe)"]}
    sdk.keep = True
    sdk.RestApiPostAfterPlugins("/transfers/x/probe", b"a body of some size")
    sdk.RestApiGetAfterPlugins("/transfers/x/probe?offset=10&size=20")
    seen.clear()
    # What only the test holds now has exactly the references of a fresh object held the same way.
    extra = {}
    for kept in sdk.kept:
        for kind, counts in sdk_leaks.extra_references(kept).items():
            extra.setdefault(kind, []).extend(counts)
    assert set(extra) == {"method", "groups", "headers", "headers values", "body", "get", "get values"}
    assert {n for counts in extra.values() for n in counts} == {0}, extra


@pytest.mark.parametrize("extra,expected", [
    ({"method": [1], "groups": [1], "body": [1], "headers": [1], "headers values": [1, 1]}, True),
    ({"method": [0], "groups": [0], "body": [0], "headers": [0]}, False),
    ({"method": [1], "groups": [1], "body": [0], "headers": [1]}, None),  # mixed: touch nothing
    ({"method": [1], "groups": [1], "headers": [1]}, None),  # the body was not measured
    ({"method": [2], "groups": [2], "body": [2], "headers": [2]}, None),
    ({}, None),
])
def test_references_are_given_back_only_when_every_argument_leaks_exactly_one(extra, expected):
    assert sdk_leaks.verdict(extra) is expected


def test_nothing_is_given_back_when_the_probe_fails():
    sdk = FakeSdk(True)

    def broken(uri):
        raise sdk.OrthancException(2038, "database closed")

    sdk.RestApiGetAfterPlugins = broken
    api = OrthancApi(module=sdk)
    api.prepare_leak_probe()()
    assert not api.leaks.active and any("probe" in m and "failed" in m for m in sdk.logs)


def test_release_is_a_no_op_until_enabled():
    calls = []
    compensation = sdk_leaks.LeakCompensation(decref=calls.append)
    compensation.release({"method": "POST", "body": b"xyz"})
    assert calls == []
    compensation.enable()
    compensation.release({"method": "POST", "body": b"xyz", "headers": {"a": "bc"}})
    assert calls == ["POST", b"xyz", {"a": "bc"}, "bc"]


def test_concurrent_callbacks_each_give_back_their_own_arguments():
    sdk = FakeSdk(True)
    api = OrthancApi(module=sdk)
    api.prepare_leak_probe()()
    assert api.leaks.active
    from transfers_plugin.routes import Response
    api.register_route("/transfers/y/(probe)", lambda request: Response(200, b"{}"))
    sdk.callbacks = {"/transfers/y/(probe)": sdk.callbacks["/transfers/y/(probe)"]}
    sdk.keep = True
    threads = [threading.Thread(target=sdk.RestApiPostAfterPlugins, args=("/transfers/y/probe", b"b" * 1000 * (i + 1)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(sdk.kept) == 8
    extra = [n for kept in sdk.kept for counts in sdk_leaks.extra_references(kept).values() for n in counts]
    assert extra and set(extra) == {0}


def test_the_probe_route_keeps_nothing_once_the_probe_is_done():
    sdk = FakeSdk(True)
    api = OrthancApi(module=sdk)
    probe = api.prepare_leak_probe()
    probe()
    route = next(iter(sdk.callbacks))
    sdk.keep = True
    for _ in range(3):
        sdk.RestApiPostAfterPlugins(route[:-len("/(probe)")] + "/probe", b"someone found the probe's URI")
    extra = [n for kept in sdk.kept for counts in sdk_leaks.extra_references(kept).values() for n in counts]
    assert extra and set(extra) == {0}, "the probe route keeps or leaks what it is sent"
