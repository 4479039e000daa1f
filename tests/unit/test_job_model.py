"""Orthanc's job model: every (action, state) pair of the transition table, the job JSON, persistence."""

import copy
import datetime
import json
import os
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from transfers_plugin.errors import TransfersError
from transfers_plugin.jobs import model
from transfers_plugin.jobs.model import (
    FAILURE,
    PAUSED,
    PENDING,
    RETRY,
    RUNNING,
    STATES,
    STOP_CANCEL,
    STOP_PAUSE,
    STOP_SHUTDOWN,
    SUCCESS,
    InvalidTransition,
    JobRecord,
    format_timestamp,
)

NOW = 1_800_000_000.25
# 2026-11-28 23:23:54.595591 UTC, the docstring's example.
EXAMPLE = datetime.datetime(2026, 11, 28, 23, 23, 54, 595591, tzinfo=datetime.timezone.utc)
TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}")

ORTHANC_KEYS = {"Content", "CreationTime", "EffectiveRuntime", "ErrorCode", "ErrorDescription", "ErrorDetails",
                "ID", "Priority", "Progress", "State", "Timestamp", "Type"}


def record_in(state: str, **kwargs) -> JobRecord:
    """A job that reached ``state`` the way the engine gets there, with some progress and resume state."""
    r = JobRecord(id="job-1", type="PullTransfer", parameters={"Peer": "p"}, priority=3, sequence=7,
                  creation_time=NOW - 100, content={"Peer": "p"}, resume_state={"DoneBuckets": [1, 2]}, **kwargs)
    if state == PENDING:
        return r
    r.start()
    r.progress = 0.4
    r.runtime = 1.5
    if state == PAUSED:
        r.stopped(STOP_PAUSE, NOW - 50)
    elif state == RETRY:
        r.retry_later(NOW + 10)
    elif state == SUCCESS:
        r.succeed(NOW - 10)
    elif state == FAILURE:
        r.fail(NOW - 10, 9, "Error in the network protocol", "peer went away")
    assert r.state == state
    return r


# --- the transition table ---------------------------------------------------------------------------------

# (action, state) -> resulting state, whether the running job must be told, or 400.
# "=" means a no-op: the record is left exactly as it was.
TABLE = {
    ("pause", PENDING): (PAUSED, False),
    ("pause", RUNNING): (RUNNING, True),  # Paused at the next check
    ("pause", PAUSED): ("=", False),
    ("pause", RETRY): (PAUSED, False),
    ("pause", SUCCESS): ("=", False),
    ("pause", FAILURE): ("=", False),
    ("resume", PENDING): 400,
    ("resume", RUNNING): 400,
    ("resume", PAUSED): (PENDING, False),
    ("resume", RETRY): 400,
    ("resume", SUCCESS): 400,
    ("resume", FAILURE): 400,
    ("cancel", PENDING): (FAILURE, False),
    ("cancel", RUNNING): (RUNNING, True),  # Failure at the next check
    ("cancel", PAUSED): (FAILURE, False),
    ("cancel", RETRY): (FAILURE, False),
    ("cancel", SUCCESS): ("=", False),
    ("cancel", FAILURE): ("=", False),
    ("resubmit", PENDING): 400,
    ("resubmit", RUNNING): 400,
    ("resubmit", PAUSED): 400,
    ("resubmit", RETRY): 400,
    ("resubmit", SUCCESS): 400,
    ("resubmit", FAILURE): (PENDING, False),
}

ACTIONS = ("pause", "resume", "cancel", "resubmit")


def apply(record: JobRecord, action: str):
    if action == "pause":
        return record.pause()
    if action == "resume":
        return record.resume()
    if action == "cancel":
        return record.cancel(NOW)
    return record.resubmit()


def test_table_is_complete():
    assert set(TABLE) == {(a, s) for a in ACTIONS for s in STATES}


@pytest.mark.parametrize("action,state", sorted(TABLE), ids=[f"{a}-{s}" for a, s in sorted(TABLE)])
def test_transition(action, state):
    record = record_in(state)
    before = copy.deepcopy(record)
    expected = TABLE[(action, state)]
    if expected == 400:
        with pytest.raises(InvalidTransition) as e:
            apply(record, action)
        assert e.value.status == 400
        assert isinstance(e.value, TransfersError)
        assert state in e.value.message
        assert record == before, "a refused action must not change the job"
        return
    new_state, must_signal = expected
    signal = apply(record, action)
    assert bool(signal) is must_signal
    if new_state == "=":
        assert record == before
        return
    assert record.state == new_state
    if action == "cancel" and new_state == FAILURE:
        assert (record.error_code, record.error_description) == (37, "This job was canceled")
        assert record.completion_time == NOW
        assert record.finished
        assert record.retry_at is None
    if action == "pause" and new_state == PAUSED:
        assert record.retry_at is None
    if action == "resume":
        assert record.resume_state == before.resume_state


