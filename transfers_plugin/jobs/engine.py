"""The plugin's job engine, following Orthanc's job model (the Python SDK cannot create native jobs).

- Highest priority first (then oldest), at most ``concurrent_jobs`` running at once, each in a thread.
- A job type is an object with ``run(context)`` and ``cleanup(record, reason)``. ``run`` returns on success
  and raises on failure; it calls ``context.check()`` often, which raises :class:`JobStopped` once a pause,
  a cancel or a shutdown is asked, so that each takes effect within a second.
- State lives in a ``JobStore`` (Orthanc's global properties in production): state changes are written at
  once, progress at most once a second. After a restart, unfinished jobs go on from their resume state.
- ``history_size`` finished jobs are kept (Orthanc's ``JobsHistorySize``); older ones are cleaned up.
- A job type whose ``takes_slot`` is False (a job that only follows a job of a peer, and mostly waits) runs
  beside the ``concurrent_jobs`` others, at most ``MAX_SLOTLESS_JOBS`` of them at once.
- ``wait_finished`` lets a caller wait for a job's end (``"Synchronous": true`` of the REST routes).
"""

import copy
import itertools
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Set

from ..errors import NotFound, OrthancUnavailable, TransfersError
from .model import (
    ERROR_PLUGIN,
    FAILURE,
    PENDING,
    RETRY,
    RUNNING,
    STOP_CANCEL,
    STOP_SHUTDOWN,
    SUCCESS,
    JobRecord,
)

SAVE_INTERVAL = 1.0
MAX_SLOTLESS_JOBS = 64  # jobs of a type with takes_slot False that run at once (each is a thread)


