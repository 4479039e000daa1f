"""Start-up with a fake Orthanc boundary: configuration errors, registered routes, cache invalidation."""

import hashlib
import json
import re
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from transfers_plugin import __version__
from transfers_plugin.app import Application, start
from transfers_plugin.errors import NotFound
from transfers_plugin.routes import Request, Response
from transfers_plugin.transport import HttpAnswer

ID1 = "27f7126f-4f66fb14-03f4081b-f9341db2-53925988"
ID2 = "5e0bf3b7-8a3c5a2f-16d6b2e0-1b6a7d3c-0f2b4e91"
STUDY = "0f0f0f0f-4f66fb14-03f4081b-f9341db2-53925988"


class FakeApi:
    """The methods of ``OrthancApi`` that the application uses, over dicts."""

    def __init__(self, configuration: Dict[str, Any]):
        self.config = configuration
        self.errors: List[str] = []
        self.warnings: List[str] = []
        self.infos: List[str] = []
        self.routes: Dict[str, Callable[[Request], Response]] = {}
        self.files: Dict[str, bytes] = {ID1: b"first instance", ID2: b"second instance, longer"}
        self.children = {("Study", STUDY): [ID2, ID1]}
        self.reads: List[str] = []
        self.peers: List[Tuple[str, str, Dict[str, str]]] = []
        self.lifecycle: List[Tuple[Callable[[], None], Callable[[], None]]] = []
        self.global_properties: Dict[int, str] = {}
        self.explorer_scripts: List[str] = []
        self.orthanc_version = (1, 10, 1)

    def configuration(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self.config))

    def log_error(self, message: str) -> None:
        self.errors.append(message)

    def log_warning(self, message: str) -> None:
        self.warnings.append(message)

    def log_info(self, message: str) -> None:
        self.infos.append(message)

    def register_route(self, pattern: str, handler: Callable[[Request], Response]) -> None:
        assert pattern not in self.routes, f"{pattern} registered twice"
        self.routes[pattern] = handler

    def register_lifecycle(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        self.lifecycle.append((on_started, on_stopped))

    def extend_explorer(self, javascript: str) -> None:
        self.explorer_scripts.append(javascript)

    def get_global_property(self, property_id: int, default: str = "") -> str:
        return self.global_properties.get(property_id, default)

    def set_global_property(self, property_id: int, value: str) -> None:
        self.global_properties[property_id] = value

    def core_get_json(self, uri: str) -> Any:
        raise NotFound(uri)

    def core_post(self, uri: str, body: bytes) -> bytes:
        raise NotFound(uri)

    def core_request(self, method: str, uri: str, body: bytes = b"") -> bytes:
        raise NotFound(uri)

    def registered_peers(self):
        return self.peers

    def orthanc_version_at_least(self, major: int, minor: int, revision: int) -> bool:
        return (major, minor, revision) <= self.orthanc_version

    def core_plugins(self) -> List[str]:
        return ["python"]

    def child_instances(self, level: str, resource_id: str) -> List[str]:
        try:
            return self.children[(level, resource_id)]
        except KeyError:
            raise NotFound(f"Unknown {level}") from None

    def attachment_info(self, instance_id: str) -> Tuple[int, Optional[str]]:
        if instance_id not in self.files:
            raise NotFound("Unknown instance")
        data = self.files[instance_id]
        return len(data), hashlib.md5(data).hexdigest()

    def read_dicom(self, instance_id: str) -> bytes:
        self.reads.append(instance_id)
        if instance_id not in self.files:
            raise NotFound("Unknown instance")
        return self.files[instance_id]

    # -- helpers for the tests -----------------------------------------------------------------------

    def call(self, method: str, uri: str, args=None, body: bytes = b"") -> Response:
        """What Orthanc does: the first registered pattern matching the whole URI gets the request."""
        matches = [(p, h) for p, h in self.routes.items() if re.fullmatch(p, uri)]
        assert len(matches) == 1, f"{uri} matches {len(matches)} routes"
        pattern, handler = matches[0]
        groups = re.fullmatch(pattern, uri).groups()
        return handler(Request(method, uri, groups, args or {}, {}, body))


GOOD_CONFIG = {
    "Transfers": {"Threads": 2, "CacheSize": 1, "PeerConnectivityTimeout": 3},
    "OrthancPeers": {"remote": {"Url": "http://remote:8042", "RemoteSelf": "me"}, "plain": ["http://plain:8042"]},
}


@pytest.fixture
def api(tmp_path) -> FakeApi:
    return FakeApi(dict(GOOD_CONFIG, StorageDirectory=str(tmp_path)))


@pytest.fixture
def app(api) -> Application:
    application = start(api)
    assert application is not None
    return application


# --- bad configuration ---------------------------------------------------------------------------------

def test_bad_configuration_logs_every_problem_and_registers_nothing():
    api = FakeApi({
        "Transfers": {"Threads": "4", "CacheSize": 0, "BucketSize": 2.5},
        "HttpTimeout": -1,
        "OrthancPeers": {"broken": ["http://x", "user"]},
    })
    assert start(api) is None
    assert api.routes == {}
    assert api.lifecycle == [] and api.explorer_scripts == []
    text = "\n".join(api.errors)
    for name in ("Transfers.Threads", "Transfers.CacheSize", "Transfers.BucketSize", "HttpTimeout",
                 "OrthancPeers.broken"):
        assert name in text, name
    assert len(api.errors) >= 5
    assert any("disabled" in e for e in api.errors)


def test_one_bad_value_is_enough_to_register_nothing():
    api = FakeApi({"Transfers": {"MaxHttpRetries": -1}})
    assert start(api) is None
    assert api.routes == {} and api.lifecycle == []
    assert any("Transfers.MaxHttpRetries" in e for e in api.errors)


# --- good configuration --------------------------------------------------------------------------------

def test_good_configuration_registers_the_routes_and_the_lifecycle(api, app):
    assert api.errors == []
    for uri in (f"/transfers/chunks/{ID1}.{ID2}", "/transfers/chunks/ab", "/transfers/lookup", "/transfers/peers",
                "/plugins", "/plugins/transfers", "/transfers/capabilities", "/transfers/holds",
                "/transfers/metadata", f"/transfers/push/{ID1}/metadata"):
        assert sum(1 for p in api.routes if re.fullmatch(p, uri)) == 1, uri
    assert not any(re.fullmatch(p, "/transfers/chunks/a/b") for p in api.routes)
    assert len(api.lifecycle) == 1
    assert len(api.explorer_scripts) == 1 and "Transfers accelerator" in api.explorer_scripts[0]
    assert any(__version__ in w for w in api.warnings)  # a start-up line in the log
    assert app.config.threads == 2 and app.config.cache_size_bytes == 1024 * 1024
    assert app.source.cache.capacity == 1024 * 1024


def test_unknown_options_are_logged_as_warnings(tmp_path):
    api = FakeApi({"Transfers": {"Treads": 3}, "StorageDirectory": str(tmp_path)})
    assert start(api) is not None
    assert any("Transfers.Treads" in w for w in api.warnings)
    assert api.errors == []


def test_originator_is_a_fresh_uuid_per_start(api):
    a, b = start(api), start(FakeApi(api.config))
    assert str(uuid.UUID(a.originator)) == a.originator
    assert a.originator != b.originator


def test_configured_originator_is_the_same_for_every_node_and_start_but_the_journal_owner_is_not(api):
    config = dict(api.config, Transfers={"Originator": "site-cluster"})
    api_a = FakeApi(config)
    a, b = start(api_a), start(FakeApi(config))
    assert a.originator == b.originator == "site-cluster"
    assert a.run_id != b.run_id and a.receiver.journal.owner == a.run_id
    lookup = api_a.call("POST", "/transfers/lookup", body=json.dumps([{"Level": "Study", "ID": STUDY}]).encode())
    assert json.loads(lookup.body)["Originator"] == "site-cluster"


def test_registered_chunks_route_serves_bytes(api, app):
    r = api.call("GET", f"/transfers/chunks/{ID1}.{ID2}", {"offset": "6", "size": "12"})
    assert r.status == 200 and r.content_type == "application/octet-stream"
    assert r.body == (api.files[ID1] + api.files[ID2])[6:18]


def test_registered_lookup_route(api, app):
    body = json.dumps([{"Level": "Study", "ID": STUDY}]).encode()
    r = api.call("POST", "/transfers/lookup", body=body)
    assert r.status == 200
    answer = json.loads(r.body)
    assert answer["Originator"] == app.originator
    assert [i["ID"] for i in answer["Instances"]] == sorted([ID1, ID2])
    assert answer["TotalSize"] == str(len(api.files[ID1]) + len(api.files[ID2]))
    assert api.reads == []  # the MD5 came from the attachment records


def test_registered_routes_answer_errors_as_json(api, app):
    r = api.call("GET", "/transfers/chunks/" + "ab" * 3, {})
    assert r.status == 400
    assert json.loads(r.body)["HttpStatus"] == 400
    r = api.call("GET", "/transfers/chunks/" + "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff", {})
    assert r.status == 404
    assert json.loads(r.body)["HttpStatus"] == 404
    r = api.call("DELETE", "/transfers/lookup")
    assert r.status == 405 and r.headers["Allow"] == "POST"


def test_registered_plugins_routes(api, app):
    assert json.loads(api.call("GET", "/plugins").body) == ["python", "transfers"]
    info = json.loads(api.call("GET", "/plugins/transfers").body)
    assert info["ID"] == "transfers" and info["Version"] == __version__


def test_a_replaced_instance_is_served_fresh_without_any_notification(api, app):
    # A part: the instance stays cached (the rest remains to be served).
    assert api.call("GET", f"/transfers/chunks/{ID1}", {"offset": "0", "size": "5"}).body == b"first"
    assert ID1 in app.source.cache
    api.files[ID1] = b"re-imported, other bytes"
    assert api.call("GET", f"/transfers/chunks/{ID1}").body == b"re-imported, other bytes"
    assert api.reads == [ID1, ID1]


def test_a_deleted_instance_is_not_served_from_the_cache(api, app):
    api.call("GET", f"/transfers/chunks/{ID1}", {"offset": "0", "size": "5"})  # parts: both stay cached
    api.call("GET", f"/transfers/chunks/{ID2}", {"offset": "0", "size": "5"})
    assert ID1 in app.source.cache and ID2 in app.source.cache
    del api.files[ID1]
    assert api.call("GET", f"/transfers/chunks/{ID1}").status == 404
    assert ID1 not in app.source.cache and ID2 in app.source.cache
    assert api.call("GET", f"/transfers/chunks/{ID2}").body == b"second instance, longer"
    assert api.reads == [ID1, ID2]


# --- peers through the application ---------------------------------------------------------------------

class FakeTransport:
    def __init__(self, answers: Dict[str, HttpAnswer]):
        self.answers = answers
        self.calls: List[Tuple[str, str, str, Optional[float]]] = []

    def request(self, peer, method, uri, *, body=None, headers=None, timeout=None) -> HttpAnswer:
        self.calls.append((peer.name, method, uri, timeout))
        answer = self.answers[peer.name]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_peers_route_probes_every_peer_with_the_connectivity_timeout(api, app):
    api.peers = [("remote", "http://remote:8042/", {"RemoteSelf": "me"}), ("db", "http://db:8042/", {})]
    app.transport = FakeTransport({
        "remote": HttpAnswer(200, {}, b'["transfers"]'),
        "plain": HttpAnswer(200, {}, b'["python"]'),
        "db": ConnectionError("refused"),
    })
    r = api.call("GET", "/transfers/peers")
    assert r.status == 200
    assert json.loads(r.body) == {"db": "disabled", "plain": "disabled", "remote": "bidirectional"}
    assert sorted(app.transport.calls) == [("db", "GET", "/plugins", 3.0), ("plain", "GET", "/plugins", 3.0),
                                           ("remote", "GET", "/plugins", 3.0)]
    assert any("db" in w for w in api.warnings)


def test_peers_installed_without_remote_self(api, app):
    app.transport = FakeTransport({"remote": HttpAnswer(401, {}, b'["transfers"]'),
                                   "plain": HttpAnswer(200, {}, b'["transfers", "python"]')})
    assert json.loads(api.call("GET", "/transfers/peers").body) == {"plain": "installed", "remote": "disabled"}


# --- the download area at start -------------------------------------------------------------------------

def test_sweep_removes_what_no_job_or_transaction_of_this_run_owns_whatever_its_age(api, app):
    """Folders of jobs dropped from the history and of push transactions killed with Orthanc go at the next
    start, even when they are younger than the start itself (a receiver killed and restarted within a
    second); folders of this run's jobs and transactions stay, and so does what the plugin did not name."""
    import uuid

    from transfers_plugin.protocol import PushDescriptor

    root = app.download_root
    root.mkdir(parents=True, exist_ok=True)
    job = app.engine.submit(app.pull_job.name, {"Resources": [], "Peer": "remote", "Compression": "none"})
    live = app.receiver.create(PushDescriptor.from_json({"Instances": [], "Buckets": [], "Compression": "none"}))
    orphans = [str(uuid.uuid4()), f"push-{uuid.uuid4()}"]
    for name in orphans + [job.id, f"push-{live}"]:
        (root / name).mkdir(exist_ok=True)
        (root / name / "x.dcm").write_bytes(b"partial")
    for name in ("notes", "push-not-a-uuid"):  # not named by the plugin: left alone
        (root / name).mkdir()
    (root / "readme.txt").write_text("an administrator's file")
    app.sweep_download_root()
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [job.id, f"push-{live}", "notes", "push-not-a-uuid", "readme.txt"])


