"""The ``Transfers`` configuration section and ``OrthancPeers``, as validated and typed values.

Option names and defaults are those of the C++ plugin (protocol.md section 10). Every problem found is
collected, so the log names all the wrong values at once.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .codec import Codec, get_codec
from .protocol import MAX_BANDWIDTH_KBS, MB, Limits

SECTION = "Transfers"


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every wrong value, one sentence each."""

    def __init__(self, problems: List[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# name -> (default, minimum, maximum, meaning). All are JSON integers.
TRANSFERS_OPTIONS: Dict[str, Tuple[int, int, int, str]] = {
    "Threads": (4, 1, 256, "HTTP workers per job, parallel peer probes, concurrent chunk answers"),
    "BucketSize": (4096, 1, 1024 * 1024, "target bucket size in KB"),
    "CacheSize": (512, 1, 1024 * 1024, "source instance cache in MB"),
    "MaxPushTransactions": (4, 0, 1024, "open push transactions at the receiver (0: refuse pushes)"),
    "MaxHttpRetries": (0, 0, 100, "extra attempts for a failed HTTP request to a peer"),
    "PeerConnectivityTimeout": (2, 1, 3600, "timeout of the /plugins probes, in seconds"),
    "PeerCommitTimeout": (600, 1, 24 * 3600, "timeout of push creation and commit, in seconds"),
    "CommitThreadsCount": (1, 1, 64, "threads importing instances at commit"),
}

# Options of this plugin that the C++ plugin does not have.
PLUGIN_INT_OPTIONS: Dict[str, Tuple[int, int, int, str]] = {
    "CompressionLevel": (1, 1, 9, "gzip and zstd-shuffle level of the buckets this plugin compresses"),
    "PushTransactionTimeout": (3600, 10, 7 * 24 * 3600, "seconds after which an idle push transaction is discarded"),
    "MaxJsonBodySize": (64, 1, 4096, "largest JSON body accepted from a client or read from a peer, in MB"),
    "MaxTransferInstances": (100_000, 1, 10_000_000, "instances (and buckets, resources) of one transfer"),
    "MaxBandwidthKBs": (0, 0, MAX_BANDWIDTH_KBS, "network bytes a transfer job sends or receives per second, in KB "
                                                "(0: no cap)"),
}
INT_OPTIONS = {**TRANSFERS_OPTIONS, **PLUGIN_INT_OPTIONS}

STRING_OPTIONS = {
    "DownloadArea": "folder of partial downloads (default: StorageDirectory/transfers-tmp; with a "
                    "DatabaseServerIdentifier, each node uses its own subfolder node-<identifier>)",
    "Originator": "the identity this node gives in its lookup answers and pull-mode sends (default: a random "
                  "one at each start; in a cluster, give every node the same value)",
}
BOOL_OPTIONS = {"ProgressiveCommit": (False, "import verified instances while the rest still moves (progressive.py)")}
NODE_FOLDER_PREFIX = "node-"  # a node's own subfolder of the download area (cluster: DatabaseServerIdentifier)
_SAFE_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def node_folder_name(identifier: str) -> str:
    """The name of a node's own folder of the download area, from its ``DatabaseServerIdentifier``: the
    identifier itself when it is a plain name (letters, digits, ``.``, ``_``, ``-``, at most 64), otherwise
    a digest of it, so that no identifier can name a path outside the download area."""
    if _SAFE_NODE_NAME.fullmatch(identifier):
        return NODE_FOLDER_PREFIX + identifier
    return NODE_FOLDER_PREFIX + "sha1-" + hashlib.sha1(identifier.encode("utf-8", "replace")).hexdigest()


PEER_KNOWN_KEYS = {
    "Url", "URL", "Username", "Password", "HttpHeaders", "Timeout", "CertificateFile",
    "CertificateKeyFile", "CertificateKeyPassword", "Pkcs11",
}


@dataclass(frozen=True)
class PeerConfig:
    """One Orthanc peer, as ``OrthancPeers`` declares it."""

    name: str
    url: str  # always ends with "/"
    username: Optional[str] = None
    password: Optional[str] = None
    http_headers: Tuple[Tuple[str, str], ...] = ()
    timeout: Optional[int] = None  # seconds; None: the global HttpTimeout
    certificate_file: Optional[str] = None
    certificate_key_file: Optional[str] = None
    certificate_key_password: Optional[str] = None
    pkcs11: bool = False
    user_properties: Tuple[Tuple[str, str], ...] = ()

    @property
    def remote_self(self) -> Optional[str]:
        return dict(self.user_properties).get("RemoteSelf")

    @property
    def headers(self) -> Dict[str, str]:
        return dict(self.http_headers)


@dataclass(frozen=True)
class TransfersConfig:
    threads: int = 4
    bucket_size_kb: int = 4096
    cache_size_mb: int = 512
    max_push_transactions: int = 4
    max_http_retries: int = 0
    peer_connectivity_timeout: int = 2
    peer_commit_timeout: int = 600
    commit_threads_count: int = 1
    push_transaction_timeout: int = 3600
    compression_level: int = 1
    max_json_body_size_mb: int = 64
    max_transfer_instances: int = 100_000
    max_bandwidth_kbs: int = 0  # 0: no cap
    progressive_commit: bool = False  # the default of a transfer's "ProgressiveCommit" (progressive.py)
    # Global Orthanc options the plugin follows.
    http_timeout: int = 60  # seconds, 0 means no timeout
    https_verify_peers: bool = True
    https_ca_certificates: Optional[str] = None
    http_proxy: Optional[str] = None
    concurrent_jobs: int = 2
    jobs_history_size: int = 10
    save_jobs: bool = True
    python_allow_threads: bool = False  # Python.AllowThreads: the Python plugin (4.3+) releases the GIL in SDK calls
    download_area: str = ""  # this node's folder of partial downloads (see parse_configuration)
    node_id: Optional[str] = None  # DatabaseServerIdentifier, when the configuration sets one (a cluster node)
    originator: Optional[str] = None  # Transfers.Originator; None: a random one per start
    peers: Mapping[str, PeerConfig] = field(default_factory=dict)
    warnings: Tuple[str, ...] = ()

    def codec(self, name: str) -> Codec:
        """The codec of a wire compression name, at this plugin's ``CompressionLevel`` (gzip, zstd-shuffle)."""
        return get_codec(name, None if name == "none" else self.compression_level)

    @property
    def limits(self) -> Limits:
        return Limits(self.max_json_body_size_mb * MB, self.max_transfer_instances)

    @property
    def cache_size_bytes(self) -> int:
        return self.cache_size_mb * 1024 * 1024

    def peer_timeout(self, peer: PeerConfig) -> Optional[float]:
        """Per-peer ``Timeout`` first, then ``HttpTimeout``; None means wait forever."""
        t = peer.timeout if peer.timeout else self.http_timeout
        return float(t) if t else None


_ATTRS = {
    "Threads": "threads",
    "BucketSize": "bucket_size_kb",
    "CacheSize": "cache_size_mb",
    "MaxPushTransactions": "max_push_transactions",
    "MaxHttpRetries": "max_http_retries",
    "PeerConnectivityTimeout": "peer_connectivity_timeout",
    "PeerCommitTimeout": "peer_commit_timeout",
    "CommitThreadsCount": "commit_threads_count",
    "PushTransactionTimeout": "push_transaction_timeout",
    "CompressionLevel": "compression_level",
    "MaxJsonBodySize": "max_json_body_size_mb",
    "MaxTransferInstances": "max_transfer_instances",
    "MaxBandwidthKBs": "max_bandwidth_kbs",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_option(obj: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: str,
                problems: List[str]) -> int:
    if key not in obj:
        return default
    v = obj[key]
    if not _is_int(v):
        problems.append(f"{where}{key} must be an integer, not {v!r}")
        return default
    if not lo <= v <= hi:
        problems.append(f"{where}{key} must be between {lo} and {hi}, not {v}")
        return default
    return v


def parse_configuration(cfg: Mapping[str, Any]) -> TransfersConfig:
    """Validates the whole Orthanc configuration; raises :class:`ConfigError` listing every problem."""
    problems: List[str] = []
    warnings: List[str] = []
    section = cfg.get(SECTION, {})
    if section is None:
        section = {}
    values: Dict[str, Any] = {}
    if not isinstance(section, dict):
        problems.append(f"The {SECTION!r} section must be a JSON object")
        section = {}
    for key, (default, lo, hi, _meaning) in INT_OPTIONS.items():
        values[_ATTRS[key]] = _int_option(section, key, default, lo, hi, f"{SECTION}.", problems)
    progressive = section.get("ProgressiveCommit", False)
    if not isinstance(progressive, bool):
        problems.append(f"{SECTION}.ProgressiveCommit must be true or false, not {progressive!r}")
        progressive = False
    values["progressive_commit"] = progressive
    for key in section:
        if key not in INT_OPTIONS and key not in STRING_OPTIONS and key not in BOOL_OPTIONS:
            warnings.append(f"Unknown option {SECTION}.{key} is ignored")

    values["http_timeout"] = _int_option(cfg, "HttpTimeout", 60, 0, 24 * 3600, "", problems)
    values["concurrent_jobs"] = _int_option(cfg, "ConcurrentJobs", 2, 0, 1024, "", problems)
    values["jobs_history_size"] = _int_option(cfg, "JobsHistorySize", 10, 0, 100000, "", problems)
    save_jobs = cfg.get("SaveJobs", True)
    if not isinstance(save_jobs, bool):
        problems.append(f"SaveJobs must be true or false, not {save_jobs!r}")
        save_jobs = True
    values["save_jobs"] = save_jobs
    python_section = cfg.get("Python")
    values["python_allow_threads"] = isinstance(python_section, dict) and python_section.get("AllowThreads") is True
    area = section.get("DownloadArea")
    if area is not None and (not isinstance(area, str) or not area):
        problems.append(f"{SECTION}.DownloadArea must be a non-empty string (a folder), not {area!r}")
        area = None
    storage = cfg.get("StorageDirectory", "OrthancStorage")
    area = area or os.path.join(storage if isinstance(storage, str) else "OrthancStorage", "transfers-tmp")
    node_id = cfg.get("DatabaseServerIdentifier")
    if node_id is not None and (not isinstance(node_id, str) or not node_id.strip()
                                or not node_id.isprintable() or len(node_id) > 256):
        problems.append(f"DatabaseServerIdentifier must be 1 to 256 printable characters, not {node_id!r}")
        node_id = None
    # Nodes of a cluster share StorageDirectory: each keeps its partial downloads in a folder of its own,
    # that only its own start sweep cleans (app.sweep_download_root).
    values["node_id"] = node_id
    values["download_area"] = os.path.join(area, node_folder_name(node_id)) if node_id else area
    originator = section.get("Originator")
    if originator is not None and (not isinstance(originator, str) or not 1 <= len(originator) <= 256
                                   or not originator.isascii() or not originator.isprintable()
                                   or originator.strip() != originator):
        problems.append(f"{SECTION}.Originator must be 1 to 256 printable ASCII characters without surrounding "
                        f"spaces, not {originator!r}")
        originator = None
    values["originator"] = originator
    if node_id and originator is None and isinstance(cfg.get("PostgreSQL"), dict):
        warnings.append(f"DatabaseServerIdentifier is set and {SECTION}.Originator is not: if this node is one of "
                        f"a cluster behind a load balancer, pull-mode sends fail when another node answers the "
                        f"peer's lookup; give every node the same {SECTION}.Originator")
    if values["concurrent_jobs"] == 0:  # Orthanc's own meaning of 0: as many as there are cores
        values["concurrent_jobs"] = 2
    verify = cfg.get("HttpsVerifyPeers", True)
    if not isinstance(verify, bool):
        problems.append(f"HttpsVerifyPeers must be true or false, not {verify!r}")
        verify = True
    values["https_verify_peers"] = verify
    for key, attr in (("HttpsCACertificates", "https_ca_certificates"), ("HttpProxy", "http_proxy")):
        v = cfg.get(key)
        if v is not None and not isinstance(v, str):
            problems.append(f"{key} must be a string, not {v!r}")
            v = None
        values[attr] = v or None

    values["peers"] = parse_peers(cfg.get("OrthancPeers", {}), problems)
    if problems:
        raise ConfigError(problems)
    values["warnings"] = tuple(warnings)
    return TransfersConfig(**values)


# The first Python plugin with ``AllowThreads`` (which releases the GIL during each call to Orthanc's SDK).
ALLOW_THREADS_SINCE = (4, 3)
PARALLEL_COMMIT_THREADS = 4  # measured: see commit_threads_advice


def has_allow_threads(python_plugin_version: str) -> bool:
    """Whether a Python plugin of this version has the ``AllowThreads`` option (4.3 or later, or a
    ``mainline`` build). An unknown version counts as not."""
    version = python_plugin_version.strip()
    if version.lower() == "mainline":
        return True
    m = re.match(r"(\d+)\.(\d+)", version)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= ALLOW_THREADS_SINCE


def releases_gil(allow_threads: bool, python_plugin_version: str) -> bool:
    """Whether the Python plugin runs Orthanc's SDK calls without the GIL: ``Python.AllowThreads`` true, on a
    plugin that has the option."""
    return allow_threads and has_allow_threads(python_plugin_version)


def commit_threads_advice(commit_threads: int, gil_released: bool,
                          python_plugin_version: str) -> Optional[Tuple[str, str]]:
    """What the administrator should know of ``CommitThreadsCount`` on this Python plugin, as
    ``("info" | "warning", message)``, or None.

    Each import is one ``POST /instances`` through the SDK. With the GIL held during it (plugin 4.0, or
    ``AllowThreads`` off), imports run one at a time whatever the count, and several threads only compete for
    the GIL: measured on 1000 MR instances (2 cores, Orthanc 1.12.7, plugin 5.0), the push took 4.3-5.5 s
    with 1 thread and 6.9-7.3 s with 4. With it released, 4 threads imported them in 1.8-2.0 s instead of
    3.3-3.9 s (the whole push 3.6-3.7 s instead of 5.1-5.6 s, faster than Orthanc's built-in peers)."""
    if gil_released and commit_threads == 1:
        return ("info", f"the Python plugin {python_plugin_version} releases the GIL during calls to Orthanc "
                        f"(Python.AllowThreads): Transfers.CommitThreadsCount {PARALLEL_COMMIT_THREADS} would "
                        f"import the instances of a commit in parallel (about twice as fast measured on "
                        f"small instances); it is 1")
    if not gil_released and commit_threads > 1:
        if not python_plugin_version:
            why = ("the Python plugin's version could not be read (GET /plugins/python), so AllowThreads is not "
                   "relied on")
        elif has_allow_threads(python_plugin_version):  # the plugin has the option, and it is off
            why = "Python.AllowThreads is false"
        else:
            why = f"the Python plugin {python_plugin_version} has no AllowThreads option: it appeared in 4.3"
        return ("warning", f"Transfers.CommitThreadsCount is {commit_threads}, but the Python plugin holds the "
                           f"GIL during each import ({why}): imports run one at a time, and several threads only "
                           f"compete for the GIL and make commits slower; set CommitThreadsCount to 1, or "
                           f"Python.AllowThreads to true on plugin 4.3 or later")
    return None


def normalize_url(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def parse_peers(value: Any, problems: List[str]) -> Dict[str, PeerConfig]:
    """``OrthancPeers``: an object name -> ``[url]`` / ``[url, user, password]`` / ``{"Url": ...}``."""
    peers: Dict[str, PeerConfig] = {}
    if value is None:
        return peers
    if not isinstance(value, dict):
        problems.append("OrthancPeers must be a JSON object mapping names to peers")
        return peers
    for name, item in value.items():
        peer = parse_peer(name, item, problems)
        if peer is not None:
            peers[name] = peer
    return peers


def parse_peer(name: str, item: Any, problems: List[str]) -> Optional[PeerConfig]:
    where = f"OrthancPeers.{name}"
    if isinstance(item, list):
        if len(item) not in (1, 3) or not all(isinstance(x, str) for x in item) or not item[0]:
            problems.append(f"{where} must be [url] or [url, username, password], all strings, the URL not empty")
            return None
        if len(item) == 1:
            return PeerConfig(name, normalize_url(item[0]))
        return PeerConfig(name, normalize_url(item[0]), item[1], item[2])
    if not isinstance(item, dict):
        problems.append(f"{where} must be a JSON array or object")
        return None
    before = len(problems)
    url = item.get("Url", item.get("URL"))
    if not isinstance(url, str) or not url:
        problems.append(f"{where}.Url must be a non-empty string")
    strings = {}
    for key in ("Username", "Password", "CertificateFile", "CertificateKeyFile", "CertificateKeyPassword"):
        v = item.get(key)
        if v is not None and not isinstance(v, str):
            problems.append(f"{where}.{key} must be a string")
        strings[key] = v if isinstance(v, str) else None
    if (strings["Username"] is None) != (strings["Password"] is None):
        problems.append(f"{where}: Username and Password go together")
    headers = item.get("HttpHeaders", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        problems.append(f"{where}.HttpHeaders must be an object of strings")
        headers = {}
    timeout = item.get("Timeout", 0)
    if not _is_int(timeout) or timeout < 0:
        problems.append(f"{where}.Timeout must be a non-negative integer (seconds)")
        timeout = 0
    pkcs11 = item.get("Pkcs11", False)
    if not isinstance(pkcs11, bool):
        problems.append(f"{where}.Pkcs11 must be true or false")
        pkcs11 = False
    props: List[Tuple[str, str]] = []
    for key, v in item.items():
        if key in PEER_KNOWN_KEYS:
            continue
        if isinstance(v, bool):
            props.append((key, "1" if v else "0"))
        elif _is_int(v):
            props.append((key, str(v)))
        elif isinstance(v, str):
            props.append((key, v))
        else:
            problems.append(f"{where}.{key} (a user property) must be a string, a boolean or an integer")
    if len(problems) > before:
        return None
    return PeerConfig(
        name=name,
        url=normalize_url(url),
        username=strings["Username"],
        password=strings["Password"],
        http_headers=tuple(sorted(headers.items())),
        timeout=timeout or None,
        certificate_file=strings["CertificateFile"],
        certificate_key_file=strings["CertificateKeyFile"],
        certificate_key_password=strings["CertificateKeyPassword"],
        pkcs11=pkcs11,
        user_properties=tuple(props),
    )


def merge_registered_peers(config: TransfersConfig, registered: List[Tuple[str, str, Dict[str, str]]]
                           ) -> Dict[str, PeerConfig]:
    """Peers known to Orthanc (``GetPeers``: name, URL, user properties) joined with the configuration.

    Orthanc also knows peers stored in its database (``OrthancPeersInDatabase``); those carry no
    credentials for a plugin. A peer of the configuration keeps its credentials and headers.
    """
    peers = dict(config.peers)
    for name, url, props in registered:
        if name not in peers:
            peers[name] = PeerConfig(name, normalize_url(url), user_properties=tuple(sorted(props.items())))
    return peers
