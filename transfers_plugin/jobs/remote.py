"""The ``RemotePullTransfer`` job: a send in pull mode, followed from the sending side.

``/transfers/send`` to a peer with ``RemoteSelf`` asks that peer to pull (``POST /transfers/pull`` there): the
transfer runs as a job of the peer. With ``"Synchronous"`` in the request, the sender also creates this local
job, which follows the peer's job so that the sender's ``/jobs`` (Orthanc Explorer 2, the Explorer's job page,
API clients) shows the transfer:

- it asks the peer for ``GET /jobs/{RemoteJob}`` (with the peer's credentials, headers and TLS options, as
  every request of the plugin), every quarter of a second at first, then every second;
- it mirrors the remote job's progress, and its state at the end: Success when the remote job succeeds,
  Failure with the remote job's error code, description and details when it fails. While it follows, the
  local job is Running; ``Content.RemoteState`` is the remote job's own state (Pending, Running, Paused,
  Retry...), ``Content.RemoteContent`` the numbers and short texts of the remote job's ``Content``;
- a peer that cannot be reached, or answers 408, 429 or 5xx, is asked again with growing delays (1, 2, 4...
  10 s) until ``FOLLOW_ATTEMPTS`` questions in a row failed (about 65 s); then the local job fails, saying why
  and that the transfer may still run at the peer (a resubmit follows it again); a peer that refuses our
  credentials, no longer knows the job (404) or answers something that is not a job fails the local job at
  once;
- pause pauses the remote job too, resume resumes it; cancel cancels it (also when the local job is not
  running); a resubmit of a local job whose remote job failed or was canceled resubmits the remote job, and
  follows it again;
- the local job is saved with the others and goes on following after a restart of Orthanc.

It runs beside the ``ConcurrentJobs`` transfers (``takes_slot`` False): it moves no data, and a follow job
waiting for a slot would show nothing while the transfer runs at the peer.

Everything the peer answers is checked: at most ``JOB_ANSWER_LIMIT`` bytes, a JSON object whose ``ID`` is the
remote job's, a known ``State``, a ``Progress`` from 0 to 100, an integer ``ErrorCode``; texts are cut and
stripped of unprintable characters before they reach the job, the log or an answer.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from ..config import PeerConfig, TransfersConfig
from ..errors import NetworkProtocol, NotFound, TransfersError
from ..protocol import MB, PEER_ID, shown
from ..transport import PeerError, PeerTransport, transfer_headers
from .engine import JobContext, JobStopped
from .model import ERROR_CANCELED, FAILURE, STATES, STOP_PAUSE, SUCCESS, JobRecord

JOB_TYPE = "RemotePullTransfer"
JOB_ANSWER_LIMIT = 1 * MB  # an Orthanc job's JSON takes a few KB
POLL_FIRST = 0.25  # seconds between two questions to the peer at first...
POLL_STEP = 0.25
POLL_MAX = 1.0  # ...then every second
FOLLOW_ATTEMPTS = 10  # failed questions in a row that end the follow (1, 2, 4, 8, then 10 s apart: 65 s)
MAX_BACKOFF = 10.0
ACTION_TIMEOUT = 10.0  # seconds allowed to the peer for a pause or a resume (a cancel gets the peer's timeout)
TEXT_LIMIT = 1024  # characters kept of the remote job's ErrorDescription
DETAILS_LIMIT = 4096  # characters kept of its ErrorDetails
CONTENT_KEYS = 64  # entries of the remote job's Content kept: numbers, booleans and texts...
CONTENT_TEXT_LIMIT = 256  # ...of at most this many characters (the job is saved with its Content)


def clean_text(value: Any, limit: int) -> str:
    """A text from a peer as it may be shown: printable characters only, at most ``limit`` of them."""
    text = "".join(c if c.isprintable() else " " for c in str(value)).strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RemoteJobStatus:
    """What the sender keeps of the answer of ``GET /jobs/{id}`` at the peer."""

    state: str
    progress: float  # 0..100
    error_code: int = 0
    error_description: str = ""
    error_details: str = ""
    content: Dict[str, Any] = field(default_factory=dict)


def parse_remote_job(document: Any, job_id: str, peer_name: str) -> RemoteJobStatus:
    """The remote job's answer, checked (a hostile or broken peer fails the follow job, in words)."""
    def bad(why: str) -> NetworkProtocol:
        return NetworkProtocol(f"Peer {peer_name!r} answered GET /jobs/{job_id} with something that is not "
                               f"that job: {why}")

    if not isinstance(document, dict):
        raise bad("not a JSON object")
    if document.get("ID") != job_id:
        raise bad(f"its ID is {shown(document.get('ID'))}")
    state = document.get("State")
    if state not in STATES:
        raise bad(f"unknown State {shown(state)}")
    progress = document.get("Progress", 0)
    if not _number(progress) or not 0 <= progress <= 100:
        raise bad(f"Progress {shown(progress)} is not a number from 0 to 100")
    code = document.get("ErrorCode", 0)
    if not isinstance(code, int) or isinstance(code, bool) or not -2**31 <= code < 2**31:
        raise bad(f"ErrorCode {shown(code)} is not a 32-bit integer")
    for key in ("ErrorDescription", "ErrorDetails"):
        if key in document and not isinstance(document[key], str):
            raise bad(f"{key} is not a string")
    raw_content = document.get("Content")
    content: Dict[str, Any] = {}
    if isinstance(raw_content, dict):
        for key, value in raw_content.items():
            if len(content) >= CONTENT_KEYS:
                break
            if not (isinstance(key, str) and 0 < len(key) <= 64 and key.isprintable()):
                continue
            if isinstance(value, bool) or _number(value):
                content[key] = value
            elif isinstance(value, str) and len(value) <= CONTENT_TEXT_LIMIT:
                content[key] = clean_text(value, CONTENT_TEXT_LIMIT)
    return RemoteJobStatus(state, float(progress), code, clean_text(document.get("ErrorDescription", ""), TEXT_LIMIT),
                           clean_text(document.get("ErrorDetails", ""), DETAILS_LIMIT), content)


