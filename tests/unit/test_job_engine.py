"""The job engine with a fake job type: priorities, concurrency, pause/resume/cancel/resubmit, failures,
shutdown and restart over a store, history trimming, cleanup hooks.

Timing: every wait polls with a generous deadline; the only duration asserted is "within 2 s" for a pause
or a cancel to take effect.
"""

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from transfers_plugin.errors import NetworkProtocol, NotFound, OrthancUnavailable, TransfersError
from transfers_plugin.jobs.engine import JobContext, JobEngine, MemoryJobStore, RetryLater
from transfers_plugin.jobs.model import (
    FAILURE,
    PAUSED,
    PENDING,
    RETRY,
    RUNNING,
    SUCCESS,
    InvalidTransition,
    JobRecord,
)
from transfers_plugin.jobs.store import GlobalPropertyJobStore

TYPE = "Fake"
DEADLINE = 5.0
STOP_DEADLINE = 2.0  # a pause or a cancel takes effect within a second; 2 s leaves room


def wait_until(predicate, timeout: float = DEADLINE, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Control:
    """What the test tells one fake job (jobs are named by their ``name`` parameter)."""

    def __init__(self) -> None:
        self.finish = threading.Event()  # run() returns at its next loop
        self.error: Optional[BaseException] = None  # run() raises this once
        self.retry_delay: Optional[float] = None  # run() raises RetryLater(delay) once
        self.ignore = threading.Event()  # while set, run() loops without checking anything
        self.raise_on_stop = False  # when asked to stop, run() raises an unrelated exception: stop_error
        self.stop_error: BaseException = ConnectionAbortedError("the download was interrupted")
        self.long_wait = False  # run() sleeps in context.wait(60)
        self.started = threading.Event()
        self.runs = 0
        self.seen_resume: List[Dict[str, Any]] = []
        self.contexts: List[JobContext] = []
        self.cleanup_gate: Optional[threading.Event] = None  # cleanup() waits until it is set
        self.cleaning = threading.Event()  # set once cleanup() was entered


class FakeType:
    name = TYPE

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.controls: Dict[str, Control] = {}
        self.running = 0
        self.max_running = 0
        self.start_order: List[str] = []
        self.cleanups: List[Tuple[str, str]] = []
        self.cleaning_now = 0
        self.most_cleaning_at_once = 0

    def control(self, name: str) -> Control:
        with self.lock:
            return self.controls.setdefault(name, Control())

    def run(self, context: JobContext) -> None:
        name = context.parameters["name"]
        ctl = self.control(name)
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.start_order.append(name)
            ctl.runs += 1
            ctl.seen_resume.append(dict(context.resume_state))
            ctl.contexts.append(context)
        try:
            context.update_resume_state(runs=ctl.runs, step=0)
            ctl.started.set()
            step = 0
            while True:
                while ctl.ignore.is_set():  # deaf to stop requests, as a blocking call would be
                    time.sleep(0.005)
                if ctl.finish.is_set():
                    return
                if ctl.error is not None:
                    error, ctl.error = ctl.error, None
                    raise error
                if ctl.retry_delay is not None:
                    delay, ctl.retry_delay = ctl.retry_delay, None
                    raise RetryLater(delay, "peer busy")
                if ctl.long_wait:
                    context.wait(60)
                elif ctl.raise_on_stop:
                    if context.stop_event.wait(0.01):
                        raise ctl.stop_error
                else:
                    context.check()
                    context.wait(0.01)
                step += 1
                context.update_resume_state(step=step)
                context.set_progress(min(0.9, step / 100))
        finally:
            with self.lock:
                self.running -= 1

    def cleanup(self, record: JobRecord, reason: str) -> None:
        ctl = self.control(record.parameters["name"])
        with self.lock:
            self.cleaning_now += 1
            self.most_cleaning_at_once = max(self.most_cleaning_at_once, self.cleaning_now)
        ctl.cleaning.set()
        try:
            if ctl.cleanup_gate is not None:
                assert ctl.cleanup_gate.wait(DEADLINE), "the test never let the cleanup end"
                time.sleep(0.05)  # time for another cleanup to overlap, if it could
            record.resume_state = {**record.resume_state, "cleaned": reason}  # as the real job types do
            with self.lock:
                self.cleanups.append((record.parameters["name"], reason))
        finally:
            with self.lock:
                self.cleaning_now -= 1

    def cleanups_of(self, name: str) -> List[str]:
        with self.lock:
            return [reason for n, reason in self.cleanups if n == name]


class Harness:
    def __init__(self, store=None, **kwargs) -> None:
        self.fake = FakeType()
        self.store = store if store is not None else MemoryJobStore()
        self.errors: List[str] = []
        self.infos: List[str] = []
        self.engine = JobEngine({TYPE: self.fake}, self.store, log_error=self.errors.append,
                                log_info=self.infos.append, **kwargs)

    def submit(self, name: str, priority: int = 0) -> str:
        self.fake.control(name)
        return self.engine.submit(TYPE, {"name": name}, priority=priority).id

    def state(self, job_id: str) -> str:
        return self.engine.job_json(job_id)["State"]

    def wait_state(self, job_id: str, state: str, timeout: float = DEADLINE) -> Dict[str, Any]:
        wait_until(lambda: self.state(job_id) == state, timeout, f"job {job_id} to be {state}")
        return self.engine.job_json(job_id)

    def wait_running(self, job_id: str, name: str) -> None:
        """Running, and inside run() (not only marked Running by the scheduler)."""
        self.wait_state(job_id, RUNNING)
        assert self.fake.control(name).started.wait(DEADLINE)

    def release_all(self) -> None:
        for ctl in list(self.fake.controls.values()):
            ctl.ignore.clear()
            ctl.finish.set()


@pytest.fixture
def make():
    harnesses: List[Harness] = []

    def factory(start: bool = True, **kwargs) -> Harness:
        h = Harness(**kwargs)
        harnesses.append(h)
        if start:
            h.engine.start()
        return h

    yield factory
    for h in harnesses:
        h.release_all()
        h.engine.stop(timeout=5)


def saved_states(store: MemoryJobStore) -> Dict[str, str]:
    return {j["Parameters"]["name"]: j["State"] for j in store.saved}


# --- scheduling ---------------------------------------------------------------------------------------

def test_a_job_runs_to_success(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    h.fake.control("a").finish.set()
    j = h.wait_state(job, SUCCESS)
    assert j["Progress"] == 100 and j["ErrorCode"] == 0 and "CompletionTime" in j
    wait_until(lambda: h.fake.cleanups_of("a") == ["success"], what="the success cleanup")
    wait_until(lambda: saved_states(h.store).get("a") == SUCCESS, what="the saved state")


def test_priority_order_higher_first_fifo_among_equals(make):
    h = make(concurrent_jobs=1)
    blocker = h.submit("blocker", priority=100)
    h.wait_running(blocker, "blocker")
    names = [("low", 0), ("mid1", 5), ("neg", -1), ("high", 10), ("mid2", 5), ("low2", 0), ("mid3", 5)]
    ids = {}
    for name, priority in names:
        ids[name] = h.submit(name, priority)
        h.fake.control(name).finish.set()
    for name in ids:
        assert h.state(ids[name]) == PENDING
    h.fake.control("blocker").finish.set()
    for name in ids:
        h.wait_state(ids[name], SUCCESS)
    assert h.fake.start_order == ["blocker", "high", "mid1", "mid2", "mid3", "low", "low2", "neg"]
    assert h.fake.max_running == 1


def test_never_more_than_concurrent_jobs_running(make):
    h = make(concurrent_jobs=2)
    names = [f"j{i}" for i in range(5)]
    ids = {n: h.submit(n) for n in names}

    def running() -> List[str]:
        return [n for n in names if h.state(ids[n]) == RUNNING]

    wait_until(lambda: len(running()) == 2, what="two running jobs")
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # the third one stays pending while two run
        assert len(running()) == 2
        time.sleep(0.01)
    for n in names:
        if h.state(ids[n]) == RUNNING:
            h.fake.control(n).finish.set()
            wait_until(lambda: len(running()) == 2 or all(h.state(ids[m]) == SUCCESS for m in names),
                       what="the next job to start")
            assert len(running()) <= 2
    for n in names:
        h.fake.control(n).finish.set()
    for n in names:
        h.wait_state(ids[n], SUCCESS)
    assert h.fake.max_running == 2


def test_concurrent_jobs_below_one_means_one(make):
    h = make(concurrent_jobs=0)
    a, b = h.submit("a"), h.submit("b")
    h.wait_running(a, "a")
    time.sleep(0.2)
    assert h.state(b) == PENDING
    h.fake.control("a").finish.set()
    h.fake.control("b").finish.set()
    h.wait_state(b, SUCCESS)
    assert h.fake.max_running == 1


def test_unknown_job_type_is_refused(make):
    h = make()
    with pytest.raises(ValueError):
        h.engine.submit("Nope", {})


# --- pause and resume ---------------------------------------------------------------------------------

def test_pause_of_a_running_job_and_resume_with_its_state(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    wait_until(lambda: h.engine.get(job).resume_state.get("step", 0) >= 3, what="a few steps")
    t0 = time.monotonic()
    h.engine.pause(job)
    h.wait_state(job, PAUSED, timeout=STOP_DEADLINE)
    assert time.monotonic() - t0 < STOP_DEADLINE
    wait_until(lambda: h.fake.running == 0, what="run() to return")
    kept = dict(h.engine.get(job).resume_state)
    assert kept["runs"] == 1 and kept["step"] >= 3
    assert h.fake.cleanups_of("a") == [], "a pause cleans nothing up"
    time.sleep(0.2)
    assert h.state(job) == PAUSED, "a paused job is not scheduled"
    assert h.fake.control("a").runs == 1
    wait_until(lambda: saved_states(h.store).get("a") == PAUSED, what="the paused state to be saved")

    h.engine.resume(job)
    wait_until(lambda: h.fake.control("a").runs == 2, what="the second run")
    assert h.fake.control("a").seen_resume[1] == kept
    h.fake.control("a").finish.set()
    h.wait_state(job, SUCCESS)


def test_pause_and_resume_of_a_pending_job(make):
    h = make(concurrent_jobs=1)
    blocker = h.submit("blocker")
    h.wait_running(blocker, "blocker")
    job = h.submit("a")
    h.engine.pause(job)
    assert h.state(job) == PAUSED
    h.fake.control("blocker").finish.set()
    h.wait_state(blocker, SUCCESS)
    time.sleep(0.2)
    assert h.state(job) == PAUSED and h.fake.control("a").runs == 0
    h.engine.resume(job)
    h.wait_running(job, "a")


@pytest.mark.parametrize("action,final", [("pause", PAUSED), ("cancel", FAILURE)])
def test_context_wait_ends_at_once_when_asked_to_stop(make, action, final):
    h = make()
    job = h.submit("a")
    h.fake.control("a").long_wait = True
    h.wait_running(job, "a")
    time.sleep(0.05)
    t0 = time.monotonic()
    getattr(h.engine, action)(job)
    h.wait_state(job, final, timeout=STOP_DEADLINE)
    assert time.monotonic() - t0 < STOP_DEADLINE


def test_resume_of_a_running_job_is_400(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    with pytest.raises(InvalidTransition) as e:
        h.engine.resume(job)
    assert e.value.status == 400
    assert h.state(job) == RUNNING


# --- cancel -------------------------------------------------------------------------------------------

def assert_canceled(j: Dict[str, Any]) -> None:
    assert j["State"] == FAILURE
    assert (j["ErrorCode"], j["ErrorDescription"]) == (37, "This job was canceled")
    assert "CompletionTime" in j


def test_cancel_of_a_running_job(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    t0 = time.monotonic()
    h.engine.cancel(job)
    assert_canceled(h.wait_state(job, FAILURE, timeout=STOP_DEADLINE))
    assert time.monotonic() - t0 < STOP_DEADLINE
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    time.sleep(0.2)
    assert h.fake.cleanups_of("a") == ["canceled"]
    wait_until(lambda: saved_states(h.store).get("a") == FAILURE, what="the saved state")


def test_cancel_of_a_paused_job(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    h.engine.pause(job)
    h.wait_state(job, PAUSED)
    h.engine.cancel(job)
    assert_canceled(h.engine.job_json(job))
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    time.sleep(0.2)
    assert h.fake.cleanups_of("a") == ["canceled"]
    assert h.fake.control("a").runs == 1


def test_cancel_of_a_pending_job(make):
    h = make(concurrent_jobs=1)
    blocker = h.submit("blocker")
    h.wait_running(blocker, "blocker")
    job = h.submit("a")
    h.engine.cancel(job)
    assert_canceled(h.engine.job_json(job))
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    h.fake.control("blocker").finish.set()
    h.wait_state(blocker, SUCCESS)
    time.sleep(0.2)
    assert h.fake.cleanups_of("a") == ["canceled"]
    assert h.fake.control("a").runs == 0
    assert h.state(job) == FAILURE


def test_cancel_of_a_finished_job_is_a_no_op(make):
    h = make()
    job = h.submit("a")
    h.fake.control("a").finish.set()
    h.wait_state(job, SUCCESS)
    wait_until(lambda: h.fake.cleanups_of("a") == ["success"], what="the success cleanup")
    h.engine.cancel(job)
    h.engine.pause(job)
    time.sleep(0.1)
    assert h.state(job) == SUCCESS
    assert h.fake.cleanups_of("a") == ["success"]


def test_cancel_of_a_job_deaf_until_it_checks(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    ctl = h.fake.control("a")
    ctl.ignore.set()
    time.sleep(0.05)
    h.engine.cancel(job)
    time.sleep(0.1)
    assert h.state(job) == RUNNING, "the cancel takes effect at the next check"
    ctl.ignore.clear()
    assert_canceled(h.wait_state(job, FAILURE, timeout=STOP_DEADLINE))
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    assert h.fake.cleanups_of("a") == ["canceled"]


def test_cancel_after_the_last_check_is_honoured(make):
    """run() returns normally after a cancel it did not see: the job is canceled, not successful."""
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    ctl = h.fake.control("a")
    ctl.ignore.set()
    time.sleep(0.05)
    h.engine.cancel(job)
    ctl.finish.set()
    ctl.ignore.clear()  # returns without another check
    assert_canceled(h.wait_state(job, FAILURE))
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    assert h.fake.cleanups_of("a") == ["canceled"]


# --- failures -----------------------------------------------------------------------------------------

def test_failure_with_a_transfers_error_keeps_its_code_and_message(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    h.fake.control("a").error = NetworkProtocol("Peer 'p' answered HTTP 500", details="while pulling bucket 3")
    j = h.wait_state(job, FAILURE)
    assert (j["ErrorCode"], j["ErrorDescription"], j["ErrorDetails"]) == (
        9, "Peer 'p' answered HTTP 500", "while pulling bucket 3")
    assert "CompletionTime" in j and j["Progress"] < 100
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    assert h.fake.cleanups_of("a") == ["failure"]
    assert any("Peer 'p' answered HTTP 500" in m for m in h.errors)


def test_failure_with_a_transfers_error_without_an_orthanc_code_is_1(make):
    h = make()
    job = h.submit("a")
    h.fake.control("a").error = TransfersError("something went wrong")  # orthanc_code -1
    j = h.wait_state(job, FAILURE)
    assert (j["ErrorCode"], j["ErrorDescription"]) == (1, "something went wrong")


def test_unexpected_exception_is_error_1_with_a_traceback(make):
    h = make()
    job = h.submit("a")
    h.fake.control("a").error = ZeroDivisionError("division by zero")
    j = h.wait_state(job, FAILURE)
    assert j["ErrorCode"] == 1
    assert "ZeroDivisionError" in j["ErrorDescription"] and "log" in j["ErrorDescription"]
    assert "Traceback" not in j["ErrorDescription"] + j["ErrorDetails"]  # the log has it, at the info level
    assert any("division by zero" in m for m in h.errors)
    assert any("Traceback" in m and "in run" in m for m in h.infos)
    assert not any("Traceback" in m for m in h.errors)
    wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
    assert h.fake.cleanups_of("a") == ["failure"]


@pytest.mark.parametrize("how", ["failure", "canceled while running", "canceled while paused"])
def test_a_resubmit_waits_for_the_cleanup_of_the_failure(make, how):
    """A job resubmitted right after it failed or was canceled starts only once that end's cleanup has run
    (for a push: the DELETE at the peer, then its resume state cleared), so that the new run does not start
    from the stale state and the late cleanup cannot clear the new run's state."""
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.cleanup_gate = threading.Event()
    h.wait_running(job, "a")
    if how == "failure":
        ctl.error = NetworkProtocol("peer went away")
    elif how == "canceled while running":
        h.engine.cancel(job)
    else:
        h.engine.pause(job)
        h.wait_state(job, PAUSED)
        h.engine.cancel(job)
    assert ctl.cleaning.wait(DEADLINE)
    assert h.state(job) == FAILURE  # the failure shows at once
    h.engine.resubmit(job)
    time.sleep(0.3)
    assert h.state(job) == PENDING and ctl.runs == 1, "the resubmitted job started before the cleanup ended"
    ctl.cleanup_gate.set()
    wait_until(lambda: ctl.runs == 2, what="the resubmitted run")
    reason = "failure" if how == "failure" else "canceled"
    assert ctl.seen_resume[1].get("cleaned") == reason  # the new run starts from what the cleanup left
    assert h.fake.cleanups_of("a") == [reason]
    ctl.finish.set()
    h.wait_state(job, SUCCESS)


def test_resubmit_after_failure_runs_again(make):
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.error = NetworkProtocol("peer went away")
    h.wait_state(job, FAILURE)
    with pytest.raises(InvalidTransition):
        h.engine.resume(job)
    h.engine.resubmit(job)
    wait_until(lambda: ctl.runs == 2, what="the second run")
    assert ctl.seen_resume[1]["runs"] == 1, "the resume state of the failed run is kept"
    j = h.engine.job_json(job)
    assert j["State"] == RUNNING and j["ErrorCode"] == 0 and "CompletionTime" not in j
    ctl.finish.set()
    j = h.wait_state(job, SUCCESS)
    assert (j["ErrorCode"], j["ErrorDescription"], j["ErrorDetails"], j["Progress"]) == (0, "Success", "", 100)


def test_resubmit_of_a_running_job_is_400(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    with pytest.raises(InvalidTransition) as e:
        h.engine.resubmit(job)
    assert e.value.status == 400


def test_retry_later_then_runs_again(make):
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.retry_delay = 0.3
    h.wait_state(job, RETRY)
    wait_until(lambda: ctl.runs == 2, what="the retry")
    assert h.state(job) == RUNNING
    ctl.finish.set()
    h.wait_state(job, SUCCESS)
    assert h.fake.cleanups_of("a") == ["success"]


def test_pause_and_cancel_of_a_job_waiting_to_retry(make):
    h = make()
    a, b = h.submit("a"), h.submit("b")
    h.fake.control("a").retry_delay = 60
    h.fake.control("b").retry_delay = 60
    h.wait_state(a, RETRY)
    h.wait_state(b, RETRY)
    h.engine.pause(a)
    assert h.state(a) == PAUSED
    h.engine.cancel(b)
    assert_canceled(h.engine.job_json(b))
    h.engine.resume(a)
    wait_until(lambda: h.fake.control("a").runs == 2, what="the resumed job to run")
    wait_until(lambda: h.fake.cleanups_of("b") == ["canceled"], what="the cleanup")


@pytest.mark.parametrize("action,final", [("pause", PAUSED), ("cancel", FAILURE)])
def test_exception_while_asked_to_stop_counts_as_stopped(make, action, final):
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.raise_on_stop = True
    h.wait_running(job, "a")
    getattr(h.engine, action)(job)
    j = h.wait_state(job, final, timeout=STOP_DEADLINE)
    if final == FAILURE:
        assert_canceled(j)
        wait_until(lambda: h.fake.cleanups_of("a"), what="the cleanup")
        assert h.fake.cleanups_of("a") == ["canceled"]
    else:
        assert j["ErrorCode"] == 0
        time.sleep(0.1)
        assert h.fake.cleanups_of("a") == []
    assert not any("ConnectionAbortedError" in m for m in h.errors), "not logged as a failure"


def test_exception_while_shutting_down_counts_as_stopped(make):
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.raise_on_stop = True
    h.wait_running(job, "a")
    h.engine.stop(timeout=5)
    assert h.engine.get(job).state == PENDING
    assert saved_states(h.store)["a"] == PENDING
    assert h.fake.cleanups_of("a") == []


def test_failing_cleanup_is_logged_and_the_engine_goes_on(make):
    h = make()

    def broken(record, reason):
        raise OSError("disk gone")

    h.fake.cleanup = broken
    a = h.submit("a")
    h.fake.control("a").finish.set()
    h.wait_state(a, SUCCESS)
    wait_until(lambda: any("disk gone" in m for m in h.errors), what="the logged cleanup failure")
    b = h.submit("b")
    h.fake.control("b").finish.set()
    h.wait_state(b, SUCCESS)


# --- unknown jobs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["job_json", "pause", "resume", "cancel", "resubmit"])
def test_unknown_job_is_not_found(make, action):
    h = make()
    with pytest.raises(NotFound) as e:
        getattr(h.engine, action)("no-such-job")
    assert e.value.status == 404
    assert h.engine.get("no-such-job") is None
    assert not h.engine.owns("no-such-job")


def test_list_in_submission_order(make):
    h = make(concurrent_jobs=1)
    ids = [h.submit(n, priority=p) for n, p in (("a", 0), ("b", 9), ("c", 3))]
    assert h.engine.list_ids() == ids
    assert [j["ID"] for j in h.engine.list_json()] == ids
    assert all(h.engine.owns(i) for i in ids)


# --- shutdown and restart -----------------------------------------------------------------------------

def test_stop_makes_running_jobs_pending_and_saves(make):
    h = make(concurrent_jobs=2)
    a, b, c = h.submit("a"), h.submit("b"), h.submit("c")
    h.wait_running(a, "a")
    h.wait_running(b, "b")
    t0 = time.monotonic()
    h.engine.stop(timeout=5)
    assert time.monotonic() - t0 < 5
    assert h.fake.running == 0, "stop() joined the job threads"
    for job in (a, b, c):
        assert h.engine.get(job).state == PENDING
    assert saved_states(h.store) == {"a": PENDING, "b": PENDING, "c": PENDING}
    assert h.fake.cleanups == []
    assert h.errors == []


def test_stop_gives_up_on_a_deaf_job_after_the_timeout(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    ctl = h.fake.control("a")
    ctl.ignore.set()
    time.sleep(0.05)
    t0 = time.monotonic()
    h.engine.stop(timeout=0.3)
    assert time.monotonic() - t0 < DEADLINE
    assert any("still running" in m for m in h.errors)
    assert saved_states(h.store)["a"] == RUNNING
    ctl.ignore.clear()  # it stops at its next check, for the shutdown
    h.wait_state(job, PENDING)


def test_new_engine_resumes_unfinished_jobs_and_keeps_finished_ones(make):
    store = MemoryJobStore()
    h1 = make(store=store, concurrent_jobs=3)
    ok, bad, paused, running = h1.submit("ok"), h1.submit("bad"), h1.submit("paused"), h1.submit("running")
    h1.fake.control("ok").finish.set()
    h1.fake.control("bad").error = NetworkProtocol("peer went away")
    h1.wait_state(ok, SUCCESS)
    h1.wait_state(bad, FAILURE)
    h1.wait_running(paused, "paused")
    h1.engine.pause(paused)
    h1.wait_state(paused, PAUSED)
    h1.wait_running(running, "running")
    wait_until(lambda: h1.engine.get(running).resume_state.get("step", 0) >= 2, what="a few steps")
    h1.engine.stop(timeout=5)
    saved_step = h1.engine.get(running).resume_state["step"]
    assert saved_states(store) == {"ok": SUCCESS, "bad": FAILURE, "paused": PAUSED, "running": PENDING}

    h2 = make(store=store, concurrent_jobs=3)
    assert h2.engine.list_ids() == [ok, bad, paused, running]
    wait_until(lambda: h2.fake.control("running").runs == 1, what="the unfinished job to go on")
    seen = h2.fake.control("running").seen_resume[0]
    assert seen["runs"] == 1 and seen["step"] == saved_step
    assert h2.state(ok) == SUCCESS and h2.state(bad) == FAILURE and h2.state(paused) == PAUSED
    bad_json = h2.engine.job_json(bad)
    assert (bad_json["ErrorCode"], bad_json["ErrorDescription"]) == (9, "peer went away")
    time.sleep(0.2)
    assert h2.fake.control("ok").runs == 0 and h2.fake.control("paused").runs == 0
    # New jobs come after the loaded ones.
    new = h2.submit("new")
    assert h2.engine.get(new).sequence > h2.engine.get(running).sequence
    assert h2.engine.list_ids()[-1] == new


def test_a_job_saved_as_running_is_pending_at_the_next_start(make):
    """After a crash the store still says Running: the job runs again, from its resume state."""
    store = MemoryJobStore()
    crashed = JobRecord(id="crashed-job", type=TYPE, parameters={"name": "c"}, state=RUNNING, sequence=4,
                        creation_time=time.time(), resume_state={"runs": 1, "step": 42})
    done = JobRecord(id="done-job", type=TYPE, parameters={"name": "d"}, state=SUCCESS, sequence=3,
                     creation_time=time.time(), completion_time=time.time(), progress=1.0)
    store.save([done.to_persisted(), crashed.to_persisted()])
    h = make(store=store, start=False)
    h.fake.control("c")
    h.engine.start()
    wait_until(lambda: h.fake.control("c").runs == 1, what="the crashed job to run again")
    assert h.fake.control("c").seen_resume[0] == {"runs": 1, "step": 42}
    assert h.state("done-job") == SUCCESS
    assert h.fake.control("d").runs == 0


def test_unreadable_saved_job_is_dropped_and_logged(make):
    store = MemoryJobStore()
    good = JobRecord(id="good", type=TYPE, parameters={"name": "g"}, state=PAUSED, sequence=1, creation_time=1.0)
    store.save([{"ID": "broken", "State": "Exploded"}, {"nonsense": True}, good.to_persisted()])
    h = make(store=store)
    assert h.engine.list_ids() == ["good"]
    assert len(h.errors) == 2


def test_restart_through_global_property_store(make):
    properties: Dict[int, str] = {}
    store = GlobalPropertyJobStore(lambda pid, default: properties.get(pid, default),
                                   lambda pid, value: properties.__setitem__(pid, value))
    h1 = make(store=store)
    job = h1.submit("a")
    h1.wait_running(job, "a")
    h1.engine.stop(timeout=5)
    assert properties, "the jobs were written to the global property"
    h2 = make(store=store)
    wait_until(lambda: h2.fake.control("a").runs == 1, what="the job to go on")
    h2.fake.control("a").finish.set()
    h2.wait_state(job, SUCCESS)


def test_progress_is_saved_while_running(make):
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    wait_until(lambda: any(j["Progress"] > 0 for j in h.store.saved), timeout=DEADLINE,
               what="the progress to be saved")
    assert h.engine.job_json(job)["Progress"] > 0


def test_a_failing_store_does_not_stop_the_jobs(make):
    class BrokenStore(MemoryJobStore):
        def save(self, jobs):
            raise OSError("database locked")

    h = make(store=BrokenStore())
    job = h.submit("a")
    h.fake.control("a").finish.set()
    h.wait_state(job, SUCCESS)
    assert any("database locked" in m for m in h.errors)


# --- history ------------------------------------------------------------------------------------------

def test_history_size_trims_the_oldest_finished_jobs(make):
    h = make(concurrent_jobs=1, history_size=2)
    ids = []
    for name in ("j1", "j2", "j3", "j4"):
        ids.append(h.submit(name))
        h.fake.control(name).finish.set()
        h.wait_state(ids[-1], SUCCESS)
        wait_until(lambda n=name: "success" in h.fake.cleanups_of(n), what="the success cleanup")
    wait_until(lambda: h.engine.list_ids() == ids[2:], what="the history to be trimmed")
    assert h.fake.cleanups_of("j1") == ["success", "discarded"]
    assert h.fake.cleanups_of("j2") == ["success", "discarded"]
    assert h.fake.cleanups_of("j3") == ["success"]
    assert h.fake.cleanups_of("j4") == ["success"]
    for job in ids[:2]:
        with pytest.raises(NotFound):
            h.engine.job_json(job)
    wait_until(lambda: set(saved_states(h.store)) == {"j3", "j4"}, what="the trimmed history to be saved")


def test_history_keeps_unfinished_jobs(make):
    h = make(concurrent_jobs=2, history_size=0)
    paused, done = h.submit("paused"), h.submit("done")
    h.wait_running(paused, "paused")
    h.engine.pause(paused)
    h.wait_state(paused, PAUSED)
    h.fake.control("done").finish.set()
    wait_until(lambda: not h.engine.owns(done), what="the finished job to leave the history")
    assert h.fake.cleanups_of("done") == ["success", "discarded"]
    assert h.state(paused) == PAUSED


# --- DELETE /jobs/{id} (Orthanc 1.12.2 and later) ------------------------------------------------------

def test_delete_takes_a_finished_job_out_of_the_history_and_discards_it(make):
    h = make()
    ok, failed = h.submit("ok"), h.submit("failed")
    h.fake.control("ok").finish.set()
    h.fake.control("failed").error = NetworkProtocol("peer gone")
    h.wait_state(ok, SUCCESS)
    h.wait_state(failed, FAILURE)
    for job, name, end in ((ok, "ok", "success"), (failed, "failed", "failure")):
        assert h.engine.delete(job) is True
        assert not h.engine.owns(job) and job not in h.engine.list_ids()
        with pytest.raises(NotFound):
            h.engine.job_json(job)
        assert h.fake.cleanups_of(name) == [end, "discarded"]
        assert name not in saved_states(h.store)
        assert h.engine.delete(job) is False  # gone: a second DELETE finds nothing
    assert [e for e in h.errors if "peer gone" not in e] == []


@pytest.mark.parametrize("state", [PENDING, RUNNING, PAUSED])
def test_delete_refuses_an_unfinished_job_which_goes_on(make, state):
    h = make(concurrent_jobs=1)
    blocker = h.submit("blocker")
    h.wait_running(blocker, "blocker")
    job = blocker
    if state == PENDING:
        job = h.submit("pending")
    elif state == PAUSED:
        h.engine.pause(blocker)
        h.wait_state(blocker, PAUSED)
    assert h.state(job) == state
    assert h.engine.delete(job) is False
    assert h.state(job) == state and h.fake.cleanups == []
    h.release_all()
    if state == PAUSED:
        h.engine.resume(job)
    h.wait_state(job, SUCCESS)
    assert h.engine.delete("no-such-job") is False


def test_delete_of_a_job_that_just_finished_waits_for_its_end_of_job_cleanup(make):
    """The success cleanup needs the job's resume state: the discard of the deletion runs after it."""
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.cleanup_gate = threading.Event()
    ctl.finish.set()
    h.wait_state(job, SUCCESS)
    assert ctl.cleaning.wait(DEADLINE)
    result: List[bool] = []
    deleter = threading.Thread(target=lambda: result.append(h.engine.delete(job)))
    deleter.start()
    time.sleep(0.1)
    assert result == [] and h.engine.owns(job), "the deletion waits for the cleanup"
    ctl.cleanup_gate.set()
    deleter.join(DEADLINE)
    assert result == [True] and not h.engine.owns(job)
    assert h.fake.cleanups_of("a") == ["success", "discarded"]
    assert h.fake.most_cleaning_at_once == 1


# --- shutdown does not lose what users asked ------------------------------------------------------------

@pytest.mark.parametrize("action,final", [("cancel", FAILURE), ("pause", PAUSED)])
def test_shutdown_keeps_a_pending_stop_request(make, action, final):
    """A cancel (or pause) accepted just before Orthanc stops is not turned into "go on at the next start"."""
    h = make()
    job = h.submit("a")
    h.wait_running(job, "a")
    ctl = h.fake.control("a")
    ctl.ignore.set()  # busy in a long call: the request waits for its next check
    time.sleep(0.05)
    getattr(h.engine, action)(job)
    stopper = threading.Thread(target=h.engine.stop, kwargs={"timeout": 5})
    stopper.start()
    time.sleep(0.1)
    ctl.ignore.clear()
    stopper.join(DEADLINE)
    assert not stopper.is_alive()
    assert h.engine.get(job).state == final
    assert saved_states(h.store)["a"] == final
    if final == FAILURE:
        assert h.fake.cleanups_of("a") == ["canceled"]


class ClosingStore(MemoryJobStore):
    """Orthanc's global properties: once ``closed`` (Orthanc stopping), every save answers error 2038."""

    def __init__(self):
        super().__init__()
        self.closed = False
        self.calls = 0

    def save(self, jobs):
        self.calls += 1
        if self.closed:
            raise OrthancUnavailable("Plugin trying to call the database during its initialization")
        super().save(jobs)


@pytest.mark.parametrize("asked", [None, "cancel", "pause"])
def test_orthanc_stopping_under_a_job_is_a_shutdown_not_a_failure(make, asked):
    store = ClosingStore()
    h = make(store=store)
    job = h.submit("a")
    h.wait_running(job, "a")
    wait_until(lambda: saved_states(store).get("a") == RUNNING, what="the running job saved")
    ctl = h.fake.control("a")
    error = OrthancUnavailable("Plugin trying to call the database during its initialization")
    store.closed = True
    if asked is None:
        ctl.error = error
    else:  # the stop asked meets the closed database before the job's next check
        ctl.stop_error = error
        ctl.raise_on_stop = True
        time.sleep(0.05)
        (h.engine.cancel if asked == "cancel" else h.engine.pause)(job)
    h.wait_state(job, PENDING)
    other = h.submit("b")
    time.sleep(0.2)
    assert h.state(job) == PENDING and h.state(other) == PENDING, "nothing is scheduled while Orthanc stops"
    # No failure, no cleanup (no rollback against a closed database), no error logged for the saves
    # that cannot be done; what the next start resumes is the job as last saved: running.
    assert h.fake.cleanups == [] and h.errors == []
    assert saved_states(store) == {"a": RUNNING}
    calls = store.calls
    time.sleep(1.2)
    assert store.calls == calls, "no save is tried once the database is known closed"


def test_stop_without_saving_writes_nothing_more(make):
    store = ClosingStore()
    h = make(store=store)
    job = h.submit("a")
    h.wait_running(job, "a")
    h.engine.stop(timeout=5, save=False)
    assert h.fake.running == 0
    assert h.engine.get(job).state == PENDING
    calls = store.calls
    time.sleep(1.2)  # longer than the periodic save interval
    assert store.calls == calls, "the store was written after stop(save=False)"


def test_routes_can_wait_until_the_saved_jobs_are_loaded():
    store = MemoryJobStore()
    first = JobEngine({TYPE: FakeType()}, store)
    first.start()
    job_id = first.submit(TYPE, {"name": "a"}).id
    first.stop(timeout=2)
    engine = JobEngine({TYPE: FakeType()}, store)
    assert not engine.wait_loaded(0.05) and not engine.owns(job_id)
    threading.Timer(0.1, engine.start).start()
    assert engine.wait_loaded(5) and engine.owns(job_id)
    engine.stop(timeout=2)


def test_a_job_submitted_before_the_saved_jobs_are_loaded_loses_none_of_them():
    # Requests are served a moment before start() has loaded the saved jobs (it waits for the database).
    store = MemoryJobStore()
    first = JobEngine({TYPE: FakeType()}, store)
    first.start()
    saved = [first.submit(TYPE, {"name": n}).id for n in ("a", "b")]
    first.stop(timeout=2)
    fake = FakeType()
    engine = JobEngine({TYPE: fake}, store)
    fake.control("early").finish.set()
    early = engine.submit(TYPE, {"name": "early"}).id
    assert {j["ID"] for j in store.saved} == set(saved), "nothing is written before the load"
    engine.start()
    assert engine.list_ids() == saved + [early]
    wait_until(lambda: {j["ID"] for j in store.saved} == set(saved + [early]), what="all three saved")
    engine.stop(timeout=2)


def test_the_cleanups_of_one_job_run_one_after_the_other(make):
    """Failed, resubmitted, then canceled while the failure's cleanup still runs: the cancel's cleanup waits."""
    h = make()
    job = h.submit("a")
    ctl = h.fake.control("a")
    ctl.cleanup_gate = threading.Event()
    h.wait_running(job, "a")
    ctl.error = NetworkProtocol("peer went away")
    assert ctl.cleaning.wait(DEADLINE)
    h.engine.resubmit(job)
    h.engine.cancel(job)  # the resubmitted job never started: canceled at once, its cleanup waits
    time.sleep(0.3)
    ctl.cleanup_gate.set()
    wait_until(lambda: h.fake.cleanups_of("a") == ["failure", "canceled"], what="both cleanups, in turn")
    assert h.fake.most_cleaning_at_once == 1, "a second cleanup ran beside the first"
    assert h.state(job) == FAILURE and ctl.runs == 1
