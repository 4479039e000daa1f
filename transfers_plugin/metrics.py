"""The plugin's Prometheus metrics: a registry of counters and gauges, published by the boundary.

Orthanc publishes a plugin's metrics in ``GET /tools/metrics-prometheus`` (when its ``MetricsEnabled`` is
true, the default); a metric is a name and a float, without labels, so a type, a state or a mode is part of
the name (``orthanc_transfers_jobs_pull_running``). Counters are incremented where things happen
(:meth:`Metrics.add`); gauges and the counters other objects already keep are read when a snapshot is taken,
from the functions given to :meth:`Metrics.source`. :class:`Publisher` sends a snapshot's changed values to
a ``publish(name, value)`` function once a period. Nothing here imports ``orthanc``.
"""

import threading
from typing import Callable, Dict, Iterable, List

PREFIX = "orthanc_transfers_"

# Counters of this plugin (the C++ plugin 1.7's names come from sources, see the README).
SKIPPED_INSTANCES = PREFIX + "skipped_instances_count"
RETRIES = PREFIX + "retries_count"
PULL_SENT_BYTES = PREFIX + "pull_sent_bytes_count"
PULL_RECEIVED_BYTES = PREFIX + "pull_received_bytes_count"
PUSH_SENT_BYTES = PREFIX + "push_sent_bytes_count"
PUSH_RECEIVED_BYTES = PREFIX + "push_received_bytes_count"
COUNTERS = (SKIPPED_INSTANCES, RETRIES, PULL_SENT_BYTES, PULL_RECEIVED_BYTES, PUSH_SENT_BYTES,
            PUSH_RECEIVED_BYTES)

# The job types and states of the jobs gauges: orthanc_transfers_jobs_<type>_<state>.
JOB_TYPES = {"PullTransfer": "pull", "PushTransfer": "push", "RemotePullTransfer": "remote_pull"}
JOB_STATES = ("Pending", "Running", "Paused", "Retry", "Success", "Failure")


def job_metric(job_type: str, state: str) -> str:
    return f"{PREFIX}jobs_{JOB_TYPES[job_type]}_{state.lower()}"


def jobs_by_type_and_state(jobs: Iterable[Dict[str, str]]) -> Dict[str, float]:
    """Every ``orthanc_transfers_jobs_<type>_<state>`` gauge (zero included) from the jobs' ``Type`` and
    ``State``; jobs of other types or states are not counted."""
    values = {job_metric(t, s): 0.0 for t in JOB_TYPES for s in JOB_STATES}
    for job in jobs:
        if job.get("Type") in JOB_TYPES and job.get("State") in JOB_STATES:
            values[job_metric(job["Type"], job["State"])] += 1
    return values


class Metrics:
    """Counters (monotonic, incremented from any thread) and sources of values read at each snapshot."""

    def __init__(self, counters: Iterable[str] = COUNTERS):
        self._lock = threading.Lock()
        self._counters: Dict[str, float] = {name: 0.0 for name in counters}
        self._sources: List[Callable[[], Dict[str, float]]] = []

    def add(self, name: str, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only grows")
        with self._lock:
            self._counters[name] = self._counters.get(name, 0.0) + amount

    def value(self, name: str) -> float:
        return self.snapshot().get(name, 0.0)

    def source(self, values: Callable[[], Dict[str, float]]) -> None:
        """``values()`` gives names and values (gauges, counters kept elsewhere) at each snapshot."""
        with self._lock:
            self._sources.append(values)

    def snapshot(self) -> Dict[str, float]:
        with self._lock:
            result = dict(self._counters)
            sources = list(self._sources)
        for values in sources:
            result.update({name: float(v) for name, v in values().items()})
        return result


class Publisher:
    """Sends the changed values of ``metrics`` to ``publish`` at once and then every ``period`` seconds,
    until ``stopping`` is set. A failing source or publication is logged and tried again next period."""

    def __init__(self, metrics: Metrics, publish: Callable[[str, float], None], stopping: threading.Event,
                 period: float = 1.0, log_warning: Callable[[str], None] = lambda m: None):
        self.metrics = metrics
        self.publish = publish
        self.stopping = stopping
        self.period = period
        self.log_warning = log_warning
        self._published: Dict[str, float] = {}
        self._warned = False

    def publish_changed(self) -> int:
        """Publishes what changed since the last call (everything the first time); returns how many."""
        snapshot = self.metrics.snapshot()
        count = 0
        for name, value in sorted(snapshot.items()):
            if self._published.get(name) != value:
                self.publish(name, value)
                self._published[name] = value
                count += 1
        return count

    def run(self) -> None:
        while True:
            try:
                self.publish_changed()
            except Exception as e:  # noqa: BLE001 - metrics never stop the plugin
                if not self._warned:
                    self.log_warning(f"Transfers: the metrics could not be published: {e}")
                    self._warned = True
            if self.stopping.wait(self.period):
                return

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="transfers-metrics", daemon=True)
        thread.start()
        return thread
