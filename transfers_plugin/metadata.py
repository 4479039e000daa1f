"""User-defined metadata and labels carried between two of our peers (``"Metadata": true`` in a request).

Only between our peers that list the ``metadata`` feature (:mod:`capabilities`); a C++ peer is never asked.

- What is carried: each instance's user-defined metadata, the names of Orthanc's ``UserMetadata``
  configuration section (index 1024 or more; system metadata such as ReceptionDate, RemoteAET,
  TransferSyntax, Origin... never are), and, when the Orthanc at the source is 1.12 or later, the labels of
  the instance's patient, study and series.
- The document (the answer of ``POST /transfers/metadata`` at a source, the body of
  ``POST /transfers/push/{id}/metadata`` at a receiver)::

      {"Instances": {"<instance ID>": {"<name>": "<value>", ...}, ...},
       "Labels": {"Patient": {"<ID>": ["label", ...]}, "Study": {...}, "Series": {...}}}

- At the target it is applied after the instances are imported and before the transfer is reported done:
  a metadata name the target's ``UserMetadata`` does not have is skipped with a warning, as labels on an
  Orthanc older than 1.12; a metadata or label Orthanc refuses fails the commit, which deletes what it had
  imported (as any failed commit).

Every document is a peer's, hence hostile: instance IDs only those asked, resource IDs in Orthanc's format,
names and labels short tokens, values strings of at most ``MAX_VALUE`` characters, counts bounded.
"""

import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

from .errors import BadRequest, NotFound
from .protocol import MB, ORTHANC_ID, check_orthanc_id, dumps_compact

METADATA_URI = "/transfers/metadata"
BATCH = 200  # instances asked per request at a source
MAX_VALUE = 64 * 1024  # characters of one metadata value
MAX_NAMES = 64  # metadata per instance
MAX_LABELS = 64  # labels per resource
MAX_DOCUMENT_BYTES = 64 * MB  # a push's metadata body, a source's answer to one batch
LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
LEVELS = {"Patient": "patients", "Study": "studies", "Series": "series"}
NOT_SUPPORTED = "not supported by the peer"
MAX_WARNINGS = 20  # kept in a job's Content


def user_metadata_names(configuration: Any) -> Set[str]:
    """The names of the ``UserMetadata`` section of Orthanc's configuration (index 1024 to 65535)."""
    section = configuration.get("UserMetadata") if isinstance(configuration, dict) else None
    if not isinstance(section, dict):
        return set()
    return {name for name, index in section.items()
            if isinstance(name, str) and NAME.fullmatch(name) and isinstance(index, int)
            and not isinstance(index, bool) and 1024 <= index <= 65535}


def empty() -> Dict[str, Any]:
    return {"Instances": {}, "Labels": {level: {} for level in LEVELS}}


def merge(into: Dict[str, Any], more: Dict[str, Any]) -> None:
    into["Instances"].update(more["Instances"])
    for level in LEVELS:
        into["Labels"][level].update(more["Labels"][level])


def count(document: Dict[str, Any]) -> Dict[str, int]:
    return {"Values": sum(len(m) for m in document["Instances"].values()),
            "Labels": sum(len(v) for level in LEVELS for v in document["Labels"][level].values())}


def parse_request(document: Any) -> List[str]:
    """The body of ``POST /transfers/metadata``: ``{"Instances": [IDs]}``, at most ``BATCH`` of them."""
    if not isinstance(document, dict) or not isinstance(document.get("Instances"), list):
        raise BadRequest("The metadata query must be a JSON object with an Instances array")
    ids = document["Instances"]
    if len(ids) > BATCH:
        raise BadRequest(f"At most {BATCH} instances may be asked at once, not {len(ids)}")
    return [check_orthanc_id(i, f"Instances[{n}]") for n, i in enumerate(ids)]


def parse_document(document: Any, allowed: Iterable[str], what: str) -> Dict[str, Any]:
    """A metadata document from a peer, checked (``BadRequest`` says what is wrong); only instances of
    ``allowed`` may appear."""
    allowed = set(allowed)
    if not isinstance(document, dict) or not isinstance(document.get("Instances"), dict) \
            or not isinstance(document.get("Labels", {}), dict):
        raise BadRequest(f"{what} must be a JSON object with an Instances object (and a Labels object)")
    out = empty()
    for iid, values in document["Instances"].items():
        if iid not in allowed:
            raise BadRequest(f"{what} names an instance that is not part of the transfer")
        if not isinstance(values, dict) or len(values) > MAX_NAMES:
            raise BadRequest(f"{what}: the metadata of an instance must be an object of at most {MAX_NAMES} entries")
        for name, value in values.items():
            if not NAME.fullmatch(name):
                raise BadRequest(f"{what}: a metadata name must be 1 to 64 letters, digits, '_' or '-'")
            if not isinstance(value, str) or len(value) > MAX_VALUE:
                raise BadRequest(f"{what}: a metadata value must be a string of at most {MAX_VALUE} characters")
        out["Instances"][iid] = dict(values)
    labels = document.get("Labels", {})
    for level, resources in labels.items():
        if level not in LEVELS or not isinstance(resources, dict):
            raise BadRequest(f"{what}: Labels must map Patient, Study or Series to objects")
        if len(resources) > max(1, len(allowed)):  # at most one resource of a level per instance
            raise BadRequest(f"{what}: too many {level} resources in Labels")
        for rid, names in resources.items():
            if not isinstance(rid, str) or not ORTHANC_ID.fullmatch(rid):
                raise BadRequest(f"{what}: a resource of Labels is not an Orthanc ID")
            if not isinstance(names, list) or len(names) > MAX_LABELS \
                    or not all(isinstance(x, str) and LABEL.fullmatch(x) for x in names):
                raise BadRequest(f"{what}: the labels of a resource must be at most {MAX_LABELS} labels of 1 to 64 "
                                 f"letters, digits, '_' or '-'")
            out["Labels"][level][rid] = sorted(set(names))
    return out


