"""docker/: what the compose file declares, what the Dockerfile copies, and two real Orthanc servers started from
the configuration that the orthancteam/orthanc image would give each service (tools.docker_config), adapted
only where a local run must differ, transferring a study each way.

No Docker engine runs here: the image itself is neither built nor run (docker/README.md, "What was checked here").
"""

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from transfer_helpers import assert_same_instances, load_study, study_of, wait_job

from tools import docker_config as dc
from tools.orthanc_launcher import PLUGIN_SCRIPT, REPO_ROOT, default_platform, free_port, python_plugin_library
from transfers_plugin.config import parse_configuration

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
VARIABLES = {"ORTHANC_A_PASSWORD": "secret-of-a", "ORTHANC_B_PASSWORD": "secret-of-b"}
SERVICES = ("orthanc-a", "orthanc-b")


@pytest.fixture(scope="module")
def compose():
    return dc.load_compose(COMPOSE, VARIABLES)


@pytest.fixture(scope="module")
def images():
    return {name: dc.service_configuration(COMPOSE, name, VARIABLES) for name in SERVICES}


@pytest.fixture(scope="module")
def instructions():
    return dc.dockerfile_instructions(DOCKERFILE.read_text())


def host_port(service) -> int:
    (port,) = service["ports"]
    host, _, container = str(port).rpartition(":")
    assert container == "8042"  # Orthanc's HttpPort, which the configuration leaves at its default
    return int(host)


# -- what the compose file declares (docker/README.md) -----------------------------------------------------

def test_two_services_each_with_its_own_volume_for_its_storage(compose, images):
    assert set(compose["services"]) == set(SERVICES)
    volumes = []
    for name in SERVICES:
        storage = images[name].configuration["StorageDirectory"]
        (volume,) = compose["services"][name]["volumes"]
        source, _, target = volume.partition(":")
        assert target == storage == "/var/lib/orthanc/db"
        volumes.append(source)
    assert len(set(volumes)) == 2 and set(volumes) == set(compose["volumes"])


def test_each_service_is_built_from_the_dockerfile_and_published_on_its_own_port(compose):
    for name in SERVICES:
        build = compose["services"][name]["build"]
        assert dc.build_dockerfile(COMPOSE, build) == DOCKERFILE
    assert sorted(host_port(compose["services"][name]) for name in SERVICES) == [8042, 8043]


def test_each_service_declares_the_other_one_peer_in_push_mode_one_in_pull_mode(images):
    parsed = {name: parse_configuration(images[name].configuration) for name in SERVICES}
    for name in SERVICES:
        assert parsed[name].warnings == ()  # every Transfers option is one the plugin knows
    (a_to_b,) = parsed["orthanc-a"].peers.values()
    (b_to_a,) = parsed["orthanc-b"].peers.values()
    assert (a_to_b.name, urlsplit(a_to_b.url).netloc) == ("orthanc-b", "orthanc-b:8042")
    assert (b_to_a.name, urlsplit(b_to_a.url).netloc) == ("orthanc-a", "orthanc-a:8042")
    assert a_to_b.remote_self is None  # A sends to B in push mode
    assert b_to_a.remote_self == "orthanc-b" == a_to_b.name  # B sends to A in pull mode, A knows B by that name
    for peer, other in ((a_to_b, "orthanc-b"), (b_to_a, "orthanc-a")):
        assert images[other].configuration["RegisteredUsers"] == {peer.username: peer.password}
        assert images[other].configuration["AuthenticationEnabled"] is True


def test_the_python_plugin_is_on_and_the_image_s_transfers_plugin_off(images):
    for name in SERVICES:
        image = images[name]
        assert "Python" in image.enabled_plugins and "libOrthancPython.so" in image.libraries
        assert "Transfers" not in image.enabled_plugins and "libOrthancTransfers.so" not in image.libraries
        assert image.configuration["Transfers"]  # the section is there, for the Python plugin
        # Parallel imports: the image's Python plugin (7.1) releases the GIL with AllowThreads.
        assert image.configuration["Python"] == {"AllowThreads": True}
        assert image.configuration["Transfers"]["CommitThreadsCount"] == 4


