"""Thin REST handlers: parse the request, call one domain function, answer JSON or a JSON error.

A :class:`Router` holds one entry per URI pattern with a handler per HTTP method. It turns every
expected failure (:class:`TransfersError`) into its HTTP status with a JSON body, a wrong method into
405, and an unexpected exception into 500 after logging it.
"""

import json
import re
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .errors import MethodNotAllowed, ParameterOutOfRange, TransfersError
from .holdings import holds_answer, parse_holds_request
from .metadata import parse_request as parse_metadata_request
from .protocol import (
    ChunkRequest,
    Limits,
    PushDescriptor,
    TransferQuery,
    check_uuid,
    dumps_compact,
    dumps_styled,
    lookup_answer,
    parse_json_body,
    parse_resources,
    parse_synchronous,
    shown,
)

JSON_TYPE = "application/json"


@dataclass
class Request:
    method: str
    uri: str
    groups: Tuple[str, ...] = ()
    args: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, styled: bool = True) -> "Response":
        return cls(200, dumps_styled(value) if styled else dumps_compact(value), JSON_TYPE)


Handler = Callable[[Request], Response]


@dataclass
class Route:
    pattern: str  # a regular expression matching the whole URI, as Orthanc's RegisterRestCallback takes
    methods: Dict[str, Handler]


class Router:
    def __init__(self, log_error: Callable[[str], None] = lambda m: None,
                 log_debug: Callable[[str], None] = lambda m: None):
        self.routes: List[Route] = []
        self.log_error = log_error
        self.log_debug = log_debug

    def add(self, pattern: str, **methods: Handler) -> None:
        self.routes.append(Route(pattern, {m.upper(): h for m, h in methods.items()}))

    def handle(self, route: Route, request: Request) -> Response:
        try:
            handler = route.methods.get(request.method.upper())
            if handler is None:
                raise MethodNotAllowed(",".join(route.methods), request.method)  # in the order of registration
            return handler(request)
        except TransfersError as e:
            return error_response(e, request)
        except Exception as e:  # noqa: BLE001 - the answer must stay JSON, the traceback goes to the log
            uri = shown(request.uri)
            self.log_error(f"Transfers: {request.method} {uri} failed with an internal error: {type(e).__name__}: {e}")
            self.log_debug(f"Transfers: {request.method} {uri}: {traceback.format_exc()}")
            return error_response(TransfersError(f"Internal error in the transfers plugin ({type(e).__name__}); "
                                                 f"the Orthanc log says more"), request)

    def dispatch(self, request: Request) -> Response:
        """Finds the route of a URI (for tests and for callers outside Orthanc)."""
        for route in self.routes:
            m = re.fullmatch(route.pattern, request.uri)
            if m:
                request.groups = m.groups()
                return self.handle(route, request)
        return error_response(TransfersError("Unknown URI", status=404, orthanc_code=17), request)


def error_response(error: TransfersError, request: Request) -> Response:
    headers = {}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = error.allowed
    body = json.dumps(error.to_json(request.method, request.uri), indent=3, sort_keys=True) + "\n"
    return Response(error.status, body.encode("utf-8"), JSON_TYPE, headers)


