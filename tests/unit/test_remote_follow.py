"""``"Synchronous"`` parsing, the HTTP status of a synchronous failure, the checks of a peer's job answer, the
engine's slotless jobs and ``wait_finished``, and the ``RemotePullTransfer`` job type in the real engine against
a scripted peer (its requests and answers, network failures, a hostile answer)."""

import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest

from transfers_plugin.config import PeerConfig, TransfersConfig
from transfers_plugin.errors import BadFileFormat, NetworkProtocol, http_status_of
from transfers_plugin.jobs.engine import JobEngine, MemoryJobStore
from transfers_plugin.jobs.model import FAILURE, PAUSED, RUNNING, SUCCESS
from transfers_plugin.jobs.remote import (
    CONTENT_KEYS,
    DETAILS_LIMIT,
    JOB_TYPE,
    TEXT_LIMIT,
    RemotePullJobType,
    follow_parameters,
    parse_remote_job,
)
from transfers_plugin.protocol import parse_synchronous
from transfers_plugin.transport import HttpAnswer, PeerError

REMOTE = "6f1c1d2e-0b7a-4e0e-9a57-0d5bd7b5a001"
DEADLINE = 10.0


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- Synchronous -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected", [
    ({}, None), ({"Synchronous": True}, True), ({"Synchronous": False}, False),
    ({"Asynchronous": True}, False), ({"Asynchronous": False}, True),
    ({"Synchronous": True, "Asynchronous": True}, True),  # Synchronous wins, as in Orthanc's core
    ({"Synchronous": False, "Asynchronous": False}, False),
    ([], None), ("Synchronous", None),
])
def test_parse_synchronous(body, expected):
    assert parse_synchronous(body) is expected


@pytest.mark.parametrize("value", ["true", "false", 1, 0, None, [], {}, 1.0])
@pytest.mark.parametrize("key", ["Synchronous", "Asynchronous"])
def test_parse_synchronous_refuses_what_is_not_a_boolean(key, value):
    with pytest.raises(BadFileFormat) as e:
        parse_synchronous({key: value})
    assert e.value.status == 400 and key in e.value.message


def test_a_bad_asynchronous_is_refused_even_beside_a_good_synchronous():
    with pytest.raises(BadFileFormat):
        parse_synchronous({"Synchronous": True, "Asynchronous": "no"})


@pytest.mark.parametrize("code, status", [(17, 404), (15, 400), (3, 400), (9, 502), (29, 502), (37, 500),
                                          (1, 500), (14, 500), (20, 500), (-1, 500), (0, 500), (36, 503),
                                          (12345, 500)])
def test_http_status_of_a_failed_job(code, status):
    assert http_status_of(code) == status


# -- a peer's job answer -----------------------------------------------------------------------------------

def job(**overrides) -> Dict[str, Any]:
    out = {"ID": REMOTE, "State": "Running", "Progress": 40, "ErrorCode": 0, "ErrorDescription": "Success",
           "ErrorDetails": "", "Type": "PullTransfer",
           "Content": {"TotalInstances": 3, "Peer": "a", "DownloadedSizeMB": 1.5, "Resources": [{"ID": "x"}]}}
    out.update(overrides)
    return out


def test_parse_remote_job_keeps_what_the_sender_shows():
    status = parse_remote_job(job(), REMOTE, "b")
    assert (status.state, status.progress, status.error_code) == ("Running", 40.0, 0)
    assert status.content == {"TotalInstances": 3, "Peer": "a", "DownloadedSizeMB": 1.5}  # no nested values
    failed = parse_remote_job(job(State="Failure", ErrorCode=9, ErrorDescription="Peer 'a' is down",
                                  ErrorDetails="libCURL error"), REMOTE, "b")
    assert (failed.error_code, failed.error_description, failed.error_details) == (9, "Peer 'a' is down",
                                                                                  "libCURL error")


