"""Wire types of the transfers protocol and their JSON form (see protocol.md sections 2 and 3).

Sizes and offsets travel as JSON strings holding unsigned decimal integers. Parsing is strict, and every
failure raises an error from :mod:`transfers_plugin.errors` that carries the HTTP status to answer with.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import BadFileFormat, BadJson, BadParameterType, BadRequest, ParameterOutOfRange

KB = 1024
MB = 1024 * 1024

COMPRESSIONS = ("none", "gzip")

LEVEL_PATIENT = "Patient"
LEVEL_STUDY = "Study"
LEVEL_SERIES = "Series"
LEVEL_INSTANCE = "Instance"

# Matching ignores case (protocol.md 2.1).
_LEVELS = {
    "patient": LEVEL_PATIENT,
    "patients": LEVEL_PATIENT,
    "study": LEVEL_STUDY,
    "studies": LEVEL_STUDY,
    "series": LEVEL_SERIES,
    "instance": LEVEL_INSTANCE,
    "instances": LEVEL_INSTANCE,
    "image": LEVEL_INSTANCE,
    "images": LEVEL_INSTANCE,
}

_DECIMAL = re.compile(r"[0-9]+")
_INSTANCE_ID = re.compile(r"[0-9a-f-]+")
# The largest offset or size we accept; C++ servers stop at 2**31 - 1, we go up to 64 bits.
MAX_UINT64 = 2**64 - 1


def parse_json_body(body: bytes, what: str = "request body") -> Any:
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        return json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadJson(f"The {what} is not valid JSON: {e}") from None


def parse_decimal(value: Any, what: str, maximum: int = MAX_UINT64) -> int:
    """An unsigned decimal integer written as a JSON string (or a query argument)."""
    if not isinstance(value, str):
        raise BadFileFormat(f"{what} must be a string holding a decimal integer, not {json.dumps(value, default=repr)}")
    if not _DECIMAL.fullmatch(value):
        raise BadFileFormat(f"{what} must be an unsigned decimal integer, not {json.dumps(value)}")
    n = int(value)
    if n > maximum:
        raise ParameterOutOfRange(f"{what} is too large: {value}")
    return n


def parse_compression(value: Any, what: str = "Compression") -> str:
    if not isinstance(value, str):
        raise BadFileFormat(f"{what} must be a string, one of {', '.join(COMPRESSIONS)}")
    if value not in COMPRESSIONS:
        raise ParameterOutOfRange(
            f"Unknown {what} {json.dumps(value)}: expected one of {', '.join(COMPRESSIONS)}")
    return value


def parse_level(value: Any) -> str:
    if not isinstance(value, str):
        raise BadFileFormat("Level must be a string")
    level = _LEVELS.get(value.lower())
    if level is None:
        raise ParameterOutOfRange(
            f"Unknown resource level {json.dumps(value)}: expected Patient, Study, Series or Instance")
    return level


def _require(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise BadFileFormat(f"{where}: missing key {json.dumps(key)}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadFileFormat(f"{where}: {json.dumps(key)} must be a {_type_name(kind)}")
    return value


def _type_name(kind: type) -> str:
    return {str: "string", list: "JSON array", dict: "JSON object", int: "integer"}.get(kind, kind.__name__)


@dataclass(frozen=True)
class Resource:
    """One item of ``Resources``: a level and an Orthanc identifier (extra keys are kept)."""

    level: str
    id: str
    extra: Tuple[Tuple[str, Any], ...] = ()

    @classmethod
    def from_json(cls, item: Any, where: str = "Resources item") -> "Resource":
        if not isinstance(item, dict):
            raise BadFileFormat(f"{where} must be a JSON object with Level and ID")
        level = parse_level(_require(item, "Level", str, where))
        rid = _require(item, "ID", str, where)
        extra = tuple((k, v) for k, v in item.items() if k not in ("Level", "ID"))
        return cls(level, rid, extra)

    def to_json(self) -> Dict[str, Any]:
        out = dict(self.extra)
        out["Level"] = self.level
        out["ID"] = self.id
        return out


def parse_resources(value: Any) -> List[Resource]:
    if not isinstance(value, list):
        raise BadFileFormat("Resources must be a JSON array of {\"Level\", \"ID\"} objects")
    return [Resource.from_json(item, f"Resources[{i}]") for i, item in enumerate(value)]


@dataclass(frozen=True)
class InstanceInfo:
    """DicomInstanceInfo: an instance's ID, size in bytes and MD5 (32 lowercase hex digits)."""

    id: str
    size: int
    md5: str

    @classmethod
    def from_json(cls, item: Any, where: str = "instance") -> "InstanceInfo":
        if not isinstance(item, dict):
            raise BadFileFormat(f"{where} must be a JSON object with ID, Size and MD5")
        iid = _require(item, "ID", str, where)
        size = parse_decimal(_require(item, "Size", str, where), f"{where}.Size")
        md5 = _require(item, "MD5", str, where)
        return cls(iid, size, md5)

    def to_json(self) -> Dict[str, str]:
        return {"ID": self.id, "MD5": self.md5, "Size": str(self.size)}


