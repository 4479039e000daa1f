"""The real DICOM corpus of ../shared/dicom: its manifest, and uploads checked against it."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    relative: str
    size: int
    md5: str
    orthanc_id: str
    study_uid: str
    group: str

    def read(self) -> bytes:
        return self.path.read_bytes()


def load_manifest(corpus_dir: Path) -> List[CorpusFile]:
    entries = json.loads((corpus_dir / "manifest.json").read_text())
    return [CorpusFile(corpus_dir / e["path"], e["path"], e["bytes"], e["md5"], e["orthanc_id"],
                       e["study_instance_uid"], e["group"]) for e in entries]


def upload_files(server, files: List[CorpusFile]) -> Dict[str, CorpusFile]:
    """Uploads files to a server; checks each file's bytes and Orthanc ID against the manifest."""
    by_id: Dict[str, CorpusFile] = {}
    for f in files:
        data = f.read()
        assert len(data) == f.size and hashlib.md5(data).hexdigest() == f.md5, f"corpus file changed: {f.path}"
        instance_id = server.upload(data)
        assert instance_id == f.orthanc_id, f"{f.relative}: Orthanc ID {instance_id}, manifest {f.orthanc_id}"
        by_id[instance_id] = f
    return by_id