@pytest.mark.parametrize("document, why", [
    ([], "not a JSON object"), ("job", "not a JSON object"), (job(ID="other"), "its ID"),
    ({k: v for k, v in job().items() if k != "ID"}, "its ID"), (job(State="Exploded"), "unknown State"),
    (job(State=None), "unknown State"), (job(Progress=101), "Progress"), (job(Progress=-1), "Progress"),
    (job(Progress="50"), "Progress"), (job(Progress=True), "Progress"), (job(ErrorCode="9"), "ErrorCode"),
    (job(ErrorCode=2**40), "ErrorCode"), (job(ErrorCode=False), "ErrorCode"), (job(ErrorCode=1.5), "ErrorCode"),
    (job(ErrorDescription=["x"]), "ErrorDescription"), (job(ErrorDetails=7), "ErrorDetails"),
])
def test_parse_remote_job_refuses_what_is_not_the_job(document, why):
    with pytest.raises(NetworkProtocol) as e:
        parse_remote_job(document, REMOTE, "b")
    assert why in e.value.message and "'b'" in e.value.message and REMOTE in e.value.message


def test_parse_remote_job_bounds_and_cleans_texts():
    content = {"long": "y" * 257, "\x00key": 1, "": 2, "k" * 65: 3, "ctl": "a\x07b", "nested": {"x": 1},
               "list": [1], "null": None, "ok": "y" * 256, **{f"k{i}": i for i in range(500)}}
    status = parse_remote_job(job(State="Failure", ErrorDescription="bad\x1b[31m\nnews" + "x" * 5000,
                                  ErrorDetails="d" * 10000, Content=content), REMOTE, "b")
    assert status.error_description.startswith("bad [31m news") and status.error_description.isprintable()
    assert len(status.error_description) <= TEXT_LIMIT + 3 and len(status.error_details) <= DETAILS_LIMIT + 3
    assert len(status.content) == CONTENT_KEYS
    assert status.content["ctl"] == "a b" and status.content["ok"] == "y" * 256
    for dropped in ("long", "\x00key", "", "k" * 65, "nested", "list", "null"):
        assert dropped not in status.content, dropped
    assert status.content["k0"] == 0 and "k499" not in status.content


# -- the engine: slotless jobs, wait_finished --------------------------------------------------------------

class Blocking:
    """A job type whose jobs run until released."""

    def __init__(self, name: str, takes_slot: bool) -> None:
        self.name = name
        self.takes_slot = takes_slot
        self.release = threading.Event()
        self.running = 0
        self.lock = threading.Lock()

    def run(self, ctx) -> None:
        with self.lock:
            self.running += 1
        try:
            while not self.release.is_set():
                ctx.wait(0.01)
        finally:
            with self.lock:
                self.running -= 1

    def cleanup(self, record, reason) -> None:
        pass


def test_slotless_jobs_run_beside_the_concurrent_jobs():
    heavy, light = Blocking("Heavy", True), Blocking("Light", False)
    engine = JobEngine({"Heavy": heavy, "Light": light}, MemoryJobStore(), concurrent_jobs=1)
    engine.start()
    try:
        heavies = [engine.submit("Heavy", {}) for _ in range(2)]
        lights = [engine.submit("Light", {}, priority=-5) for _ in range(3)]
        wait_until(lambda: heavy.running == 1 and light.running == 3, "one heavy job and every light one")
        assert sorted(r.state for r in heavies) == ["Pending", "Running"]
        assert all(r.state == RUNNING for r in lights)
        light.release.set()
        assert all(engine.wait_finished(r)["State"] == SUCCESS for r in lights)
        assert sorted(r.state for r in heavies) == ["Pending", "Running"], "still one heavy job at a time"
        heavy.release.set()
        assert [engine.wait_finished(r)["State"] for r in heavies] == [SUCCESS, SUCCESS]
    finally:
        heavy.release.set()
        light.release.set()
        engine.stop()


