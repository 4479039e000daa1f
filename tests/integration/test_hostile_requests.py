"""Hostile requests against every route of the plugin, on a real Orthanc process.

Every request must get an HTTP answer (no reset, no empty reply); no answer of ours is a 5xx except the
502 of a failing peer (``/transfers/send`` in pull mode), the 503 of a full receiver and the 507 of a
descriptor larger than the receiver's free space (``POST /transfers/push``); every 4xx/5xx of ours except
405 (empty by an SDK limit, README "Guarantees and limits") is a JSON object with ``HttpStatus`` and
``Message``; no answer carries a Python traceback or a raw OS error text; the process keeps answering;
nothing is written outside the download area, and the download area is empty once every push transaction
is gone.

Requests go through a raw socket (:func:`http`), so that paths arrive exactly as written (``requests``
would resolve ``..`` and drop ``#``). Only the plugin's routes are attacked: Orthanc's own routes (e.g.
``/tools/find``) also crash on deeply nested JSON, which is not this plugin's to fix. Two answers that come
before any plugin code runs are left out: a request head over 16 KB (Orthanc's HTTP server answers a
plain-text 400) and a path whose percent-encoding decodes to invalid UTF-8 (the Python plugin's SDK
answers 500 on every plugin route, e.g. ``/transfers/chunks/%FF``): fuzzed paths never hold one.

Parts: the nesting-depth series (:func:`test_deeply_nested_json_is_refused`), hypothesis fuzzing of every
route's body, path and query (``test_fuzz_*``, each collecting every kind of failure it meets and
reporting them together with the shortest example of each), explicit traversal cases, and a descriptor of
10^6 instances.
"""

import copy
import gzip
import hashlib
import json
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transfer_helpers import area_files, assert_alive, load_study, study_of

from tools.orthanc_launcher import free_port, process_memory_mb

pytestmark = pytest.mark.integration

EMPTY_MD5 = hashlib.md5(b"").hexdigest()
HELLO = b"hello"
HELLO_MD5 = hashlib.md5(HELLO).hexdigest()
TRACEBACK = "Traceback (most recent call last)"
OS_ERROR = "[Errno"
UNKNOWN_UUID = "00000000-1111-4222-8333-444444444444"
DEPTHS = (100, 300, 550, 1000, 5000, 20000, 100000)
MB = 1024 * 1024
# Orthanc's HTTP server (civetweb) refuses a request head over 16 KB itself, with a plain-text 400.
MAX_REQUEST_HEAD = 16 * 1024

# The plugin's routes (transfers_plugin/routes.py, transfers_plugin/jobs/routes.py), as Orthanc matches
# them: a regular expression on the whole decoded URI.
PLUGIN_ROUTES: List[Tuple[str, str]] = [
    ("chunks", r"/transfers/chunks/([^/]*)"),
    ("lookup", r"/transfers/lookup"),
    ("peers", r"/transfers/peers"),
    ("plugins", r"/plugins"),
    ("plugin", r"/plugins/transfers"),
    ("capabilities", r"/transfers/capabilities"),
    ("holds", r"/transfers/holds"),
    ("metadata", r"/transfers/metadata"),
    ("pull", r"/transfers/pull"),
    ("send", r"/transfers/send"),
    ("push-create", r"/transfers/push"),
    ("push-put", r"/transfers/push/([^/]+)/([0-9]+)"),
    ("push-commit", r"/transfers/push/([^/]+)/commit"),
    ("push-metadata", r"/transfers/push/([^/]+)/metadata"),
    ("push-delete", r"/transfers/push/([^/]+)"),
    ("jobs", r"/jobs"),
    ("job", r"/jobs/([^/]+)"),
    ("job-action", r"/jobs/([^/]+)/(pause|resume|cancel|resubmit)"),
]
# The only 5xx the README allows: a peer that fails a synchronous call, a busy receiver, and a descriptor
# larger than the free space of the receiver's download area (507, Insufficient Storage).
ALLOWED_5XX = {("send", 502), ("push-create", 503), ("push-create", 507)}


# --- a raw HTTP client ----------------------------------------------------------------------------------

class Answer(NamedTuple):
    status: int
    headers: Dict[str, str]
    body: bytes


class NoAnswer(Exception):
    """The connection ended (or was reset) before a complete HTTP answer arrived."""


def http(port: int, method: str, target: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
         timeout: float = 120.0) -> Answer:
    """One request on its own connection, the request line exactly as given (``target`` must be ASCII)."""
    head = {"Host": f"127.0.0.1:{port}", "Connection": "close", "Content-Length": str(len(body))}
    if body:
        head["Content-Type"] = "application/json"
    head.update(headers or {})
    request = (f"{method} {target} HTTP/1.1\r\n".encode("ascii")
               + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in head.items()) + b"\r\n")
    received = []
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            try:
                s.sendall(request + body)
            except OSError:
                pass  # the server may answer (and close) before reading a whole body: read its answer
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                received.append(data)
    except OSError as e:
        raise NoAnswer(f"{type(e).__name__}: {e}") from None
    return parse_answer(b"".join(received))


def parse_answer(data: bytes) -> Answer:
    if not data:
        raise NoAnswer("empty reply: the connection closed without an answer")
    head, sep, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
    if not sep or not m:
        raise NoAnswer(f"not an HTTP answer: {data[:200]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            end = rest.index(b"\r\n", pos)
            n = int(rest[pos:end].split(b";")[0], 16)
            if n == 0:
                break
            body += rest[end + 2:end + 2 + n]
            pos = end + 4 + n
        rest = body
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) < n:
            raise NoAnswer(f"truncated answer: {len(rest)} of {n} bytes of body")
        rest = rest[:n]
    return Answer(int(m.group(1)), headers, rest)


# --- which route answers a URI ---------------------------------------------------------------------------

