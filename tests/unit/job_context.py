"""A stand-in for the engine's JobContext, for tests of a job type's phases without the engine."""

import threading
import time
from typing import Any, Dict, List, Optional


class FakeJobContext:
    """What a job type uses of JobContext; records when each change was made (``changes``)."""

    def __init__(self, resume_state: Optional[Dict[str, Any]] = None, job_id: str = "0123456789abcdef") -> None:
        self.id = job_id
        self.stop_event = threading.Event()
        self.resume_state: Dict[str, Any] = dict(resume_state or {})
        self.changes: List[float] = []
        self.lock = threading.Lock()

    def update_resume_state(self, **values: Any) -> None:
        with self.lock:
            self.resume_state.update(values)
            self.changes.append(time.monotonic())

    def update_content(self, **values: Any) -> None:
        with self.lock:
            self.changes.append(time.monotonic())

    def drop_content(self, *keys: str) -> None:
        pass

    def set_progress(self, fraction: float) -> None:
        pass

    def check(self) -> None:
        pass
