"""The /jobs routes: the query string passed to the core encoded again (the SDK gives its arguments decoded),
and the methods each version of the core takes on /jobs/{id} and /jobs/{id}/{action}."""

import json

import pytest

from transfers_plugin.errors import NotFound
from transfers_plugin.jobs.routes import CoreJobMethods, _query, build_job_routes
from transfers_plugin.routes import Request, Router


def test_the_query_given_to_the_core_is_encoded_again():
    assert _query(Request("GET", "/jobs")) == ""
    assert _query(Request("GET", "/jobs", args={"expand": ""})) == "?expand"
    assert _query(Request("GET", "/jobs", args={"expand": "", "limit": "2"})) == "?expand&limit=2"
    # decoded by the SDK from ?a=b%26c%3Dd&e%20f=%2F: not a second argument, not another path
    assert _query(Request("GET", "/jobs", args={"a": "b&c=d", "e f": "/"})) == "?a=b%26c%3Dd&e%20f=%2F"


# -- the methods of /jobs/{id} and /jobs/{id}/{action}, as the core of each version takes them -------------

OURS, CORE = "our-job", "core-job"
V1_10 = CoreJobMethods()
V1_12_7 = CoreJobMethods.of(lambda *v: v <= (1, 12, 7))


class Engine:
    def __init__(self, finished: bool = True):
        self.finished = finished
        self.deleted = []
        self.actions = []

    def wait_loaded(self, timeout):
        return True

    def owns(self, job_id):
        return job_id == OURS and OURS not in self.deleted

    def job_json(self, job_id):
        return {"ID": job_id}

    def delete(self, job_id):
        if not self.finished:
            return False
        self.deleted.append(job_id)
        return True

    def pause(self, job_id):
        self.actions.append(("pause", job_id))


class Core:
    def __init__(self):
        self.calls = []

    def core_request(self, method, uri, body=b""):
        self.calls.append((method, uri))
        if uri == f"/jobs/{CORE}" and method in ("GET", "DELETE"):
            return None if method == "DELETE" else b'{"ID": "core-job"}'
        raise NotFound("Unknown resource")

    def core_post(self, uri, body):
        self.calls.append(("POST", uri))
        return b"{}"


def routes(methods, engine=None, core=None):
    router = Router()
    build_job_routes(router, engine or Engine(), core or Core(), methods)
    return router


def test_core_job_methods_follow_the_orthanc_version():
    assert CoreJobMethods.of(lambda *v: v <= (1, 10, 1)) == CoreJobMethods(delete_job=False, delete_output=False)
    assert CoreJobMethods.of(lambda *v: v <= (1, 12, 1)) == CoreJobMethods(delete_job=False, delete_output=True)
    assert CoreJobMethods.of(lambda *v: v <= (1, 12, 2)) == CoreJobMethods(delete_job=True, delete_output=True)


@pytest.mark.parametrize("methods,uri,method,allow", [
    (V1_10, "/jobs/{id}", "POST", "GET"),
    (V1_10, "/jobs/{id}", "PUT", "GET"),
    (V1_10, "/jobs/{id}", "DELETE", "GET"),
    (V1_10, "/jobs/{id}/pause", "PUT", "GET,POST"),
    (V1_10, "/jobs/{id}/cancel", "DELETE", "GET,POST"),
    (V1_12_7, "/jobs/{id}", "POST", "GET,DELETE"),
    (V1_12_7, "/jobs/{id}", "PUT", "GET,DELETE"),
    (V1_12_7, "/jobs/{id}/resume", "PUT", "GET,POST,DELETE"),
])
@pytest.mark.parametrize("job_id", [OURS, CORE, "unknown"])
def test_a_method_the_core_does_not_take_is_405_with_its_allow_whatever_the_job(methods, uri, method, allow, job_id):
    core = Core()
    r = routes(methods, core=core).dispatch(Request(method, uri.format(id=job_id), body=b"{}"))
    assert r.status == 405 and r.headers["Allow"] == allow
    assert core.calls == []


def test_delete_a_finished_job_of_ours_as_the_core_does():
    engine = Engine()
    router = routes(V1_12_7, engine)
    r = router.dispatch(Request("DELETE", f"/jobs/{OURS}"))
    assert (r.status, r.body, r.content_type) == (200, b"", "text/plain") and engine.deleted == [OURS]
    r = router.dispatch(Request("DELETE", f"/jobs/{OURS}"))  # gone: passed to the core, which knows none
    assert r.status == 404
    body = json.loads(r.body)
    assert body["OrthancStatus"] == 7 and body["Details"] == f"No job found with this id: {OURS}"


def test_delete_an_unfinished_job_of_ours_is_refused_as_the_core_refuses_it():
    core = Core()
    r = routes(V1_12_7, Engine(finished=False), core).dispatch(Request("DELETE", f"/jobs/{OURS}"))
    assert r.status == 404 and core.calls == []
    body = json.loads(r.body)
    assert body["Message"] == "Accessing an inexistent item" and body["OrthancStatus"] == 7
    assert body["Details"] == f"No job found with this id: {OURS}"


def test_delete_a_core_job_is_the_cores():
    core = Core()
    router = routes(V1_12_7, core=core)
    r = router.dispatch(Request("DELETE", f"/jobs/{CORE}"))
    assert (r.status, r.body) == (200, b"") and core.calls == [("DELETE", f"/jobs/{CORE}")]
    assert router.dispatch(Request("DELETE", "/jobs/unknown")).status == 404


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_action_name_read_or_deleted_as_an_output_of_our_job_is_none(method):
    engine = Engine()
    r = routes(V1_12_7, engine).dispatch(Request(method, f"/jobs/{OURS}/pause"))
    assert r.status == 404 and engine.actions == [] and engine.deleted == []
    body = json.loads(r.body)
    assert body["OrthancStatus"] == 7 and body["Details"] == "Job has no such output: pause"
    r = routes(V1_12_7, engine).dispatch(Request("POST", f"/jobs/{OURS}/pause"))
    assert r.status == 200 and engine.actions == [("pause", OURS)]