def route_of(target: str) -> Optional[str]:
    """The plugin route Orthanc gives this request target to, or None (Orthanc's core answers).

    Orthanc decodes the path, stops at a NUL, drops empty segments and resolves ``.`` and ``..``; the query
    string is not part of the match."""
    path = target.split("?", 1)[0]
    raw = unquote_to_bytes(path).split(b"\0", 1)[0]
    parts: List[str] = []
    for seg in raw.decode("utf-8", "replace").split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    flat = "/" + "/".join(parts)
    for name, pattern in PLUGIN_ROUTES:
        if re.fullmatch(pattern, flat):
            return name
    return None


def problems_of(target: str, answer: Answer, expected: Optional[int] = None) -> List[str]:
    """What is wrong with an answer (the rules of the module's docstring); empty if nothing."""
    route = route_of(target)
    found: List[str] = []
    status = answer.status
    if len(target) > MAX_REQUEST_HEAD - 200 and status == 400 and answer.body.startswith(b"Error 400: Bad Request"):
        return found  # refused by the HTTP server before any route: not the plugin's answer
    if expected is not None and status != expected:
        found.append(f"status {status} instead of {expected}")
    if status >= 500 and (route, status) not in ALLOWED_5XX:
        found.append(f"status {status}")
    text = answer.body.decode("utf-8", "replace")
    if status >= 400 and status != 405 and not (status == 404 and route is None):
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not (isinstance(body, dict) and body.get("HttpStatus") == status and isinstance(body.get("Message"), str)):
            found.append(f"status {status} without a JSON error body")
        else:
            text += "\n" + body["Message"]
    if route is not None:
        if TRACEBACK in text:
            found.append("a Python traceback in the answer")
        if OS_ERROR in text:
            found.append("raw OS error text ([Errno ...]) in the answer")
    return found


def message_of(answer: Answer) -> str:
    try:
        body = json.loads(answer.body)
        if isinstance(body, dict) and isinstance(body.get("Message"), str):
            return body["Message"]
    except ValueError:
        pass
    return answer.body[:200].decode("utf-8", "replace")


def excerpt(value: Any, n: int = 160) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} chars)"


# --- the server under attack -------------------------------------------------------------------------------

class Target:
    """The attacked server, restarted when a request kills it (each death is reported, never hidden)."""

    def __init__(self, server, canary: Path):
        self.server = server
        self.canary = canary  # canary / "x" exists: absolute and deep relative IDs aim there
        self.rel_canary = server.download_area.parent / "x"  # what "../../x/..." reaches from a transaction
        self.rel_canary.mkdir(parents=True, exist_ok=True)
        self.generation = 0  # restarts so far
        self.created: List[Tuple[int, str]] = []  # (generation, ID) of every push transaction created
        self.files = load_study(server, 3, rows=64)
        self.instance_ids = sorted(self.files)
        self.study = study_of(server, self.instance_ids[0])
        lookup = json.loads(self.request("POST", "/transfers/lookup", json.dumps(
            [{"Level": "Study", "ID": self.study}]).encode()).body)
        self.instances = [{"ID": i["ID"], "Size": i["Size"], "MD5": i["MD5"]} for i in lookup["Instances"]]
        assert sorted(i["ID"] for i in self.instances) == self.instance_ids

    @property
    def port(self) -> int:
        return self.server.http_port

    def request(self, method: str, target: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
                timeout: float = 120.0) -> Answer:
        """The answer, or NoAnswer saying how the server died (it is then restarted)."""
        log_size = self.log_size()
        try:
            return http(self.port, method, target, body, headers, timeout)
        except NoAnswer as e:
            raise NoAnswer(f"{method} {excerpt(target, 120)}: no answer ({e}); {self.death_note(log_size)}") from None

    def log_size(self) -> int:
        try:
            return self.server.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def death_note(self, log_size: int = 0) -> str:
        process = self.server.process
        code = None
        if process is not None:
            try:
                code = process.wait(3)
            except Exception:  # noqa: BLE001 - still running
                code = None
        with open(self.server.log_path, "rb") as f:
            f.seek(log_size)
            new_log = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
        if code is None and self.server.answers():
            state = "Orthanc still runs"
        elif code is None:
            state = "Orthanc runs but does not answer"
        else:
            name = ""
            if code < 0:
                try:
                    name = f" ({signal.Signals(-code).name})"
                except ValueError:
                    pass
            state = f"Orthanc exited with {code}{name}"
        tail = " | ".join(new_log[-3:]) or "nothing new in the log"
        if not self.server.answers():
            self.revive()
            state += "; restarted"
        return f"{state}; log: {excerpt(tail, 400)}"

    def revive(self) -> None:
        if self.server.answers():
            return
        self.server.stop()
        self.server.start()
        self.generation += 1

    def create_transaction(self, compression: str = "none") -> str:
        a = self.request("POST", "/transfers/push", json.dumps(valid_descriptor(self.instances, compression)).encode())
        assert a.status == 200, (a.status, a.body[:300])
        tid = json.loads(a.body)["ID"]
        self.created.append((self.generation, tid))
        return tid

    def delete_transaction(self, tid: str) -> None:
        self.created = [c for c in self.created if c[1] != tid]
        try:
            self.request("DELETE", f"/transfers/push/{tid}")
        except NoAnswer:
            pass

    def failed_job(self) -> str:
        """A PullTransfer job of ours, failed (its peer's port is closed)."""
        a = self.request("POST", "/transfers/pull", json.dumps(
            {"Resources": [{"Level": "Study", "ID": self.study}], "Peer": "closed", "Compression": "none"}).encode())
        assert a.status == 200, (a.status, a.body[:300])
        job_id = json.loads(a.body)["ID"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.server.get_json(f"/jobs/{job_id}")["State"] == "Failure":
                return job_id
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} to a closed port did not fail")

    def stray_files(self) -> List[Path]:
        """Files the plugin must never create: in the canaries, and *.dcm in the workdir outside the area."""
        area = self.server.download_area
        found = [p for p in self.canary.rglob("*") if p.is_file()]
        found += [p for p in self.rel_canary.rglob("*") if p.is_file()]
        for p in self.server.workdir.rglob("*.dcm"):
            if area not in p.parents:
                found.append(p)
        return sorted(set(found))

    def remove_strays(self) -> None:
        for p in self.stray_files():
            p.unlink(missing_ok=True)


