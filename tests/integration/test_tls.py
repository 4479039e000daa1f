"""Transfers over HTTPS as sites run it: Debian's nginx terminates TLS in front of each real Orthanc.

Orthanc 1.10.1's own HTTPS server (``SslEnabled``) crashes on its first request, so sites put a TLS
terminator in front of Orthanc. Here a test CA (made with the ``openssl`` CLI) signs a certificate for
``localhost`` only; one nginx serves it on one port per Orthanc and forwards to Orthanc's plain HTTP port,
streaming bodies both ways, keeping ``//`` paths and every header. The peers know each other by
``https://localhost:<port>/`` URLs and trust the test CA through ``HttpsCACertificates``.

Checked: a pull, a push and a send in pull mode over HTTPS, byte-identical and with nothing left behind;
a peer whose certificate is signed by a CA the client does not trust, and a peer reached by a name that is
not in its certificate, each end in a clean ``Failure`` (a synchronous send in pull mode: a 502 with a JSON
body), nothing imported, both servers still answering.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from transfer_helpers import (
    assert_alive,
    assert_area_empty,
    assert_same_instances,
    load_study,
    pull,
    study_of,
    wait_job,
)

from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

NGINX = "/usr/sbin/nginx"
OPENSSL = "openssl"
LB_COOKIE = "lb-route=orthanc-b"  # what nginx sets in front of B, like a load balancer's sticky session

OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = {san}
"""


# -- certificates ------------------------------------------------------------------------------------------


def openssl(*args: str) -> None:
    r = subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)} failed:\n{r.stdout}{r.stderr}"


def make_ca(folder: Path, name: str, cnf: Path) -> SimpleNamespace:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl("req", "-x509", "-config", str(cnf), "-extensions", "ca_ext", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
            "-days", "2", "-subj", f"/O=orthanc-transfers-py tests/CN={name}")
    return SimpleNamespace(cert=cert, key=key)