@dataclass(frozen=True)
class Chunk:
    """A byte range ``[offset, offset + size)`` of one instance."""

    instance_id: str
    offset: int
    size: int

    @classmethod
    def from_json(cls, item: Any, where: str = "chunk") -> "Chunk":
        if not isinstance(item, dict):
            raise BadFileFormat(f"{where} must be a JSON object with ID, Offset and Size")
        return cls(_require(item, "ID", str, where),
                   parse_decimal(_require(item, "Offset", str, where), f"{where}.Offset"),
                   parse_decimal(_require(item, "Size", str, where), f"{where}.Size"))

    def to_json(self) -> Dict[str, str]:
        return {"ID": self.instance_id, "Offset": str(self.offset), "Size": str(self.size)}


@dataclass(frozen=True)
class Bucket:
    """An ordered list of chunks whose bytes, concatenated, form one HTTP payload."""

    chunks: Tuple[Chunk, ...] = field(default_factory=tuple)

    @property
    def total_size(self) -> int:
        return sum(c.size for c in self.chunks)

    @classmethod
    def from_json(cls, value: Any, where: str = "bucket") -> "Bucket":
        if not isinstance(value, list):
            raise BadFileFormat(f"{where} must be a JSON array of chunks")
        return cls(tuple(Chunk.from_json(c, f"{where}[{i}]") for i, c in enumerate(value)))

    def to_json(self) -> List[Dict[str, str]]:
        return [c.to_json() for c in self.chunks]


def parse_instance_ids(joined: str) -> List[str]:
    """The ``{ids}`` part of ``/transfers/chunks/{ids}``: instance IDs joined with dots."""
    ids = joined.split(".")
    for i in ids:
        if not i or not _INSTANCE_ID.fullmatch(i):
            raise BadRequest(f"Bad list of instance IDs in the chunks URL: {json.dumps(joined)}")
    return ids


@dataclass(frozen=True)
class ChunkRequest:
    """``GET /transfers/chunks/{ids}?offset=&size=&compression=`` (size 0 means up to the end)."""

    ids: Tuple[str, ...]
    offset: int = 0
    size: int = 0
    compression: str = "none"

    @classmethod
    def parse(cls, joined_ids: str, args: Mapping[str, str]) -> "ChunkRequest":
        ids = tuple(parse_instance_ids(joined_ids))
        offset = _query_uint(args, "offset")
        size = _query_uint(args, "size")
        compression = args.get("compression", "none")
        if compression not in COMPRESSIONS:
            raise ParameterOutOfRange(
                f"Unknown compression {json.dumps(compression)}: expected one of {', '.join(COMPRESSIONS)}")
        return cls(ids, offset, size, compression)


