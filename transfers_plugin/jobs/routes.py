"""Orthanc's ``/jobs`` routes, serving the plugin's jobs and the core's together.

A plugin route takes precedence over the core's, so these handlers see every request to ``/jobs``,
``/jobs/{id}`` and ``/jobs/{id}/{pause,resume,cancel,resubmit}``: they answer for the plugin's jobs and
pass everything else to the core (``core_get_json``, ``core_post``, ``core_request`` of the Orthanc
boundary). Sub-routes the plugin does not register (``/jobs/{id}/archive``...) stay the core's.

They take the methods that the core of the running Orthanc takes on these URIs, whatever the job (the
core's own, the plugin's or none), and answer the others with the core's 405 and its ``Allow``: see
:class:`CoreJobMethods` (measured on Orthanc 1.10.1 and 1.12.7).

Until the engine has loaded the saved jobs (just after Orthanc starts), these routes wait for it, up to
``STARTUP_WAIT`` seconds: a client asking for a saved job right after a restart must not get a 404.

The SDK reports any non-200 answer of the core as "unknown resource" without its status, so a refusal is
answered with the status the core gives on HTTP: 404 for ``GET`` or ``DELETE /jobs/{id}``, 400 for an action.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict
from urllib.parse import quote

from ..errors import BadRequest, NotFound
from ..protocol import dumps_styled
from ..routes import JSON_TYPE, Request, Response, Router

ACTIONS = ("pause", "resume", "cancel", "resubmit")
STARTUP_WAIT = 10.0
INEXISTENT_ITEM = 7  # Orthanc's ErrorCode_InexistentItem, the core's code for an unknown job or job output


@dataclass(frozen=True)
class CoreJobMethods:
    """Which methods the core's ``/jobs/{id}`` routes take, which grew with Orthanc's versions. Orthanc
    1.10.1 takes only GET on ``/jobs/{id}`` and GET, POST on ``/jobs/{id}/{action}`` (405 for the others,
    even for an unknown job); 1.12.1 added DELETE /jobs/{id}/{output} (a job's output, such as an archive)
    and 1.12.2 DELETE /jobs/{id} (a finished job leaves the history)."""

    delete_job: bool = False
    delete_output: bool = False

    @classmethod
    def of(cls, orthanc_at_least: Callable[[int, int, int], bool]) -> "CoreJobMethods":
        return cls(delete_job=orthanc_at_least(1, 12, 2), delete_output=orthanc_at_least(1, 12, 1))


def _inexistent(details: str) -> NotFound:
    """The core's refusal of an unknown job or job output (its Message, code and Details)."""
    return NotFound("Accessing an inexistent item", orthanc_code=INEXISTENT_ITEM, details=details)


def _query(request: Request) -> str:
    """The query string, encoded again for the core (the SDK gives its arguments decoded)."""
    if not request.args:
        return ""
    return "?" + "&".join(quote(k, safe="") if v == "" else f"{quote(k, safe='')}={quote(v, safe='')}"
                          for k, v in request.args.items())


def build_job_routes(router: Router, engine: Any, core: Any, methods: CoreJobMethods = CoreJobMethods()) -> None:
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
            return Response.json(engine.job_json(job_id))
        return _delegate(request, f"/jobs/{job_id}" + _query(request))

    def delete_job(request: Request) -> Response:
        """As the core: a finished job leaves the history (200, an empty body); any other is 'not found'."""
        engine.wait_loaded(STARTUP_WAIT)
        job_id = request.groups[0]
        if engine.owns(job_id):
            if not engine.delete(job_id):
                raise _inexistent(f"No job found with this id: {job_id}")
        else:
            try:
                core.core_request("DELETE", f"/jobs/{job_id}")
            except NotFound:
                raise _inexistent(f"No job found with this id: {job_id}") from None
        return Response(200, b"", "text/plain")

    def action(request: Request) -> Response:
        engine.wait_loaded(STARTUP_WAIT)
        job_id, name = request.groups
        if engine.owns(job_id):
            if request.method == "POST":
                getattr(engine, name)(job_id)
                return Response(200, b"{}", JSON_TYPE)
            # the core reads GET and DELETE /jobs/{id}/{name} as a job output: a transfer job has none
            raise _inexistent(f"Job has no such output: {name}")
        if request.method == "POST":
            try:
                return Response(200, core.core_post(f"/jobs/{job_id}/{name}", request.body), JSON_TYPE)
            except NotFound:
                raise BadRequest(f"Orthanc refuses to {name} job {job_id} (unknown job or wrong state)",
                                 orthanc_code=6) from None
        try:  # GET or DELETE of a job output (no job has one of that name): what the core says of it
            body = core.core_request(request.method, f"/jobs/{job_id}/{name}")
        except NotFound:
            raise _inexistent(f"Job has no such output: {name}") from None
        return Response(200, body, JSON_TYPE) if request.method == "GET" else Response(200, b"", "text/plain")

    def _delegate(request: Request, uri: str) -> Response:
        return Response(200, core.core_request(request.method, uri, request.body), JSON_TYPE)

    # In the core's order of methods, which is the order of its Allow header.
    job_methods: Dict[str, Any] = {"GET": job}
    if methods.delete_job:
        job_methods["DELETE"] = delete_job
    action_methods: Dict[str, Any] = {"GET": action, "POST": action}
    if methods.delete_output:
        action_methods["DELETE"] = action
    router.add(r"/jobs", GET=jobs)
    router.add(r"/jobs/([^/]+)", **job_methods)
    router.add(r"/jobs/([^/]+)/(" + "|".join(ACTIONS) + ")", **action_methods)
