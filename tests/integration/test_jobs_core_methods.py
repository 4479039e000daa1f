"""Every method on /jobs/{id} and /jobs/{id}/{action} gets, with the plugin, what the core of the same Orthanc
answers: for a core job, for a transfer job and for an unknown ID. The reference is live, an Orthanc of the
same binary without the plugin holding the same kind of job, so that the tests hold on any Orthanc version
(1.10.1 answers 405 to DELETE /jobs/{id}; 1.12.2 and later delete a finished job, and take DELETE on
/jobs/{id}/{output}).
"""

import json
import socket
import threading

import pytest
from transfer_helpers import study_of, wait_job

from tools.orthanc_launcher import free_port
from tools.synthetic import generate_study

pytestmark = pytest.mark.integration

UNKNOWN = "00000000-0000-0000-0000-000000000000"
URIS = ["/jobs/{id}", "/jobs/{id}/pause", "/jobs/{id}/resume", "/jobs/{id}/cancel", "/jobs/{id}/resubmit"]
METHODS = ["GET", "POST", "PUT", "DELETE"]


class Silent:
    """Takes connections and never answers, so that the jobs calling it stay running, until ``drop``."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]
        self.connections: list = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with self.lock:
                self.connections.append(connection)

    def drop(self) -> None:
        """Closes the connections: the jobs waiting on them fail (or end canceled) at once."""
        with self.lock:
            connections, self.connections = self.connections, []
        for c in connections:
            c.close()

    def close(self) -> None:
        self.drop()
        self.socket.close()


@pytest.fixture(scope="module")
def silent():
    s = Silent()
    yield s
    s.close()


@pytest.fixture(scope="module")
def servers(module_orthanc_factory, silent):
    """``core`` without the plugin, ``plug`` with it (its peer ``self`` is itself, ``silent`` never answers);
    both hold the same instance and know a modality that never answers. One job at a time."""
    common = {"ConcurrentJobs": 1, "DicomScuTimeout": 120, "HttpTimeout": 120,
              "DicomModalities": {"silent": ["SILENT", "127.0.0.1", silent.port]}}
    core = module_orthanc_factory("core", with_plugin=False, extra_config=common)
    port = free_port()
    plug = module_orthanc_factory("plug", http_port=port, extra_config=common,
                                  peers={"self": {"Url": f"http://127.0.0.1:{port}/"},
                                         "silent": {"Url": f"http://127.0.0.1:{silent.port}/"}})
    data = next(iter(generate_study(1, 64, 64, seed=3)))
    instance = core.upload(data)
    assert plug.upload(data) == instance
    return core, plug, instance, silent


def core_job(server, instance: str) -> str:
    """A finished core job with an output (an archive)."""
    r = server.post(f"/studies/{study_of(server, instance)}/archive", json={"Asynchronous": True})
    assert r.status_code == 200, r.text
    job_id = r.json()["ID"]
    assert wait_job(server, job_id)["State"] == "Success"
    return job_id


def transfer_job(server, instance: str, peer: str = "self", wait: bool = True) -> str:
    r = server.post("/transfers/pull", json={"Resources": [{"Level": "Instance", "ID": instance}],
                                             "Compression": "gzip", "Peer": peer})
    assert r.status_code == 200, r.text
    job_id = r.json()["ID"]
    if wait:
        assert wait_job(server, job_id)["State"] == "Success"
    return job_id


def answer(server, method: str, uri: str, job_id: str):
    """What matters of an answer, the job's ID taken out: status, Allow, and the error's code and details
    (when the core gives them), the body of a 200 to anything but GET (GET gives the job itself)."""
    r = server.request(method, uri.format(id=job_id), data=b"{}" if method in ("POST", "PUT") else None)
    text = r.text.replace(job_id, "{id}")
    shape = {"status": r.status_code, "allow": r.headers.get("Allow")}
    if r.status_code == 200 and method != "GET":
        shape["body"] = text.strip()
    return shape, text


def same_as_core(core_answer, our_answer) -> None:
    (expected, core_text), (got, our_text) = core_answer, our_answer
    assert got == expected, (expected, got, core_text, our_text)
    try:
        core_error = json.loads(core_text)
    except ValueError:
        return  # the core's refusal has no body (ours has a JSON one)
    if isinstance(core_error, dict) and "OrthancStatus" in core_error:
        ours = json.loads(our_text)
        for key in ("OrthancStatus", "Details"):
            assert ours.get(key) == core_error.get(key), (key, core_text, our_text)


def state(server, job_id: str):
    r = server.get(f"/jobs/{job_id}")
    return r.status_code, r.json()["State"] if r.status_code == 200 else None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("uri", URIS)
def test_a_finished_job_gets_the_cores_answer(servers, uri, method):
    core, plug, instance, _ = servers
    reference, theirs, ours = core_job(core, instance), core_job(plug, instance), transfer_job(plug, instance)
    expected = answer(core, method, uri, reference)
    same_as_core(expected, answer(plug, method, uri, theirs))
    same_as_core(expected, answer(plug, method, uri, ours))
    # and it did to the job what the core did to its own (DELETE: gone or not; an action: the same state)
    assert state(plug, theirs) == state(core, reference)
    assert state(plug, ours) == state(core, reference)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("uri", URIS)
def test_an_unknown_job_gets_the_cores_answer(servers, uri, method):
    core, plug, _, _ = servers
    same_as_core(answer(core, method, uri, UNKNOWN), answer(plug, method, uri, UNKNOWN))


@pytest.mark.parametrize("method", ["DELETE", "PUT", "POST"])
def test_an_unfinished_job_gets_the_cores_answer_and_stays(servers, method):
    """Running (it waits for a peer that never answers), Pending behind it, Paused."""
    core, plug, instance, silent = servers

    def store(server):
        r = server.post("/modalities/silent/store", json={"Resources": [instance], "Asynchronous": True})
        assert r.status_code == 200, r.text
        return r.json()["ID"]

    jobs = {}
    for name, server, submit in (("core", core, store), ("theirs", plug, store),
                                 ("ours", plug, lambda s: transfer_job(s, instance, "silent", wait=False))):
        running = submit(server)
        wait_job(server, running, ["Running"], timeout=30)
        pending, paused = submit(server), submit(server)
        assert server.post(f"/jobs/{paused}/pause", data=b"").status_code == 200
        wait_job(server, paused, ["Paused"], timeout=30)
        jobs[name] = (server, {"Running": running, "Pending": pending, "Paused": paused})
    try:
        for job_state in ("Running", "Pending", "Paused"):
            core_id = jobs["core"][1][job_state]
            expected = answer(core, method, "/jobs/{id}", core_id)
            assert state(core, core_id) == (200, job_state), "the core keeps an unfinished job"
            for name in ("theirs", "ours"):
                server, ids = jobs[name]
                assert state(server, ids[job_state]) == (200, job_state)
                same_as_core(expected, answer(server, method, "/jobs/{id}", ids[job_state]))
                assert state(server, ids[job_state]) == (200, job_state), (name, job_state)
    finally:
        for server, ids in jobs.values():
            for job_id in ids.values():
                server.post(f"/jobs/{job_id}/cancel", data=b"")
        silent.drop()
        for server, ids in jobs.values():
            for job_id in ids.values():
                wait_job(server, job_id, timeout=30)