# The remote job's progress in the instances' own size (our plugin's, issue 14), shown as this job's own
# when the remote job gives it (a C++ peer's does not).
PROGRESS_KEYS = ("TotalSizeMB", "CompletedSizeMB", "WireSizeMB", "NetworkSpeedKBs", "RemainingSeconds")


def mirrored_progress(remote_content: Dict[str, Any]) -> Dict[str, int]:
    """The keys of ``PROGRESS_KEYS`` that the remote Content has as non-negative integers."""
    values = {}
    for key in PROGRESS_KEYS:
        value = remote_content.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            values[key] = value
    return values


class RemoteJobFailed(TransfersError):
    """The peer's job failed: the local job fails with its error code, in words that say where it failed."""

    status = 502


def remote_failure(status: RemoteJobStatus, peer_name: str, job_id: str) -> RemoteJobFailed:
    said = status.error_description or "no reason given"
    return RemoteJobFailed(f"The transfer failed at peer {peer_name!r} (its job {job_id}): {said}",
                           orthanc_code=status.error_code if status.error_code > 0 else 1,
                           details=status.error_details or None)


def follow_parameters(peer: str, remote_job: str, url: str, query_json: Dict[str, Any]) -> Dict[str, Any]:
    """The saved parameters of a follow job: the peer, its job, the URL of that job, and the transfer asked."""
    out = {"Peer": peer, "RemoteJob": remote_job, "URL": url, "Resources": query_json["Resources"],
           "Compression": query_json["Compression"]}
    if query_json.get("SenderTransferID") is not None:
        out["SenderTransferID"] = query_json["SenderTransferID"]
    return out


