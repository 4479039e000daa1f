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


def test_a_remote_jobs_progress_is_mirrored_when_it_is_ours():
    from transfers_plugin.jobs.remote import mirrored_progress
    assert mirrored_progress({"TotalSizeMB": 30, "CompletedSizeMB": 14, "WireSizeMB": 9, "NetworkSpeedKBs": 800,
                              "RemainingSeconds": 12, "DownloadedSizeMB": 9}) == \
        {"TotalSizeMB": 30, "CompletedSizeMB": 14, "WireSizeMB": 9, "NetworkSpeedKBs": 800, "RemainingSeconds": 12}
    # A C++ peer's job: only what it has; nothing that is not a non-negative integer.
    assert mirrored_progress({"TotalSizeMB": 30, "DownloadedSizeMB": 9}) == {"TotalSizeMB": 30}
    assert mirrored_progress({"CompletedSizeMB": -1, "WireSizeMB": 1.5, "RemainingSeconds": True}) == {}


def test_the_demo_says_x_of_y_in_one_unit():
    from tools.demo import progress_line
    running = {"State": "Running", "Progress": 40, "Content": {
        "CompletedHttpQueries": 3, "CompletedSizeMB": 12, "TotalSizeMB": 30, "WireSizeMB": 6, "UploadedSizeMB": 6,
        "NetworkSpeedKBs": 2048, "RemainingSeconds": 9}}
    assert progress_line(running) == ("Running   40%  buckets 3  12 MB of 30 MB  (6 MB on the wire)  2048 KB/s  "
                                      "about 9 s left")
    done = {"State": "Success", "Progress": 100, "Content": dict(running["Content"], CompletedSizeMB=30,
                                                                 RemainingSeconds=0)}
    assert progress_line(done).endswith("30 MB of 30 MB  (6 MB on the wire)  2048 KB/s")