@pytest.mark.parametrize("action,reason,final", [("pause", STOP_PAUSE, PAUSED), ("cancel", STOP_CANCEL, FAILURE)])
def test_running_job_stops_at_next_check(action, reason, final):
    record = record_in(RUNNING)
    assert apply(record, action) is True
    assert record.state == RUNNING and record.stop_request == reason
    record.stopped(record.stop_request, NOW)
    assert record.state == final
    assert record.stop_request is None
    assert record.resume_state == {"DoneBuckets": [1, 2]}


def test_pause_does_not_override_a_cancel_of_a_running_job():
    record = record_in(RUNNING)
    record.cancel(NOW)
    assert record.pause() is True
    assert record.stop_request == STOP_CANCEL


def test_cancel_overrides_a_pause_of_a_running_job():
    record = record_in(RUNNING)
    record.pause()
    assert record.cancel(NOW) is True
    assert record.stop_request == STOP_CANCEL


def test_cancel_is_failure_37():
    record = record_in(PENDING)
    record.cancel(NOW)
    j = record.to_json(NOW)
    assert (j["State"], j["ErrorCode"], j["ErrorDescription"]) == (FAILURE, 37, "This job was canceled")
    assert model.ERROR_CANCELED == (37, "This job was canceled")


def test_resubmit_resets_error_progress_and_completion():
    record = record_in(FAILURE)
    record.stop_request = STOP_CANCEL  # leftovers of an earlier run must not survive
    record.resubmit()
    assert record.state == PENDING
    assert record.completion_time is None
    assert record.progress == 0.0
    assert (record.error_code, record.error_description, record.error_details) == (0, "Success", "")
    assert record.stop_request is None
    assert record.resume_state == {"DoneBuckets": [1, 2]}, "a resubmitted job goes on from where it was"
    j = record.to_json(NOW)
    assert "CompletionTime" not in j and j["Progress"] == 0 and j["ErrorCode"] == 0


# --- transitions made by the engine --------------------------------------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_start_only_from_pending(state):
    record = record_in(state)
    if state == PENDING:
        record.stop_request = STOP_PAUSE  # stale
        record.start()
        assert record.state == RUNNING and record.stop_request is None
    else:
        before = copy.deepcopy(record)
        with pytest.raises(InvalidTransition) as e:
            record.start()
        assert e.value.status == 400
        assert record == before


def test_stopped_pause():
    record = record_in(RUNNING)
    record.stop_request = STOP_PAUSE
    record.stopped(STOP_PAUSE, NOW)
    assert record.state == PAUSED and record.stop_request is None
    assert record.completion_time is None and record.error_code == 0


def test_stopped_cancel():
    record = record_in(RUNNING)
    record.stop_request = STOP_CANCEL
    record.stopped(STOP_CANCEL, NOW)
    assert record.state == FAILURE and record.stop_request is None
    assert (record.error_code, record.error_description) == (37, "This job was canceled")
    assert record.completion_time == NOW


def test_stopped_shutdown():
    record = record_in(RUNNING)
    record.stop_request = STOP_SHUTDOWN
    record.stopped(STOP_SHUTDOWN, NOW)
    assert record.state == PENDING and record.stop_request is None
    assert record.completion_time is None and record.error_code == 0
    assert record.resume_state == {"DoneBuckets": [1, 2]}


def test_succeed_and_fail():
    record = record_in(RUNNING)
    record.succeed(NOW)
    assert record.state == SUCCESS and record.progress == 1.0 and record.completion_time == NOW
    assert record.finished
    record = record_in(RUNNING)
    record.fail(NOW, 9, "Error in the network protocol", "details")
    assert (record.state, record.error_code, record.error_description, record.error_details) == (
        FAILURE, 9, "Error in the network protocol", "details")
    assert record.finished


def test_retry_later():
    record = record_in(RUNNING)
    record.retry_later(NOW + 5)
    assert record.state == RETRY and record.retry_at == NOW + 5
    assert not record.finished


# --- JSON ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_to_json_keys(state):
    j = record_in(state).to_json(NOW)
    if state in (SUCCESS, FAILURE):
        assert set(j) == ORTHANC_KEYS | {"CompletionTime"}
        assert TIMESTAMP.fullmatch(j["CompletionTime"])
    else:
        assert set(j) == ORTHANC_KEYS
    assert j["State"] == state
    assert j["ID"] == "job-1" and j["Type"] == "PullTransfer" and j["Priority"] == 3
    assert j["Content"] == {"Peer": "p"}
    assert TIMESTAMP.fullmatch(j["Timestamp"]) and TIMESTAMP.fullmatch(j["CreationTime"])
    assert isinstance(j["Progress"], int) and isinstance(j["ErrorCode"], int)
    json.dumps(j)  # plain JSON


