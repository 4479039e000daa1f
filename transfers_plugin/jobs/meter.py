"""What a transfer job's Content says of its progress, in the instances' own size (not the wire's).

- ``TotalSizeMB``: the instances to transfer (the C++ key, kept);
- ``CompletedSizeMB``: the instances fully received and verified (pull), or sent and acknowledged (push);
- ``WireSizeMB``: the bytes that crossed the network (compressed with gzip);
- ``RemainingSeconds``: the time left to move the rest, from the rate at which instance bytes moved in this
  run; absent until it means something (``MIN_ESTIMATE_SECONDS`` into the run, with some bytes moved),
  never negative, 0 once everything moved.
"""

import math
from typing import Any, Dict, Optional

from ..protocol import round_mb

MIN_ESTIMATE_SECONDS = 2.0


def remaining_seconds(total: int, done: int, moved_this_run: int, elapsed: float) -> Optional[int]:
    """Seconds left to move ``total - done`` bytes at the rate of ``moved_this_run`` bytes in ``elapsed``
    seconds; None while that rate is not known yet."""
    if done >= total:
        return 0
    if elapsed < MIN_ESTIMATE_SECONDS or moved_this_run <= 0:
        return None
    return max(0, math.ceil((total - done) * elapsed / moved_this_run))


def progress_content(total: int, completed: int, wire: int) -> Dict[str, Any]:
    return {"TotalSizeMB": round_mb(total), "CompletedSizeMB": round_mb(completed), "WireSizeMB": round_mb(wire)}