def test_wait_finished_sees_a_job_gone_from_the_history_and_gives_up_at_a_stop():
    blocking = Blocking("Heavy", True)
    engine = JobEngine({"Heavy": blocking}, MemoryJobStore(), history_size=0)
    engine.start()
    record = engine.submit("Heavy", {})
    blocking.release.set()
    final = engine.wait_finished(record)
    assert final["State"] == SUCCESS and final["ID"] == record.id
    wait_until(lambda: not engine.owns(record.id), "the job to leave the history")
    assert engine.wait_finished(record)["State"] == SUCCESS
    blocking.release.clear()
    pending = engine.submit("Heavy", {})
    result: List[Any] = []
    waiter = threading.Thread(target=lambda: result.append(engine.wait_finished(pending, poll=0.05)))
    waiter.start()
    engine.stop(timeout=2)
    waiter.join(5)
    assert result == [None], "a stop ends the wait: the job goes on at the next start"


# -- the follow job against a scripted peer ----------------------------------------------------------------

Reply = Any  # a job document, an (HTTP status, document) pair, or an exception to raise


class ScriptedPeer:
    """Stands for the transport: answers GET /jobs/{REMOTE} from a script (the last entry repeats) and
    POST /jobs/{REMOTE}/{action}; records every request."""

    def __init__(self, states: List[Reply]) -> None:
        self.states = list(states)
        self.requests: List[Tuple[str, str]] = []
        self.lock = threading.Lock()
        self.actions: Dict[str, Reply] = {}

    def script(self, *states: Reply) -> None:
        with self.lock:
            self.states = list(states)

    def call(self, peer: PeerConfig, method: str, uri: str, **kwargs: Any) -> HttpAnswer:
        assert kwargs.get("max_bytes") and kwargs["max_bytes"] <= 1024 * 1024, "a job answer is read bounded"
        with self.lock:
            self.requests.append((method, uri))
            if method == "GET":
                reply = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            else:
                reply = self.actions.get(uri.rsplit("/", 1)[1], {})
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, tuple):
            status, document = reply
            raise PeerError(f"Peer {peer.name!r} answered HTTP {status} to {method} {uri}", status,
                            retryable=status >= 500)
        return HttpAnswer(200, {}, b"", document=reply)

    def posted(self) -> List[str]:
        with self.lock:
            return [uri.rsplit("/", 1)[1] for method, uri in self.requests if method == "POST"]


QUICK = {"first": 0.01, "step": 0.0, "max": 0.01, "backoff": 0.01}


@pytest.fixture
def follow():
    made: List[JobEngine] = []

    def make(states: List[Reply], attempts: int = 4) -> Tuple[JobEngine, ScriptedPeer, List[str]]:
        peer = ScriptedPeer(states)
        warnings: List[str] = []
        job_type = RemotePullJobType(TransfersConfig(), lambda: {"b": PeerConfig("b", "http://b:8042/")}, peer,
                                     log_warning=warnings.append, attempts=attempts, poll=QUICK)
        engine = JobEngine({JOB_TYPE: job_type}, MemoryJobStore())
        engine.start()
        made.append(engine)
        return engine, peer, warnings

    yield make
    for engine in made:
        engine.stop()


def submit(engine: JobEngine):
    query = {"Resources": [{"Level": "Study", "ID": "x"}], "Compression": "gzip", "Peer": "b", "Priority": 0,
             "SenderTransferID": "t-1"}
    return engine.submit(JOB_TYPE, follow_parameters("b", REMOTE, f"http://b:8042/jobs/{REMOTE}", query))


def test_it_mirrors_progress_then_success(follow):
    engine, peer, _ = follow([job(State="Pending", Progress=0), job(Progress=30), job(Progress=70),
                              job(State="Success", Progress=100)])
    record = submit(engine)
    final = engine.wait_finished(record)
    assert final["State"] == SUCCESS and final["Progress"] == 100
    content = final["Content"]
    assert content["RemoteState"] == "Success" and content["RemoteJob"] == REMOTE and content["Peer"] == "b"
    assert content["URL"] == f"http://b:8042/jobs/{REMOTE}" and content["RemoteContent"]["TotalInstances"] == 3
    assert peer.requests[0] == ("GET", f"/jobs/{REMOTE}") and peer.posted() == []


