"""``"Synchronous"`` in ``/transfers/send`` and ``/transfers/pull``, Orthanc's convention, and the
``RemotePullTransfer`` job that follows a send in pull mode from the sending side; Orthanc Explorer 2's own
requests replayed.

A holds the data. A knows B as ``b`` (``RemoteSelf``: pull mode), ``b-push`` (push mode) and ``b-bad-source``
(``RemoteSelf`` naming a peer of B whose URL leads nowhere: B's pull fails). Without the key, the answers are
the C++ plugin's, byte for byte.
"""

import json
import threading
import time

import pytest
import requests
from transfer_helpers import assert_same_instances, load_study, study_of, wait_job
from werkzeug import Request as WRequest
from werkzeug import Response as WResponse
from werkzeug.serving import make_server

from tools.net_proxy import TcpProxy
from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

MISSING = "ffffffff-ffffffff-ffffffff-ffffffff-ffffffff"
FOLLOW = "RemotePullTransfer"


@pytest.fixture(scope="module")
def trio(module_orthanc_factory):
    port_a, port_b = free_port(), free_port()
    a = module_orthanc_factory("a", http_port=port_a, transfers={"BucketSize": 256},
                               extra_config={"JobsHistorySize": 1000},
                               peers={"b": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"},
                                      "b-push": {"Url": f"http://127.0.0.1:{port_b}/"},
                                      "b-bad-source": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a-dead"}})
    b = module_orthanc_factory("b", http_port=port_b, transfers={"BucketSize": 256},
                               extra_config={"JobsHistorySize": 1000},
                               peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"},
                                      "a-dead": {"Url": f"http://127.0.0.1:{free_port()}/"}})
    files = load_study(a, 6, rows=256, seed=31)
    files.update(load_study(a, 2, rows=512, seed=32))  # split across several buckets
    return a, b, files


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")


def studies(a, files):
    return [{"Level": "Study", "ID": s} for s in sorted({study_of(a, i) for i in files})]


def body(resources, peer, compression="gzip", **extra):
    return {"Resources": resources, "Compression": compression, "Peer": peer, **extra}


def styled(value) -> str:
    """Orthanc's (and the C++ plugin's) pretty-printed JSON, as the plugin answers."""
    return json.dumps(value, indent=3, sort_keys=True) + "\n"


# -- without the key: the C++ plugin's answers -----------------------------------------------------------


def test_without_the_key_the_answers_are_the_cxx_plugins(trio):
    a, b, files = trio
    clear(b)
    before = a.get_json("/jobs")
    r = a.post("/transfers/send", json=body(studies(a, files), "b"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"Peer", "RemoteJob", "URL"}, answer  # upstream's own test: exactly these 3 keys
    assert r.text == styled({"Peer": "b", "RemoteJob": answer["RemoteJob"],
                             "URL": f"{b.url}/jobs/{answer['RemoteJob']}"})
    assert a.get_json("/jobs") == before, "no local job follows the transfer without the key"
    assert wait_job(b, answer["RemoteJob"])["State"] == "Success"
    assert_same_instances(b, files)

    clear(b)
    r = a.post("/transfers/send", json=body(studies(a, files), "b-push"))
    answer = r.json()
    assert r.text == styled({"ID": answer["ID"], "Path": f"/jobs/{answer['ID']}"})
    assert wait_job(a, answer["ID"])["Type"] == "PushTransfer"
    r = b.post("/transfers/pull", json=body(studies(a, files), "a"))
    answer = r.json()
    assert r.text == styled({"ID": answer["ID"], "Path": f"/jobs/{answer['ID']}"})
    assert wait_job(b, answer["ID"])["State"] == "Success"
    assert_same_instances(b, files)


def test_a_bad_synchronous_is_refused_before_anything_happens(trio):
    a, b, files = trio
    jobs_a, jobs_b = a.get_json("/jobs"), b.get_json("/jobs")
    for key in ("Synchronous", "Asynchronous"):
        for value in ("true", 1, 0, None, [], {}):
            for server, route, peer in ((a, "/transfers/send", "b"), (a, "/transfers/send", "b-push"),
                                        (b, "/transfers/pull", "a")):
                r = server.post(route, json=body(studies(a, files), peer, **{key: value}))
                assert r.status_code == 400, (key, value, route, peer, r.text)
                error = r.json()
                assert key in error["Message"] and error["HttpStatus"] == 400, error
    assert a.get_json("/jobs") == jobs_a and b.get_json("/jobs") == jobs_b, "nothing was created"


# -- "Synchronous": false --------------------------------------------------------------------------------


def test_push_mode_asynchronous_answers_the_job(trio):
    a, b, files = trio
    clear(b)
    r = a.post("/transfers/send", json=body(studies(a, files), "b-push", Synchronous=False))
    answer = r.json()
    assert r.text == styled({"ID": answer["ID"], "Path": f"/jobs/{answer['ID']}"})
    job = wait_job(a, answer["ID"])
    assert job["State"] == "Success" and job["Type"] == "PushTransfer", job
    assert_same_instances(b, files)


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_pull_mode_asynchronous_follows_the_remote_job(trio, compression):
    a, b, files = trio
    clear(b)
    resources = studies(a, files)
    r = a.post("/transfers/send", json=body(resources, "b", compression, Synchronous=False, Priority=3))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"ID", "Path", "Peer", "RemoteJob", "URL"}, answer
    assert answer["Path"] == f"/jobs/{answer['ID']}" and answer["Peer"] == "b"
    assert answer["URL"] == f"{b.url}/jobs/{answer['RemoteJob']}" and answer["ID"] != answer["RemoteJob"]
    assert answer["ID"] in a.get_json("/jobs") and answer["RemoteJob"] in b.get_json("/jobs")
    job = wait_job(a, answer["ID"])
    assert job["State"] == "Success" and job["Progress"] == 100, job
    assert job["Type"] == FOLLOW and job["Priority"] == 3
    content = job["Content"]
    assert {k: content[k] for k in ("Peer", "RemoteJob", "URL", "Resources", "Compression", "RemoteState")} == {
        "Peer": "b", "RemoteJob": answer["RemoteJob"], "URL": answer["URL"], "Resources": resources,
        "Compression": compression, "RemoteState": "Success"}
    remote = b.get_json(f"/jobs/{answer['RemoteJob']}")
    assert remote["State"] == "Success" and remote["Type"] == "PullTransfer"
    assert content["RemoteContent"]["TotalInstances"] == len(files) == remote["Content"]["TotalInstances"]
    assert content["RemoteContent"]["Peer"] == "a"
    assert_same_instances(b, files)
    assert any(j["ID"] == answer["ID"] and j["Type"] == FOLLOW for j in a.get_json("/jobs?expand"))


def test_pull_mode_failure_is_mirrored_with_the_remote_error(trio):
    """B cannot reach its source back (RemoteSelf names a peer of B that leads nowhere): B's job fails, and
    A's follow job fails with B's error code, description and details."""
    a, b, files = trio
    clear(b)
    answer = a.post("/transfers/send", json=body(studies(a, files), "b-bad-source", Synchronous=False)).json()
    job = wait_job(a, answer["ID"])
    remote = b.get_json(f"/jobs/{answer['RemoteJob']}")
    assert remote["State"] == "Failure" and "a-dead" in remote["ErrorDescription"], remote
    assert job["State"] == "Failure", job
    assert job["ErrorCode"] == remote["ErrorCode"] and job["ErrorCode"] != 0
    assert remote["ErrorDescription"] in job["ErrorDescription"]
    assert "peer 'b-bad-source'" in job["ErrorDescription"] and answer["RemoteJob"] in job["ErrorDescription"]
    assert job["ErrorDetails"] == remote["ErrorDetails"]
    assert job["Content"]["RemoteState"] == "Failure"
    assert b.instances() == []


def test_pull_mode_failure_of_a_missing_resource_is_mirrored(trio):
    a, b, files = trio
    clear(b)
    answer = a.post("/transfers/send", json=body([{"Level": "Study", "ID": MISSING}], "b",
                                                 Synchronous=False)).json()
    job = wait_job(a, answer["ID"])
    remote = wait_job(b, answer["RemoteJob"])
    assert remote["State"] == "Failure" and job["State"] == "Failure", (remote, job)
    assert remote["ErrorDescription"] in job["ErrorDescription"] and "404" in job["ErrorDescription"]
    assert job["ErrorCode"] == remote["ErrorCode"]


def test_a_remote_job_failure_resubmitted_here_is_resubmitted_there(trio):
    """A resubmit of the follow job resubmits the remote job and follows it again."""
    a, b, files = trio
    clear(b)
    answer = a.post("/transfers/send", json=body([{"Level": "Study", "ID": MISSING}], "b",
                                                 Synchronous=False)).json()
    assert wait_job(a, answer["ID"])["State"] == "Failure"
    first = wait_job(b, answer["RemoteJob"])["CompletionTime"]
    assert a.post(f"/jobs/{answer['ID']}/resubmit").status_code == 200
    job = wait_job(a, answer["ID"])
    remote = b.get_json(f"/jobs/{answer['RemoteJob']}")
    assert remote["State"] == "Failure" and remote["CompletionTime"] > first, "the remote job ran again"
    assert job["State"] == "Failure" and job["ErrorCode"] == remote["ErrorCode"]
    assert job["CompletionTime"] > remote["CompletionTime"]


# -- "Synchronous": true ---------------------------------------------------------------------------------


def test_push_mode_synchronous_answers_the_outcome(trio):
    a, b, files = trio
    clear(b)
    r = a.post("/transfers/send", json=body(studies(a, files), "b-push", Synchronous=True), timeout=120)
    assert r.status_code == 200, r.text
    content = r.json()
    assert_same_instances(b, files)  # the answer came after the end
    assert content["TotalInstances"] == len(files) and content["Peer"] == "b-push"
    job = [j for j in a.get_json("/jobs?expand") if j["Type"] == "PushTransfer"][-1]
    assert job["State"] == "Success" and job["Content"] == content

    r = a.post("/transfers/send", json=body([{"Level": "Study", "ID": MISSING}], "b-push", Synchronous=True),
               timeout=120)
    error = r.json()
    assert r.status_code == 404 and error["OrthancStatus"] == 17 and MISSING in error["Message"], r.text


def test_pull_mode_synchronous_answers_the_outcome(trio):
    a, b, files = trio
    clear(b)
    r = a.post("/transfers/send", json=body(studies(a, files), "b", Asynchronous=False), timeout=120)
    assert r.status_code == 200, r.text
    content = r.json()
    assert_same_instances(b, files)  # the answer came after the end
    assert {"Peer", "RemoteJob", "URL", "RemoteState", "RemoteContent"} <= set(content)
    assert content["RemoteState"] == "Success" and content["RemoteContent"]["TotalInstances"] == len(files)
    assert b.get_json(f"/jobs/{content['RemoteJob']}")["State"] == "Success"

    r = a.post("/transfers/send", json=body(studies(a, files), "b-bad-source", Synchronous=True), timeout=120)
    error = r.json()
    assert r.status_code == 502 and error["OrthancStatus"] == 9, r.text
    assert "a-dead" in error["Message"] and "peer 'b-bad-source'" in error["Message"]


def test_pull_route_synchronous(trio):
    a, b, files = trio
    clear(b)
    r = b.post("/transfers/pull", json=body(studies(a, files), "a", Synchronous=True), timeout=120)
    assert r.status_code == 200, r.text
    assert_same_instances(b, files)
    assert r.json()["TotalInstances"] == len(files) and r.json()["DownloadedSizeMB"] >= 0
    r = b.post("/transfers/pull", json=body(studies(a, files), "a", Synchronous=False))
    assert set(r.json()) == {"ID", "Path"} and wait_job(b, r.json()["ID"])["State"] == "Success"


# -- Orthanc Explorer 2 ----------------------------------------------------------------------------------
# WebApplication/src/orthancApi.js (orthanc-explorer-2, commit 4903ad5), sendToOrthancPeerWithTransfers:
#   axios.post(orthancApiUrl + "transfers/send", {"Resources": resources, "Compression": "gzip",
#              "Peer": destination, "Synchronous": false}) and returns response.data['ID'];
# resources: [{"Level": "Study", "ID": id}] from a study's button, or the selection's
# [{"Level": "Study"|"Series"|"Instance", "ID": id}, ...] (store/modules/selection.js). axios 1.x sends
# JSON.stringify of the object (keys in that order, no spaces) as application/json. components/JobSideItem.vue
# then polls GET jobs/{ID} (first at once, then 400, 600... up to 2000 ms apart) until State is Success or
# Failure, showing Progress meanwhile; components/JobsList.vue lists GET jobs?expand and shows
# ErrorDescription/ErrorDetails of a job whose ErrorDescription is not "Success".

OE2_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/plain, */*"}


def oe2_send(a, resources, peer) -> str:
    data = ('{"Resources":' + json.dumps(resources, separators=(",", ":")) + ',"Compression":"gzip","Peer":'
            + json.dumps(peer) + ',"Synchronous":false}')
    r = a.post("/transfers/send", data=data.encode("utf-8"), headers=OE2_HEADERS)
    assert r.status_code == 200, r.text
    return r.json()["ID"]


def oe2_follow(a, job_id, timeout=120):
    """JobSideItem.refresh: GET jobs/{id} until Success or Failure; returns the states and progress seen."""
    seen, delay = [], 0.2
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = a.get(f"/jobs/{job_id}", headers={"Accept": "application/json, text/plain, */*"})
        assert r.status_code == 200, r.text  # a failed refresh stops OE2's polling for good
        status = r.json()
        assert isinstance(status["Progress"], int) and 0 <= status["Progress"] <= 100
        seen.append((status["State"], status["Progress"]))
        if status["State"] in ("Success", "Failure"):
            return status, seen
        delay = min(delay + 0.2, 2.0)
        time.sleep(delay)
    raise AssertionError(f"OE2 would still be polling job {job_id}: {seen[-5:]}")


@pytest.mark.parametrize("peer", ["b", "b-push"], ids=["pull-mode", "push-mode"])
def test_orthanc_explorer_2_requests(trio, peer):
    a, b, files = trio
    clear(b)
    study = studies(a, files)[0]["ID"]
    job_id = oe2_send(a, [{"Level": "Study", "ID": study}], peer)
    status, seen = oe2_follow(a, job_id)
    assert status["State"] == "Success" and status["Progress"] == 100, (status, seen)
    assert status["Type"] == (FOLLOW if peer == "b" else "PushTransfer")
    assert_same_instances(b, {i: data for i, data in files.items() if study_of(a, i) == study})
    listed = next(j for j in a.get_json("/jobs?expand") if j["ID"] == job_id)
    assert listed["ErrorDescription"] == "Success" and listed["Content"]["Resources"] == [
        {"Level": "Study", "ID": study}]

    # A bulk selection: a series and single instances, each at its level.
    clear(b)
    series = a.get_json(f"/studies/{study}")["Series"][0]
    instances = sorted(files)[:2]
    selection = [{"Level": "Series", "ID": series}] + [{"Level": "Instance", "ID": i} for i in instances]
    status, seen = oe2_follow(a, oe2_send(a, selection, peer))
    assert status["State"] == "Success", (status, seen)
    expected = set(a.get_json(f"/series/{series}")["Instances"]) | set(instances)
    assert set(b.instances()) == expected

    # A failure: OE2 shows it as failed, with the job's error.
    status, seen = oe2_follow(a, oe2_send(a, [{"Level": "Study", "ID": MISSING}], peer))
    assert status["State"] == "Failure" and status["ErrorDescription"] != "Success" and MISSING in (
        status["ErrorDescription"] + status["ErrorDetails"]), status


# -- cancel, pause, restarts (B pulls from A through a throttling proxy) ----------------------------------


@pytest.fixture
def slow(orthanc_factory):
    """B reaches A through a proxy whose rate the test sets: a send in pull mode from A runs as long as the test
    needs. B's MaxHttpRetries lets its pull live through a restart of A."""
    port_a, port_b = free_port(), free_port()
    proxy = TcpProxy(port_a, rate=None).start()
    b = orthanc_factory("b", http_port=port_b, transfers={"BucketSize": 128, "Threads": 2, "MaxHttpRetries": 6},
                        peers={"a": {"Url": proxy.url}})
    a = orthanc_factory("a", http_port=port_a, peers={"b": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
    files = load_study(a, 20, rows=512, seed=41)
    yield a, b, proxy, files
    proxy.stop()


def slow_send(a, b, proxy, files, rate=400_000):
    proxy.set_rate(rate)
    answer = a.post("/transfers/send", json=body(studies(a, files), "b", "none", Synchronous=False)).json()
    wait_job(b, answer["RemoteJob"], ["Running"], condition=lambda j: j["Content"].get("CompletedHttpQueries", 0) >= 2)
    wait_job(a, answer["ID"], ["Running"], condition=lambda j: j["Content"].get("RemoteState") == "Running")
    return answer


def test_cancel_of_the_follow_job_cancels_the_remote_job(slow):
    a, b, proxy, files = slow
    answer = slow_send(a, b, proxy, files)
    assert a.post(f"/jobs/{answer['ID']}/cancel").status_code == 200
    job = wait_job(a, answer["ID"], ["Failure"], timeout=10)
    assert job["ErrorCode"] == 37, job
    remote = wait_job(b, answer["RemoteJob"], ["Failure"], timeout=10)
    assert remote["ErrorCode"] == 37, remote
    job = wait_job(a, answer["ID"], condition=lambda j: j["ErrorDetails"])
    assert "was canceled too" in job["ErrorDetails"], job
    proxy.set_rate(None)
    assert b.instances() == []
    # The resubmit of the canceled follow job resubmits the remote job: the transfer then completes.
    assert a.post(f"/jobs/{answer['ID']}/resubmit").status_code == 200
    assert wait_job(a, answer["ID"], condition=lambda j: j["State"] == "Success")["Content"]["RemoteState"] == "Success"
    assert wait_job(b, answer["RemoteJob"])["State"] == "Success"
    assert_same_instances(b, files)


def test_pause_and_resume_of_the_follow_job_drive_the_remote_job(slow):
    a, b, proxy, files = slow
    answer = slow_send(a, b, proxy, files)
    assert a.post(f"/jobs/{answer['ID']}/pause").status_code == 200
    wait_job(a, answer["ID"], ["Paused"], timeout=10)
    wait_job(b, answer["RemoteJob"], ["Paused"], timeout=10)
    assert a.post(f"/jobs/{answer['ID']}/resume").status_code == 200
    wait_job(b, answer["RemoteJob"], ["Running", "Success"], timeout=10)
    proxy.set_rate(None)
    assert wait_job(a, answer["ID"])["State"] == "Success"
    assert_same_instances(b, files)


def test_the_follow_job_survives_restarts_of_both_sides(slow):
    """A is killed and restarted: its follow job goes on from the saved jobs. B is killed and restarted: the
    follow job asks again until B answers, and B's pull goes on too."""
    a, b, proxy, files = slow
    answer = slow_send(a, b, proxy, files)
    a.kill()
    a.start()
    wait_job(a, answer["ID"], ["Running"], condition=lambda j: j["Content"].get("RemoteState") == "Running")
    b.kill()
    deadline = time.monotonic() + 30
    while "asking again" not in a.log_text():  # the follow job meets B down, and will ask again
        assert time.monotonic() < deadline, "A's follow job did not notice that B is down"
        time.sleep(0.1)
    assert a.get_json(f"/jobs/{answer['ID']}")["State"] == "Running"
    b.start()
    proxy.set_rate(None)
    job = wait_job(a, answer["ID"], timeout=180)
    assert job["State"] == "Success", job
    assert_same_instances(b, files)


def test_a_remote_that_answers_garbage_fails_the_follow_job(orthanc_factory):
    """A hostile peer: its /transfers/pull answers a job, its /jobs/{id} answers something that is not that
    job; the follow job fails at once, in words."""

    remote_id = "0123456789abcdef"
    answers = iter([json.dumps({"ID": "someone-else", "State": "Running", "Progress": 10})])

    def app(environ, start_response):
        request = WRequest(environ)
        if request.path == "/transfers/pull":
            reply = WResponse(json.dumps({"ID": remote_id, "Path": f"/jobs/{remote_id}"}),
                              content_type="application/json")
        elif request.path == f"/jobs/{remote_id}":
            reply = WResponse(next(answers, "{}"), content_type="application/json")
        else:
            reply = WResponse("{}", status=404)
        return reply(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        a = orthanc_factory("a", peers={"evil": {"Url": f"http://127.0.0.1:{server.server_port}/",
                                                 "RemoteSelf": "a"}})
        files = load_study(a, 1, rows=64, seed=51)
        answer = a.post("/transfers/send", json=body(studies(a, files), "evil", Synchronous=False)).json()
        assert answer["RemoteJob"] == remote_id
        job = wait_job(a, answer["ID"], timeout=30)
        assert job["State"] == "Failure" and "not that job" in job["ErrorDescription"], job
        assert "someone-else" in job["ErrorDescription"]
        assert requests.get(f"{a.url}/jobs/{answer['ID']}", timeout=5).status_code == 200
    finally:
        server.shutdown()
