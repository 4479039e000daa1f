"""A bandwidth cap shared by the workers of one job: a token bucket over the bytes a job moves on the network.

``MaxBandwidthKBs`` (the ``Transfers`` section, or a request's body) caps the bytes a transfer job reads from
or writes to the network, compressed as they travel, over all its worker threads together. A push's worker
asks for each slice of a PUT body before it hands it to the connection (256 KB), so the rate is smooth. A
pull's worker asks for a bucket before it requests it (the source sends an answer at the speed of the link,
and the operating system's buffers would take several MB of it at once, whatever the pace of the reading),
its buckets planned small (``capped_bucket_kb``), and gives back what a compressed answer did not use. A
request larger than the bucket's depth is allowed, and the ones after it wait for the debt to be paid.
Nothing here touches the network: the caller says how many bytes move.
"""

import threading
import time
from typing import Any, Callable, Optional

KB = 1024
MIN_BURST = 64 * KB
BURST_SECONDS = 0.25  # the bucket's depth: what may pass at once after a pause, as a fraction of a second's worth


class RateLimiter:
    def __init__(self, bytes_per_second: float, burst: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic):
        if bytes_per_second <= 0:
            raise ValueError("a rate limiter needs a positive rate")
        self.rate = float(bytes_per_second)
        self.burst = float(burst) if burst is not None else max(float(MIN_BURST), self.rate * BURST_SECONDS)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst  # may go below zero: a debt the next callers wait for
        self._last = clock()

    @classmethod
    def of_kbs(cls, kbs: Optional[int]) -> Optional["RateLimiter"]:
        """The limiter of a ``MaxBandwidthKBs`` value, None for 0 or None (no cap)."""
        return cls(kbs * KB) if kbs else None

    def reserve(self, n: int) -> float:
        """Takes ``n`` bytes from the bucket and answers how long the caller must wait before moving them (0
        when the bucket had them). Callers are served in the order of their reservations."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def refund(self, n: int) -> None:
        """Gives back ``n`` bytes reserved but not moved (a gzip answer smaller than the bucket it carries);
        a negative ``n`` charges bytes moved beyond the reservation."""
        with self._lock:
            self._tokens = min(self.burst, self._tokens + n)

    def acquire(self, n: int, stop_event: Any = None) -> bool:
        """Waits until ``n`` bytes may move; False when ``stop_event`` was set meanwhile (the job stops)."""
        wait = self.reserve(n)
        if wait <= 0:
            return not (stop_event is not None and stop_event.is_set())
        if stop_event is not None:
            return not stop_event.wait(wait)
        time.sleep(wait)
        return True


def capped_bucket_kb(bucket_size_kb: int, kbs: int) -> int:
    """A pull's bucket size under a cap: at most a quarter of a second's worth (at least 64 KB), so that
    the answers, which a source sends at the speed of the link, arrive in small bursts at the capped rate."""
    return min(bucket_size_kb, max(64, kbs // 4)) if kbs else bucket_size_kb


def cap_kbs(requested: Optional[int], configured: int) -> int:
    """The cap of a job in KB/s: the request's ``MaxBandwidthKBs`` when given (0 lifting the configured cap),
    otherwise the ``Transfers`` section's; 0 means no cap."""
    return configured if requested is None else requested