class JobStopped(Exception):
    """Raised by ``JobContext.check()`` when the job must stop: ``reason`` is pause, cancel or shutdown."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RetryLater(Exception):
    """A job type raises this to be run again after ``delay`` seconds (Orthanc's Retry state)."""

    def __init__(self, delay: float, message: str = ""):
        super().__init__(message)
        self.delay = delay


class JobType(Protocol):
    name: str
    # takes_slot (optional, default True): False for a job that counts apart from ConcurrentJobs

    def run(self, context: "JobContext") -> None:
        ...

    def cleanup(self, record: JobRecord, reason: str) -> None:
        """Called once a job ends (success, failure, canceled) or leaves the history (discarded)."""


class JobStore(Protocol):
    """``load`` and ``save``; a store may also have ``snapshot(jobs, changed)`` (called under the engine's
    lock with the live jobs, and the resume-state keys changed in place since the last save) and
    ``write(snapshot)``, to serialize only what changed (see jobs/store.py)."""

    def load(self) -> List[Dict[str, Any]]:
        ...

    def save(self, jobs: List[Dict[str, Any]]) -> None:
        ...


class MemoryJobStore:
    def __init__(self) -> None:
        self.saved: List[Dict[str, Any]] = []

    def load(self) -> List[Dict[str, Any]]:
        return list(self.saved)

    def save(self, jobs: List[Dict[str, Any]]) -> None:
        self.saved = jobs


class JobContext:
    """What a running job sees of the engine."""

    def __init__(self, engine: "JobEngine", record: JobRecord):
        self._engine = engine
        self.record = record
        self.stop_event = threading.Event()  # set when the job is asked to stop

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def parameters(self) -> Dict[str, Any]:
        return self.record.parameters

    @property
    def resume_state(self) -> Dict[str, Any]:
        return self.record.resume_state

    @property
    def stop_reason(self) -> Optional[str]:
        return self.record.stop_request

    def check(self) -> None:
        reason = self.record.stop_request
        if reason is not None:
            raise JobStopped(reason)

    def wait(self, seconds: float) -> None:
        """Sleeps, but stops at once (raising JobStopped) when the job is asked to stop."""
        self.stop_event.wait(seconds)
        self.check()

    def set_progress(self, fraction: float) -> None:
        with self._engine._lock:
            self.record.progress = max(0.0, min(1.0, fraction))
        self._engine._mark_dirty()

    def update_content(self, **values: Any) -> None:
        with self._engine._lock:
            self.record.content.update(values)
        self._engine._mark_dirty()

    def drop_content(self, *keys: str) -> None:
        with self._engine._lock:
            for key in keys:
                self.record.content.pop(key, None)
        self._engine._mark_dirty()

    def update_resume_state(self, **values: Any) -> None:
        with self._engine._lock:
            self.record.resume_state.update(values)
            self._engine._changed_keys(self.record.id, values)
        self._engine._mark_dirty()

    def drop_resume_state(self, *keys: str) -> None:
        with self._engine._lock:
            self.record.resume_state = {k: v for k, v in self.record.resume_state.items() if k not in keys}
        self._engine._mark_dirty()

    def touch(self, *keys: str) -> None:
        """The resume state (its values ``keys``; without keys, any of them) was changed in place: save it with
        the next periodic save."""
        with self._engine._lock:
            self._engine._changed_keys(self.record.id, keys or None)
        self._engine._mark_dirty()

    def save_now(self) -> None:
        self._engine._save()


class JobEngine:
    def __init__(self, job_types: Dict[str, JobType], store: Optional[JobStore] = None,
                 concurrent_jobs: int = 2, history_size: int = 10,
                 log_info: Callable[[str], None] = lambda m: None,
                 log_error: Callable[[str], None] = lambda m: None, clock: Callable[[], float] = time.time,
                 log_warning: Optional[Callable[[str], None]] = None):
        self.job_types = job_types
        self.store = store
        self.concurrent_jobs = max(1, concurrent_jobs)
        self.history_size = max(0, history_size)
        self.log_info = log_info
        self.log_error = log_error
        self.log_warning = log_warning or log_info
        self.clock = clock
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._jobs: Dict[str, JobRecord] = {}
        self._contexts: Dict[str, JobContext] = {}
        self._threads: Dict[str, threading.Thread] = {}
        self._sequence = itertools.count(1)
        self._dirty = False
        self._last_save = 0.0
        self._save_lock = threading.Lock()
        self._changed: Dict[str, Optional[Set[str]]] = {}  # resume-state keys changed since the last save
        self._cleaning: Dict[str, int] = {}  # jobs whose end-of-job cleanup has not run yet
        self._cleaning_now: Set[str] = set()  # jobs whose cleanup is running
        self._running = False
        self._loaded = threading.Event()  # set once start() has loaded the saved jobs
        self._store_closed = False
        self._halted = False  # set once the engine halts (a stop, Orthanc stopping): no job runs any more
        self._scheduler: Optional[threading.Thread] = None

    # -- life cycle ----------------------------------------------------------------------------------

    def wait_loaded(self, timeout: float) -> bool:
        """Waits until the saved jobs are loaded (``start``); False if they are not after ``timeout``."""
        return self._loaded.wait(timeout)

    def start(self) -> None:
        """Loads the saved jobs (unfinished ones go on) and starts scheduling."""
        try:
            self._load()
            with self._lock:
                self._running = True
            scheduler = threading.Thread(target=self._schedule, name="transfers-jobs", daemon=True)
            scheduler.start()
            self._scheduler = scheduler  # only a started thread, which stop() may join
        finally:
            self._loaded.set()

    def _load(self) -> None:
        if self.store is None:
            return
        loaded = []
        for item in self.store.load():
            try:
                record = JobRecord.from_persisted(item)
            except (KeyError, ValueError, TypeError) as e:
                self.log_error(f"Transfers: a saved job cannot be read and is dropped: {e}")
                continue
            if record.state == RUNNING:
                record.state = PENDING
            loaded.append(record)
        if not loaded:
            return
        with self._lock:
            early = sorted(self._jobs.values(), key=lambda r: r.sequence)  # submitted before the load
            for record in loaded:
                self._jobs.setdefault(record.id, record)
            self._sequence = itertools.count(max(r.sequence for r in loaded) + 1)
            for record in early:  # after the saved ones, in their order
                record.sequence = next(self._sequence)
            unfinished = sum(1 for r in loaded if not r.finished)
            self._dirty = self._dirty or bool(early)
        self.log_warning(f"Transfers: {len(loaded)} saved job(s) loaded, {unfinished} unfinished")

    def stop(self, timeout: float = 5.0, save: bool = True) -> None:
        """Stops every running job (they go on at the next start) and the scheduler, then saves the state;
        with ``save`` False (the store can no longer be written), nothing is saved from now on."""
        self._halt(close_store=not save)
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for t in threads + ([self._scheduler] if self._scheduler else []):
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            self.log_error(f"Transfers: job threads still running at shutdown: {', '.join(alive)}")
        self._save()

    def _halt(self, close_store: bool) -> None:
        """Schedules nothing more and asks every running job to stop for the shutdown."""
        with self._lock:
            self._running = False
            self._halted = True
            if close_store:
                self._store_closed = True
            for context in self._contexts.values():
                if context.record.stop_request is None:  # a pause or cancel asked before is kept
                    context.record.stop_request = STOP_SHUTDOWN
                context.stop_event.set()
            self._wake.notify_all()

    # -- user actions --------------------------------------------------------------------------------

    def submit(self, job_type: str, parameters: Dict[str, Any], priority: int = 0,
               content: Optional[Dict[str, Any]] = None) -> JobRecord:
        if job_type not in self.job_types:
            raise ValueError(f"unknown job type {job_type}")
        record = JobRecord(id=str(uuid.uuid4()), type=job_type, parameters=parameters, priority=priority,
                           sequence=next(self._sequence), creation_time=self.clock(),
                           content=dict(content or {}))
        with self._lock:
            self._jobs[record.id] = record
            self._wake.notify_all()
        self._save()
        self.log_info(f"Transfers: job {record.id} ({job_type}) submitted with priority {priority}")
        return record

    def wait_finished(self, record: JobRecord, poll: float = 1.0) -> Optional[Dict[str, Any]]:
        """Waits until the job ends (Success or Failure) and returns its JSON at that moment; None if the engine
        stops first (Orthanc is stopping: the job goes on at the next start). ``record`` is the object
        ``submit`` gave: it stays readable after the job leaves the history (``JobsHistorySize`` 0)."""
        with self._lock:
            while not record.finished:
                if self._halted:
                    return None
                self._wake.wait(poll)
            return record.to_json(self.clock())

    def get(self, job_id: str) -> Optional[JobRecord]:
        with self._lock:
            return self._jobs.get(job_id)

    def owns(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self._jobs

    def job_json(self, job_id: str) -> Dict[str, Any]:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                raise NotFound(f"Unknown job {job_id}")
            return record.to_json(self.clock())

    def types_and_states(self) -> List[Dict[str, str]]:
        """The ``Type`` and ``State`` of every job in the engine (for the metrics)."""
        with self._lock:
            return [{"Type": r.type, "State": r.state} for r in self._jobs.values()]

    def list_ids(self) -> List[str]:
        with self._lock:
            return [r.id for r in sorted(self._jobs.values(), key=lambda r: r.sequence)]

    def list_json(self) -> List[Dict[str, Any]]:
        now = self.clock()
        with self._lock:
            return [r.to_json(now) for r in sorted(self._jobs.values(), key=lambda r: r.sequence)]

    def _act(self, job_id: str, action: Callable[[JobRecord], Any]) -> JobRecord:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                raise NotFound(f"Unknown job {job_id}")
            was_finished = record.finished
            must_signal = action(record)
            if must_signal and job_id in self._contexts:
                self._contexts[job_id].stop_event.set()
            newly_failed = record.finished and not was_finished
            if newly_failed:  # canceled while not running: what an earlier run left is cleaned up
                self._will_clean(record, "canceled")
            self._wake.notify_all()
        self._save()
        if newly_failed:
            try:
                threading.Thread(target=self._cleanup_then_trim, args=(record, "canceled"), daemon=True,
                                 name=f"transfers-cleanup-{record.id[:8]}").start()
            except RuntimeError:  # no thread to be had: cleaned up here, the caller waits for it
                self._cleanup_then_trim(record, "canceled")
        return record

    def pause(self, job_id: str) -> JobRecord:
        return self._act(job_id, lambda r: r.pause())

    def resume(self, job_id: str) -> JobRecord:
        return self._act(job_id, lambda r: r.resume())

    def cancel(self, job_id: str) -> JobRecord:
        return self._act(job_id, lambda r: r.cancel(self.clock()))

    def resubmit(self, job_id: str) -> JobRecord:
        return self._act(job_id, lambda r: r.resubmit())

    def delete(self, job_id: str) -> bool:
        """Orthanc's ``DELETE /jobs/{id}`` (1.12.2): a finished job (Success or Failure) leaves the history,
        what it left cleaned up as when it is trimmed from it; False for any other job, which stays. The
        end-of-job cleanup of a job that just finished runs first (it needs the job's resume state)."""
        with self._lock:
            while True:
                record = self._jobs.get(job_id)
                if record is None or record.state not in (SUCCESS, FAILURE):
                    return False
                if job_id not in self._cleaning:
                    break
                self._wake.wait()
            del self._jobs[job_id]
        self._cleanup(record, "discarded")
        self._save()
        self.log_info(f"Transfers: job {job_id} ({record.type}) deleted from the history")
        return True

    # -- scheduling ----------------------------------------------------------------------------------

    def _next_pending(self) -> Optional[JobRecord]:
        now = self.clock()
        for r in self._jobs.values():
            if r.state == RETRY and r.retry_at is not None and r.retry_at <= now:
                r.state = PENDING
                r.retry_at = None
        # A job resubmitted while the cleanup of its failure still runs waits for it: the cleanup changes its
        # resume state (and, for a push, discards its transaction at the peer).
        slotted = sum(1 for c in self._contexts.values() if self._takes_slot(c.record.type))
        room = {True: slotted < self.concurrent_jobs, False: len(self._contexts) - slotted < MAX_SLOTLESS_JOBS}
        pending = [r for r in self._jobs.values()
                   if r.state == PENDING and r.id not in self._cleaning and room[self._takes_slot(r.type)]]
        if not pending:
            return None
        return max(pending, key=lambda r: (r.priority, -r.sequence))

    def _takes_slot(self, job_type: str) -> bool:
        return bool(getattr(self.job_types.get(job_type), "takes_slot", True))

    def _schedule(self) -> None:
        while True:
            with self._lock:
                if not self._running:
                    return
                started = False
                record = self._next_pending()
                if record is not None:
                    self._launch(record)
                    started = True
                if not started:
                    self._wake.wait(0.5)
            if self._dirty and time.monotonic() - self._last_save >= SAVE_INTERVAL:
                self._save()

    def _launch(self, record: JobRecord) -> None:
        record.start()
        context = JobContext(self, record)
        self._contexts[record.id] = context
        t = threading.Thread(target=self._run, args=(context,), name=f"transfers-job-{record.id[:8]}",
                             daemon=True)
        self._threads[record.id] = t
        t.start()
        self._dirty = True

    def _run(self, context: JobContext) -> None:
        record = context.record
        job_type = self.job_types[record.type]
        started = time.monotonic()
        cleanup_reason: Optional[str] = None
        try:
            context.check()
            job_type.run(context)
            with self._lock:
                if record.stop_request == STOP_CANCEL:  # canceled after the last check: honour the cancel
                    raise JobStopped(STOP_CANCEL)
                record.succeed(self.clock())
                cleanup_reason = self._will_clean(record, "success")
        except JobStopped as e:
            with self._lock:
                # A cancel asked after the pause that stopped the job still wins.
                reason = STOP_CANCEL if record.stop_request == STOP_CANCEL else e.reason
                record.stopped(reason, self.clock())
                if reason == STOP_CANCEL:
                    cleanup_reason = self._will_clean(record, "canceled")
            self.log_info(f"Transfers: job {record.id} stopped ({reason}), now {record.state}")
        except Exception as e:  # noqa: BLE001
            if isinstance(e, RetryLater) and record.stop_request is None:
                with self._lock:
                    record.retry_later(self.clock() + e.delay)
                self.log_info(f"Transfers: job {record.id} will be retried in {e.delay} s: {e}")
            elif record.stop_request is not None or isinstance(e, OrthancUnavailable):
                # Asked to stop, and the work was interrupted (an aborted download...), or Orthanc is
                # stopping and its database can no longer be called: then it is a shutdown whatever was
                # asked (a cancel could neither roll back nor be saved), and the job goes on at the next start.
                reason = STOP_SHUTDOWN if isinstance(e, OrthancUnavailable) else record.stop_request
                with self._lock:
                    record.stopped(reason, self.clock())
                    if reason == STOP_CANCEL:
                        cleanup_reason = self._will_clean(record, "canceled")
                if isinstance(e, OrthancUnavailable):
                    # Orthanc's database is closed to plugins: Orthanc is stopping. Nothing can be saved
                    # any more (what was saved, at most a second ago, is what the next start resumes) and
                    # nothing more is started.
                    self._halt(close_store=True)
                self.log_info(f"Transfers: job {record.id} stopped ({reason}) while {type(e).__name__}: {e}")
            else:
                cleanup_reason = self._fail(record, e)
        finally:
            with self._lock:
                record.runtime += time.monotonic() - started
                self._contexts.pop(record.id, None)
                self._threads.pop(record.id, None)
                self._wake.notify_all()
            # Whatever happened above, an announced cleanup runs (a resubmit waits for it).
            if cleanup_reason is not None:
                self._cleanup_then_trim(record, cleanup_reason)
            else:
                self._trim_history()
                self._save()
        if cleanup_reason == "success":
            self.log_info(f"Transfers: job {record.id} ({record.type}) succeeded")

    def _fail(self, record: JobRecord, e: Exception) -> str:
        """Marks the job failed with a message in words (a traceback, for a bug, goes to the log only, at
        the info level) and returns the cleanup to run."""
        if isinstance(e, TransfersError):
            code = e.orthanc_code if e.orthanc_code > 0 else ERROR_PLUGIN[0]
            message, details = e.message, e.details or ""
            self.log_error(f"Transfers: job {record.id} ({record.type}) failed: {message}")
        else:  # a bug
            code, details = ERROR_PLUGIN[0], ""
            message = f"Internal error in the transfers plugin ({type(e).__name__}); the Orthanc log says more"
            self.log_error(f"Transfers: job {record.id} ({record.type}) failed: {type(e).__name__}: {e}")
            self.log_info(f"Transfers: job {record.id}: {traceback.format_exc()}")
        with self._lock:
            record.fail(self.clock(), code, message, details)
            return self._will_clean(record, "failure")

    def _will_clean(self, record: JobRecord, reason: str) -> str:
        """Called with the lock held, as the job reaches the state that needs this cleanup: until the
        cleanup has run, a resubmit of the job waits (see ``_next_pending``)."""
        self._cleaning[record.id] = self._cleaning.get(record.id, 0) + 1
        return reason

    def _cleanup(self, record: JobRecord, reason: str) -> None:
        try:
            self.job_types[record.type].cleanup(record, reason)
        except Exception as e:  # noqa: BLE001 - reported, and the engine goes on
            self.log_error(f"Transfers: cleanup of job {record.id} ({reason}) failed: {e}")

    def _cleanup_then_trim(self, record: JobRecord, reason: str) -> None:
        """Runs a cleanup announced by ``_will_clean``, then lets a waiting resubmit start. The cleanups of one
        job run one after the other (a cancel of a resubmitted job waits for the cleanup of its failure)."""
        try:
            with self._lock:
                while record.id in self._cleaning_now:
                    self._wake.wait()
                self._cleaning_now.add(record.id)
            try:
                self._cleanup(record, reason)
            finally:
                with self._lock:
                    self._cleaning_now.discard(record.id)
        finally:
            with self._lock:
                self._cleaning[record.id] -= 1
                if not self._cleaning[record.id]:
                    del self._cleaning[record.id]
                self._wake.notify_all()
            self._trim_history()
            self._save()

    def _trim_history(self) -> None:
        with self._lock:
            finished = sorted((r for r in self._jobs.values() if r.state in (SUCCESS, FAILURE)),
                              key=lambda r: (r.completion_time or 0, r.sequence))
            # Jobs whose end-of-job cleanup has not run yet stay until it has.
            excess = [r for r in finished[:max(0, len(finished) - self.history_size)] if r.id not in self._cleaning]
            for r in excess:
                del self._jobs[r.id]
        for r in excess:
            self._cleanup(r, "discarded")

    # -- persistence ---------------------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _changed_keys(self, job_id: str, keys: Optional[Iterable[str]]) -> None:
        """Called with the lock held: these resume-state keys of the job (None: any) may have changed in place."""
        if keys is None:
            self._changed[job_id] = None
        else:
            known = self._changed.setdefault(job_id, set())
            if known is not None:
                known.update(keys)

    def _save(self) -> None:
        if self.store is None or self._store_closed:
            return
        if not self._loaded.is_set():
            # A job submitted before start() loaded the saved ones: writing now would overwrite them.
            # It is saved with the others once they are loaded.
            self._dirty = True
            return
        incremental = hasattr(self.store, "snapshot") and hasattr(self.store, "write")
        with self._save_lock:  # snapshots are written in the order they are taken
            try:
                with self._lock:
                    jobs = [r.to_persisted() for r in sorted(self._jobs.values(), key=lambda r: r.sequence)]
                    if incremental:  # serialized here, what changed only; written without the lock
                        snapshot = self.store.snapshot(jobs, self._changed)  # type: ignore[attr-defined]
                    else:
                        snapshot = copy.deepcopy(jobs)
                    self._changed = {}
                    self._dirty = False
                    self._last_save = time.monotonic()
                if incremental:
                    self.store.write(snapshot)  # type: ignore[attr-defined]
                else:
                    self.store.save(snapshot)
            except OrthancUnavailable:
                # Orthanc's database is closed to plugins: Orthanc is stopping. Nothing more can be saved.
                with self._lock:
                    self._store_closed = True
            except Exception as e:  # noqa: BLE001 - the jobs go on; the log says state was not saved
                self._dirty = True
                self.log_error(f"Transfers: cannot save the jobs: {e}")
