"""Issue 14, item 5: ``"Metadata": true`` carries user metadata (and labels on Orthanc 1.12+) between our peers.

A (source) has the user metadata Sample and Extra; B (target) only Sample, so that Extra is skipped with a
warning. Labels are set and checked only when the servers' Orthanc is 1.12 or later (by version).
"""

import pytest
from transfer_helpers import load_study, study_of, wait_job

from tools.orthanc_launcher import free_port

pytestmark = pytest.mark.integration

N = 3


def version_at_least(server, wanted) -> bool:
    version = server.get_json("/system")["Version"]
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    return parts >= wanted


@pytest.fixture(scope="module")
def peers(module_orthanc_factory):
    port_a, port_b = free_port(), free_port()
    a = module_orthanc_factory("a", http_port=port_a,
                               extra_config={"UserMetadata": {"Sample": 1024, "Extra": 1025}},
                               peers={"b": {"Url": f"http://127.0.0.1:{port_b}/"},
                                      "b-pull": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"}})
    b = module_orthanc_factory("b", http_port=port_b, extra_config={"UserMetadata": {"Sample": 1024}},
                               peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}})
    files = load_study(a, N, rows=64, seed=1405)
    study = study_of(a, next(iter(files)))
    for n, iid in enumerate(sorted(files)):
        assert a.request("PUT", f"/instances/{iid}/metadata/Sample", data=f"value {n} é").status_code == 200
    first = sorted(files)[0]
    assert a.request("PUT", f"/instances/{first}/metadata/Extra", data="only at A").status_code == 200
    labels = version_at_least(a, (1, 12, 0))
    resources = {}
    if labels:
        series = a.get_json(f"/instances/{first}/series")["ID"]
        patient = a.get_json(f"/studies/{study}")["ParentPatient"]
        resources = {"patients": (patient, ["vip"]), "studies": (study, ["urgent", "second-look"]),
                     "series": (series, ["key_images"])}
        for level, (rid, names) in resources.items():
            for label in names:
                assert a.request("PUT", f"/{level}/{rid}/labels/{label}").status_code == 200
    return a, b, files, study, resources


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")


def run(a, b, how, study, **options):
    body = {"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip", **options}
    if how == "pull":
        r = b.post("/transfers/pull", json=dict(body, Peer="a"))
        server = b
    elif how == "push":
        r = a.post("/transfers/send", json=dict(body, Peer="b"))
        server = a
    else:  # a send in pull mode: B pulls, asked by A
        r = a.post("/transfers/send", json=dict(body, Peer="b-pull", Synchronous=False))
        assert r.status_code == 200, r.text
        return wait_job(b, r.json()["RemoteJob"])
    assert r.status_code == 200, r.text
    return wait_job(server, r.json()["ID"])


def user_metadata(server, iid):
    names = server.get_json(f"/instances/{iid}/metadata")
    return {name: server.get(f"/instances/{iid}/metadata/{name}").content.decode("utf-8")
            for name in names if name in ("Sample", "Extra")}


def assert_labels(b, resources, present):
    for level, (rid, names) in resources.items():
        assert sorted(b.get_json(f"/{level}/{rid}/labels")) == (sorted(names) if present else [])


@pytest.mark.parametrize("how", ["pull", "push", "send-pull-mode"])
def test_metadata_and_labels_arrive(peers, how):
    a, b, files, study, resources = peers
    clear(b)
    job = run(a, b, how, study, Metadata=True)
    assert job["State"] == "Success", job
    for n, iid in enumerate(sorted(files)):
        assert user_metadata(b, iid) == {"Sample": f"value {n} é"}  # Extra is not in B's UserMetadata
    assert_labels(b, resources, True)
    if how != "push":  # the puller applies them, and says what it skipped
        assert job["Content"]["Metadata"] == {"Values": N, "Labels": sum(len(v[1]) for v in resources.values())}
        assert any("Extra" in w for w in job["Content"]["MetadataWarnings"])
    else:
        assert job["Content"]["Metadata"] == {"Values": N + 1,
                                              "Labels": sum(len(v[1]) for v in resources.values())}
        assert "Extra" in b.log_text()


@pytest.mark.parametrize("how", ["pull", "push"])
def test_without_metadata_none_arrive(peers, how):
    a, b, files, study, resources = peers
    clear(b)
    job = run(a, b, how, study)
    assert job["State"] == "Success", job
    assert "Metadata" not in job["Content"]
    for iid in files:
        assert user_metadata(b, iid) == {}
    assert_labels(b, resources, False)


@pytest.mark.parametrize("route", ["/transfers/pull", "/transfers/send"])
@pytest.mark.parametrize("bad", ["yes", 1, None, [True], {"a": 1}])
def test_bad_metadata_value_is_400(peers, route, bad):
    a, b, files, study, resources = peers
    r = a.post(route, json={"Resources": [{"Level": "Study", "ID": study}], "Compression": "gzip",
                            "Peer": "b", "Metadata": bad})
    assert r.status_code == 400, r.text
    assert "Metadata" in r.json()["Message"] + str(r.json().get("Details", ""))


def test_source_metadata_route_validates(peers):
    a, b, files, study, resources = peers
    for body in ({"Instances": "x"}, {"Instances": ["../x"]}, {"Instances": ["0"] * 201}, [1]):
        r = a.post("/transfers/metadata", json=body)
        assert r.status_code == 400, (body, r.text)
    r = a.post("/transfers/metadata", json={"Instances": sorted(files)})
    assert r.status_code == 200
    answer = r.json()
    assert set(answer["Instances"]) == set(files)
    assert all(set(v) <= {"Sample", "Extra"} for v in answer["Instances"].values())  # no system metadata


def test_push_metadata_route_validates(peers):
    a, b, files, study, resources = peers
    assert b.post("/transfers/push/not-a-uuid/metadata", json={"Instances": {}}).status_code == 400
    r = b.post("/transfers/push/00000000-0000-4000-8000-000000000000/metadata", json={"Instances": {}})
    assert r.status_code == 404, r.text
