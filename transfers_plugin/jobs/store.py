"""Job persistence in Orthanc's own database, as global properties holding JSON.

Format 2 (written since the scale work; format 1 is still read):

- property 23451 holds ``{"Version": 2, "Jobs": [...]}``, each job as ``JobRecord.to_persisted`` gives it, except
  that a resume-state value whose JSON is at least ``BLOB_MIN_CHARS`` long (the instance list of a large
  transfer, its verified instances...) is left out of ``ResumeState`` and named in ``"Blobs": {key: property}``;
- such a value lives in a property of its own among ``BLOB_IDS``, as ``{"Job": id, "Key": key, "Value": ...}``.

The engine saves once a second while a job makes progress: only what changed since the last save is serialized
(a value is known unchanged when it is the same object, of the same length, and the engine was not told it
changed), and a value left unchanged in a blob is not written again. So a save costs what changed, not the size
of every job's state. A changed value goes to a property the saved index does not reference; the index is
written after its blobs; only then are the blobs it no longer references emptied. A crash at any point leaves a
readable index whose blobs are all intact (what the last complete save wrote).
If no blob property is free, a value stays inline (format 1's way).
"""

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

# Global property ids below 1024 belong to Orthanc; these are the plugin's (23452 is the commit journal's).
JOBS_PROPERTY = 23451
BLOB_IDS = range(23460, 24000)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
BLOB_MIN_CHARS = 64 * 1024

_COMPACT = (",", ":")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=_COMPACT)


def _length(value: Any) -> Optional[int]:
    return len(value) if isinstance(value, (list, dict, str)) else None


@dataclass
class _Cached:
    value: Any  # the object serialized (held, so that its id stays its own)
    length: Optional[int]
    text: str
    blob: Optional[int]  # the property holding it, None if inline


@dataclass
class Snapshot:
    """What one save writes, taken under the engine's lock; ``write`` writes it."""

    index: str
    blobs: List[Tuple[int, str]]  # written before the index
    used: Set[int]  # blob properties the index references
    cache: Dict[Tuple[str, str], _Cached]


