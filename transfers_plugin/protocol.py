"""Wire types of the transfers protocol and their JSON form (see protocol.md sections 2 and 3).

Sizes and offsets travel as JSON strings holding unsigned decimal integers. Parsing is strict, and every
failure raises an error from :mod:`transfers_plugin.errors` that carries the HTTP status to answer with.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .codec import AUTO, ZSTD_SHUFFLE, codec_names
from .errors import BadFileFormat, BadJson, BadParameterType, BadRequest, ParameterOutOfRange, PayloadTooLarge

KB = 1024
MB = 1024 * 1024

COMPRESSIONS = ("none", "gzip")  # what the C++ plugin knows, hence what a C++ peer may be asked for
# What a client may ask for in /transfers/send and /transfers/pull: the wire names, "auto" and zstd-shuffle
# (even without zstandard here: the job then falls back to gzip, see capabilities.choose_compression).
REQUESTED_COMPRESSIONS = COMPRESSIONS + (ZSTD_SHUFFLE, AUTO)

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

DECIMAL = re.compile(r"[0-9]{1,20}")  # an unsigned decimal integer: 20 digits hold any 64-bit value
# Orthanc's identifiers of patients, studies, series and instances: a SHA-1 in five groups of 8 hex digits.
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
# The IDs this plugin and the C++ plugin generate (push transactions, jobs): lowercase random UUIDs.
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
# An ID that a peer generated (its push transaction, its job) and that goes into a URL path at that peer:
# one path segment of letters, digits, '-' and '_' (UUIDs in practice).
PEER_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")
# The largest offset or size we accept; C++ servers stop at 2**31 - 1, we go up to 64 bits.
MAX_UINT64 = 2**64 - 1

# JSON bodies are checked before they are parsed: Python's parser recurses once per level of nesting, and
# on the small C stack of an Orthanc HTTP thread about 550 levels crash the whole process. Our documents
# are 4 levels deep; each pass of check_json_shape removes at least one level.
MAX_JSON_DEPTH = 32
MAX_RESOURCE_EXTRA = 1024  # characters of the keys of a Resources item beyond Level and ID, as JSON
# A string, or what is left of the body after an unterminated one: the match never fails once started, so
# the scan stays linear whatever the quotes and backslashes.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class Limits:
    """Bounds on what a request or a peer's answer may make the plugin hold (README, Guarantees and limits)."""

    max_json_bytes: int = 64 * MB  # Transfers.MaxJsonBodySize, in MB
    max_instances: int = 100_000  # Transfers.MaxTransferInstances: instances, buckets, resources of a transfer


DEFAULT_LIMITS = Limits()
MAX_BANDWIDTH_KBS = 10_000_000  # about 10 GB/s: "MaxBandwidthKBs" (request or Transfers section), 0 meaning no cap


