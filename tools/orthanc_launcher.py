"""Starts and stops real Orthanc processes on loopback ports, with or without the transfers plugin.

Used by the integration tests, the demo and the benchmarks. Needs Debian's ``orthanc`` and
``orthanc-python`` packages (or ``ORTHANC_BINARY`` and ``ORTHANC_PYTHON_PLUGIN`` pointing elsewhere).

Two platforms: ``debian12``, the host's own Orthanc (1.10.1 with Python plugin 4.0 on Debian 12), and
``debian13``, Orthanc 1.12.7 with Python plugin 5.0 from a Debian 13 root filesystem that
``scripts/install.sh`` builds with mmdebstrap (``TRANSFERS_DEBIAN13_ROOT``, by default
``~/.cache/orthanc-transfers-py/debian13-root``). ``TRANSFERS_PLATFORM`` chooses the default of every
server; a server can ask for one (the C++ plugins are built for the host and always run there). A
``debian13`` Orthanc runs chrooted in a mount namespace of its own (``unshare --mount``), where /tmp, /dev,
/proc and this checkout are bind-mounted at their own paths: it shares loopback, files under /tmp and the
process id with the tests, and its mounts vanish with it.
"""

import collections
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SCRIPT = REPO_ROOT / "transfers_plugin" / "plugin.py"
HOST = "debian12"
DEBIAN13 = "debian13"
PLATFORMS = (HOST, DEBIAN13)


def default_platform() -> str:
    platform = os.environ.get("TRANSFERS_PLATFORM") or HOST
    if platform not in PLATFORMS:
        raise RuntimeError(f"TRANSFERS_PLATFORM={platform!r}: expected one of {', '.join(PLATFORMS)}")
    return platform


def debian13_root() -> Path:
    configured = os.environ.get("TRANSFERS_DEBIAN13_ROOT")
    if configured:
        return Path(configured)
    cache = os.environ.get("TRANSFERS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                   "orthanc-transfers-py")
    return Path(cache) / "debian13-root"


def orthanc_binary() -> str:
    found = os.environ.get("ORTHANC_BINARY") or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.path.exists(found):
        raise RuntimeError("Orthanc is not installed: apt-get install orthanc orthanc-python")
    return found


def python_plugin_library(platform: str = HOST) -> str:
    """The Python plugin's library as the platform's Orthanc sees it (inside its root for ``debian13``)."""
    if platform == DEBIAN13:
        root = debian13_root()
        found = sorted(glob.glob(str(root / "usr/lib/orthanc/libOrthancPython.so*")))
        if not found:
            raise RuntimeError(f"No Debian 13 root filesystem with orthanc-python in {root}: run scripts/install.sh")
        return "/" + os.path.relpath(found[0], root)
    env = os.environ.get("ORTHANC_PYTHON_PLUGIN")
    if env:
        return env
    candidates = sorted(glob.glob("/usr/lib/orthanc/libOrthancPython.so*")) + \
        sorted(glob.glob("/usr/share/orthanc/plugins/libOrthancPython.so*"))
    if not candidates:
        raise RuntimeError("The Orthanc Python plugin is not installed: apt-get install orthanc-python")
    return candidates[0]


# The paths a chrooted Orthanc sees as the host has them: the tests' files live under /tmp, the plugin in
# the checkout. Run by ``sh -c`` in a new mount namespace: $0 is the root, $1 the configuration file.
_CHROOT_SCRIPT = """set -e
root=$0; config=$1; shift
for dir in "$@"; do mkdir -p "$root$dir"; mount --rbind "$dir" "$root$dir"; done
exec chroot "$root" /usr/sbin/Orthanc "$config"
"""


def orthanc_command(platform: str, config_path: Path) -> List[str]:
    """The command line that starts Orthanc on a platform with a configuration file."""
    if platform == HOST:
        return [orthanc_binary(), str(config_path)]
    root = debian13_root()
    if not (root / "usr/sbin/Orthanc").exists():
        raise RuntimeError(f"No Debian 13 root filesystem in {root}: run scripts/install.sh")
    shared = ["/tmp", "/dev", "/proc", str(REPO_ROOT)]
    if not str(config_path).startswith("/tmp/"):
        shared.append(str(config_path.parent))
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _CHROOT_SCRIPT,
            str(root), str(config_path)] + shared


def process_memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of a process from /proc (``VmRSS`` resident now, ``VmHWM`` its peak), in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


_HANDED_OUT: "collections.deque[int]" = collections.deque(maxlen=2000)


def _port_range() -> Optional[range]:
    """``TRANSFERS_PORT_RANGE=FIRST-LAST``: the ports this process's servers take (see :func:`free_port`)."""
    configured = os.environ.get("TRANSFERS_PORT_RANGE")
    if not configured:
        return None
    first, last = (int(part) for part in configured.split("-"))
    return range(first, last + 1)