def valid_descriptor(instances: List[Dict[str, str]], compression: str = "none", split: bool = False) -> Dict[str, Any]:
    """A push descriptor that covers every byte of these instances once (``split``: the first instance in
    two buckets)."""
    buckets = [[{"ID": i["ID"], "Offset": "0", "Size": i["Size"]}] for i in instances]
    if split and instances:
        first = instances[0]
        half = int(first["Size"]) // 2
        buckets[0] = [{"ID": first["ID"], "Offset": "0", "Size": str(half)}]
        buckets.append([{"ID": first["ID"], "Offset": str(half), "Size": str(int(first["Size"]) - half)}])
    return {"Instances": [dict(i) for i in instances], "Buckets": buckets, "Compression": compression}


@pytest.fixture(scope="module")
def canary():
    root = Path(tempfile.mkdtemp(prefix="hostile-canary-", dir="/tmp"))
    (root / "x").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def module_target(module_orthanc_factory, canary) -> Target:
    port = free_port()
    peers = {
        "self": {"Url": f"http://127.0.0.1:{port}/"},
        "closed": {"Url": "http://127.0.0.1:9/"},
        "closed-pull": {"Url": "http://127.0.0.1:9/", "RemoteSelf": "hostile"},
    }
    server = module_orthanc_factory("hostile", http_port=port, peers=peers,
                                    transfers={"MaxPushTransactions": 1024})
    return Target(server, canary / "x")


@pytest.fixture
def target(module_target) -> Target:
    """The module's server, alive (restarted if an earlier test killed it)."""
    module_target.revive()
    return module_target


# --- 1. the nesting-depth series ---------------------------------------------------------------------------

def deep_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def query_with(deep: bytes) -> bytes:
    return b'{"Resources": ' + deep + b', "Peer": "closed", "Compression": "none"}'


FIELD_BODIES: Dict[str, Callable[[bytes], bytes]] = {
    "lookup": lambda deep: b'[{"Level": "Study", "ID": ' + deep + b"}]",
    "push-create": lambda deep: b'{"Instances": ' + deep + b', "Buckets": [], "Compression": "none"}',
}

DEEP_ROUTES = [
    ("lookup", "POST", "/transfers/lookup"),
    ("pull", "POST", "/transfers/pull"),
    ("send", "POST", "/transfers/send"),
    ("push-create", "POST", "/transfers/push"),
    ("push-put", "PUT", "/transfers/push/{tid}/0"),
    ("push-commit", "POST", "/transfers/push/{tid}/commit"),
] + [(f"job-{a}", "POST", f"/jobs/{UNKNOWN_UUID}/{a}") for a in ("pause", "resume", "cancel", "resubmit")]

SHAPES = {
    "arrays": deep_arrays,
    "objects": deep_objects,
    "field": deep_arrays,  # inside a well-formed body (FIELD_BODIES, query_with)
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name,method,uri", DEEP_ROUTES, ids=[r[0] for r in DEEP_ROUTES])
def test_deeply_nested_json_is_refused(target, name, method, uri, shape):
    """``[`` * depth + ``]`` * depth, ``{"a":`` * depth..., and a well-formed body whose one field holds
    the deep value: a 400 with a JSON body at every depth, and the server still answers."""
    tid = target.create_transaction() if "{tid}" in uri else None
    path = uri.replace("{tid}", tid or "")
    results, failures = [], []
    try:
        for depth in DEPTHS:
            deep = SHAPES[shape](depth)
            body = FIELD_BODIES.get(name, query_with)(deep) if shape == "field" else deep
            try:
                answer = target.request(method, path, body)
            except NoAnswer as e:
                failures.append(f"depth {depth}: {e}")
                break  # a crash: deeper bodies crash too
            wrong = problems_of(path, answer, expected=400)
            results.append(f"depth {depth}: {answer.status}")
            if wrong:
                failures.append(f"depth {depth}: {', '.join(wrong)}: {excerpt(message_of(answer))}")
            if not target.server.answers():
                failures.append(f"depth {depth}: the server stopped answering; {target.death_note()}")
                break
    finally:
        if tid:
            target.delete_transaction(tid)
    assert not failures, f"{method} {uri} ({shape}): " + "; ".join(failures) + f" (before: {', '.join(results)})"
    assert_alive(target.server)


# --- 2. fuzzing ----------------------------------------------------------------------------------------------

class Findings:
    """Every kind of failure met while fuzzing, each with its count and shortest example."""

    def __init__(self, target: Target):
        self.target = target
        self.requests = 0
        self.statuses: Dict[Any, int] = {}
        self.kinds: Dict[Tuple[str, str], Tuple[int, str, int]] = {}

    def add(self, route: Optional[str], problem: str, method: str, uri: str, body: bytes, detail: str) -> None:
        key = (route or "core", problem)
        example = f"{method} {excerpt(uri, 200)} body={excerpt(body, 200)} -> {detail}"
        size = len(uri) + len(body)
        count, old, old_size = self.kinds.get(key, (0, example, size))
        if size < old_size:
            old, old_size = example, size
        self.kinds[key] = (count + 1, old, old_size)

    def request(self, method: str, uri: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None,
                check_alive: bool = True) -> Optional[Answer]:
        self.requests += 1
        route = route_of(uri)
        try:
            answer = self.target.request(method, uri, body, headers)
        except NoAnswer as e:
            self.statuses["no answer"] = self.statuses.get("no answer", 0) + 1
            self.add(route, "no answer", method, uri, body, str(e))
            return None
        self.statuses[answer.status] = self.statuses.get(answer.status, 0) + 1
        if method == "POST" and route == "push-create":
            record_transaction(self.target, answer)
        for problem in problems_of(uri, answer):
            message = message_of(answer)
            needle = TRACEBACK if "traceback" in problem else OS_ERROR if OS_ERROR in problem else None
            text = answer.body.decode("utf-8", "replace")
            if needle and needle in text:  # the words around it, not the start of a long body
                at = text.find(needle)
                message = " ".join(text[max(0, at - 150):at + 60].split())
            self.add(route, f"{problem}: {normalize(message)}", method, uri, body,
                     f"{answer.status} {excerpt(message, 300)}")
        if check_alive and not self.target.server.answers():
            self.add(route, "the server stopped answering", method, uri, body, self.target.death_note())
        return answer

    def report(self) -> str:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items(), key=str))
        lines = [f"{self.requests} requests (answers {statuses}), {len(self.kinds)} kind(s) of failure:"]
        for (route, problem), (count, example, _) in sorted(self.kinds.items()):
            lines.append(f"- [{route}] {problem} (x{count})\n    e.g. {example}")
        return "\n".join(lines)

    def assert_none(self) -> None:
        assert_alive(self.target.server)
        assert not self.kinds, self.report()


