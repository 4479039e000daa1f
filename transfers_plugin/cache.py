"""Bounded cache of source instances (whole DICOM files with their size and MD5).

Least recently used out first, by total bytes; an instance larger than the capacity is still cached,
alone. Concurrent requests for the same missing instance share one load: the first caller loads it
outside the lock while the others wait for its result. A caller may pass ``still_valid`` to check a
cached entry against the store before it is served (an instance deleted or replaced since it was loaded):
an entry that fails the check is dropped and loaded again.

An entry is kept only while some of its bytes remain to be served: callers report each range they served
(:meth:`InstanceCache.served`), and once every byte of an instance has been served it leaves the cache. A
transfer reads each byte of its instances once (a retried bucket reloads its instances: a miss), so an
instance served to its end would otherwise occupy the cache until evicted, and a long transfer would fill
the whole capacity with data no one asks for again. The ranges that keep an entry are those of requests
served while it was cached; a range served from an entry evicted meanwhile counts for nothing.
"""

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class CachedInstance:
    id: str
    data: bytes
    md5: str

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def from_bytes(cls, instance_id: str, data: bytes) -> "CachedInstance":
        return cls(instance_id, data, hashlib.md5(data).hexdigest())


class _Loading:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Optional[CachedInstance] = None
        self.error: Optional[BaseException] = None


class InstanceCache:
    def __init__(self, capacity_bytes: int, loader: Callable[[str], CachedInstance]):
        if capacity_bytes <= 0:
            raise ValueError("the cache capacity must be positive")
        self.capacity = capacity_bytes
        self._loader = loader
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, CachedInstance] = OrderedDict()
        self._loading: Dict[str, _Loading] = {}
        # Of each cached entry some of whose bytes were served: those byte ranges, sorted and disjoint.
        self._served: Dict[str, List[Tuple[int, int]]] = {}
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self.stale_drops = 0

    def get(self, instance_id: str,
            still_valid: Optional[Callable[[CachedInstance], bool]] = None) -> CachedInstance:
        """The instance, from the cache or loaded. ``still_valid(entry)`` is called outside the lock on a
        cached entry only (a fresh load is checked by the loader); what it raises drops the entry and
        propagates."""
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is not None:
                self._entries.move_to_end(instance_id)
        if entry is not None:
            try:
                valid = still_valid is None or still_valid(entry)
            except BaseException:
                self._drop(instance_id, entry)
                raise
            if valid:
                with self._lock:
                    self.hits += 1
                return entry
            self._drop(instance_id, entry)
            self.stale_drops += 1
        return self._get_or_load(instance_id)

    def _drop(self, instance_id: str, entry: CachedInstance) -> None:
        with self._lock:
            if self._entries.get(instance_id) is entry:  # not already replaced by a newer load
                self._remove(instance_id, entry)

    def _remove(self, instance_id: str, entry: CachedInstance) -> None:
        del self._entries[instance_id]
        self._served.pop(instance_id, None)
        self.used_bytes -= entry.size

    def served(self, entry: CachedInstance, start: int, end: int) -> bool:
        """Records that bytes ``[start, end)`` of ``entry`` were served; once all its bytes were, the entry
        leaves the cache (True). Nothing is recorded for an entry that is no longer the cached one."""
        start, end = max(0, start), min(entry.size, end)
        with self._lock:
            if self._entries.get(entry.id) is not entry:
                return False
            if start >= end and entry.size:
                return False
            ranges = merge_range(self._served.get(entry.id, []), start, end)
            if ranges[0][0] <= 0 and ranges[0][1] >= entry.size:
                self._remove(entry.id, entry)
                return True
            self._served[entry.id] = ranges
            return False

    def _get_or_load(self, instance_id: str) -> CachedInstance:
        with self._lock:
            entry = self._entries.get(instance_id)
            if entry is not None:  # loaded by another request meanwhile, checked by its loader
                self._entries.move_to_end(instance_id)
                self.hits += 1
                return entry
            loading = self._loading.get(instance_id)
            owner = loading is None
            if owner:
                loading = self._loading[instance_id] = _Loading()
        if not owner:
            loading.done.wait()
            if loading.error is not None:
                raise loading.error
            assert loading.result is not None
            return loading.result
        try:
            result = self._loader(instance_id)
        except BaseException as e:
            with self._lock:
                del self._loading[instance_id]
            loading.error = e
            loading.done.set()
            raise
        with self._lock:
            del self._loading[instance_id]
            self.misses += 1
            self._insert(result)
        loading.result = result
        loading.done.set()
        return result

    def _insert(self, entry: CachedInstance) -> None:
        while self._entries and self.used_bytes + entry.size > self.capacity:
            old_id, old = self._entries.popitem(last=False)
            self._served.pop(old_id, None)
            self.used_bytes -= old.size
        self._served.pop(entry.id, None)
        self._entries[entry.id] = entry
        self.used_bytes += entry.size

    def __contains__(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def merge_range(ranges: List[Tuple[int, int]], start: int, end: int) -> List[Tuple[int, int]]:
    """Sorted disjoint ``ranges`` with ``[start, end)`` added, touching or overlapping ranges merged."""
    merged: List[Tuple[int, int]] = []
    for a, b in sorted(ranges + [(start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged
