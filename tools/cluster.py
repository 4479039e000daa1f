"""An Orthanc cluster for tests: a PostgreSQL 15 server, Orthanc nodes sharing its index and one storage
folder, and Debian's nginx in front of them.

- :class:`PostgresServer`: ``initdb`` in a temporary folder owned by the unprivileged ``postgres`` user,
  the server run as that user (``runuser -u postgres --`` when we are root), listening on a loopback TCP
  port only (no Unix socket, no system service); :meth:`PostgresServer.create_database` gives each test its
  own database.
- :func:`cluster_node_config`: the Orthanc options of one node: the ``PostgreSQL`` section of Debian's
  ``orthanc-postgresql`` plugin (index only, ``Lock`` false so that several nodes share it), a
  ``DatabaseServerIdentifier`` per node and the shared ``StorageDirectory``.
- :class:`NginxBalancer`: its own nginx (own configuration, prefix, pid file and logs) proxying to the
  nodes, routing by the ``sender-transfer-id`` header (``hash``), by a sticky cookie (``cookie``) or plain
  round robin (``round-robin``). Its access log names the node of every request.

A Debian 13 Orthanc runs chrooted but shares loopback with the host: it reaches this PostgreSQL on
127.0.0.1 too. Ports come from :func:`tools.orthanc_launcher.free_port` (``TRANSFERS_PORT_RANGE``).
"""

import glob
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tools.orthanc_launcher import DEBIAN13, HOST, debian13_root, free_port, python_plugin_library

PG_USER = "postgres"
BALANCING = ("hash", "cookie", "round-robin")
STICKY_COOKIE = "orthanc_node"  # nginx reads it as $cookie_orthanc_node (no dash there)


def postgres_bin() -> Path:
    configured = os.environ.get("TRANSFERS_POSTGRES_BIN")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return Path(found[-1]).parent


def postgresql_plugin(platform: str) -> str:
    """The orthanc-postgresql index plugin as the platform's Orthanc sees it."""
    if platform == DEBIAN13:
        root = debian13_root()
        found = sorted(glob.glob(str(root / "usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so*")))
        if not found:
            raise RuntimeError(f"No orthanc-postgresql in the Debian 13 root {root}: run scripts/install.sh")
        return "/" + os.path.relpath(found[0], root)
    found = sorted(glob.glob("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so*"))
    if not found:
        raise RuntimeError("The Orthanc PostgreSQL plugin is not installed: apt-get install orthanc-postgresql")
    return found[0]


def _as_postgres(argv: Sequence[str]) -> List[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--"] + list(argv)
    return list(argv)


class PostgresServer:
    """A throw-away PostgreSQL server in ``workdir`` on a loopback port (trust authentication, loopback only)."""

    def __init__(self, workdir: Path, port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.port = port or free_port()
        self.log_path = self.workdir / "postgres.log"
        self.process: Optional[subprocess.Popen] = None
        self.bin = postgres_bin()

    def start(self, timeout: float = 30.0) -> "PostgresServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.workdir, 0o755)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", PG_USER,
                                         "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            _as_postgres([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                          "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                          "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                          "-c", "max_connections=100"]),
            stdout=log, stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.psql("SELECT 1", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not answer within {timeout} s:\n{self.log_tail()}")

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "psql"),
                               "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", database,
                               "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                              check=check, capture_output=True, text=True, cwd="/")

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return name

    def properties(self, database: str, properties: Sequence[int]) -> Dict[str, List[Any]]:
        """Where Orthanc stored these global properties: ``{"shared": [property...], "per-server":
        [(server, property)...]}`` (the ``GlobalProperties`` and ``ServerProperties`` tables of the index)."""
        wanted = ",".join(str(int(p)) for p in properties)
        shared = self.psql(f"SELECT property FROM GlobalProperties WHERE property IN ({wanted})", database).stdout
        per_server = self.psql(f"SELECT server, property FROM ServerProperties WHERE property IN ({wanted}) "
                               f"ORDER BY server, property", database).stdout
        return {"shared": sorted(int(line) for line in shared.split()),
                "per-server": [(line.split("|")[0], int(line.split("|")[1])) for line in per_server.splitlines()
                               if line]}

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 50) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def cluster_node_config(pg: PostgresServer, database: str, identifier: str, storage: Path,
                        platform: str = HOST) -> Dict[str, Any]:
    """The Orthanc options that make a node of the cluster (to merge into its configuration)."""
    return {
        "DatabaseServerIdentifier": identifier,
        "StorageDirectory": str(storage),
        "PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": "127.0.0.1", "Port": pg.port,
                       "Database": database, "Username": PG_USER, "Password": "", "Lock": False,
                       "EnableSsl": False},
        "Plugins": [python_plugin_library(platform), postgresql_plugin(platform)],
    }