def normalize(message: str) -> str:
    """A message with its variable parts blanked, to group failures by kind."""
    m = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4,8}){3,4}(-[0-9a-f]{8,12})?", "<id>", message)
    m = re.sub(r"'[^']*'|\"[^\"]*\"", "<s>", m)
    m = re.sub(r"\d+", "N", m)
    return excerpt(m, 110)


FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])


def hostile_strings(canary: Path) -> List[str]:
    return [
        "", ".", "..", "../", "/", "//", "../../x/fuzz", "../" * 40 + str(canary / "fuzz-rel")[1:],
        str(canary / "fuzz-abs"), "/etc/passwd", "\\..\\..\\x", "%2e%2e%2f%2e%2e%2fx", "%2e%2e", "%00", "a\x00b",
        "\x00", "x" * 300, "x" * 5000, "a" * 255, "a" * 256, "é/ü/ø", "日本語/../..", "\u202e", "\ud800", "\ufeff",
        "CON", " ", "\n", "\r\n", "\t", "?", "#", "&", "%", "%zz", "%FF", "~", "$HOME", "<script>", "'", '"',
        "0" * 5000, "9" * 5000, "-1", "1e3", " 1", "1 ", "+1", "0x10", "18446744073709551616",
        "18446744073709551615", "00", "１", "٣", "NaN", "none", "gzip", "GZIP", "Study", "Instance", "closed",
        "closed-pull", "no-such-peer", UNKNOWN_UUID,
    ]


def text_strategy(canary: Path):
    return st.one_of(
        st.sampled_from(hostile_strings(canary)),
        st.text(max_size=40),
        st.lists(st.sampled_from(["..", ".", "/", "x", "%2e", "%2f", "\\", "\x00", "é", "%", "?"]),
                 max_size=10).map("".join),
        st.integers(min_value=0, max_value=2**70).map(str),
        st.text(alphabet="0123456789abcdef-", max_size=60),
    )


def json_strategy(canary: Path, keys: List[str]):
    text = text_strategy(canary)
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text,
                       st.sampled_from([2**64, -(2**63), 10**30, 1e308, -0.0]))
    return st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(keys), text), children, max_size=5)), max_leaves=25)


KEYS = ["Level", "ID", "Resources", "Peer", "Compression", "Priority", "Originator", "SenderTransferID",
        "Instances", "Buckets", "Size", "MD5", "Offset"]


def raw_body_strategy(canary: Path):
    return st.one_of(
        st.binary(max_size=600),
        st.text(max_size=300).map(lambda t: t.encode("utf-8")),
        st.sampled_from([
            b"", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf[]", b"null", b"NaN", b"-Infinity", b"[1,]", b"[] []",
            b'{"a":1,"a":2}', b"1" + b"0" * 5000, b'"' + b"a" * 5000 + b'"', b'"\\ud800"', b"[" * 400,
            b"]" * 10, '[{"Level": "Study", "ID": "x"}]'.encode("utf-16"), b'[{"Level": "Study", "ID": "x"}]' * 2,
            b"\x1f\x8b\x08\x00" + b"\x00" * 20, gzip.compress(b"[]"),
        ]),
        json_strategy(canary, KEYS).map(lambda v: json.dumps(v).encode()),
    )