def test_progress_is_the_remote_jobs_while_it_runs(follow):
    engine, peer, _ = follow([job(Progress=63)])
    record = submit(engine)
    wait_until(lambda: engine.job_json(record.id)["Progress"] == 63, "the remote progress")
    assert engine.job_json(record.id)["Content"]["RemoteState"] == "Running"
    peer.script(job(State="Paused", Progress=63))
    wait_until(lambda: engine.job_json(record.id)["Content"]["RemoteState"] == "Paused", "the remote pause")
    assert engine.job_json(record.id)["State"] == RUNNING
    peer.script(job(State="Success", Progress=100))
    assert engine.wait_finished(record)["State"] == SUCCESS


def test_it_mirrors_a_failure(follow):
    engine, _, _ = follow([job(), job(State="Failure", ErrorCode=9, ErrorDescription="Peer 'a' cannot be reached",
                                      ErrorDetails="connection refused")])
    final = engine.wait_finished(submit(engine))
    assert final["State"] == FAILURE and final["ErrorCode"] == 9
    assert final["ErrorDescription"] == (f"The transfer failed at peer 'b' (its job {REMOTE}): Peer 'a' cannot be "
                                         f"reached")
    assert final["ErrorDetails"] == "connection refused" and final["Content"]["RemoteState"] == "Failure"


def test_a_failure_without_a_code_is_the_plugins(follow):
    engine, _, _ = follow([job(State="Failure", ErrorCode=0, ErrorDescription="")])
    final = engine.wait_finished(submit(engine))
    assert final["ErrorCode"] == 1 and final["ErrorDescription"].endswith("no reason given")


def test_network_failures_are_asked_again_then_given_up_in_words(follow):
    down = PeerError("Peer 'b' (http://b:8042/) cannot be reached: the connection was refused")
    engine, peer, warnings = follow([job(), down, down, job(Progress=50), down, down, down, down, job()], attempts=4)
    final = engine.wait_finished(submit(engine))
    assert final["State"] == FAILURE and final["ErrorCode"] == 9
    assert final["ErrorDescription"].startswith("Peer 'b' (http://b:8042/) cannot be reached: the connection was "
                                                "refused")
    assert "given up after 4 attempts in a row" in final["ErrorDescription"]
    assert "resubmit this job to follow it again" in final["ErrorDescription"]
    assert len(warnings) == 2 + 3 and all("asking again" in w for w in warnings)
    assert len([r for r in peer.requests if r[0] == "GET"]) == 8


def test_retryable_statuses_are_asked_again_and_the_follow_goes_on(follow):
    engine, peer, warnings = follow([(503, None), (502, None), job(State="Success", Progress=100)])
    assert engine.wait_finished(submit(engine))["State"] == SUCCESS
    assert len(warnings) == 2


@pytest.mark.parametrize("reply, words", [
    ((404, None), "does not know its job"), ((401, None), "HTTP 401"), ((400, None), "HTTP 400"),
    (job(ID="someone-else"), "not that job"), (job(State="Lost"), "unknown State"),
])
def test_what_will_not_change_fails_at_once(follow, reply, words):
    engine, peer, warnings = follow([reply])
    final = engine.wait_finished(submit(engine))
    assert final["State"] == FAILURE and words in final["ErrorDescription"], final
    assert len(peer.requests) == 1 and warnings == []


def test_pause_and_resume_drive_the_remote_job(follow):
    engine, peer, _ = follow([job()])
    record = submit(engine)
    wait_until(lambda: peer.requests, "a first question")
    engine.pause(record.id)
    wait_until(lambda: engine.job_json(record.id)["State"] == PAUSED, "the pause")
    assert peer.posted() == ["pause"] and record.resume_state["PausedRemote"] is True
    engine.resume(record.id)
    wait_until(lambda: peer.posted() == ["pause", "resume"], "the remote resume")
    peer.script(job(State="Success", Progress=100))
    assert engine.wait_finished(record)["State"] == SUCCESS


def test_a_refused_resume_is_not_a_failure(follow):
    engine, peer, _ = follow([job()])
    peer.actions["resume"] = (400, None)
    record = submit(engine)
    wait_until(lambda: peer.requests, "a first question")
    engine.pause(record.id)
    wait_until(lambda: engine.job_json(record.id)["State"] == PAUSED, "the pause")
    engine.resume(record.id)
    peer.script(job(State="Success", Progress=100))
    assert engine.wait_finished(record)["State"] == SUCCESS and peer.posted() == ["pause", "resume"]