class GlobalPropertyJobStore:
    def __init__(self, get_property: Callable[[int, str], Optional[str]], set_property: Callable[[int, str], None],
                 property_id: int = JOBS_PROPERTY, blob_ids: Iterable[int] = BLOB_IDS,
                 blob_min_chars: int = BLOB_MIN_CHARS):
        self._get = get_property
        self._set = set_property
        self.property_id = property_id
        self.blob_ids = [i for i in blob_ids if i != property_id]
        self.blob_min_chars = blob_min_chars
        self._cache: Dict[Tuple[str, str], _Cached] = {}
        self._on_disk: Set[int] = set()  # blob properties the saved index may reference

    # -- loading -------------------------------------------------------------------------------------

    def load(self) -> List[Dict[str, Any]]:
        text = self._get(self.property_id, "")
        if not text:
            return []
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("Version") not in READABLE_VERSIONS \
                or isinstance(data.get("Version"), bool):
            raise ValueError("the saved jobs have an unknown format")
        jobs = [j for j in (data.get("Jobs") or []) if isinstance(j, dict)]
        allowed = set(self.blob_ids)
        for job in jobs:
            blobs = job.pop("Blobs", None) or {}
            try:
                state = job.get("ResumeState")
                if state is None:
                    state = job["ResumeState"] = {}
                if not isinstance(blobs, dict) or not isinstance(state, dict):
                    raise ValueError("its resume state is not an object")
                for key, blob in blobs.items():
                    if not isinstance(blob, int) or blob not in allowed:
                        raise ValueError(f"its resume state {key!r} names property {blob!r}")
                    self._on_disk.add(blob)
                    doc = json.loads(self._get(blob, "") or "null")
                    if not isinstance(doc, dict) or doc.get("Job") != job.get("ID") or doc.get("Key") != key \
                            or "Value" not in doc:
                        raise ValueError(f"its resume state {key!r} is missing from property {blob}")
                    state[key] = doc["Value"]
            except ValueError as e:
                job["Unreadable"] = str(e)  # JobRecord.from_persisted refuses it: the engine drops it, says why
        return jobs

    # -- saving --------------------------------------------------------------------------------------

    def save(self, jobs: List[Dict[str, Any]]) -> None:
        self.write(self.snapshot(jobs, {}))

    def snapshot(self, jobs: List[Dict[str, Any]], changed: Dict[str, Optional[Set[str]]]) -> Snapshot:
        """The text of a save of ``jobs`` (``to_persisted`` dicts holding the live objects: call it under the
        lock that guards them). ``changed``: per job, the resume-state keys changed in place since the last
        save (None: any of them)."""
        cache: Dict[Tuple[str, str], _Cached] = {}
        blobs: List[Tuple[int, str]] = []
        used: Set[int] = set()
        fresh: List[Tuple[Tuple[str, str], _Cached]] = []  # big values without a blob yet
        texts: List[Tuple[Dict[str, Any], Dict[str, str], Dict[str, Tuple[str, str]]]] = []
        for job in jobs:
            job_id = str(job["ID"])
            dirty = changed.get(job_id, set())
            head = {k: v for k, v in job.items() if k != "ResumeState"}
            inline: Dict[str, str] = {}
            big: Dict[str, Tuple[str, str]] = {}
            for key, value in (job.get("ResumeState") or {}).items():
                known = self._cache.get((job_id, key))
                if known is not None and known.value is value and known.length == _length(value) \
                        and dirty is not None and key not in dirty:
                    entry = known
                else:
                    text = _dumps(value)
                    if len(text) < self.blob_min_chars:
                        inline[key] = text
                        continue
                    entry = _Cached(value, _length(value), text, None)
                cache[(job_id, key)] = entry
                if entry.blob is None:
                    fresh.append(((job_id, key), entry))
                else:
                    used.add(entry.blob)
                big[key] = (job_id, key)
            texts.append((head, inline, big))
        free = (i for i in self.blob_ids if i not in self._on_disk and i not in used)
        for cache_key, entry in fresh:
            blob = next(free, None)
            if blob is None:  # no property free: the value stays inline
                continue
            entry = cache[cache_key] = _Cached(entry.value, entry.length, entry.text, blob)
            used.add(blob)
            blobs.append((blob, f'{{"Job":{_dumps(cache_key[0])},"Key":{_dumps(cache_key[1])},"Value":{entry.text}}}'))
        parts = []
        for head, inline, big in texts:
            refs: Dict[str, int] = {}
            for key, cache_key in big.items():
                entry = cache[cache_key]
                if entry.blob is None:
                    inline[key] = entry.text
                else:
                    refs[key] = entry.blob
            state = "{" + ",".join(f"{_dumps(k)}:{t}" for k, t in inline.items()) + "}"
            text = _dumps(head)[:-1] + (',' if head else '') + f'"ResumeState":{state}'
            if refs:
                text += f',"Blobs":{_dumps(refs)}'
            parts.append(text + "}")
        index = f'{{"Version":{FORMAT_VERSION},"Jobs":[' + ",".join(parts) + "]}"
        return Snapshot(index, blobs, used, cache)

    def write(self, snapshot: Snapshot) -> None:
        """Writes a snapshot: its new blobs, then the index, then empties the blobs no longer referenced.
        Snapshots must be written in the order they were taken, one at a time."""
        try:
            for blob, text in snapshot.blobs:
                self._set(blob, text)
            self._set(self.property_id, snapshot.index)
        except BaseException:
            # What is on disk is the old index or the new one: neither's blobs may be reused, and what the
            # cache says was written may not have been.
            self._on_disk |= snapshot.used
            self._cache = {}
            raise
        stale = self._on_disk - snapshot.used
        self._on_disk = set(snapshot.used)
        self._cache = snapshot.cache
        for blob in sorted(stale):
            try:
                self._set(blob, "")
            except Exception:  # noqa: BLE001 - only space: an unreferenced blob is overwritten when reused
                pass