def paths_of(value: Any, prefix: Tuple = ()) -> List[Tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths_of(v, prefix + (i,))
    return out


def mutate(data, value: Any, canary: Path, least: int = 1) -> Any:
    """One to three random changes of a JSON value: a node replaced (by any JSON value, a hostile string, a
    decimal string), removed, given an extra key or item, duplicated, or wrapped in a list."""
    value = copy.deepcopy(value)
    replacements = st.one_of(json_strategy(canary, KEYS), text_strategy(canary))
    for _ in range(data.draw(st.integers(least, 3), label="mutations")):
        path = data.draw(st.sampled_from(paths_of(value)), label="path")
        op = data.draw(st.sampled_from(["replace", "replace", "text", "delete", "add", "duplicate", "wrap"]),
                       label="op")
        if not path:
            if op in ("replace", "text", "delete"):
                value = data.draw(replacements, label="new root")
            elif op == "wrap":
                value = [value]
            continue
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        node = parent[key]
        if op == "replace":
            parent[key] = data.draw(replacements, label="new value")
        elif op == "text":
            parent[key] = data.draw(text_strategy(canary), label="new text")
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(node, dict):
            node[data.draw(st.one_of(st.sampled_from(KEYS), text_strategy(canary)), label="key")] = \
                data.draw(replacements, label="new item")
        elif op == "add" and isinstance(node, list):
            node.append(data.draw(replacements, label="new item"))
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(node))
        elif op == "wrap":
            parent[key] = [node]
        else:
            parent[key] = data.draw(replacements, label="new value")
    return value


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def no_surrogates(text: str) -> str:
    """Lone surrogates (JSON allows them) cannot be UTF-8 in a URL: replaced by U+FFFD."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def q(text: str, safe: str = "") -> str:
    return quote(no_surrogates(text), safe=safe)


def segment(data, text: str) -> str:
    """A path segment: URL-encoded whole, or with the characters that change a path's shape left as they
    are (``/``, ``..``, ``%``, ``?``, ``#``...). Never raw non-ASCII (not valid in a request line) nor a
    percent sequence that decodes to invalid UTF-8 (the Python plugin's SDK answers 500 before any plugin
    code runs: not ours)."""
    if data.draw(st.booleans(), label="encoded"):
        return q(text)
    raw = q(text, safe="/%?#&=;:@!$'()*+,~.[]")
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return q(text)
    return raw


def record_transaction(target: Target, answer: Optional[Answer]) -> None:
    if answer is not None and answer.status == 200:
        try:
            tid = json.loads(answer.body)["ID"]
        except (ValueError, KeyError, TypeError):
            return
        target.created.append((target.generation, tid))


JSON_ROUTES = [("lookup", "/transfers/lookup"), ("pull", "/transfers/pull"), ("send", "/transfers/send"),
               ("push-create", "/transfers/push"), ("holds", "/transfers/holds"),
               ("metadata", "/transfers/metadata")]


def test_fuzz_json_bodies(target):
    """Any JSON value, any bytes, any text as the body of every route that parses one."""
    found = Findings(target)

    @settings(max_examples=450, **FUZZ)
    @given(route=st.sampled_from(JSON_ROUTES), body=raw_body_strategy(target.canary))
    def run(route, body):
        found.request("POST", route[1], body)

    run()
    found.assert_none()


def test_fuzz_mutated_lookups(target):
    found = Findings(target)
    valid = [[{"Level": "Study", "ID": target.study}],
             [{"Level": "Instance", "ID": i} for i in target.instance_ids],
             [{"Level": "Patient", "ID": "x"}, {"Level": "Series", "ID": target.study}]]

    @settings(max_examples=150, **FUZZ)
    @given(data=st.data())
    def run(data):
        base = data.draw(st.sampled_from(valid), label="base")
        found.request("POST", "/transfers/lookup", dumps(mutate(data, base, target.canary)))

    run()
    found.assert_none()


@pytest.mark.parametrize("route", ["pull", "send"])
def test_fuzz_mutated_transfer_queries(target, route):
    """Mutations of a valid query; its peer is unknown or has a closed port, so no job can succeed."""
    found = Findings(target)

    @settings(max_examples=150, **FUZZ)
    @given(data=st.data())
    def run(data):
        base = {"Resources": [{"Level": "Study", "ID": target.study}],
                "Peer": data.draw(st.sampled_from(["closed", "closed-pull", "no-such-peer"]), label="peer"),
                "Compression": data.draw(st.sampled_from(["gzip", "none"]), label="compression")}
        if data.draw(st.booleans(), label="priority"):
            base["Priority"] = 3
        body = mutate(data, base, target.canary)
        if isinstance(body, dict) and body.get("Peer") == "self":
            body["Peer"] = "closed"
        found.request("POST", f"/transfers/{route}", dumps(body))

    run()
    found.assert_none()


SIZES = ["9" * 5000, "1" + "0" * 4400, "18446744073709551616", "18446744073709551615", "-1", " 1", "00", "1e3"]


def descriptor_strategy(target: Target):
    """Self-consistent descriptors (each instance's ID used again by its bucket) with hostile IDs, sizes and
    MD5s, so that validation lets many through to the download area."""
    traversal = st.sampled_from([str(target.canary / "fuzz-abs"), "../../x/fuzz-rel", "../" * 40 + str(
        target.canary / "fuzz-deep")[1:], "../push-fuzz/x", "../fuzz-up", "d/é/x", "a" * 300])
    ids = st.one_of(st.sampled_from(target.instance_ids), traversal, text_strategy(target.canary))
    sizes = st.one_of(st.sampled_from(["0", "0", "1", "5"]), st.sampled_from(SIZES), st.integers(0, 64).map(str))
    md5s = st.sampled_from([EMPTY_MD5, HELLO_MD5, EMPTY_MD5.upper(), "x" * 32, "", EMPTY_MD5 + "0"])

    @st.composite
    def build(draw):
        instances = draw(st.lists(st.tuples(ids, sizes, md5s), min_size=1, max_size=3))
        return {"Instances": [{"ID": i, "Size": s, "MD5": m} for i, s, m in instances],
                "Buckets": [[{"ID": i, "Offset": "0", "Size": s}] for i, s, _ in instances if s != "0"],
                "Compression": draw(st.sampled_from(["none", "gzip"]))}

    return build()


def test_fuzz_mutated_push_descriptors(target):
    """Mutations of a valid descriptor of the server's instances, and self-consistent descriptors with
    hostile IDs and sizes (then, once created, each bucket PUT with bytes of its length, and a commit)."""
    found = Findings(target)
    structured = descriptor_strategy(target)

    @settings(max_examples=250, **FUZZ)
    @given(data=st.data())
    def run(data):
        if data.draw(st.booleans(), label="structured"):
            body = mutate(data, data.draw(structured, label="descriptor"), target.canary, least=0)
        else:
            n = data.draw(st.integers(1, len(target.instances)), label="instances")
            base = valid_descriptor(target.instances[:n], data.draw(st.sampled_from(["none", "gzip"]), label="c"),
                                    split=data.draw(st.booleans(), label="split"))
            body = mutate(data, base, target.canary)
        answer = found.request("POST", "/transfers/push", dumps(body))
        if answer is None or answer.status != 200 or not data.draw(st.booleans(), label="fill"):
            return
        tid = json.loads(answer.body)["ID"]
        for index, bucket in enumerate(body["Buckets"]):
            length = sum(int(c["Size"]) for c in bucket)
            payload = b"x" * length if length <= 1 << 20 else b"x"
            if body["Compression"] == "gzip":
                payload = gzip.compress(payload)
            found.request("PUT", f"/transfers/push/{tid}/{index}", payload)
        found.request("POST", f"/transfers/push/{tid}/commit")
        found.request("DELETE", f"/transfers/push/{tid}")  # 200, or 404 if the commit ended it
        target.created = [c for c in target.created if c[1] != tid]

    run()
    found.assert_none()


def test_fuzz_push_transaction_paths(target):
    """PUT, commit and DELETE with random transaction IDs and bucket indexes (two real transactions among
    them, one per compression), with random bodies."""
    found = Findings(target)
    real = {c: target.create_transaction(c) for c in ("none", "gzip")}
    first = target.files[target.instances[0]["ID"]]
    text = text_strategy(target.canary)
    tids = st.one_of(st.sampled_from(sorted(real.values())), st.uuids().map(str), text)
    buckets = st.one_of(st.integers(0, 5).map(str), st.sampled_from(["9" * 5000, "1" + "0" * 4400, "00",
                                                                      "18446744073709551616", "-1", "1e3"]), text)
    bodies = st.one_of(st.binary(max_size=300), st.sampled_from([b"", first, first[:-1], first + b"x",
                                                                gzip.compress(first), gzip.compress(first)[:-4],
                                                                gzip.compress(first) + b"junk"]))

    @settings(max_examples=330, **FUZZ)
    @given(data=st.data())
    def run(data):
        tid = segment(data, data.draw(tids, label="tid"))
        kind = data.draw(st.sampled_from(["put", "put", "commit", "delete"]), label="kind")
        if kind == "put":
            uri = f"/transfers/push/{tid}/{segment(data, data.draw(buckets, label='bucket'))}"
            found.request("PUT", uri, data.draw(bodies, label="body"))
        elif kind == "commit":
            found.request("POST", f"/transfers/push/{tid}/commit", data.draw(bodies, label="body"))
        else:
            found.request("DELETE", f"/transfers/push/{tid}")

    try:
        run()
    finally:
        for tid in real.values():
            target.delete_transaction(tid)
    found.assert_none()


def test_fuzz_chunks(target):
    """Random lists of instance IDs with a valid query, and real IDs with random query strings (the IDs are
    checked first: random ones rarely let the query be read)."""
    found = Findings(target)
    text = text_strategy(target.canary)
    real = st.sampled_from(target.instance_ids)
    ids = st.one_of(real, real.map(str.upper), text)
    odd = st.sampled_from(["9" * 5000, "1" + "0" * 4400, "-1", "1e3", " 1", "", "0x10", "18446744073709551616"])
    numbers = st.one_of(odd, st.integers(0, 2**65).map(str), text)
    values = {"offset": numbers, "size": numbers, "compression": st.one_of(st.sampled_from(["gzip", "none"]), text)}

    @settings(max_examples=250, **FUZZ)
    @given(data=st.data())
    def run(data):
        if data.draw(st.booleans(), label="random IDs"):
            joined = ".".join(data.draw(st.lists(ids, min_size=1, max_size=4), label="ids"))
            uri = "/transfers/chunks/" + segment(data, joined)
            if data.draw(st.booleans(), label="query"):
                uri += f"?offset=0&size=10&compression={data.draw(st.sampled_from(['gzip', 'none']))}"
            found.request("GET", uri)
            return
        uri = "/transfers/chunks/" + ".".join(data.draw(st.lists(real, min_size=1, max_size=3), label="ids"))
        args = []
        for key in data.draw(st.lists(st.sampled_from(["offset", "size", "compression", "other"]), min_size=1,
                                      max_size=4), label="args"):
            value = data.draw(values.get(key, text), label=key)
            args.append(f"{key}={q(value) if data.draw(st.booleans(), label='q') else q(value, safe='/%')}")
        if data.draw(st.booleans(), label="raw query"):
            args.append(q(data.draw(text, label="query"), safe="=&%"))
        found.request("GET", uri + "?" + "&".join(args))

    run()
    found.assert_none()


def test_fuzz_jobs(target):
    """``/jobs``, ``/jobs/{id}`` and ``/jobs/{id}/{action}``: any method, ID, action, query and body."""
    found = Findings(target)
    ours = target.failed_job()
    text = text_strategy(target.canary)
    job_ids = st.one_of(st.just(ours), st.uuids().map(str), text)
    actions = st.one_of(st.sampled_from(["pause", "resume", "cancel", "resubmit"]), text)
    methods = st.sampled_from(["GET", "POST", "PUT", "DELETE"])

    @settings(max_examples=220, **FUZZ)
    @given(data=st.data())
    def run(data):
        form = data.draw(st.sampled_from(["list", "job", "action", "action"]), label="form")
        if form == "list":
            uri = "/jobs"
        elif form == "job":
            uri = f"/jobs/{segment(data, data.draw(job_ids, label='id'))}"
        else:
            uri = f"/jobs/{segment(data, data.draw(job_ids, label='id'))}/{segment(data, data.draw(actions))}"
        if data.draw(st.booleans(), label="query"):
            uri += "?" + data.draw(st.sampled_from(["expand", "expand=false", "expand=0", "limit=1"]) | text.map(
                lambda t: q(t, safe="=&")), label="q")
        body = data.draw(st.one_of(st.just(b""), raw_body_strategy(target.canary)), label="body")
        found.request(data.draw(methods, label="method"), uri, body)

    run()
    found.assert_none()


def test_fuzz_methods_and_queries(target):
    """Every route with any of the SDK's methods, a random query string and a random body."""
    found = Findings(target)
    tid = target.create_transaction()
    text = text_strategy(target.canary)
    uris = ["/plugins", "/plugins/transfers", "/transfers/capabilities", "/transfers/holds",
            "/transfers/peers", "/jobs", "/transfers/lookup", "/transfers/pull",
            "/transfers/send", "/transfers/push", f"/transfers/push/{tid}", f"/transfers/push/{tid}/0",
            f"/transfers/push/{tid}/commit", f"/transfers/push/{tid}/metadata", "/transfers/metadata",
            f"/transfers/chunks/{target.instance_ids[0]}",
            f"/jobs/{UNKNOWN_UUID}", f"/jobs/{UNKNOWN_UUID}/pause"]

    @settings(max_examples=170, **FUZZ)
    @given(data=st.data())
    def run(data):
        uri = data.draw(st.sampled_from(uris), label="uri")
        if data.draw(st.booleans(), label="query"):
            uri += "?" + q(data.draw(text, label="q"), safe="=&")
        method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), label="method")
        if method == "DELETE" and uri.startswith("/transfers/push/"):
            method = "GET"  # keep the transaction for the next examples
        body = data.draw(st.one_of(st.just(b""), raw_body_strategy(target.canary)), label="body")
        found.request(method, uri, body)

    try:
        run()
    finally:
        target.delete_transaction(tid)
    found.assert_none()