def shown(value: Any, limit: int = 80) -> str:
    """A value from a client or a peer as it may appear in a message or a log: JSON, cut to ``limit``."""
    text = json.dumps(value, default=repr, ensure_ascii=True)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def check_json_shape(body: bytes, what: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuses, without parsing it, a document nested deeper than ``2 * max_depth`` levels or whose brackets
    do not match: the strings are taken out, then the innermost pairs of brackets, level after level."""
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if re.search(rb"[\[{]{%d}" % (2 * max_depth + 1), skeleton):  # the usual attack, found in one scan
        raise BadJson(f"The {what} is nested too deeply: at most {max_depth} levels of arrays and objects "
                      f"are accepted")
    for _ in range(max_depth):
        if not skeleton:
            return
        reduced = skeleton.replace(b"[]", b"").replace(b"{}", b"")
        if reduced == skeleton:
            raise BadJson(f"The {what} is not valid JSON: its brackets do not match")
        skeleton = reduced
    if skeleton:
        raise BadJson(f"The {what} is nested too deeply: at most {max_depth} levels of arrays and objects "
                      f"are accepted")


def parse_json_body(body: bytes, what: str = "request body", limits: Limits = DEFAULT_LIMITS) -> Any:
    """A JSON document from a client or a peer: its size and nesting are checked before it is parsed."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if len(body) > limits.max_json_bytes:
        raise PayloadTooLarge(f"The {what} has {len(body)} bytes, more than the {limits.max_json_bytes // MB} MB "
                              f"accepted (Transfers.MaxJsonBodySize)")
    # Bounds the work of check_json_shape (about 300 ns per string): at most what a descriptor of
    # max_instances instances, as many chunks and buckets holds, whatever else fills the body.
    strings, containers = body.count(b'"') // 2, body.count(b"[") + body.count(b"{")
    if strings > 20 * limits.max_instances + 4096 or containers > 8 * limits.max_instances + 4096:
        raise PayloadTooLarge(f"The {what} holds {strings} strings and {containers} arrays and objects, more than a "
                              f"transfer of {limits.max_instances} instances needs (Transfers.MaxTransferInstances)")
    check_json_shape(body, what)
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadJson(f"The {what} is not valid JSON: {e}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def parse_decimal(value: Any, what: str, maximum: int = MAX_UINT64) -> int:
    """An unsigned decimal integer written as a JSON string (or a query argument)."""
    if not isinstance(value, str):
        raise BadFileFormat(f"{what} must be a string holding a decimal integer, not {shown(value)}")
    if not DECIMAL.fullmatch(value):
        if value.isascii() and value.isdigit():
            raise ParameterOutOfRange(f"{what} is too large: {shown(value)}")
        raise BadFileFormat(f"{what} must be an unsigned decimal integer, not {shown(value)}")
    n = int(value)
    if n > maximum:
        raise ParameterOutOfRange(f"{what} is too large: {value}")
    return n


def check_orthanc_id(value: Any, what: str) -> str:
    """An Orthanc identifier (``xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx-xxxxxxxx``), before it names a file,
    goes into a URL or a log."""
    if not isinstance(value, str) or not ORTHANC_ID.fullmatch(value):
        raise BadFileFormat(f"{what} must be an Orthanc identifier (5 groups of 8 lowercase hexadecimal "
                            f"digits joined by dashes), not {shown(value)}")
    return value


def check_uuid(value: Any, what: str) -> str:
    """An ID generated by a transfers plugin (a push transaction, a job): a lowercase UUID."""
    if not isinstance(value, str) or not UUID.fullmatch(value):
        raise BadRequest(f"{what} must be a UUID (8-4-4-4-12 lowercase hexadecimal digits), not {shown(value)}")
    return value


def check_token(value: str, what: str, ascii_only: bool = False, limit: int = 256) -> str:
    """A name or ID given by a client (a peer's name, an Originator, a SenderTransferID): 1 to ``limit``
    printable characters (ASCII for what is sent again as an HTTP header), as it is compared and logged."""
    if not value or len(value) > limit or not value.isprintable() or (ascii_only and not value.isascii()):
        kind = "printable ASCII" if ascii_only else "printable"
        raise BadFileFormat(f"{what} must be 1 to {limit} {kind} characters, not {shown(value)}")
    return value


def check_count(n: int, what: str, limits: Limits) -> None:
    if n > limits.max_instances:
        raise PayloadTooLarge(f"Too many {what}: {n}, more than the {limits.max_instances} accepted in one "
                              f"transfer (Transfers.MaxTransferInstances); split the transfer")


def parse_compression(value: Any, what: str = "Compression", requested: bool = False) -> str:
    """A wire compression this plugin can encode and decode (``codec_names``), or with ``requested`` (a
    client's transfer query) any of ``REQUESTED_COMPRESSIONS``."""
    allowed = REQUESTED_COMPRESSIONS if requested else codec_names()
    if not isinstance(value, str):
        raise BadFileFormat(f"{what} must be a string, one of {', '.join(allowed)}")
    if value not in allowed:
        raise ParameterOutOfRange(
            f"Unknown {what} {shown(value)}: expected one of {', '.join(allowed)}")
    return value


def parse_level(value: Any) -> str:
    if not isinstance(value, str):
        raise BadFileFormat("Level must be a string")
    level = _LEVELS.get(value.lower())
    if level is None:
        raise ParameterOutOfRange(
            f"Unknown resource level {shown(value)}: expected Patient, Study, Series or Instance")
    return level


def _require(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise BadFileFormat(f"{where}: missing key {shown(key)}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadFileFormat(f"{where}: {shown(key)} must be a {_type_name(kind)}")
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
        if extra and len(json.dumps(dict(extra))) > MAX_RESOURCE_EXTRA:
            # kept with the job, saved with it every second and shown in /jobs: bounded
            raise PayloadTooLarge(f"{where}: its keys other than Level and ID take more than "
                                  f"{MAX_RESOURCE_EXTRA} characters")
        return cls(level, rid, extra)

    def to_json(self) -> Dict[str, Any]:
        out = dict(self.extra)
        out["Level"] = self.level
        out["ID"] = self.id
        return out


def parse_resources(value: Any, limits: Limits = DEFAULT_LIMITS) -> List[Resource]:
    if not isinstance(value, list):
        raise BadFileFormat("Resources must be a JSON array of {\"Level\", \"ID\"} objects")
    check_count(len(value), "resources", limits)
    return [Resource.from_json(item, f"Resources[{i}]") for i, item in enumerate(value)]


@dataclass(frozen=True)
class InstanceInfo:
    """DicomInstanceInfo: an instance's ID, size in bytes and MD5 (32 lowercase hex digits)."""

    id: str
    size: int
    md5: str

    @classmethod
    def from_json(cls, item: Any, where: str = "instance") -> "InstanceInfo":
        if type(item) is dict:  # the usual case, checked quickly: a descriptor may list 100,000 instances
            iid, size, md5 = item.get("ID"), item.get("Size"), item.get("MD5")
            if type(iid) is str and type(size) is str and type(md5) is str and ORTHANC_ID.fullmatch(iid) \
                    and DECIMAL.fullmatch(size) and MD5_HEX.fullmatch(md5) and int(size) <= MAX_UINT64:
                return cls(iid, int(size), md5)
        if not isinstance(item, dict):
            raise BadFileFormat(f"{where} must be a JSON object with ID, Size and MD5")
        iid = check_orthanc_id(_require(item, "ID", str, where), f"{where}.ID")
        size = parse_decimal(_require(item, "Size", str, where), f"{where}.Size")
        md5 = _require(item, "MD5", str, where)
        if not MD5_HEX.fullmatch(md5):
            raise BadFileFormat(f"{where}.MD5 must have 32 hexadecimal digits, not {shown(md5)}")
        return cls(iid, size, md5)

    def to_json(self) -> Dict[str, str]:
        return {"ID": self.id, "MD5": self.md5, "Size": str(self.size)}


def pack_instances(instances: Iterable[InstanceInfo]) -> str:
    """Instances as a job's resume state keeps them: one line ``ID SIZE MD5`` each. One string is copied for
    nothing by each periodic save of the jobs (a list of objects is copied item by item, every second) and
    written as one JSON string, a third smaller."""
    return "\n".join(f"{i.id} {i.size} {i.md5}" for i in instances)


def unpack_instances(value: Any, where: str = "Instances") -> List[InstanceInfo]:
    """The instances of :func:`pack_instances`, each checked as in a descriptor; a list of JSON objects
    (the resume state of an earlier version) is read too."""
    if isinstance(value, list):
        return [InstanceInfo.from_json(x, f"{where}[{n}]") for n, x in enumerate(value)]
    if not isinstance(value, str):
        raise BadFileFormat(f"{where} must be a string of lines or a JSON array")
    out = []
    for n, line in enumerate(value.split("\n") if value else ()):
        fields = line.split(" ")
        if len(fields) != 3:
            raise BadFileFormat(f"{where}[{n}] must be 'ID SIZE MD5', not {shown(line)}")
        out.append(InstanceInfo.from_json({"ID": fields[0], "Size": fields[1], "MD5": fields[2]}, f"{where}[{n}]"))
    return out


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
        return cls(check_orthanc_id(_require(item, "ID", str, where), f"{where}.ID"),
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
        if not ORTHANC_ID.fullmatch(i):
            raise BadRequest(f"Bad list of instance IDs in the chunks URL: {shown(joined)}")
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
        compression = parse_compression(args.get("compression", "none"), "compression")
        return cls(ids, offset, size, compression)


def _query_uint(args: Mapping[str, str], name: str) -> int:
    value = args.get(name)
    if value is None:
        return 0
    if not DECIMAL.fullmatch(value) or int(value) > MAX_UINT64:
        raise BadParameterType(
            f"GET argument {name!r} must be an unsigned decimal integer below 2^64, not {shown(value)}")
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
    skip_existing: bool = True  # "SkipExisting" (not in the C++ plugin): leave out what the target holds
    max_bandwidth_kbs: Optional[int] = None  # "MaxBandwidthKBs" (not in the C++ plugin); None: the configuration's
    metadata: bool = False  # "Metadata" (not in the C++ plugin): carry user metadata and labels (metadata.py)
    # "ProgressiveCommit" (not in the C++ plugin, progressive.py); None: the configuration's
    progressive_commit: Optional[bool] = None

    @classmethod
    def from_json(cls, value: Any, limits: Limits = DEFAULT_LIMITS) -> "TransferQuery":
        where = "transfer query"
        if not isinstance(value, dict):
            raise BadFileFormat("The transfer query must be a JSON object with Resources, Peer and Compression")
        resources = tuple(parse_resources(_require(value, "Resources", list, where), limits))
        peer = check_token(_require(value, "Peer", str, where), f"{where}: Peer")
        compression = parse_compression(_require(value, "Compression", str, where), requested=True)
        priority = 0
        if "Priority" in value:
            priority = _require(value, "Priority", int, where)
            if not -2**31 <= priority < 2**31:
                raise ParameterOutOfRange(f"{where}: Priority must be a 32-bit integer, not {shown(priority)}")
        originator = check_token(_require(value, "Originator", str, where), f"{where}: Originator") \
            if "Originator" in value else None
        stid = check_token(_require(value, "SenderTransferID", str, where), f"{where}: SenderTransferID",
                           ascii_only=True) \
            if "SenderTransferID" in value else None
        skip = optional_bool(value, "SkipExisting", True, where)
        bandwidth = None
        if "MaxBandwidthKBs" in value:
            bandwidth = _require(value, "MaxBandwidthKBs", int, where)
            if not 0 <= bandwidth <= MAX_BANDWIDTH_KBS:
                raise ParameterOutOfRange(f"{where}: MaxBandwidthKBs must be from 0 (no cap) to {MAX_BANDWIDTH_KBS}, "
                                          f"not {shown(bandwidth)}")
        metadata = optional_bool(value, "Metadata", False, where)
        progressive = optional_bool(value, "ProgressiveCommit", None, where)
        return cls(resources, peer, compression, priority, originator, stid, skip, bandwidth, metadata, progressive)

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
        if not self.skip_existing:
            out["SkipExisting"] = False
        if self.max_bandwidth_kbs is not None:
            out["MaxBandwidthKBs"] = self.max_bandwidth_kbs
        if self.metadata:
            out["Metadata"] = True
        if self.progressive_commit is not None:
            out["ProgressiveCommit"] = self.progressive_commit
        return out


def optional_bool(value: Dict[str, Any], key: str, default: Optional[bool], where: str) -> Optional[bool]:
    """``value[key]``, a JSON boolean, or ``default`` when the key is absent (400 for anything else)."""
    if key not in value:
        return default
    flag = value[key]
    if not isinstance(flag, bool):
        raise BadFileFormat(f"{where}: {key} must be true or false, not {shown(flag)}")
    return flag


def parse_synchronous(value: Any) -> Optional[bool]:
    """Orthanc's convention for routes that run a job: ``"Synchronous": true`` waits for the job's end,
    ``false`` answers the job at once; ``"Asynchronous"`` says the opposite, and ``Synchronous`` wins when both
    are given (as Orthanc's core reads them). None when the body has neither: the C++ plugin's answers then.
    Each key given must be a JSON boolean."""
    if not isinstance(value, dict):
        return None
    synchronous = optional_bool(value, "Synchronous", None, "transfer query")
    asynchronous = optional_bool(value, "Asynchronous", None, "transfer query")
    if synchronous is not None:
        return synchronous
    return None if asynchronous is None else not asynchronous


@dataclass(frozen=True)
class PushDescriptor:
    """The body of ``POST /transfers/push`` (protocol.md 2.4)."""

    instances: Tuple[InstanceInfo, ...]
    buckets: Tuple[Bucket, ...]
    compression: str
    # "ProgressiveCommit" (not in the C++ plugin): sent only to a receiver with that feature (progressive.py)
    progressive_commit: bool = False

    @classmethod
    def from_json(cls, value: Any, limits: Limits = DEFAULT_LIMITS) -> "PushDescriptor":
        """The descriptor, its counts bounded by ``limits`` before its items are parsed: at most
        ``max_instances`` instances and as many buckets, and no more chunks than instances and buckets
        together (what any plan of whole and split instances needs)."""
        where = "push descriptor"
        if not isinstance(value, dict):
            raise BadFileFormat("The push descriptor must be a JSON object with Instances, Buckets, Compression")
        compression = parse_compression(_require(value, "Compression", str, where))
        raw_instances = _require(value, "Instances", list, where)
        raw_buckets = _require(value, "Buckets", list, where)
        check_count(len(raw_instances), "instances in the push descriptor", limits)
        check_count(len(raw_buckets), "buckets in the push descriptor", limits)
        chunks = sum(len(b) if isinstance(b, list) else 0 for b in raw_buckets)
        if chunks > len(raw_instances) + len(raw_buckets):
            raise BadFileFormat(f"The push descriptor has {chunks} chunks for {len(raw_instances)} instances in "
                                f"{len(raw_buckets)} buckets: a plan needs at most one chunk per instance and "
                                f"one more per bucket")
        instances = tuple(InstanceInfo.from_json(x, f"Instances[{i}]") for i, x in enumerate(raw_instances))
        buckets = tuple(Bucket.from_json(b, f"Buckets[{i}]") for i, b in enumerate(raw_buckets))
        progressive = optional_bool(value, "ProgressiveCommit", False, where)
        return cls(instances, buckets, compression, progressive)

    def to_json(self) -> Dict[str, Any]:
        out = {
            "Buckets": [b.to_json() for b in self.buckets],
            "Compression": self.compression,
            "Instances": [i.to_json() for i in self.instances],
        }
        if self.progressive_commit:
            out["ProgressiveCommit"] = True
        return out


def dumps_compact(value: Any) -> bytes:
    """Compact JSON with sorted keys, as the C++ plugin writes what it sends."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def dumps_styled(value: Any) -> bytes:
    """Pretty-printed JSON, as Orthanc writes most answers."""
    return (json.dumps(value, indent=3, sort_keys=True) + "\n").encode("utf-8")