class MetadataStore:
    """Reads and writes metadata and labels in the Orthanc running the plugin (``api``: ``configuration()``,
    ``orthanc_version_at_least``, ``core_get_json``, ``core_request``)."""

    def __init__(self, api: Any, log_warning: Callable[[str], None] = lambda m: None):
        self.api = api
        self.log_warning = log_warning
        self.names = user_metadata_names(api.configuration())
        self.labels = bool(api.orthanc_version_at_least(1, 12, 0))

    def collect(self, instance_ids: Iterable[str]) -> Dict[str, Any]:
        """The user-defined metadata of these instances (those gone meanwhile are left out), and the labels of
        their patients, studies and series on Orthanc 1.12 or later."""
        out = empty()
        parents: Dict[str, Optional[str]] = {}  # series -> study, study -> patient

        def labels_of(level: str, rid: str) -> None:
            if rid not in out["Labels"][level]:
                found = self.api.core_get_json(f"/{LEVELS[level]}/{rid}/labels")
                out["Labels"][level][rid] = sorted(x for x in found if isinstance(x, str)) \
                    if isinstance(found, list) else []

        for iid in instance_ids:
            try:
                names = self.api.core_get_json(f"/instances/{iid}/metadata")
                values = {}
                for name in sorted(set(names if isinstance(names, list) else ()) & self.names):
                    value = self.api.core_request("GET", f"/instances/{iid}/metadata/{name}").decode("utf-8",
                                                                                                    "replace")
                    if len(value) > MAX_VALUE:  # a peer refuses it: left out, never cut
                        self.log_warning(f"Transfers: metadata {name} of instance {iid} is not carried: it has more "
                                         f"than {MAX_VALUE} characters")
                        continue
                    values[name] = value
                out["Instances"][iid] = values
                if not self.labels:
                    continue
                series = self.api.core_get_json(f"/instances/{iid}").get("ParentSeries")
                if series not in parents:
                    parents[series] = self.api.core_get_json(f"/series/{series}").get("ParentStudy")
                study = parents[series]
                if study not in parents:
                    parents[study] = self.api.core_get_json(f"/studies/{study}").get("ParentPatient")
                labels_of("Series", series)
                labels_of("Study", study)
                labels_of("Patient", parents[study])
            except NotFound:
                continue  # deleted at the source meanwhile: its metadata are not carried
        for level in LEVELS:
            out["Labels"][level] = {k: v for k, v in out["Labels"][level].items() if v}
        return out

    def apply(self, document: Dict[str, Any], warn: Callable[[str], None]) -> Dict[str, int]:
        """Writes a checked document; what this Orthanc cannot take (a name its ``UserMetadata`` lacks,
        labels before 1.12, a resource it does not have) is skipped with ``warn``. Returns what was written."""
        written = {"Values": 0, "Labels": 0}
        unknown = sorted({name for values in document["Instances"].values() for name in values} - self.names)
        if unknown:
            warn(f"metadata {', '.join(unknown[:10])} skipped: not in the UserMetadata of this Orthanc")
        for iid, values in document["Instances"].items():
            for name, value in sorted(values.items()):
                if name in self.names:
                    self.api.core_request("PUT", f"/instances/{iid}/metadata/{name}", value.encode("utf-8"))
                    written["Values"] += 1
        labelled = [(level, rid, label) for level in LEVELS for rid, labels in document["Labels"][level].items()
                    for label in labels]
        if labelled and not self.labels:
            warn(f"{len(labelled)} label(s) skipped: this Orthanc is older than 1.12")
            return written
        for level, rid, label in labelled:
            try:
                self.api.core_request("PUT", f"/{LEVELS[level]}/{rid}/labels/{label}", b"")
                written["Labels"] += 1
            except NotFound:
                warn(f"label {label} of {level} {rid} skipped: this Orthanc does not have that resource")
        return written


def ask_peer(transport: Any, peer: Any, instance_ids: List[str], headers: Any = None,
             stop_event: Any = None) -> Dict[str, Any]:
    """The metadata document of these instances at our source (it lists the ``metadata`` feature), asked in
    batches and checked."""
    out = empty()
    for start in range(0, len(instance_ids), BATCH):
        batch = instance_ids[start:start + BATCH]
        answer = transport.call(peer, "POST", METADATA_URI, body=dumps_compact({"Instances": batch}), headers=headers,
                                expect_json=True, stop_event=stop_event, abandon_on_stop=stop_event is not None,
                                max_bytes=MAX_DOCUMENT_BYTES)
        merge(out, parse_document(answer.document, batch, f"The metadata answer of peer {peer.name!r}"))
    return out