def test_fuzzing_left_nothing_outside_the_download_area(target):
    """Once every transaction the fuzzers created is deleted: no file in the canaries, no *.dcm in the
    workdir outside the download area, an empty download area."""
    refused = []
    for generation, tid in target.created:
        a = target.request("DELETE", f"/transfers/push/{tid}")
        if a.status != 200 and not (a.status == 404 and generation != target.generation):
            refused.append(f"{tid}: {a.status} {excerpt(message_of(a))}")
    strays = target.stray_files()
    target.remove_strays()
    deadline = time.monotonic() + 10
    while area_files(target.server) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = area_files(target.server)
    assert not strays and not left and not refused, (
        f"{len(target.created)} transactions created by the fuzzers; files outside the download area: "
        f"{[str(p) for p in strays]}; left in the download area: {[str(p) for p in left[:20]]}; "
        f"DELETE refused: {refused[:10]}")


# --- 3. explicit traversal cases -------------------------------------------------------------------------------

def hostile_ids(canary: Path) -> Dict[str, str]:
    return {
        "absolute": str(canary / "abs"),
        "relative": "../../x/rel",
        "relative-to-canary": "../" * 40 + str(canary / "rel")[1:],
        "url-encoded": "%2e%2e%2f%2e%2e%2fx%2fenc",
        "long-300": "a" * 300,
        "long-5000": "a" * 5000,
        "nul": "nul\x00byte",
        "non-ascii-dirs": "dossier-é/ü/abs",
    }


