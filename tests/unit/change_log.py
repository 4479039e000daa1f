"""A fake of Orthanc's change log (``GET /changes``) for unit tests of what reads it."""

from typing import Any, Dict, List


class ChangeLog:
    """``GET /changes`` as Orthanc 1.10 answers it: ``since`` exclusive, ``limit``, ``Done``, ``Last``."""

    def __init__(self):
        self.changes: List[Dict[str, Any]] = []
        self.requests: List[str] = []

    def add(self, change_type: str, resource_type: str, resource_id: str) -> int:
        seq = len(self.changes) + 1
        self.changes.append({"ChangeType": change_type, "ResourceType": resource_type, "ID": resource_id,
                             "Seq": seq})
        return seq

    def get_json(self, uri: str) -> Any:
        self.requests.append(uri)
        if uri == "/changes?last":
            return {"Changes": self.changes[-1:], "Done": True, "Last": len(self.changes)}
        query = dict(p.split("=") for p in uri.split("?", 1)[1].split("&"))
        since, limit = int(query["since"]), int(query["limit"])
        page = [c for c in self.changes if c["Seq"] > since][:limit]
        last = page[-1]["Seq"] if page else since
        return {"Changes": page, "Done": last >= len(self.changes), "Last": last}

    def new_instance(self, instance_id: str) -> int:
        return self.add("NewInstance", "Instance", instance_id)