def make_server_cert(folder: Path, ca: SimpleNamespace, cnf: Path, name: str) -> SimpleNamespace:
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    openssl("req", "-new", "-config", str(cnf), "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
            "-extfile", str(cnf), "-extensions", "server_ext", "-out", str(cert))
    return SimpleNamespace(cert=cert, key=key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The test CA, a certificate it signed for DNS:localhost only (no IP), and an unrelated "wrong" CA."""
    folder = tmp_path_factory.mktemp("pki")
    cnf = folder / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF.format(san="DNS:localhost"))
    ca = make_ca(folder, "test-ca", cnf)
    wrong_ca = make_ca(folder, "wrong-ca", cnf)
    server = make_server_cert(folder, ca, cnf, "localhost")
    text = subprocess.run([OPENSSL, "x509", "-in", str(server.cert), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost" in text and "IP Address" not in text, text
    return SimpleNamespace(ca=ca.cert, wrong_ca=wrong_ca.cert, cert=server.cert, key=server.key)


# -- nginx as the TLS terminator ---------------------------------------------------------------------------


NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {folder}/access-{name}.log transfers;
        {extra}
        location / {{
            proxy_pass http://127.0.0.1:{http_port};
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
"""

NGINX_CONF = """
{user}
worker_processes 2;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    log_format transfers '$request_method $request_uri $status "$http_cookie" "$http_sender_transfer_id"';
    access_log {folder}/access.log transfers;
    merge_slashes off;
    underscores_in_headers on;
    ignore_invalid_headers off;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_read_timeout 300s;
    proxy_send_timeout 300s;
    ssl_protocols TLSv1.2 TLSv1.3;
{servers}
}}
"""


class Nginx:
    """Debian's nginx in the foreground, everything (config, pid, logs, temp files) under ``folder``."""

    def __init__(self, folder: Path, pki, sites):
        """``sites``: name -> (TLS port, Orthanc HTTP port, extra server directives)."""
        self.folder = folder
        self.ca = str(pki.ca)
        self.sites = sites
        folder.mkdir(parents=True, exist_ok=True)
        servers = "".join(NGINX_SERVER.format(name=name, tls_port=tls, http_port=http, extra=extra,
                                              cert=pki.cert, key=pki.key, folder=folder)
                          for name, (tls, http, extra) in sites.items())
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = folder / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(user=user, folder=folder, servers=servers))
        self.process = None

    def url(self, name: str) -> str:
        return f"https://localhost:{self.sites[name][0]}/"

    def start(self, timeout: float = 15.0) -> "Nginx":
        if not os.path.exists(NGINX):
            pytest.fail("nginx is not installed: apt-get install nginx (scripts/install.sh does it)")
        test = subprocess.run([NGINX, "-t", "-p", str(self.folder), "-e", str(self.folder / "error.log"),
                               "-c", str(self.conf)], capture_output=True, text=True, timeout=30)
        assert test.returncode == 0, f"nginx -t:\n{test.stderr}"
        out = open(self.folder / "nginx.out", "ab")
        self.process = subprocess.Popen([NGINX, "-p", str(self.folder), "-e", str(self.folder / "error.log"),
                                         "-c", str(self.conf), "-g", "daemon off;"],
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        waiting = set(self.sites)
        while waiting and time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log_tail()}")
            for name in list(waiting):
                try:  # any HTTP answer (502 while Orthanc is not up yet) means TLS is served
                    requests.get(self.url(name), verify=self.ca, timeout=1)
                    waiting.discard(name)
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        if waiting:
            self.stop()
            raise RuntimeError(f"nginx did not answer on {sorted(waiting)} within {timeout} s:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # fast shutdown: the master stops its workers
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own process group (start_new_session)
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        texts = []
        for path in (self.folder / "nginx.out", self.folder / "error.log"):
            if path.exists():
                texts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(texts)

    def access(self, name: str) -> list:
        """The access log lines of one site: ``METHOD URI STATUS "cookie" "sender-transfer-id"``."""
        path = self.folder / f"access-{name}.log"
        return path.read_text().splitlines() if path.exists() else []


# -- the sites --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sites(pki, module_orthanc_factory, tmp_path_factory):
    """A and B behind nginx (HTTPS), knowing each other by https://localhost URLs and the test CA; A also
    knows B by https://127.0.0.1 (not in the certificate), B knows A so too; C trusts only the wrong CA."""
    a_http, b_http, c_http, a_tls, b_tls = (free_port() for _ in range(5))
    a_url, b_url = f"https://localhost:{a_tls}/", f"https://localhost:{b_tls}/"
    a_ip, b_ip = f"https://127.0.0.1:{a_tls}/", f"https://127.0.0.1:{b_tls}/"
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), pki, {
        "a": (a_tls, a_http, ""),
        # Like a load balancer with sticky sessions: every answer of B sets a cookie the push must echo.
        "b": (b_tls, b_http, f'add_header Set-Cookie "{LB_COOKIE}; Path=/; Secure" always;'),
    }).start()
    try:
        trust = {"HttpsCACertificates": str(pki.ca), "HttpsVerifyPeers": True, "JobsHistorySize": 100}
        transfers = {"BucketSize": 64}  # a dozen buckets for a small study: concurrent requests over TLS
        a = module_orthanc_factory("a", http_port=a_http, transfers=transfers, extra_config=trust, peers={
            "b-push": {"Url": b_url},
            "b": {"Url": b_url, "RemoteSelf": "a"},
            "b-by-ip": {"Url": b_ip},
            "b-by-ip-pull": {"Url": b_ip, "RemoteSelf": "a"},
        })
        b = module_orthanc_factory("b", http_port=b_http, transfers=transfers, extra_config=trust, peers={
            "a": {"Url": a_url},
            "a-by-ip": {"Url": a_ip},
        })
        c = module_orthanc_factory("c", http_port=c_http, transfers=transfers,
                                   extra_config=dict(trust, HttpsCACertificates=str(pki.wrong_ca)), peers={
                                       "b": {"Url": b_url},
                                       "b-pull": {"Url": b_url, "RemoteSelf": "c"},
                                   })
        for name, server in (("a", a), ("b", b)):
            r = requests.get(nginx.url(name) + "system", verify=str(pki.ca), timeout=10)
            assert r.status_code == 200 and r.json()["Name"] == server.name, (r.status_code, r.text)
        files = load_study(a, 12, rows=128, seed=1)
        study = study_of(a, next(iter(files)))
        yield SimpleNamespace(a=a, b=b, c=c, nginx=nginx, pki=pki, files=files, study=study)
    finally:
        nginx.stop()


def clear(server) -> None:
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")
    assert server.instances() == []


def send(server, peer: str, study: str, compression: str) -> requests.Response:
    return server.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study}],
                                                "Compression": compression, "Peer": peer})


def new_lines(nginx, name: str, before: int) -> list:
    return nginx.access(name)[before:]


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and 'File "' not in text, f"a Python traceback:\n{text}"


def wording_problem(text: str) -> str:
    """'' if ``text`` says in words why the peer cannot be reached (a TLS or certificate problem), else why not.

    The plugin words a failure ``Peer 'x' (url) cannot be reached: <why> (<the client's exception>)``; <why>
    must be words a site's administrator understands ("the connection failed"...), not a Python class name.
    """
    why = text.split("cannot be reached: ", 1)[-1].split(" (", 1)[0]
    if re.fullmatch(r"[A-Za-z.]*(Error|Exception)", why) or not re.search(r"\b(TLS|SSL|certificate)\b", why, re.I):
        return f"the reason is not said in plain words ({why!r} instead of e.g. 'the TLS certificate was " \
               f"refused'): {text}"
    return ""


def assert_clean_failure(job, peer: str, url: str, wording: list) -> None:
    """A failed job that names the peer and says that it cannot be reached, over TLS, without a traceback.
    Whether the reason is in plain words is collected in ``wording``, checked at the end of the test (so that
    the test's other checks run first)."""
    assert job["State"] == "Failure", job
    description, details = job["ErrorDescription"], job.get("ErrorDetails", "")
    assert repr(peer) in description or f'"{peer}"' in description, description
    assert url in description, description
    assert "cannot be reached" in description, description
    assert re.search(r"certificate|TLS|SSL", description, re.IGNORECASE), description
    assert_no_traceback(description, details)
    problem = wording_problem(description)
    if problem:
        wording.append(f"{job['Type']} job to {peer!r}: {problem}")


def assert_clean_502(r: requests.Response, peer: str, wording: list) -> None:
    """A synchronous call to the peer failed: 502 with Orthanc's JSON error body, naming the peer."""
    assert r.status_code == 502, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["HttpStatus"] == 502, body
    message = body["Message"]
    assert repr(peer) in message and "cannot be reached" in message, message
    assert re.search(r"certificate|TLS|SSL", message, re.IGNORECASE), message
    assert_no_traceback(r.text)
    problem = wording_problem(message)
    if problem:
        wording.append(f"/transfers/send to {peer!r} (pull mode): {problem}")


# -- transfers over HTTPS ---------------------------------------------------------------------------------


def test_pull_over_https(sites):
    b, nginx = sites.b, sites.nginx
    clear(b)
    seen = len(nginx.access("a"))
    job = wait_job(b, pull(b, "a", [{"Level": "Study", "ID": sites.study}], "gzip"), timeout=60)
    assert job["State"] == "Success", job
    assert job["Type"] == "PullTransfer" and job["Content"]["Peer"] == "a"
    assert_same_instances(b, sites.files)
    assert_area_empty(b)
    lines = new_lines(nginx, "a", seen)
    chunks = [line for line in lines if line.startswith("GET /transfers/chunks/") and " 200 " in line]
    assert any(line.startswith("POST /transfers/lookup 200") for line in lines), lines
    assert len(chunks) >= 3, lines  # the buckets went through the TLS terminator
    assert all(" 200 " in line for line in lines), lines


def test_push_over_https_with_a_sticky_cookie(sites):
    a, b, nginx = sites.a, sites.b, sites.nginx
    clear(b)
    seen = len(nginx.access("b"))
    r = send(a, "b-push", sites.study, "none")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"ID", "Path"}
    job = wait_job(a, answer["ID"], timeout=60)
    assert job["State"] == "Success", job
    assert job["Type"] == "PushTransfer" and job["Content"]["Compression"] == "none"
    assert_same_instances(b, sites.files)
    assert_area_empty(a)
    assert_area_empty(b)
    lines = new_lines(nginx, "b", seen)
    create = [line for line in lines if line.startswith("POST /transfers/push ")]
    puts = [line for line in lines if line.startswith("PUT /transfers/push/")]
    commit = [line for line in lines if re.match(r"POST /transfers/push/[^/ ]+/commit 200", line)]
    assert len(create) == 1 and create[0].split()[2] == "200", lines
    assert len(puts) >= 3 and commit, lines
    # nginx passed Set-Cookie to the sender and the Cookie of every later request to Orthanc.
    for line in puts + commit:
        assert f'"{LB_COOKIE}"' in line and " 200 " in line, line
    transfer_ids = {line.rsplit('"', 2)[-2] for line in create + puts + commit}
    assert len(transfer_ids) == 1 and "" not in transfer_ids, lines  # sender-transfer-id went through


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_send_in_pull_mode_over_https(sites, compression):
    a, b, nginx = sites.a, sites.b, sites.nginx
    clear(b)
    seen_a, seen_b = len(nginx.access("a")), len(nginx.access("b"))
    r = send(a, "b", sites.study, compression)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"Peer", "RemoteJob", "URL"}, answer
    assert answer["Peer"] == "b"
    assert answer["URL"] == f"{nginx.url('b')}jobs/{answer['RemoteJob']}"
    job = wait_job(b, answer["RemoteJob"], timeout=60)
    assert job["State"] == "Success", job
    assert job["Type"] == "PullTransfer" and job["Content"]["Peer"] == "a"
    assert job["Content"]["Compression"] == compression
    # The URL given to the client works over HTTPS with the test CA.
    remote = requests.get(answer["URL"], verify=str(sites.pki.ca), timeout=10)
    assert remote.status_code == 200 and remote.json()["State"] == "Success", remote.text
    assert_same_instances(b, sites.files)
    assert_area_empty(b)
    assert any(line.startswith("POST /transfers/pull 200") for line in new_lines(nginx, "b", seen_b))
    assert any(line.startswith("GET /transfers/chunks/") for line in new_lines(nginx, "a", seen_a))