def _query_uint(args: Mapping[str, str], name: str) -> int:
    value = args.get(name)
    if value is None:
        return 0
    if not _DECIMAL.fullmatch(value) or int(value) > MAX_UINT64:
        raise BadParameterType(
            f"GET argument {name!r} must be an unsigned decimal integer, not {json.dumps(value)}")
    return int(value)


def lookup_answer(instances: Sequence[InstanceInfo], originator: str) -> Dict[str, Any]:
    """The answer of ``POST /transfers/lookup`` (protocol.md 2.6); ``instances`` in ascending ID order."""
    total = sum(i.size for i in instances)
    return {
        "CountInstances": len(instances),
        "Instances": [i.to_json() for i in instances],
        "Originator": originator,
        "TotalSize": str(total),
        "TotalSizeMB": round_mb(total),
    }


def round_mb(n_bytes: int) -> int:
    """Bytes to MB rounded to the nearest integer, halves up, as the C++ plugin does."""
    return (n_bytes + MB // 2) // MB


def sorted_unique(infos: Iterable[InstanceInfo]) -> List[InstanceInfo]:
    """Instances keyed by ID, in ascending byte-wise ID order."""
    by_id = {i.id: i for i in infos}
    return [by_id[k] for k in sorted(by_id)]


@dataclass(frozen=True)
class TransferQuery:
    """The body of ``/transfers/send`` and ``/transfers/pull`` (protocol.md 2.5)."""

    resources: Tuple[Resource, ...]
    peer: str
    compression: str
    priority: int = 0
    originator: Optional[str] = None
    sender_transfer_id: Optional[str] = None

    @classmethod
    def from_json(cls, value: Any) -> "TransferQuery":
        where = "transfer query"
        if not isinstance(value, dict):
            raise BadFileFormat("The transfer query must be a JSON object with Resources, Peer and Compression")
        resources = tuple(parse_resources(_require(value, "Resources", list, where)))
        peer = _require(value, "Peer", str, where)
        compression = parse_compression(_require(value, "Compression", str, where))
        priority = 0
        if "Priority" in value:
            priority = _require(value, "Priority", int, where)
        originator = _require(value, "Originator", str, where) if "Originator" in value else None
        stid = _require(value, "SenderTransferID", str, where) if "SenderTransferID" in value else None
        return cls(resources, peer, compression, priority, originator, stid)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "Resources": [r.to_json() for r in self.resources],
            "Peer": self.peer,
            "Compression": self.compression,
            "Priority": self.priority,
        }
        if self.originator is not None:
            out["Originator"] = self.originator
        if self.sender_transfer_id is not None:
            out["SenderTransferID"] = self.sender_transfer_id
        return out


@dataclass(frozen=True)
class PushDescriptor:
    """The body of ``POST /transfers/push`` (protocol.md 2.4)."""

    instances: Tuple[InstanceInfo, ...]
    buckets: Tuple[Bucket, ...]
    compression: str

    @classmethod
    def from_json(cls, value: Any) -> "PushDescriptor":
        where = "push descriptor"
        if not isinstance(value, dict):
            raise BadFileFormat("The push descriptor must be a JSON object with Instances, Buckets, Compression")
        instances = tuple(InstanceInfo.from_json(x, f"Instances[{i}]")
                          for i, x in enumerate(_require(value, "Instances", list, where)))
        buckets = tuple(Bucket.from_json(b, f"Buckets[{i}]")
                        for i, b in enumerate(_require(value, "Buckets", list, where)))
        compression = parse_compression(_require(value, "Compression", str, where))
        return cls(instances, buckets, compression)

    def to_json(self) -> Dict[str, Any]:
        return {
            "Buckets": [b.to_json() for b in self.buckets],
            "Compression": self.compression,
            "Instances": [i.to_json() for i in self.instances],
        }


def dumps_compact(value: Any) -> bytes:
    """Compact JSON with sorted keys, as the C++ plugin writes what it sends."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def dumps_styled(value: Any) -> bytes:
    """Pretty-printed JSON, as Orthanc writes most answers."""
    return (json.dumps(value, indent=3, sort_keys=True) + "\n").encode("utf-8")