@pytest.mark.parametrize("when", ["running", "paused"])
def test_cancel_cancels_the_remote_job_and_a_resubmit_resubmits_it(follow, when):
    engine, peer, _ = follow([job()])
    record = submit(engine)
    wait_until(lambda: peer.requests, "a first question")
    if when == "paused":
        engine.pause(record.id)
        wait_until(lambda: engine.job_json(record.id)["State"] == PAUSED, "the pause")
    peer.script(job(State="Failure", ErrorCode=37, ErrorDescription="This job was canceled"))
    engine.cancel(record.id)
    final = engine.wait_finished(record)
    assert final["State"] == FAILURE and final["ErrorCode"] == 37
    wait_until(lambda: "cancel" in peer.posted(), "the remote cancel")
    wait_until(lambda: engine.job_json(record.id)["ErrorDetails"], "the details of the cancel")
    assert engine.job_json(record.id)["ErrorDetails"] == f"The remote job {REMOTE} at peer 'b' was canceled too"
    peer.script(job(), job(State="Success", Progress=100))
    engine.resubmit(record.id)
    wait_until(lambda: engine.job_json(record.id)["State"] == SUCCESS, "the success after the resubmit")
    assert peer.posted()[-1] == "resubmit"


def test_a_cancel_after_the_remote_success_says_so(follow):
    engine, peer, _ = follow([job()])
    record = submit(engine)
    wait_until(lambda: peer.requests, "a first question")
    engine.pause(record.id)
    wait_until(lambda: engine.job_json(record.id)["State"] == PAUSED, "the pause")
    peer.script(job(State="Success", Progress=100))
    engine.cancel(record.id)
    wait_until(lambda: engine.job_json(record.id)["ErrorDetails"], "the details of the cancel")
    assert "had already succeeded" in engine.job_json(record.id)["ErrorDetails"]
    engine.resubmit(record.id)
    wait_until(lambda: engine.job_json(record.id)["State"] == SUCCESS, "the success after the resubmit")
    assert "resubmit" not in peer.posted()


def test_a_cancel_that_cannot_reach_the_peer_says_so(follow):
    engine, peer, _ = follow([job()])
    peer.actions["cancel"] = PeerError("Peer 'b' cannot be reached")
    record = submit(engine)
    wait_until(lambda: peer.requests, "a first question")
    engine.cancel(record.id)
    wait_until(lambda: engine.job_json(record.id)["ErrorDetails"], "the details of the cancel")
    assert "could not be canceled" in engine.job_json(record.id)["ErrorDetails"]


def test_an_unknown_peer_or_a_bad_remote_id_fails_in_words(follow):
    engine, peer, _ = follow([job()])
    record = engine.submit(JOB_TYPE, {"Peer": "gone", "RemoteJob": REMOTE, "URL": "x", "Resources": [],
                                      "Compression": "none"})
    assert "not configured any more" in engine.wait_finished(record)["ErrorDescription"]
    record = engine.submit(JOB_TYPE, {"Peer": "b", "RemoteJob": "../../tools", "URL": "x", "Resources": [],
                                      "Compression": "none"})
    assert "bad ID" in engine.wait_finished(record)["ErrorDescription"] and peer.requests == []


def test_follow_parameters_keep_the_transfer_asked():
    query = {"Resources": [{"Level": "Series", "ID": "s"}], "Compression": "none", "Peer": "b", "Priority": 4}
    assert follow_parameters("b", REMOTE, "u", query) == {"Peer": "b", "RemoteJob": REMOTE, "URL": "u",
                                                          "Resources": query["Resources"], "Compression": "none"}
    assert follow_parameters("b", REMOTE, "u", {**query, "SenderTransferID": "t"})["SenderTransferID"] == "t"


def test_the_follow_job_is_slotless():
    assert RemotePullJobType.takes_slot is False