ID_KINDS = ["absolute", "relative", "relative-to-canary", "url-encoded", "long-300", "long-5000", "nul",
            "non-ascii-dirs"]


@pytest.mark.parametrize("size", ["0", "5"])
@pytest.mark.parametrize("kind", ID_KINDS)
def test_push_creation_refuses_a_hostile_instance_id(target, kind, size):
    """Refused with 400 and a JSON body; nothing written anywhere, even after a PUT and a commit."""
    instance_id = hostile_ids(target.canary)[kind]
    area_before = area_files(target.server)
    strays_before = target.stray_files()
    descriptor = {
        "Instances": [{"ID": instance_id, "Size": size, "MD5": EMPTY_MD5 if size == "0" else HELLO_MD5}],
        "Buckets": [] if size == "0" else [[{"ID": instance_id, "Offset": "0", "Size": size}]],
        "Compression": "none",
    }
    created = target.request("POST", "/transfers/push", dumps(descriptor))
    events = [f"creation: {created.status} {excerpt(message_of(created), 300)}"]
    if created.status == 200:
        tid = json.loads(created.body)["ID"]
        if size == "5":
            for method, uri, body in (("PUT", f"/transfers/push/{tid}/0", HELLO),
                                      ("POST", f"/transfers/push/{tid}/commit", b"")):
                a = target.request(method, uri, body)
                events.append(f"{method} {uri.rsplit('/', 1)[1]}: {a.status} {excerpt(message_of(a), 200)}")
        target.delete_transaction(tid)
    strays = [p for p in target.stray_files() if p not in strays_before]
    new_in_area = [p for p in area_files(target.server) if p not in area_before]
    target.remove_strays()
    problems = problems_of("/transfers/push", created, expected=400)
    assert not problems and not strays and not new_in_area, (
        f"instance ID {excerpt(instance_id, 80)!r}, Size {size}: {'; '.join(problems)}; "
        f"{' | '.join(events)}; files created: {[str(p) for p in strays + new_in_area]}")
    assert_alive(target.server)


TRANSACTION_IDS = {
    "dotdot": "..",
    "encoded-dotdot": "%2e%2e",
    "encoded-traversal": "..%2F..%2Fjobs",
    "long-5000": "a" * 5000,
    "nul": "%00",
    "nul-inside": "abc%00def",
    "non-ascii": quote("é"),
    "space": "a%20b",
    "unknown-uuid": UNKNOWN_UUID,
}
TRANSACTION_ROUTES = {
    "put": ("PUT", "/transfers/push/{}/0", "push-put"),
    "commit": ("POST", "/transfers/push/{}/commit", "push-commit"),
    "delete": ("DELETE", "/transfers/push/{}", "push-delete"),
}


@pytest.mark.parametrize("kind", sorted(TRANSACTION_IDS))
@pytest.mark.parametrize("route", sorted(TRANSACTION_ROUTES))
def test_transaction_routes_refuse_a_hostile_id(target, route, kind):
    """400 for a malformed transaction ID, 404 for a well-formed unknown UUID, a JSON body, never 5xx.
    (``..`` and NULs change the route Orthanc picks: then a 4xx, JSON unless 405.)"""
    method, pattern, name = TRANSACTION_ROUTES[route]
    uri = pattern.format(TRANSACTION_IDS[kind])
    answer = target.request(method, uri, HELLO if method == "PUT" else b"")
    reached = route_of(uri)
    expected = None
    if reached == name:
        expected = 404 if kind == "unknown-uuid" else 400
    problems = problems_of(uri, answer, expected=expected)
    if not 400 <= answer.status < 500:
        problems.append(f"status {answer.status} is not a 4xx")
    assert not problems, (f"{method} {excerpt(uri, 80)} (reaches {reached}): {', '.join(problems)}: "
                          f"{excerpt(message_of(answer), 300)}")
    assert_alive(target.server)