def test_a_cluster_node_sweeps_only_its_own_folder_of_the_shared_area(tmp_path):
    """Two nodes share StorageDirectory: each sweeps its node-<identifier> folder, never the other's nor
    what an older layout left in the shared root (that is logged)."""
    import uuid

    shared = tmp_path / "shared"
    nodes = {}
    for name in ("a", "b"):
        api = FakeApi(dict(GOOD_CONFIG, StorageDirectory=str(shared), DatabaseServerIdentifier=f"node-{name}"))
        nodes[name] = (api, start(api))
    root = shared / "transfers-tmp"
    assert nodes["a"][1].download_root == (root / "node-node-a").absolute()
    others = {name: str(uuid.uuid4()) for name in ("b", "old")}
    for folder in (root / "node-node-b" / others["b"], root / others["old"], root / "node-node-a" / "x"):
        folder.mkdir(parents=True)
    orphan = root / "node-node-a" / str(uuid.uuid4())
    orphan.mkdir()
    api_a, app_a = nodes["a"]
    app_a.sweep_download_root()
    assert not orphan.exists()  # its own orphan goes
    assert (root / "node-node-b" / others["b"]).is_dir() and (root / others["old"]).is_dir()
    assert any("earlier layout" in w and str(root) in w for w in api_a.warnings)