def test_without_its_switch_the_image_would_load_its_cxx_transfers_plugin_too(compose, instructions):
    """TRANSFERS_PLUGIN_ENABLED=false is what keeps the C++ plugin off: the Transfers section turns it on."""
    environment = dict(dc.dockerfile_env(instructions))
    environment.update(dc.service_environment(compose["services"]["orthanc-a"]))
    assert environment.pop("TRANSFERS_PLUGIN_ENABLED") == "false"
    assert "Transfers" in dc.configuration_from_environment(list(environment.items())).enabled_plugins


def test_passwords_are_required():
    with pytest.raises(dc.DockerConfigError, match="ORTHANC_A_PASSWORD"):
        dc.service_configuration(COMPOSE, "orthanc-a", {"ORTHANC_B_PASSWORD": "x"})


def test_the_readmes_tell_the_ports_and_the_tag(compose, instructions):
    text = (DOCKER / "README.md").read_text()
    for name in SERVICES:
        assert f"localhost:{host_port(compose['services'][name])}" in text
    assert dc.base_image(instructions) in text
    assert "docker/README.md" in (REPO_ROOT / "README.md").read_text()


# -- what the Dockerfile builds ---------------------------------------------------------------------------

def test_the_base_image_is_pinned(instructions):
    assert re.fullmatch(r"orthancteam/orthanc:\d+\.\d+\.\d+", dc.base_image(instructions))


def dockerignore_rules(text):
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, re.compile(pattern_regex(line.lstrip("!").strip().lstrip("/")))))
    return rules


def pattern_regex(pattern):
    """A .dockerignore pattern as a regular expression: Go's filepath.Match plus ``**`` (any folders)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def excluded(rules, path: str) -> bool:
    """Whether the build context leaves ``path`` out: the last pattern matching it or a folder above it wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negated, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negated
    return result


def test_the_dockerignore_matcher():
    rules = dockerignore_rules("*\n!keep\n**/__pycache__\n# c\n")
    assert excluded(rules, ".git/config") and excluded(rules, "README.md")
    assert not excluded(rules, "keep/a/b.py")
    assert excluded(rules, "keep/a/__pycache__/b.pyc")


def test_every_path_the_dockerfile_copies_is_in_the_build_context(compose, instructions):
    context = (COMPOSE.parent / compose["services"]["orthanc-a"]["build"]["context"]).resolve()
    assert context == REPO_ROOT
    rules = dockerignore_rules((context / ".dockerignore").read_text())
    copies = dc.dockerfile_copies(instructions)
    assert copies, "the Dockerfile copies nothing"
    for _word, sources, _destination in copies:
        for source in sources:
            path = context / source
            assert path.exists(), source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            kept = [p for p in files if "__pycache__" not in p.parts and p.suffix != ".pyc"]
            assert kept and not [p for p in kept if excluded(rules, p.relative_to(context).as_posix())]
    assert excluded(rules, ".venv/bin/python") and excluded(rules, ".git/HEAD")


def image_path_to_repo(instructions, image_path: str) -> Path:
    """The repository's file that the Dockerfile copies to ``image_path``."""
    for _word, sources, destination in dc.dockerfile_copies(instructions):
        if image_path.startswith(destination) and len(sources) == 1:
            return REPO_ROOT / sources[0] / image_path[len(destination):]
    raise AssertionError(f"nothing copied to {image_path}")


def test_python_script_is_the_copied_plugin_py(images, instructions):
    for name in SERVICES:
        script = images[name].configuration["PythonScript"]
        assert image_path_to_repo(instructions, script).resolve() == PLUGIN_SCRIPT.resolve()


def test_the_image_installs_the_dependencies_of_pyproject(instructions):
    block = re.search(r"^dependencies = \[(.*?)\]", (REPO_ROOT / "pyproject.toml").read_text(), re.M | re.S)
    dependencies = re.findall(r'"([^"]+)"', block.group(1))
    assert dependencies
    installs = " ".join(rest for word, rest in instructions if word == "RUN" and "pip install" in rest)
    for dependency in dependencies:  # e.g. requests>=2.25: the same lower bound in the image
        assert dependency in installs, dependency
    zstd = re.search(r"^zstd = \[(.*?)\]", (REPO_ROOT / "pyproject.toml").read_text(), re.M | re.S)
    for dependency in re.findall(r'"([^"]+)"', zstd.group(1)):  # the optional codec, in the image too
        assert dependency in installs, dependency


