import threading

import pytest

from transfers_plugin.jobs.meter import progress_content, remaining_seconds
from transfers_plugin.metrics import (
    RETRIES,
    SKIPPED_INSTANCES,
    Metrics,
    Publisher,
    jobs_by_type_and_state,
)
from transfers_plugin.protocol import MB


def test_counters_start_at_zero_and_grow():
    m = Metrics()
    assert m.snapshot()[SKIPPED_INSTANCES] == 0
    m.add(SKIPPED_INSTANCES, 3)
    m.add(SKIPPED_INSTANCES)
    assert m.value(SKIPPED_INSTANCES) == 4
    with pytest.raises(ValueError):
        m.add(RETRIES, -1)


def test_sources_are_read_at_each_snapshot():
    m = Metrics()
    level = [1]
    m.source(lambda: {"orthanc_transfers_used_cache_size": level[0]})
    assert m.snapshot()["orthanc_transfers_used_cache_size"] == 1.0
    level[0] = 7
    assert m.snapshot()["orthanc_transfers_used_cache_size"] == 7.0


def test_jobs_by_type_and_state_counts_every_pair_and_zeroes():
    values = jobs_by_type_and_state([{"Type": "PullTransfer", "State": "Running"},
                                     {"Type": "PullTransfer", "State": "Running"},
                                     {"Type": "PushTransfer", "State": "Failure"},
                                     {"Type": "RemotePullTransfer", "State": "Success"},
                                     {"Type": "Other", "State": "Running"}])
    assert values["orthanc_transfers_jobs_pull_running"] == 2
    assert values["orthanc_transfers_jobs_push_failure"] == 1
    assert values["orthanc_transfers_jobs_remote_pull_success"] == 1
    assert values["orthanc_transfers_jobs_pull_paused"] == 0
    assert len(values) == 18
    assert all(name.startswith("orthanc_transfers_jobs_") for name in values)


def test_the_publisher_sends_only_what_changed():
    m = Metrics()
    sent = []
    p = Publisher(m, lambda name, value: sent.append((name, value)), threading.Event())
    assert p.publish_changed() == len(m.snapshot())
    sent.clear()
    assert p.publish_changed() == 0
    m.add(RETRIES)
    assert p.publish_changed() == 1
    assert sent == [(RETRIES, 1.0)]


def test_a_failing_publication_is_logged_once_and_the_thread_goes_on():
    stopping = threading.Event()
    warnings = []
    calls = []

    def publish(name, value):
        calls.append(name)
        if len(calls) > 3:
            stopping.set()
        raise RuntimeError("no metrics")

    Publisher(Metrics(), publish, stopping, period=0.01, log_warning=warnings.append).run()
    assert len(calls) > 3 and len(warnings) == 1


def test_remaining_seconds():
    assert remaining_seconds(100, 0, 0, 10.0) is None  # nothing moved yet
    assert remaining_seconds(100, 10, 10, 1.0) is None  # too early to mean something
    assert remaining_seconds(100, 50, 50, 5.0) == 5
    assert remaining_seconds(100, 60, 30, 3.0) == 4  # a resumed job: the rate of this run
    assert remaining_seconds(100, 100, 0, 0.0) == 0
    assert remaining_seconds(100, 120, 10, 9.0) == 0  # never negative


def test_progress_content_is_in_the_instances_unit():
    assert progress_content(30 * MB, 14 * MB, 9 * MB) == {"TotalSizeMB": 30, "CompletedSizeMB": 14, "WireSizeMB": 9}
