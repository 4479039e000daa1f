"""Errors that carry an HTTP status, so that every expected failure becomes a clear 4xx/5xx answer."""

from typing import Any, Dict, Optional

HTTP_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}

# Orthanc error codes (OrthancPluginErrorCode) used in answers, named as Orthanc names them.
ORTHANC_ERRORS = {
    -1: "Internal error",
    1: "Error encountered within the plugin engine",
    3: "Parameter out of range",
    5: "Bad type for a parameter",
    6: "Bad sequence of calls",
    7: "Accessing an inexistent item",
    8: "Bad request",
    9: "Error in the network protocol",
    14: "Cannot write to file",
    15: "Bad file format",
    16: "Timeout",
    17: "Unknown resource",
    20: "Corrupted file (e.g. inconsistent MD5 hash)",
    28: "Cannot parse a JSON document",
    37: "Job canceled",
    2038: "Plugin trying to call the database during its initialization",
}


# The HTTP status Orthanc gives an error code (Orthanc::ConvertErrorCodeToHttpStatus, read from
# libOrthancFramework 1.10.1); every other code is 500 there.
ORTHANC_HTTP_STATUS = {0: 200, 3: 400, 5: 400, 7: 404, 8: 400, 12: 400, 13: 404, 15: 400, 17: 404, 21: 404,
                       28: 400, 29: 401, 34: 406, 36: 503, 41: 416, 42: 503, 43: 409}


def http_status_of(orthanc_code: int) -> int:
    """The HTTP status of a job's failure answered to a synchronous request: Orthanc's own for its codes,
    except that a failure of the network protocol (a peer failed, 9) is 502, as the plugin answers a peer that
    fails a synchronous call, and so are bad credentials (29: a peer refused ours, and a plugin cannot answer
    401 but through Orthanc's own authentication); 500 for the rest (a canceled job, a disk error, a corrupted
    file...), as Orthanc."""
    if orthanc_code in (9, 29):
        return 502
    status = ORTHANC_HTTP_STATUS.get(orthanc_code, 500)
    return 500 if status == 200 else status


class TransfersError(Exception):
    """Base class: a failure with an HTTP status and an Orthanc error code."""

    status = 500
    orthanc_code = -1

    def __init__(self, message: str, *, status: Optional[int] = None, orthanc_code: Optional[int] = None,
                 details: Optional[str] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if orthanc_code is not None:
            self.orthanc_code = orthanc_code
        self.details = details

    def to_json(self, method: str = "", uri: str = "") -> Dict[str, Any]:
        """The error body, with the same keys as Orthanc's own error answers."""
        body: Dict[str, Any] = {
            "HttpError": HTTP_REASONS.get(self.status, "Error"),
            "HttpStatus": self.status,
            "Message": self.message,
            "Method": method,
            "OrthancError": ORTHANC_ERRORS.get(self.orthanc_code, "Error"),
            "OrthancStatus": self.orthanc_code,
            "Uri": uri,
        }
        if self.details:
            body["Details"] = self.details
        return body


class BadRequest(TransfersError):
    status = 400
    orthanc_code = 8


class BadJson(BadRequest):
    orthanc_code = 28


class BadFileFormat(BadRequest):
    orthanc_code = 15


class PayloadTooLarge(BadRequest):
    """A body or a list longer than the plugin accepts (Transfers.MaxJsonBodySize, MaxTransferInstances)."""
    status = 413
    orthanc_code = 3


class ParameterOutOfRange(BadRequest):
    orthanc_code = 3


class BadParameterType(BadRequest):
    orthanc_code = 5


class NotFound(TransfersError):
    status = 404
    orthanc_code = 17


class MethodNotAllowed(TransfersError):
    status = 405
    orthanc_code = 8

    def __init__(self, allowed: str, method: str):
        super().__init__(f"Method {method} is not allowed here; use {allowed}")
        self.allowed = allowed


class Conflict(TransfersError):
    status = 409
    orthanc_code = 6


class Unavailable(TransfersError):
    status = 503
    orthanc_code = 1


class OrthancUnavailable(Unavailable):
    """Orthanc's database cannot be called: Orthanc is still starting or is stopping (its error 2038).

    Not a failure of the work that met it: a job that meets it stops as at a shutdown and goes on later."""
    orthanc_code = 2038


class CorruptedFile(TransfersError):
    status = 500
    orthanc_code = 20


class NetworkProtocol(TransfersError):
    status = 500
    orthanc_code = 9


class DiskError(TransfersError):
    """The download area cannot be written or read (full, read-only, not allowed, failing): the message says
    so in words, names the folder, and keeps the operating system's short reason (its ``strerror``)."""
    status = 500
    orthanc_code = 14
    retryable = False  # asking the peer again changes nothing of our disk


class InsufficientStorage(DiskError):
    """The download area's disk is full, or has less free space than a transfer needs."""
    status = 507
