"""Job persistence in Orthanc's own database, as one global property holding JSON."""

import json
from typing import Any, Callable, Dict, List, Optional

# Global property ids below 1024 belong to Orthanc; this one is the plugin's.
JOBS_PROPERTY = 23451
FORMAT_VERSION = 1


class GlobalPropertyJobStore:
    def __init__(self, get_property: Callable[[int, str], Optional[str]], set_property: Callable[[int, str], None],
                 property_id: int = JOBS_PROPERTY):
        self._get = get_property
        self._set = set_property
        self.property_id = property_id

    def load(self) -> List[Dict[str, Any]]:
        text = self._get(self.property_id, "")
        if not text:
            return []
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("Version") != FORMAT_VERSION:
            raise ValueError("the saved jobs have an unknown format")
        return list(data.get("Jobs") or [])

    def save(self, jobs: List[Dict[str, Any]]) -> None:
        self._set(self.property_id, json.dumps({"Version": FORMAT_VERSION, "Jobs": jobs}, separators=(",", ":")))
