"""Which instances an interrupted commit created, found again after a crash.

A commit imports instances one by one, and a crash (``kill -9``, power loss) or a stop can interrupt it
anywhere, in particular after imports that no saved state records yet. Orthanc itself records each import:
its change log (``/changes``) gets a ``NewInstance`` entry in the same database transaction as the
instance. So a commit notes the sequence number of the last change before its first import
(:func:`last_change`); afterwards, the instances of the commit with a ``NewInstance`` change after that
number are exactly those it created (:func:`created_since`), whatever was saved or lost.

:class:`CommitJournal` keeps the commits in progress of the push receiver (whose transactions do not
survive a restart) in one of Orthanc's global properties: what a crash left there is rolled back at the
next start.
"""

import json
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

JOURNAL_PROPERTY = 23452  # next to the jobs' 23451; ids below 1024 are Orthanc's
CHANGES_PAGE = 1000

GetJson = Callable[[str], Any]


def last_change(get_json: GetJson) -> int:
    """The sequence number of the last change Orthanc logged (0 when none)."""
    return int(get_json("/changes?last").get("Last", 0))


def created_since(get_json: GetJson, since: int, instance_ids: Iterable[str]) -> List[str]:
    """The instances among ``instance_ids`` that Orthanc created after change ``since``, in creation order."""
    remaining = set(instance_ids)
    found: List[str] = []
    position = since
    while remaining:
        page = get_json(f"/changes?since={position}&limit={CHANGES_PAGE}")
        changes = page.get("Changes") or []
        for change in changes:
            if change.get("ChangeType") == "NewInstance" and change.get("ResourceType") == "Instance":
                instance_id = change.get("ID")
                if instance_id in remaining:
                    remaining.discard(instance_id)
                    found.append(instance_id)
        last = int(page.get("Last", position))
        if page.get("Done", True) or not changes or last <= position:
            break
        position = last
    return found


class CommitJournal:
    """Commits in progress, each as ``key -> (since, instance IDs)``, kept in a global property.

    Each entry names the ``owner`` that wrote it (one per start of the plugin): :meth:`entries` gives those
    of earlier starts only, which no running commit can own any more."""

    def __init__(self, get_property: Callable[[int, str], Optional[str]], set_property: Callable[[int, str], None],
                 property_id: int = JOURNAL_PROPERTY, owner: str = ""):
        self._get = get_property
        self._set = set_property
        self.property_id = property_id
        self.owner = owner
        self._lock = threading.Lock()

    def _read(self) -> Dict[str, Any]:
        text = self._get(self.property_id, "")
        if not text:
            return {}
        data = json.loads(text)
        return data if isinstance(data, dict) else {}

    def begin(self, key: str, since: int, instance_ids: Iterable[str]) -> None:
        with self._lock:
            entries = self._read()
            entries[key] = {"Since": since, "Instances": sorted(instance_ids), "Owner": self.owner}
            self._set(self.property_id, json.dumps(entries, separators=(",", ":")))

    def end(self, key: str) -> None:
        with self._lock:
            entries = self._read()
            if entries.pop(key, None) is not None:
                self._set(self.property_id, json.dumps(entries, separators=(",", ":")))

    def entries(self) -> Dict[str, Tuple[int, List[str]]]:
        """The commits left by earlier starts (interrupted), not those of this one."""
        with self._lock:
            return {k: (int(v.get("Since", 0)), list(v.get("Instances") or [])) for k, v in self._read().items()
                    if isinstance(v, dict) and v.get("Owner") != self.owner}