def test_double_slash_paths_pass_the_terminator(sites):
    """C++ peers send ``//transfers/...``: nginx must pass such paths to Orthanc (merge_slashes off)."""
    ca = str(sites.pki.ca)
    base = sites.nginx.url("a")
    r = requests.post(base + "/transfers/lookup", json=[{"Level": "Study", "ID": sites.study}], verify=ca,
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["CountInstances"] == len(sites.files)
    instance = sorted(sites.files)[0]
    r = requests.get(f"{base}/transfers/chunks/{instance}?offset=0&size=0&compression=none", verify=ca, timeout=30)
    assert r.status_code == 200 and r.content == sites.files[instance]
    lines = sites.nginx.access("a")
    assert any(line.startswith("POST //transfers/lookup 200") for line in lines), lines[-5:]


# -- TLS failures ------------------------------------------------------------------------------------------


def test_peer_signed_by_a_ca_we_do_not_trust(sites):
    """C trusts only the wrong CA: its pull from B and its push to B fail cleanly, nothing moves."""
    b, c, nginx = sites.b, sites.c, sites.nginx
    clear(b)
    held = load_study(b, 4, rows=128, seed=2)
    b_study = study_of(b, next(iter(held)))
    clear(c)
    own = load_study(c, 4, rows=128, seed=3)
    c_study = study_of(c, next(iter(own)))
    b_url = nginx.url("b")
    seen_b = len(nginx.access("b"))
    wording = []

    job = wait_job(c, pull(c, "b", [{"Level": "Study", "ID": b_study}], "gzip"), timeout=60)
    assert_clean_failure(job, "b", b_url, wording)
    assert sorted(c.instances()) == sorted(own), "nothing imported at the puller"
    assert_area_empty(c)

    r = send(c, "b", c_study, "none")
    assert r.status_code == 200, r.text
    job = wait_job(c, r.json()["ID"], timeout=60)
    assert_clean_failure(job, "b", b_url, wording)
    assert_same_instances(b, held)  # nothing imported at the receiver
    assert_area_empty(b)
    assert_area_empty(c)

    jobs_b = b.get_json("/jobs")
    assert_clean_502(send(c, "b-pull", c_study, "gzip"), "b-pull", wording)
    assert b.get_json("/jobs") == jobs_b, "no job was created at B"

    assert new_lines(nginx, "b", seen_b) == [], "no request got past the TLS handshake"
    assert_alive(b)
    assert_alive(c)
    assert_same_instances(b, held)
    assert not wording, "\n".join(wording)


def test_peer_reached_by_a_name_not_in_its_certificate(sites):
    """https://127.0.0.1:<port>/ with a certificate for DNS:localhost only: clean failures both ways."""
    a, b, nginx = sites.a, sites.b, sites.nginx
    clear(b)
    seen_a, seen_b = len(nginx.access("a")), len(nginx.access("b"))
    a_ip = nginx.url("a").replace("localhost", "127.0.0.1")
    b_ip = nginx.url("b").replace("localhost", "127.0.0.1")
    wording = []

    job = wait_job(b, pull(b, "a-by-ip", [{"Level": "Study", "ID": sites.study}], "none"), timeout=60)
    assert_clean_failure(job, "a-by-ip", a_ip, wording)
    assert b.instances() == [], "nothing imported at the puller"
    assert_area_empty(b)

    r = send(a, "b-by-ip", sites.study, "gzip")
    assert r.status_code == 200, r.text
    job = wait_job(a, r.json()["ID"], timeout=60)
    assert_clean_failure(job, "b-by-ip", b_ip, wording)
    assert b.instances() == [], "nothing imported at the receiver"
    assert_area_empty(a)
    assert_area_empty(b)

    jobs_a, jobs_b = a.get_json("/jobs"), b.get_json("/jobs")
    assert_clean_502(send(a, "b-by-ip-pull", sites.study, "gzip"), "b-by-ip-pull", wording)
    assert a.get_json("/jobs") == jobs_a and b.get_json("/jobs") == jobs_b, "no job was created"

    # No request got past the TLS handshake.
    assert new_lines(nginx, "a", seen_a) == [] and new_lines(nginx, "b", seen_b) == []
    assert_alive(a)
    assert_alive(b)
    assert sorted(a.instances()) == sorted(sites.files)
    assert not wording, "\n".join(wording)