@pytest.mark.parametrize("state", STATES)
def test_progress_100_only_on_success(state):
    record = record_in(state)
    record.progress = 1.0
    expected = 100 if state == SUCCESS else 99
    assert record.to_json(NOW)["Progress"] == expected


def test_progress_is_a_percentage():
    record = record_in(RUNNING)
    record.progress = 0.42
    assert record.to_json(NOW)["Progress"] == 42
    record.progress = 0.0
    assert record.to_json(NOW)["Progress"] == 0


def test_to_json_content_is_a_copy():
    record = record_in(RUNNING)
    record.content = {"Resources": [{"ID": "a"}]}
    record.to_json(NOW)["Content"]["Resources"].append({"ID": "b"})
    assert record.content == {"Resources": [{"ID": "a"}]}


def test_to_json_error_fields_and_runtime():
    record = record_in(FAILURE)
    record.runtime = 1.23456
    j = record.to_json(NOW)
    assert (j["ErrorCode"], j["ErrorDescription"], j["ErrorDetails"]) == (
        9, "Error in the network protocol", "peer went away")
    assert j["EffectiveRuntime"] == 1.235
    assert j["CompletionTime"] == format_timestamp(NOW - 10)
    assert j["Timestamp"] == format_timestamp(NOW)
    assert j["CreationTime"] == format_timestamp(NOW - 100)


@pytest.fixture
def far_timezone():
    """A local time zone far from UTC, so that a local-time timestamp would show."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kathmandu"  # UTC+05:45
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_timestamp_format_is_utc(far_timezone):
    assert format_timestamp(EXAMPLE.timestamp()) == "20261128T232354.595591"
    assert format_timestamp(0.0) == "19700101T000000.000000"
    assert format_timestamp(1.5) == "19700101T000001.500000"


def test_timestamp_in_job_json_is_utc(far_timezone):
    record = record_in(PENDING)
    record.creation_time = EXAMPLE.timestamp()
    j = record.to_json(EXAMPLE.timestamp() + 61)
    assert j["CreationTime"] == "20261128T232354.595591"
    assert j["Timestamp"] == "20261128T232455.595591"


# --- persistence --------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", STATES)
def test_persisted_round_trip_of_each_state(state):
    record = record_in(state)
    again = JobRecord.from_persisted(json.loads(json.dumps(record.to_persisted())))
    assert again == record


def test_stop_request_is_not_persisted():
    record = record_in(RUNNING)
    record.pause()
    assert "StopRequest" not in json.dumps(record.to_persisted())
    assert JobRecord.from_persisted(record.to_persisted()).stop_request is None


def test_from_persisted_refuses_an_unknown_state():
    d = record_in(PENDING).to_persisted()
    d["State"] = "Exploded"
    with pytest.raises(ValueError, match="Exploded"):
        JobRecord.from_persisted(d)


def test_from_persisted_missing_required_key():
    d = record_in(PENDING).to_persisted()
    del d["ID"]
    with pytest.raises(KeyError):
        JobRecord.from_persisted(d)


def test_from_persisted_defaults_for_optional_keys():
    d = {"ID": "x", "Type": "T", "Parameters": {}, "Priority": 1, "State": PENDING, "CreationTime": 5}
    r = JobRecord.from_persisted(d)
    assert (r.sequence, r.completion_time, r.runtime, r.progress, r.content, r.error_code,
            r.error_description, r.error_details, r.resume_state, r.retry_at) == (
        0, None, 0.0, 0.0, {}, 0, "Success", "", {}, None)


json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=10) \
    | st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@st.composite
def job_records(draw):
    return JobRecord(
        id=draw(st.text(min_size=1, max_size=20)), type=draw(st.text(min_size=1, max_size=12)),
        parameters=draw(json_objects), priority=draw(st.integers(-2**31, 2**31)), state=draw(st.sampled_from(STATES)),
        sequence=draw(st.integers(0, 2**40)), creation_time=draw(times), completion_time=draw(st.none() | times),
        runtime=draw(st.floats(0, 1e7)), progress=draw(st.floats(0, 1)), content=draw(json_objects),
        error_code=draw(st.integers(-1, 10000)), error_description=draw(st.text(max_size=30)),
        error_details=draw(st.text(max_size=30)), resume_state=draw(json_objects), retry_at=draw(st.none() | times))


@given(job_records())
def test_persisted_round_trip_through_json(record):
    text = json.dumps(record.to_persisted())
    assert JobRecord.from_persisted(json.loads(text)) == record