# -- two real servers from the image's configuration ------------------------------------------------------

def changed_paths(before, after, path=()):
    paths = set()
    for key in set(before) | set(after):
        b, a = before.get(key), after.get(key)
        if isinstance(b, dict) and isinstance(a, dict):
            paths |= changed_paths(b, a, path + (key,))
        elif key not in before or key not in after or a != b:
            paths.add(path + (key,))
    return paths


def localize(configuration, name, ports, tmp_path):
    """What must differ on this machine: ports, storage, the Python plugin's library and the plugin's path (the
    file the Dockerfile copies, checked above), the peers' host names. The image's plugins folders hold the
    libraries it enabled (GDCM and Orthanc Explorer 2 too); here only the Python plugin is installed."""
    local = {k: v for k, v in configuration.items() if k != "OrthancPeers"}
    storage = str(tmp_path / f"{name}-db")
    local.update({
        "HttpPort": ports[name], "DicomPort": free_port(),
        "StorageDirectory": storage, "IndexDirectory": storage,  # in the image the index defaults to the storage
        "Plugins": [python_plugin_library(default_platform())], "PythonScript": str(PLUGIN_SCRIPT),
    })
    peers = {}
    for peer, entry in configuration["OrthancPeers"].items():
        host = urlsplit(entry["Url"]).hostname
        peers[peer] = {**entry, "Url": f"http://127.0.0.1:{ports[host]}/"}
    local["OrthancPeers"] = peers
    return local


@pytest.mark.integration
def test_servers_with_the_compose_configuration_transfer_both_ways(images, orthanc_factory, tmp_path):
    ports = {name: free_port() for name in SERVICES}
    servers = {}
    for name in SERVICES:
        configuration = images[name].configuration
        local = localize(configuration, name, ports, tmp_path)
        peer = next(iter(configuration["OrthancPeers"]))
        assert changed_paths(configuration, local) == {
            ("HttpPort",), ("DicomPort",), ("StorageDirectory",), ("IndexDirectory",), ("Plugins",),
            ("PythonScript",), ("OrthancPeers", peer, "Url")}
        server = orthanc_factory(name, http_port=ports[name], extra_config=local)
        written = json.loads(server.config_path.read_text())
        assert {k: written[k] for k in local} == local  # the launcher wrote our configuration as it is
        assert ") started: Threads" in server.log_text()
        servers[name] = server
    a, b = servers["orthanc-a"], servers["orthanc-b"]
    assert a.session.auth is not None and b.session.auth is not None  # RegisteredUsers of the compose file
    with requests.Session() as anonymous:
        anonymous.trust_env = False
        assert anonymous.get(a.url + "/system", timeout=10).status_code == 401

    assert a.get_json("/transfers/peers") == {"orthanc-b": "installed"}
    assert b.get_json("/transfers/peers") == {"orthanc-a": "bidirectional"}

    # A -> B in push mode: the job runs at A.
    files_a = load_study(a, 6, rows=128, seed=13)
    r = a.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study_of(a, next(iter(files_a)))}],
                                        "Compression": "gzip", "Peer": "orthanc-b"})
    assert r.status_code == 200, r.text
    job = wait_job(a, r.json()["ID"])
    assert (job["State"], job["Type"]) == ("Success", "PushTransfer"), job
    assert_same_instances(b, files_a)

    # B -> A in pull mode (RemoteSelf): B asks A, whose job pulls from B.
    files_b = load_study(b, 5, rows=128, seed=14)
    r = b.post("/transfers/send", json={"Resources": [{"Level": "Study", "ID": study_of(b, next(iter(files_b)))}],
                                        "Compression": "none", "Peer": "orthanc-a"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["Peer"] == "orthanc-a" and answer["URL"] == f"{a.url}/jobs/{answer['RemoteJob']}"
    job = wait_job(a, answer["RemoteJob"])
    assert (job["State"], job["Type"]) == ("Success", "PullTransfer"), job

    both = {**files_a, **files_b}
    assert len(both) == 11
    assert_same_instances(a, both)
    assert_same_instances(b, both)
