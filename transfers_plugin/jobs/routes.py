"""Orthanc's ``/jobs`` routes, serving the plugin's jobs and the core's together.

A plugin route takes precedence over the core's, so these handlers see every request to ``/jobs``,
``/jobs/{id}`` and ``/jobs/{id}/{pause,resume,cancel,resubmit}``: they answer for the plugin's jobs and
pass everything else to the core (``core_get_json``, ``core_post``, ``core_request`` of the Orthanc
boundary). Sub-routes the plugin does not register (``/jobs/{id}/archive``...) stay the core's.

Until the engine has loaded the saved jobs (just after Orthanc starts), these routes wait for it, up to
``STARTUP_WAIT`` seconds: a client asking for a saved job right after a restart must not get a 404.

The SDK reports any non-200 answer of the core as "unknown resource" without its status, so a refusal is
answered with the status the core gives on HTTP: 404 for ``GET /jobs/{id}``, 400 for an action.
"""

from typing import Any
from urllib.parse import quote

from ..errors import BadRequest, MethodNotAllowed, NotFound
from ..protocol import dumps_styled
from ..routes import JSON_TYPE, Request, Response, Router

ACTIONS = ("pause", "resume", "cancel", "resubmit")
STARTUP_WAIT = 10.0


def _query(request: Request) -> str:
    """The query string, encoded again for the core (the SDK gives its arguments decoded)."""
    if not request.args:
        return ""
    return "?" + "&".join(quote(k, safe="") if v == "" else f"{quote(k, safe='')}={quote(v, safe='')}"
                          for k, v in request.args.items())


def build_job_routes(router: Router, engine: Any, core: Any) -> None:
    def jobs(request: Request) -> Response:
        engine.wait_loaded(STARTUP_WAIT)
        expand = "expand" in request.args and request.args["expand"].lower() not in ("false", "0")
        ours = engine.list_json() if expand else engine.list_ids()
        theirs = core.core_get_json("/jobs" + _query(request))
        return Response(200, dumps_styled(list(theirs) + ours), JSON_TYPE)

    def job(request: Request) -> Response:
        engine.wait_loaded(STARTUP_WAIT)
        job_id = request.groups[0]
        if engine.owns(job_id):
            if request.method != "GET":
                raise MethodNotAllowed("GET", request.method)
            return Response.json(engine.job_json(job_id))
        return _delegate(request, f"/jobs/{job_id}" + _query(request))

    def action(request: Request) -> Response:
        engine.wait_loaded(STARTUP_WAIT)
        job_id, name = request.groups
        if engine.owns(job_id):
            if request.method == "GET":  # the core reads GET /jobs/{id}/{name} as a job output
                raise NotFound(f"Job {job_id} has no such output: {name}", orthanc_code=7)
            if request.method != "POST":
                raise MethodNotAllowed("POST", request.method)
            getattr(engine, name)(job_id)
            return Response(200, b"{}", JSON_TYPE)
        if request.method == "POST":
            try:
                return Response(200, core.core_post(f"/jobs/{job_id}/{name}", request.body), JSON_TYPE)
            except NotFound:
                raise BadRequest(f"Orthanc refuses to {name} job {job_id} (unknown job or wrong state)",
                                 orthanc_code=6) from None
        return _delegate(request, f"/jobs/{job_id}/{name}")

    def _delegate(request: Request, uri: str) -> Response:
        return Response(200, core.core_request(request.method, uri, request.body), JSON_TYPE)

    router.add(r"/jobs", GET=jobs)
    router.add(r"/jobs/([^/]+)", GET=job, POST=job, PUT=job, DELETE=job)
    router.add(r"/jobs/([^/]+)/(" + "|".join(ACTIONS) + ")", GET=action, POST=action, PUT=action, DELETE=action)
