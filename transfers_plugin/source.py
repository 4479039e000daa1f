"""The source side of the protocol: lookup of resources and serving byte ranges of instances.

Everything Orthanc-specific arrives through a ``store`` object (see :class:`SourceStore`), so this module
is testable without Orthanc.
"""

import threading
from collections import OrderedDict
from typing import Iterable, List, Optional, Protocol, Sequence, Tuple

from . import dicom_layout
from .cache import CachedInstance, InstanceCache
from .errors import CorruptedFile, ParameterOutOfRange, PayloadTooLarge
from .memory import FreedMemory
from .protocol import (
    DEFAULT_LIMITS,
    LEVEL_INSTANCE,
    MB,
    Bucket,
    ChunkRequest,
    InstanceInfo,
    Limits,
    Resource,
    check_count,
)

# The least an assembled chunks answer may hold, whatever CacheSize: a puller asks for up to twice its own
# BucketSize in one request, and a site may keep a small cache.
MIN_ANSWER_LIMIT = 256 * MB
MAX_LAYOUTS = 100_000  # pixel data layouts kept (a few dozen bytes each)


class SourceStore(Protocol):
    """What the source needs from Orthanc. Each method raises ``NotFound`` for an unknown resource."""

    def child_instances(self, level: str, resource_id: str) -> List[str]:
        """The instance IDs below a patient, study or series."""

    def attachment_info(self, instance_id: str) -> Tuple[int, Optional[str]]:
        """Size and MD5 of the instance's DICOM file as Orthanc recorded them (MD5 None if unknown)."""

    def read_dicom(self, instance_id: str) -> bytes:
        """The whole DICOM file of an instance."""


class Source:
    def __init__(self, store: SourceStore, cache_capacity_bytes: int, max_concurrent_reads: int = 4,
                 freed: Optional[FreedMemory] = None):
        self.store = store
        self.cache = InstanceCache(cache_capacity_bytes, self._load)
        # The instances read are freed once served and dropped from the cache: their memory given back.
        self.freed = freed if freed is not None else FreedMemory.of_this_process()
        self._reads = threading.BoundedSemaphore(max(1, max_concurrent_reads))
        self._layouts: "OrderedDict[Tuple[str, str], Optional[dicom_layout.PixelLayout]]" = OrderedDict()
        self._layouts_lock = threading.Lock()

    # -- lookup --------------------------------------------------------------------------------------

    def expand(self, resources: Iterable[Resource]) -> List[str]:
        """Instance IDs of the resources, each once, in ascending byte-wise order."""
        ids = set()
        for r in resources:
            if r.level == LEVEL_INSTANCE:
                ids.add(r.id)
            else:
                ids.update(self.store.child_instances(r.level, r.id))
        return sorted(ids)

    def instance_info(self, instance_id: str) -> InstanceInfo:
        """Size and MD5 from Orthanc's attachment record when it has them, else from the bytes."""
        size, md5 = self.store.attachment_info(instance_id)
        if not md5:
            entry = self.get(instance_id)
            return InstanceInfo(instance_id, entry.size, entry.md5)
        return InstanceInfo(instance_id, size, md5)

    def lookup(self, resources: Iterable[Resource], limits: Limits = DEFAULT_LIMITS) -> List[InstanceInfo]:
        """The instances of the resources with their sizes and MD5s; refused beyond ``limits.max_instances``
        (before any attachment record is read)."""
        ids = self.expand(resources)
        check_count(len(ids), "instances in the requested resources", limits)
        self.freed.maybe_release(start=True)  # a transfer starts: what was freed before goes back first
        return [self.instance_info(i) for i in ids]

    # -- chunks --------------------------------------------------------------------------------------

    def _load(self, instance_id: str) -> CachedInstance:
        with self._reads:
            data = self.store.read_dicom(instance_id)
        self.freed.note(len(data))
        entry = CachedInstance.from_bytes(instance_id, data)
        size, md5 = self.store.attachment_info(instance_id)
        if not matches_record(entry, size, md5):
            raise CorruptedFile(
                f"Instance {instance_id}: the stored file has {entry.size} bytes and MD5 {entry.md5}, "
                f"but Orthanc recorded {size} bytes and MD5 {md5}; refusing to serve it")
        return entry

    def _still_valid(self, entry: CachedInstance) -> bool:
        """Whether a cached instance is still the one Orthanc stores (raises ``NotFound`` once deleted).

        Checked each time a cached instance is served: Orthanc reports deletions to plugins
        asynchronously, so a change notification alone could let a deleted instance be served."""
        return matches_record(entry, *self.store.attachment_info(entry.id))

    def get(self, instance_id: str) -> CachedInstance:
        """An instance to serve: cached bytes checked against Orthanc's record, or loaded and checked."""
        entry = self.cache.get(instance_id, self._still_valid)
        self.freed.maybe_release()  # what earlier answers freed
        return entry

    def bucket_payload(self, bucket: Bucket) -> bytes:
        """The bytes of a push bucket: each chunk's slice of its instance, in order. Each slice counts as
        served (the cache drops an instance once all its bytes were, :mod:`cache`)."""
        parts = []
        for c in bucket.chunks:
            entry = self.get(c.instance_id)
            data = entry.data
            if c.offset + c.size > len(data):
                raise CorruptedFile(f"Instance {c.instance_id} has {len(data)} bytes, fewer than the transfer "
                                    f"planned ({c.offset + c.size}); was it replaced meanwhile?")
            parts.append(memoryview(data)[c.offset:c.offset + c.size])
            self.cache.served(entry, c.offset, c.offset + c.size)
        if len(parts) == 1 and len(parts[0]) == len(data):
            return data  # a whole instance: no copy
        return b"".join(parts)

    def read(self, request: ChunkRequest) -> bytes:
        """The bytes of a chunks request, before compression (protocol.md R1, exactly). The ranges taken
        from each instance count as served (the cache drops an instance once all its bytes were)."""
        return read_range(self.get, request.ids, request.offset, request.size,
                          max(self.cache.capacity, MIN_ANSWER_LIMIT), self.cache.served)

    # -- encoded answers and bodies --------------------------------------------------------------------

    def encoded(self, request: ChunkRequest, codec) -> bytes:
        """The answer of a chunks request in ``codec``; a codec that uses the DICOM layout (zstd-shuffle) is
        given each instance's range cut around its pixel data. The ranges count as served, as in :meth:`read`."""
        if not codec.uses_layout:
            return codec.encode(self.read(request))
        pieces = range_pieces(self.get, request.ids, request.offset, request.size,
                              max(self.cache.capacity, MIN_ANSWER_LIMIT))
        body = codec.encode_parts(self._segments(pieces))
        mark_served(pieces, self.cache.served)
        return body

    def encoded_bucket(self, bucket: Bucket, codec) -> bytes:
        """The PUT body of a push bucket in ``codec`` (see :meth:`encoded`)."""
        if not codec.uses_layout:
            return codec.encode(self.bucket_payload(bucket))
        pieces = []
        for c in bucket.chunks:
            entry = self.get(c.instance_id)
            if c.offset + c.size > len(entry.data):
                raise CorruptedFile(f"Instance {c.instance_id} has {len(entry.data)} bytes, fewer than the transfer "
                                    f"planned ({c.offset + c.size}); was it replaced meanwhile?")
            pieces.append((entry, c.offset, memoryview(entry.data)[c.offset:c.offset + c.size]))
        body = codec.encode_parts(self._segments(pieces))
        mark_served(pieces, self.cache.served)
        return body

    def _segments(self, pieces) -> List[dicom_layout.Segment]:
        out: List[dicom_layout.Segment] = []
        for entry, start, view in pieces:
            out.extend(dicom_layout.split(view, start, self.layout(entry)))
        return out

    def layout(self, entry: CachedInstance) -> Optional[dicom_layout.PixelLayout]:
        """Where the pixel data of an instance lies (found once per instance and MD5, then remembered)."""
        key = (entry.id, entry.md5)
        with self._layouts_lock:
            if key in self._layouts:
                self._layouts.move_to_end(key)
                return self._layouts[key]
        found = dicom_layout.find_pixel_data(entry.data)
        with self._layouts_lock:
            self._layouts[key] = found
            while len(self._layouts) > MAX_LAYOUTS:
                self._layouts.popitem(last=False)
        return found