def _nginx_config(prefix: Path, port: int, backends: Sequence[str], balancing: str) -> str:
    servers = "\n".join(f"    server {b} max_fails=0;" for b in backends)
    names = "\n".join(f"  upstream node{i} {{ server {b} max_fails=0; }}" for i, b in enumerate(backends))
    if balancing == "hash":
        upstream = f"  upstream cluster {{\n    hash $http_sender_transfer_id consistent;\n{servers}\n  }}"
        target = "http://cluster"
        extra = ""
    elif balancing == "round-robin":
        upstream = f"  upstream cluster {{\n{servers}\n  }}"
        target = "http://cluster"
        extra = ""
    elif balancing == "cookie":
        # Open-source nginx has no "sticky cookie": a request without our cookie goes round robin and its
        # answer sets the cookie naming the node that served it; one with the cookie goes to that node.
        upstream = f"  upstream cluster {{\n{servers}\n  }}\n{names}"
        routes = "\n".join(f'    "node{i}" node{i};' for i in range(len(backends)))
        cookies = "\n".join(f'    "{b}" "{STICKY_COOKIE}=node{i}; Path=/";' for i, b in enumerate(backends))
        upstream += (f"\n  map $cookie_{STICKY_COOKIE} $backend {{\n    default cluster;\n{routes}\n  }}"
                     f"\n  map $upstream_addr $sticky {{\n    default \"\";\n{cookies}\n  }}")
        target = "http://$backend"
        extra = "      add_header Set-Cookie $sticky;\n"
    else:
        raise ValueError(f"balancing: one of {BALANCING}, not {balancing!r}")
    return f"""worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
  log_format nodes '$request_method $uri $status $upstream_addr';
  access_log {prefix}/access.log nodes;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  client_max_body_size 0;
{upstream}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass {target};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
      proxy_next_upstream off;
      proxy_buffering off;
{extra}    }}
  }}
}}
"""


class NginxBalancer:
    """Debian's nginx as a load balancer in front of ``backends`` (``host:port``), in ``workdir``."""

    def __init__(self, workdir: Path, backends: Sequence[str], balancing: str = "hash",
                 port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.backends = list(backends)
        self.balancing = balancing
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen] = None
        self.config_path = self.workdir / "nginx.conf"
        self.access_log = self.workdir / "access.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "NginxBalancer":
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)  # every folder above it must be reachable by nginx's worker user too
        self.config_path.write_text(_nginx_config(self.workdir, self.port, self.backends, self.balancing))
        log = open(self.workdir / "nginx.out", "ab")
        self.process = subprocess.Popen([binary, "-p", str(self.workdir), "-c", str(self.config_path),
                                         "-e", str(self.workdir / "error.log")],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        import socket
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}: "
                                   f"{(self.workdir / 'nginx.out').read_text(errors='replace')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("nginx did not listen in time")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def served(self, uri_prefix: str = "") -> Dict[str, int]:
        """How many requests (whose URI starts with ``uri_prefix``) each backend served, from the access log."""
        counts: Dict[str, int] = {}
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return counts
        for line in lines:
            parts = line.split()
            if len(parts) >= 4 and parts[1].startswith(uri_prefix):
                counts[parts[3]] = counts.get(parts[3], 0) + 1
        return counts