def free_port() -> int:
    """A loopback port free now. A port is only reserved once a server binds it, and a server restarted on
    its port leaves it free meanwhile: test runs sharing the machine (the two platforms at once) each get
    their own ``TRANSFERS_PORT_RANGE``, below the kernel's ephemeral ports, so that they never take each
    other's; otherwise the kernel picks one."""
    ports = _port_range()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if ports is None:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(200):
        port = random.choice(ports)
        if port in _HANDED_OUT:  # given to a server of this run that may not have bound it yet
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.append(port)
        return port
    raise RuntimeError(f"no free port in TRANSFERS_PORT_RANGE {ports.start}-{ports.stop - 1}")


class OrthancServer:
    """One Orthanc process with its own storage, configuration and log file under ``workdir``."""

    def __init__(self, name: str, workdir: Path, *, with_plugin: bool = True,
                 transfers: Optional[Dict[str, Any]] = None, peers: Optional[Dict[str, Any]] = None,
                 extra_config: Optional[Dict[str, Any]] = None, http_port: Optional[int] = None,
                 plugin_script: Optional[Path] = None, platform: Optional[str] = None):
        self.name = name
        self.platform = platform or default_platform()
        if self.platform not in PLATFORMS:
            raise ValueError(f"unknown platform {self.platform!r}")
        self.workdir = Path(workdir)
        self.with_plugin = with_plugin
        self.transfers = transfers
        self.peers = peers or {}
        self.extra_config = extra_config or {}
        self.plugin_script = Path(plugin_script or PLUGIN_SCRIPT)
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.process: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "orthanc.json"
        self.session = requests.Session()
        self.session.trust_env = False
        users = self.extra_config.get("RegisteredUsers") or {}
        if self.extra_config.get("AuthenticationEnabled") and users:
            self.session.auth = next(iter(users.items()))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> Dict[str, Any]:
        storage = str(self.workdir / "storage")
        cfg: Dict[str, Any] = {
            "Name": self.name,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.name.upper()[:16] or "ORTHANC",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "HttpTimeout": 30,
            "OrthancPeers": self.peers,
            "Plugins": [],
        }
        if self.with_plugin:
            cfg["Plugins"] = [python_plugin_library(self.platform)]
            cfg["PythonScript"] = str(self.plugin_script)
            cfg["PythonVerbose"] = False
        if self.transfers is not None:
            cfg["Transfers"] = self.transfers
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout: float = 30.0) -> "OrthancServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(orthanc_command(self.platform, self.config_path), stdout=log,
                                        stderr=subprocess.STDOUT, cwd=str(self.workdir),
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc {self.name} exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                r = self.session.get(self.url + "/system", timeout=1)
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc {self.name} did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGTERM, then SIGKILL if Orthanc has not stopped within ``timeout``; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        code = self.process.returncode
        self.process = None
        self.session.close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- REST helpers --------------------------------------------------------------------------------

    def request(self, method: str, uri: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.url + uri, **kwargs)

    def get(self, uri: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", uri, **kwargs)

    def post(self, uri: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", uri, **kwargs)

    def get_json(self, uri: str) -> Any:
        r = self.get(uri)
        r.raise_for_status()
        return r.json()

    def upload(self, data: bytes) -> str:
        """Stores a DICOM file; returns its Orthanc instance ID."""
        r = self.post("/instances", data=data)
        r.raise_for_status()
        return r.json()["ID"]

    def instances(self) -> List[str]:
        return self.get_json("/instances")

    def memory_mb(self, field: str = "VmRSS") -> float:
        """The Orthanc process's resident memory (``VmHWM``: its peak), in MB."""
        return process_memory_mb(self.process.pid, field)

    @property
    def download_area(self) -> Path:
        """The plugin's download area: ``Transfers.DownloadArea``, else ``StorageDirectory/transfers-tmp``; a
        node with a ``DatabaseServerIdentifier`` has its own subfolder there."""
        configured = (self.transfers or {}).get("DownloadArea")
        storage = Path(self.extra_config.get("StorageDirectory") or self.workdir / "storage")
        root = Path(configured) if configured else storage / "transfers-tmp"
        node = self.extra_config.get("DatabaseServerIdentifier")
        if node:  # a cluster node: its own folder (config.node_folder_name)
            from transfers_plugin.config import node_folder_name
            return root / node_folder_name(node)
        return root

    def answers(self) -> bool:
        """The process runs and answers ``GET /system``."""
        if not self.running:
            return False
        try:
            return self.get("/system", timeout=10).status_code == 200
        except requests.RequestException:
            return False

    def peer_entry(self, **properties: Any) -> Dict[str, Any]:
        """This server as an ``OrthancPeers`` entry of another server."""
        entry: Dict[str, Any] = {"Url": self.url + "/"}
        entry.update(properties)
        return entry