def matches_record(entry: CachedInstance, size: int, md5: Optional[str]) -> bool:
    """Whether bytes are those Orthanc recorded for the instance: its size, and its MD5 when it has one."""
    return entry.size == size and (not md5 or entry.md5 == md5)


def read_range(get, ids: Sequence[str], offset: int, size: int, max_bytes: Optional[int] = None,
               served=None) -> bytes:
    """Concatenates ``ids``' bytes, skips ``offset`` bytes, keeps ``size`` of them (0: all the rest).

    ``get(id)`` returns an object with ``data``. An instance is only loaded when bytes of it are needed
    or its size is needed to skip it, as the C++ server does. A ``size`` past the end gives the bytes
    there are (as the C++ server answers); an ``offset`` at or past the end is refused. An answer that
    must be assembled (several instances, or a part of one) is refused beyond ``max_bytes``: an instance
    listed 300 times in one URL must not make us allocate 300 copies of it. ``served(entry, start, end)``,
    if given, is told each range taken from an instance, once the whole answer is known to be given.
    """
    pieces = range_pieces(get, ids, offset, size, max_bytes)
    parts = [view for _, _, view in pieces]
    answer = parts[0].obj if len(parts) == 1 and len(parts[0]) == len(parts[0].obj) else b"".join(parts)
    del parts
    if served is not None:
        mark_served(pieces, served)
    return answer


def mark_served(pieces: list, served) -> None:
    """Tells ``served(entry, start, end)`` each range of :func:`range_pieces`' ``pieces``."""
    for entry, start, view in pieces:
        served(entry, start, start + len(view))


def range_pieces(get, ids: Sequence[str], offset: int, size: int, max_bytes: Optional[int] = None) -> list:
    """The pieces ``(entry, offset in its instance, memoryview)`` that :func:`read_range` joins, with its
    checks (``max_bytes`` applies to more than one piece or a part of an instance)."""
    pieces = []
    produced = 0
    remaining_offset = offset
    for instance_id in ids:
        if size and produced >= size:
            break
        entry = get(instance_id)
        data = entry.data
        n = len(data)
        if remaining_offset >= n:
            remaining_offset -= n
            continue
        take = n - remaining_offset
        if size:
            take = min(take, size - produced)
        pieces.append((entry, remaining_offset, memoryview(data)[remaining_offset:remaining_offset + take]))
        produced += take
        remaining_offset = 0
    if offset and not produced:
        raise ParameterOutOfRange(f"offset {offset} is past the end of the listed instances "
                                  f"({offset - remaining_offset} bytes in all)")
    whole = len(pieces) == 1 and len(pieces[0][2]) == len(pieces[0][2].obj)
    if not whole and max_bytes is not None and produced > max_bytes:
        raise PayloadTooLarge(f"The chunks asked for make {produced} bytes, more than the {max_bytes // MB} MB "
                              f"one answer may hold (the larger of Transfers.CacheSize and "
                              f"{MIN_ANSWER_LIMIT // MB} MB)")
    return pieces
