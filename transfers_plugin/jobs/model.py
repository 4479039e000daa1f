"""Orthanc's job model, for the plugin's own jobs: states, transitions, and the job JSON of Orthanc 1.10.

Transitions answer as Orthanc's core does (checked on Orthanc 1.10.1):

| action   | Pending | Running              | Paused  | Retry   | Success | Failure |
|----------|---------|----------------------|---------|---------|---------|---------|
| pause    | Paused  | Paused at next check | no-op   | Paused  | no-op   | no-op   |
| resume   | 400     | 400                  | Pending | 400     | 400     | 400     |
| cancel   | Failure | Failure at next check| Failure | Failure | no-op   | no-op   |
| resubmit | 400     | 400                  | 400     | 400     | 400     | Pending |

A cancelled job ends in Failure with Orthanc's error 37, "This job was canceled".
"""

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from ..errors import TransfersError

PENDING = "Pending"
RUNNING = "Running"
PAUSED = "Paused"
SUCCESS = "Success"
FAILURE = "Failure"
RETRY = "Retry"
STATES = (PENDING, RUNNING, PAUSED, SUCCESS, FAILURE, RETRY)
FINISHED = (SUCCESS, FAILURE)

ERROR_SUCCESS = (0, "Success")
ERROR_PLUGIN = (1, "Error encountered within the plugin engine")
ERROR_CANCELED = (37, "This job was canceled")

# Why a running job stops before it ends.
STOP_PAUSE = "pause"
STOP_CANCEL = "cancel"
STOP_SHUTDOWN = "shutdown"


class InvalidTransition(TransfersError):
    """An action the job's state does not allow: Orthanc's core answers 400 (BadSequenceOfCalls)."""

    status = 400
    orthanc_code = 6


def format_timestamp(t: float) -> str:
    """Orthanc's timestamps: UTC, ISO basic format with microseconds (20261128T232354.595591)."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")


@dataclass
class JobRecord:
    id: str
    type: str
    parameters: Dict[str, Any]
    priority: int = 0
    state: str = PENDING
    sequence: int = 0  # submission order, for equal priorities
    creation_time: float = 0.0
    completion_time: Optional[float] = None
    runtime: float = 0.0  # seconds spent running, over all runs
    progress: float = 0.0  # 0..1
    content: Dict[str, Any] = field(default_factory=dict)
    error_code: int = 0
    error_description: str = "Success"
    error_details: str = ""
    resume_state: Dict[str, Any] = field(default_factory=dict)  # what the job type keeps to go on later
    retry_at: Optional[float] = None
    # Not persisted: requests to a running job, taken into account at its next check.
    stop_request: Optional[str] = None

    # -- transitions asked by users ------------------------------------------------------------------

    def pause(self) -> bool:
        """Returns True when the job must be told to stop (it is running)."""
        if self.state in (PENDING, RETRY):
            self.state = PAUSED
            self.retry_at = None
        elif self.state == RUNNING:
            if self.stop_request is None:
                self.stop_request = STOP_PAUSE
            return True
        return False

    def resume(self) -> None:
        if self.state != PAUSED:
            raise InvalidTransition(f"Cannot resume job {self.id}: it is {self.state}, not Paused")
        self.state = PENDING

    def cancel(self, now: float) -> bool:
        """Returns True when the job must be told to stop (it is running)."""
        if self.state in (PENDING, PAUSED, RETRY):
            self.fail(now, *ERROR_CANCELED)
        elif self.state == RUNNING:
            self.stop_request = STOP_CANCEL
            return True
        return False

    def resubmit(self) -> None:
        if self.state != FAILURE:
            raise InvalidTransition(f"Cannot resubmit job {self.id}: it is {self.state}, only a failed job can be")
        self.state = PENDING
        self.completion_time = None
        self.progress = 0.0
        self.error_code, self.error_description = ERROR_SUCCESS
        self.error_details = ""
        self.stop_request = None

    # -- transitions made by the engine --------------------------------------------------------------

    def start(self) -> None:
        if self.state != PENDING:
            raise InvalidTransition(f"Cannot start job {self.id}: it is {self.state}")
        self.state = RUNNING
        self.stop_request = None

    def succeed(self, now: float) -> None:
        self.state = SUCCESS
        self.progress = 1.0
        self.completion_time = now
        self.error_code, self.error_description = ERROR_SUCCESS
        self.error_details = ""
        self.stop_request = None

    def fail(self, now: float, code: int, description: str, details: str = "") -> None:
        self.state = FAILURE
        self.completion_time = now
        self.error_code, self.error_description, self.error_details = code, description, details
        self.stop_request = None
        self.retry_at = None

    def stopped(self, reason: str, now: float) -> None:
        """A running job stopped before its end, for ``reason``."""
        if reason == STOP_CANCEL:
            self.fail(now, *ERROR_CANCELED)
        elif reason == STOP_PAUSE:
            self.state = PAUSED
        else:  # shutdown: it goes on at the next start
            self.state = PENDING
        self.stop_request = None

    def retry_later(self, at: float) -> None:
        self.state = RETRY
        self.retry_at = at

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    # -- JSON ----------------------------------------------------------------------------------------

    def to_json(self, now: float) -> Dict[str, Any]:
        """The job as Orthanc 1.10 shows it at ``GET /jobs/{id}``."""
        out: Dict[str, Any] = {
            "Content": copy.deepcopy(self.content),
            "CreationTime": format_timestamp(self.creation_time),
            "EffectiveRuntime": round(self.runtime, 3),
            "ErrorCode": self.error_code,
            "ErrorDescription": self.error_description,
            "ErrorDetails": self.error_details,
            "ID": self.id,
            "Priority": self.priority,
            "Progress": 100 if self.state == SUCCESS else min(99, int(self.progress * 100)),
            "State": self.state,
            "Timestamp": format_timestamp(now),
            "Type": self.type,
        }
        if self.completion_time is not None:
            out["CompletionTime"] = format_timestamp(self.completion_time)
        return out

    def to_persisted(self) -> Dict[str, Any]:
        return {
            "ID": self.id, "Type": self.type, "Parameters": self.parameters, "Priority": self.priority,
            "State": self.state, "Sequence": self.sequence, "CreationTime": self.creation_time,
            "CompletionTime": self.completion_time, "Runtime": self.runtime, "Progress": self.progress,
            "Content": self.content, "ErrorCode": self.error_code, "ErrorDescription": self.error_description,
            "ErrorDetails": self.error_details, "ResumeState": self.resume_state, "RetryAt": self.retry_at,
        }

    @classmethod
    def from_persisted(cls, d: Dict[str, Any]) -> "JobRecord":
        if "Unreadable" in d:  # the store could not read all of it (jobs/store.py)
            raise ValueError(f"job {d.get('ID')!r}: {d['Unreadable']}")
        state = d["State"]
        if state not in STATES:
            raise ValueError(f"unknown job state {state!r}")
        return cls(
            id=d["ID"], type=d["Type"], parameters=d["Parameters"], priority=int(d["Priority"]), state=state,
            sequence=int(d.get("Sequence", 0)), creation_time=float(d["CreationTime"]),
            completion_time=d.get("CompletionTime"), runtime=float(d.get("Runtime", 0.0)),
            progress=float(d.get("Progress", 0.0)), content=dict(d.get("Content") or {}),
            error_code=int(d.get("ErrorCode", 0)), error_description=d.get("ErrorDescription", "Success"),
            error_details=d.get("ErrorDetails", ""), resume_state=dict(d.get("ResumeState") or {}),
            retry_at=d.get("RetryAt"),
        )
