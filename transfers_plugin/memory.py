"""Gives the memory of freed large buffers back to the system (glibc's ``malloc_trim``), at a bounded rate.

Why: a source reads whole instances (8 MB for a 2048x2048 CT slice) and frees them once served. glibc serves
such a request from ``mmap`` only until the first ``mmap``-ed block is freed; from then on its threshold
rises to that size (up to 32 MB), so the next ones come from the heaps of its arenas, and what is freed there
stays resident: measured in a source Orthanc after a 1 GB pull, ``malloc_trim(0)`` took its resident memory
from 253 MB to 184 MB (and after an upload of the same 1 GB, from 280 MB to 184 MB). The environment
variables that would fix the threshold (``MALLOC_MMAP_THRESHOLD_``) are read when the process starts, out of
a plugin's reach; ``malloc_trim(0)`` is callable at any time and returns the free pages of every arena.

It walks every arena holding their locks, so it runs at most once per ``interval`` seconds, and only after
``threshold`` bytes of large buffers were noted since the last time or when a transfer starts (a lookup).
Without glibc (no ``malloc_trim``) it does nothing.
"""

import ctypes
import threading
import time
from typing import Callable, Optional

MB = 1024 * 1024


def glibc_malloc_trim() -> Optional[Callable[[], object]]:
    """``malloc_trim(0)`` of the process's C library, or None where there is none (not glibc)."""
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return lambda: function(0)  # ctypes releases the GIL during the call


class FreedMemory:
    def __init__(self, threshold: int = 64 * MB, interval: float = 1.0,
                 trim: Optional[Callable[[], object]] = None, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.interval = interval
        self._trim = trim
        self._clock = clock
        self._lock = threading.Lock()
        self._noted = 0
        self._last = float("-inf")
        self.trims = 0

    @classmethod
    def of_this_process(cls) -> "FreedMemory":
        return cls(trim=glibc_malloc_trim())

    def note(self, n_bytes: int) -> None:
        """``n_bytes`` of large buffers were allocated that will be freed soon (an instance read)."""
        with self._lock:
            self._noted += n_bytes

    def maybe_release(self, start: bool = False) -> bool:
        """Trims if enough was noted (or at the ``start`` of a transfer, whatever was noted) and the last
        trim is old enough (True then); called from any thread. At a start, what the process freed before
        (the upload of the study to send, say) is given back before the transfer adds its own buffers."""
        if self._trim is None:
            return False
        with self._lock:
            now = self._clock()
            if (self._noted < self.threshold and not start) or now - self._last < self.interval:
                return False
            self._noted = 0
            self._last = now
            self.trims += 1
        self._trim()
        return True