def build_source_routes(router: Router, app: Any) -> None:
    """The routes a source peer serves (protocol.md R1, R2, R5) and ``/plugins`` for detection.

    ``app`` offers ``source``, ``originator``, ``codec_for(name)``, ``served_chunks(n_bytes)`` (the
    metrics), ``probe_peers()``, ``core_plugins()``, ``plugin_description()``, ``capabilities()``,
    ``holds(instances)`` and ``metadata`` (a ``MetadataStore``); the last three answer our peers only.
    """

    def chunks(request: Request) -> Response:
        query = ChunkRequest.parse(request.groups[0], request.args)
        codec = app.codec_for(query.compression)
        # zstd-shuffle: the source cuts the instances around their pixel data
        body = app.source.encoded(query, codec) if codec.uses_layout else codec.encode(app.source.read(query))
        app.served_chunks(len(body))
        return Response(200, body, codec.content_type)

    def lookup(request: Request) -> Response:
        limits = app.config.limits
        resources = parse_resources(parse_json_body(request.body, "lookup body", limits), limits)
        instances = app.source.lookup(resources, limits)
        return Response.json(lookup_answer(instances, app.originator), styled=False)

    def peers(request: Request) -> Response:
        return Response.json(app.probe_peers())

    def plugins(request: Request) -> Response:
        names = list(app.core_plugins())
        if "transfers" not in names:
            names.append("transfers")
        return Response.json(sorted(names))

    def plugin_info(request: Request) -> Response:
        return Response.json(app.plugin_description())

    def capabilities(request: Request) -> Response:
        return Response.json(app.capabilities())

    def metadata(request: Request) -> Response:
        ids = parse_metadata_request(parse_json_body(request.body, "metadata query", app.config.limits))
        return Response.json(app.metadata.collect(ids), styled=False)

    def holds(request: Request) -> Response:
        limits = app.config.limits
        instances, within = parse_holds_request(parse_json_body(request.body, "holds query", limits), limits)
        return Response.json(holds_answer(app.holds(instances, within)), styled=False)

    router.add(r"/transfers/chunks/([^/]*)", GET=chunks)
    router.add(r"/transfers/lookup", POST=lookup)
    router.add(r"/transfers/peers", GET=peers)
    router.add(r"/plugins", GET=plugins)
    router.add(r"/plugins/transfers", GET=plugin_info)
    router.add(r"/transfers/capabilities", GET=capabilities)  # for our peers only (see capabilities.py)
    router.add(r"/transfers/holds", POST=holds)  # idem
    router.add(r"/transfers/metadata", POST=metadata)  # idem (see metadata.py)



def build_transfer_routes(router: Router, app: Any) -> None:
    """``POST /transfers/pull`` and ``/transfers/send``: check the query and the peer, then answer at once (or,
    with ``"Synchronous": true``, at the end of the transfer)."""

    def query_of(request: Request) -> Tuple[TransferQuery, Optional[bool]]:
        """The query, and its ``Synchronous`` (None when the body does not say)."""
        limits = app.config.limits
        document = parse_json_body(request.body, "transfer query", limits)
        return TransferQuery.from_json(document, limits), parse_synchronous(document)

    def pull(request: Request) -> Response:
        return Response.json(app.pull(*query_of(request)))

    def send(request: Request) -> Response:
        return Response.json(app.send(*query_of(request)))

    router.add(r"/transfers/pull", POST=pull)
    router.add(r"/transfers/send", POST=send)


def build_push_routes(router: Router, receiver: Any, limits: Limits) -> None:
    """The receiving side of push mode (protocol.md R6 to R9). Transaction IDs and bucket indices are
    checked here, before they reach the receiver."""

    def create(request: Request) -> Response:
        descriptor = PushDescriptor.from_json(parse_json_body(request.body, "push descriptor", limits), limits)
        tid = receiver.create(descriptor)
        return Response.json({"ID": tid, "Path": f"/transfers/push/{tid}"})

    def transaction(request: Request) -> str:
        return check_uuid(request.groups[0], "The push transaction ID")

    def put(request: Request) -> Response:
        tid, index = transaction(request), request.groups[1]
        if len(index) > 20:  # more digits than any 64-bit number (and int() refuses more than 4300)
            raise ParameterOutOfRange(f"Bucket index {shown(index)} is out of range")
        receiver.put(tid, int(index), request.body)
        return Response(200, b"{}", JSON_TYPE)

    def commit(request: Request) -> Response:
        receiver.commit(transaction(request))
        return Response(200, b"{}", JSON_TYPE)

    def discard(request: Request) -> Response:
        receiver.discard(transaction(request))
        return Response(200, b"{}", JSON_TYPE)

    def metadata(request: Request) -> Response:
        tid = transaction(request)
        receiver.put_metadata(tid, parse_json_body(request.body, "push metadata", limits))
        return Response(200, b"{}", JSON_TYPE)

    router.add(r"/transfers/push", POST=create)
    router.add(r"/transfers/push/([^/]+)/([0-9]+)", PUT=put)
    router.add(r"/transfers/push/([^/]+)/commit", POST=commit)
    router.add(r"/transfers/push/([^/]+)/metadata", POST=metadata)  # for our senders only (see metadata.py)
    router.add(r"/transfers/push/([^/]+)", DELETE=discard)