@pytest.mark.parametrize("index", ["9" * 5000, "1" + "0" * 4400, "18446744073709551616", "99999999999999999999"])
def test_an_enormous_bucket_index_is_refused(target, index):
    tid = target.create_transaction()
    try:
        answer = target.request("PUT", f"/transfers/push/{tid}/{index}", HELLO)
    finally:
        target.delete_transaction(tid)
    problems = problems_of(f"/transfers/push/{tid}/{index}", answer, expected=400)
    assert not problems, f"PUT bucket index of {len(index)} digits: {', '.join(problems)}: " \
                         f"{excerpt(message_of(answer), 300)}"
    assert_alive(target.server)


CHUNK_IDS = {
    "hex-300": "a" * 300,
    "hex-5000": "a" * 5000,
    "zeros-5000": "0" * 5000,
    "letters-300": "x" * 300,
    "one-letter": "a",
    "dash": "-",
    "nul": "a%00b",
    "non-ascii": quote("é"),
    "encoded-traversal": "%2e%2e%2fsystem",
    "empty-between-dots": "{id}..{id}",
    "uppercase": "{ID}",
    "unknown-well-formed": "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff",
}
CHUNK_QUERIES = {
    "offset-5000-digits": "offset=" + "9" * 5000,
    "size-5000-digits": "size=" + "9" * 5000,
    "offset-4401-digits": "offset=1" + "0" * 4400,
    "size-2^64": "size=18446744073709551616",
}


@pytest.mark.parametrize("kind", sorted(CHUNK_IDS))
def test_chunks_refuse_odd_instance_ids(target, kind):
    """400 for an ID that is not an Orthanc ID (404 only for a well-formed unknown one), never 5xx."""
    real = target.instance_ids[0]
    ids = CHUNK_IDS[kind].replace("{id}", real).replace("{ID}", real.upper())
    uri = f"/transfers/chunks/{ids}"
    answer = target.request("GET", uri)
    expected = None
    if route_of(uri) == "chunks":
        expected = 404 if kind == "unknown-well-formed" else 400
    problems = problems_of(uri, answer, expected=expected)
    if not 400 <= answer.status < 500:
        problems.append(f"status {answer.status} is not a 4xx")
    assert not problems, f"GET {excerpt(uri, 80)}: {', '.join(problems)}: {excerpt(message_of(answer), 300)}"
    assert_alive(target.server)


@pytest.mark.parametrize("kind", sorted(CHUNK_QUERIES))
def test_chunks_refuse_enormous_numbers(target, kind):
    uri = f"/transfers/chunks/{target.instance_ids[0]}?{CHUNK_QUERIES[kind]}"
    answer = target.request("GET", uri)
    problems = problems_of(uri, answer, expected=400)
    assert not problems, f"GET chunks?{kind}: {', '.join(problems)}: {excerpt(message_of(answer), 300)}"
    assert_alive(target.server)


# --- 4. an oversized descriptor -------------------------------------------------------------------------------

def huge_descriptor(n: int) -> bytes:
    md5 = b"0123456789abcdef0123456789abcdef"
    ids = [b"%08x-00000000-00000000-00000000-00000000" % i for i in range(n)]
    instances = b",".join(b'{"ID":"%s","Size":"1000","MD5":"%s"}' % (i, md5) for i in ids)
    buckets = b",".join(b'[{"ID":"%s","Offset":"0","Size":"1000"}]' % i for i in ids)
    return b'{"Instances":[' + instances + b'],"Buckets":[' + buckets + b'],"Compression":"none"}'


def test_an_oversized_push_descriptor_is_refused_with_bounded_memory(module_orthanc_factory):
    """10^6 instances (about 184 MB): a 4xx JSON error, and Orthanc's resident memory afterwards less than
    50 MB above what it was before."""
    server = module_orthanc_factory("hostile-big")
    try:
        small = dumps(valid_descriptor([{"ID": "a", "Size": "0", "MD5": EMPTY_MD5}]))
        warm = http(server.http_port, "POST", "/transfers/push", small)  # the plugin's code paths loaded
        if warm.status == 200:
            http(server.http_port, "DELETE", f"/transfers/push/{json.loads(warm.body)['ID']}")
        body = huge_descriptor(10**6)
        size_mb = len(body) / MB
        pid = server.process.pid
        before = process_memory_mb(pid)
        started = time.monotonic()
        answer = http(server.http_port, "POST", "/transfers/push", body, timeout=600)
        elapsed = time.monotonic() - started
        del body
        after = process_memory_mb(pid)
        deadline = time.monotonic() + 5
        while after - before >= 50 and time.monotonic() < deadline:
            time.sleep(0.2)
            after = min(after, process_memory_mb(pid))
        if answer.status == 200:
            http(server.http_port, "DELETE", f"/transfers/push/{json.loads(answer.body)['ID']}")
        assert_alive(server)
        problems = problems_of("/transfers/push", answer)
        if not 400 <= answer.status < 500:
            problems.append(f"status {answer.status}, not a 4xx")
        if after - before >= 50:
            problems.append(f"resident memory {before:.0f} MB before, {after:.0f} MB after")
        assert not problems, (f"POST /transfers/push of 10^6 instances ({size_mb:.0f} MB) "
                              f"answered in {elapsed:.1f} s: {'; '.join(problems)}: "
                              f"{excerpt(message_of(answer), 200)}")
    finally:
        server.stop()