class RemotePullJobType:
    name = JOB_TYPE
    takes_slot = False

    def __init__(self, config: TransfersConfig, peers: Callable[[], Dict[str, PeerConfig]],
                 transport: PeerTransport, log_info: Callable[[str], None] = lambda m: None,
                 log_warning: Callable[[str], None] = lambda m: None, attempts: int = FOLLOW_ATTEMPTS,
                 poll: Optional[Dict[str, float]] = None):
        self.config = config
        self.peers = peers
        self.transport = transport
        self.log_info = log_info
        self.log_warning = log_warning
        self.attempts = max(1, attempts)
        self.poll = {"first": POLL_FIRST, "step": POLL_STEP, "max": POLL_MAX, "backoff": MAX_BACKOFF,
                     **(poll or {})}

    # -- the job -------------------------------------------------------------------------------------

    def _target(self, parameters: Dict[str, Any]):
        name, job_id = parameters.get("Peer"), parameters.get("RemoteJob")
        if not (isinstance(job_id, str) and PEER_ID.fullmatch(job_id)):
            raise NetworkProtocol(f"The remote job to follow has a bad ID: {shown(job_id)}")
        peer = self.peers().get(name) if isinstance(name, str) else None
        if peer is None:
            raise NotFound(f"Peer {name!r} is not configured any more")
        return peer, job_id

    def headers(self, parameters: Dict[str, Any]) -> Dict[str, str]:
        return transfer_headers(parameters.get("SenderTransferID"))

    def run(self, ctx: JobContext) -> None:
        params = ctx.parameters
        peer, job_id = self._target(params)
        ctx.update_content(Peer=params["Peer"], RemoteJob=job_id, URL=params.get("URL"),
                           Resources=params.get("Resources", []), Compression=params.get("Compression"))
        state = ctx.resume_state
        if state.get("PausedRemote"):
            self._action(peer, job_id, "resume", params, ctx.id)
            ctx.update_resume_state(PausedRemote=False)
        if state.get("RemoteEnded"):  # a resubmit after the remote job failed or was canceled
            self._action(peer, job_id, "resubmit", params, ctx.id)
            ctx.update_resume_state(RemoteEnded=False)
        try:
            self.follow(ctx, peer, job_id)
        except JobStopped as e:
            if e.reason == STOP_PAUSE and self._action(peer, job_id, "pause", params, ctx.id):
                ctx.update_resume_state(PausedRemote=True)
            raise

    def follow(self, ctx: JobContext, peer: PeerConfig, job_id: str) -> None:
        delay, failures = self.poll["first"], 0
        shown_content: Dict[str, Any] = {}
        while True:
            ctx.check()
            try:
                status = self.fetch(ctx, peer, job_id)
            except PeerError as e:
                ctx.check()  # a request abandoned because of a stop is the stop, not a failure
                if e.http_status == 404:
                    raise PeerError(f"Peer {peer.name!r} ({peer.url}) does not know its job {job_id} any more (it "
                                    f"left the job history there, or that Orthanc restarted without SaveJobs): "
                                    f"the outcome of the transfer cannot be known from here", 404,
                                    retryable=False) from None
                if not e.retryable:
                    raise
                failures += 1
                if failures >= self.attempts:
                    raise PeerError(f"{e.message}; following its job {job_id} was given up after {failures} "
                                    f"attempts in a row: the transfer may still run there (resubmit this job to "
                                    f"follow it again)", e.http_status, retryable=False) from None
                pause = min(self.poll["backoff"], 2.0 ** (failures - 1))
                self.log_warning(f"Transfers: job {ctx.id}: {e.message}; asking again in {pause:g} s "
                                 f"({failures}/{self.attempts - 1})")
                ctx.wait(pause)
                continue
            failures = 0
            ctx.set_progress(status.progress / 100.0)
            news = {"RemoteState": status.state, "RemoteContent": status.content, **mirrored_progress(status.content)}
            if news != shown_content:
                ctx.drop_content(*(k for k in PROGRESS_KEYS if k not in news))
                ctx.update_content(**news)
                shown_content = news
            if status.state == SUCCESS:
                return
            if status.state == FAILURE:
                ctx.update_resume_state(RemoteEnded=True)
                raise remote_failure(status, peer.name, job_id)
            ctx.wait(delay)
            delay = min(self.poll["max"], delay + self.poll["step"])

    def fetch(self, ctx: Optional[JobContext], peer: PeerConfig, job_id: str,
              parameters: Optional[Dict[str, Any]] = None) -> RemoteJobStatus:
        """The remote job's state, asked once (``ctx`` None: outside a run, not stoppable)."""
        answer = self.transport.call(peer, "GET", f"/jobs/{job_id}",
                                     headers=self.headers(ctx.parameters if ctx is not None else parameters or {}),
                                     retries=0, stop_event=ctx.stop_event if ctx is not None else None,
                                     abandon_on_stop=ctx is not None, expect_json=True, max_bytes=JOB_ANSWER_LIMIT)
        return parse_remote_job(answer.document, job_id, peer.name)

    def _action(self, peer: PeerConfig, job_id: str, action: str, params: Dict[str, Any], local_id: str,
                timeout: Optional[float] = ACTION_TIMEOUT, retries: int = 0) -> bool:
        """``POST /jobs/{id}/{action}`` at the peer; False (and a warning in the log) if it fails. A refusal
        (400: the remote job is not in a state that allows it, e.g. it already ended) is not a failure: the
        follow that comes next sees the remote job's state."""
        try:
            self.transport.call(peer, "POST", f"/jobs/{job_id}/{action}", body=b"", headers=self.headers(params),
                                timeout=timeout, retries=retries, max_bytes=JOB_ANSWER_LIMIT)
            self.log_info(f"Transfers: job {local_id}: {action} of the remote job {job_id} at {peer.name!r} done")
            return True
        except PeerError as e:
            if e.http_status == 400:
                self.log_info(f"Transfers: job {local_id}: peer {peer.name!r} refused to {action} its job {job_id} "
                              f"(not in a state that allows it)")
                return action != "cancel"
            self.log_warning(f"Transfers: job {local_id}: cannot {action} the remote job {job_id} at "
                             f"{peer.name!r}: {e.message}")
            return False

    def cleanup(self, record: JobRecord, reason: str) -> None:
        if reason != "canceled":
            return
        try:
            peer, job_id = self._target(record.parameters)
        except TransfersError as e:
            self.log_warning(f"Transfers: job {record.id}: the remote job cannot be canceled: {e.message}")
            return
        if self._action(peer, job_id, "cancel", record.parameters, record.id, timeout=None,
                        retries=max(1, self.config.max_http_retries)):
            try:  # a job that already ended answers a cancel with 200 too
                succeeded = self.fetch(None, peer, job_id, record.parameters).state == SUCCESS
            except TransfersError:
                succeeded = False
            if succeeded:
                details = (f"The remote job {job_id} at peer {peer.name!r} had already succeeded: the transfer is "
                           f"complete there")
            else:
                details = f"The remote job {job_id} at peer {peer.name!r} was canceled too"
            # A new dict, never a change in place: the engine may be copying the old one to save it. A resubmit
            # resubmits a canceled remote job, and follows one that succeeded to its success.
            record.resume_state = {**record.resume_state, "RemoteEnded": not succeeded, "PausedRemote": False}
        else:
            details = (f"The remote job {job_id} at peer {peer.name!r} could not be canceled: it may still run "
                       f"there (the Orthanc log says why)")
        if record.state == FAILURE and record.error_code == ERROR_CANCELED[0]:  # not resubmitted meanwhile
            record.error_details = details
