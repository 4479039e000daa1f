"""Issue 14, item 5: the metadata documents checked as hostile input, the option, reading and applying them,
and no metadata request built for a peer without the feature."""

import json

import pytest
from job_context import FakeJobContext

from transfers_plugin import capabilities
from transfers_plugin import metadata as meta
from transfers_plugin.config import PeerConfig, parse_configuration
from transfers_plugin.errors import BadFileFormat, BadRequest, NetworkProtocol, NotFound
from transfers_plugin.jobs.pull import PullJobType
from transfers_plugin.jobs.push import PushJobType
from transfers_plugin.protocol import InstanceInfo, PushDescriptor, TransferQuery
from transfers_plugin.transport import HttpAnswer

ID1 = "11111111-11111111-11111111-11111111-11111111"
ID2 = "22222222-22222222-22222222-22222222-22222222"
SERIES = "33333333-33333333-33333333-33333333-33333333"
STUDY = "44444444-44444444-44444444-44444444-44444444"
PATIENT = "55555555-55555555-55555555-55555555-55555555"
PEER = PeerConfig("p", "http://p/")


# -- the option --------------------------------------------------------------------------------------


def query(**extra):
    return {"Resources": [{"Level": "Study", "ID": STUDY}], "Peer": "p", "Compression": "gzip", **extra}


def test_metadata_is_false_by_default_and_only_written_when_true():
    q = TransferQuery.from_json(query())
    assert q.metadata is False and "Metadata" not in q.to_json()
    q = TransferQuery.from_json(query(Metadata=True))
    assert q.metadata is True and q.to_json()["Metadata"] is True
    assert TransferQuery.from_json(q.to_json()).metadata is True
    assert TransferQuery.from_json(query(Metadata=False)).metadata is False


@pytest.mark.parametrize("bad", ["true", 1, 0, None, [], {}])
def test_metadata_must_be_a_boolean(bad):
    with pytest.raises(BadFileFormat) as e:
        TransferQuery.from_json(query(Metadata=bad))
    assert e.value.status == 400 and "Metadata" in e.value.message


def test_the_capabilities_list_the_feature():
    assert "metadata" in capabilities.local_capabilities("1")["Features"]


# -- the documents -----------------------------------------------------------------------------------


def test_parse_request_bounds_and_checks_ids():
    assert meta.parse_request({"Instances": [ID1, ID2]}) == [ID1, ID2]
    for bad in ([ID1], {"Instances": ID1}, {"Instances": ["../x"]}, {"Instances": [ID1] * (meta.BATCH + 1)},
                {"Instances": [1]}):
        with pytest.raises(BadRequest):
            meta.parse_request(bad)


def good_document():
    return {"Instances": {ID1: {"Sample": "a"}, ID2: {}},
            "Labels": {"Study": {STUDY: ["b", "a", "a"]}, "Series": {SERIES: ["key_images"]}}}


def test_parse_document_keeps_a_good_one():
    doc = meta.parse_document(good_document(), [ID1, ID2], "doc")
    assert doc["Instances"] == {ID1: {"Sample": "a"}, ID2: {}}
    assert doc["Labels"] == {"Patient": {}, "Study": {STUDY: ["a", "b"]}, "Series": {SERIES: ["key_images"]}}
    assert meta.count(doc) == {"Values": 1, "Labels": 3}
    assert meta.parse_document({"Instances": {}}, [ID1], "doc") == meta.empty()


@pytest.mark.parametrize("change", [
    lambda d: d["Instances"].update({"66666666-66666666-66666666-66666666-66666666": {}}),  # not asked
    lambda d: d["Instances"].update({ID1: {"../x": "a"}}),
    lambda d: d["Instances"].update({ID1: {"Sample": 1}}),
    lambda d: d["Instances"].update({ID1: {"Sample": "x" * (meta.MAX_VALUE + 1)}}),
    lambda d: d["Instances"].update({ID1: {f"N{n}": "" for n in range(meta.MAX_NAMES + 1)}}),
    lambda d: d["Instances"].update({ID1: ["Sample"]}),
    lambda d: d.update(Instances=[]),
    lambda d: d.update(Labels=[]),
    lambda d: d["Labels"].update(Instance={ID1: ["a"]}),
    lambda d: d["Labels"].update(Study={"not-an-id": ["a"]}),
    lambda d: d["Labels"].update(Study={STUDY: ["bad label"]}),
    lambda d: d["Labels"].update(Study={STUDY: ["x" * 65]}),
    lambda d: d["Labels"].update(Study={STUDY: "a"}),
    lambda d: d["Labels"].update(Study={STUDY: [f"l{n}" for n in range(meta.MAX_LABELS + 1)]}),
    lambda d: d["Labels"].update(Study={f"{n:08x}-00000000-00000000-00000000-00000000": [] for n in range(3)}),
])
def test_parse_document_refuses_a_hostile_one(change):
    doc = good_document()
    change(doc)
    with pytest.raises(BadRequest):
        meta.parse_document(doc, [ID1, ID2], "doc")


def test_user_metadata_names_are_those_of_the_configuration():
    config = {"UserMetadata": {"Sample": 1024, "Low": 15, "Big": 70000, "Bad name": 1030, "Flag": True,
                               "Other": 2000}}
    assert meta.user_metadata_names(config) == {"Sample", "Other"}
    assert meta.user_metadata_names({}) == set() and meta.user_metadata_names({"UserMetadata": []}) == set()


# -- reading and applying ----------------------------------------------------------------------------


class FakeOrthanc:
    def __init__(self, names=("Sample",), v112=True, missing=()):
        self.config = {"UserMetadata": {n: 1024 + i for i, n in enumerate(names)}}
        self.v112 = v112
        self.missing = set(missing)
        self.puts = []
        self.metadata = {ID1: {"Sample": "s1", "ReceptionDate": "x", "RemoteAET": "y", "Other": "o"}}
        self.labels = {f"/series/{SERIES}/labels": ["k"], f"/studies/{STUDY}/labels": ["s"],
                       f"/patients/{PATIENT}/labels": []}

    def configuration(self):
        return self.config

    def orthanc_version_at_least(self, *version):
        return self.v112

    def core_get_json(self, uri):
        if uri == f"/instances/{ID1}/metadata":
            return list(self.metadata[ID1])
        if uri.startswith("/instances/") and uri.endswith("/metadata"):
            raise NotFound("no such instance")
        return {f"/instances/{ID1}": {"ParentSeries": SERIES}, f"/series/{SERIES}": {"ParentStudy": STUDY},
                f"/studies/{STUDY}": {"ParentPatient": PATIENT}}.get(uri) or self.labels[uri]

    def core_request(self, method, uri, body=b""):
        if method == "GET":
            return self.metadata[ID1][uri.rsplit("/", 1)[1]].encode()
        if any(m in uri for m in self.missing):
            raise NotFound("missing")
        self.puts.append((uri, body))
        return b"{}"


def test_collect_gives_only_user_metadata_and_the_labels_of_the_parents():
    store = meta.MetadataStore(FakeOrthanc(names=("Sample", "Other")))
    doc = store.collect([ID1, ID2])  # ID2 is gone: left out
    assert doc["Instances"] == {ID1: {"Other": "o", "Sample": "s1"}}
    assert doc["Labels"] == {"Patient": {}, "Study": {STUDY: ["s"]}, "Series": {SERIES: ["k"]}}
    old = meta.MetadataStore(FakeOrthanc(v112=False)).collect([ID1])
    assert old["Labels"] == {"Patient": {}, "Study": {}, "Series": {}}


def test_apply_skips_unknown_names_and_says_so():
    api = FakeOrthanc(names=("Sample",))
    warnings = []
    doc = meta.parse_document({"Instances": {ID1: {"Sample": "é", "Other": "o"}},
                               "Labels": {"Study": {STUDY: ["s"]}}}, [ID1], "doc")
    written = meta.MetadataStore(api).apply(doc, warnings.append)
    assert written == {"Values": 1, "Labels": 1}
    assert api.puts == [(f"/instances/{ID1}/metadata/Sample", "é".encode()), (f"/studies/{STUDY}/labels/s", b"")]
    assert len(warnings) == 1 and "Other" in warnings[0]


def test_apply_skips_labels_before_1_12_and_unknown_resources():
    doc = meta.parse_document({"Instances": {}, "Labels": {"Study": {STUDY: ["s"]}, "Series": {SERIES: ["k"]}}},
                              [ID1], "doc")
    api, warnings = FakeOrthanc(v112=False), []
    assert meta.MetadataStore(api).apply(doc, warnings.append) == {"Values": 0, "Labels": 0}
    assert api.puts == [] and "older than 1.12" in warnings[0]
    api, warnings = FakeOrthanc(missing=(SERIES,)), []
    assert meta.MetadataStore(api).apply(doc, warnings.append) == {"Values": 0, "Labels": 1}
    assert len(warnings) == 1 and SERIES in warnings[0]


# -- never asked of a peer without the feature -------------------------------------------------------


class RecordingContext(FakeJobContext):
    def __init__(self, state=None):
        super().__init__(state)
        self.content = {}

    def update_content(self, **values):
        self.content.update(values)


class NoCallTransport:
    def call(self, *args, **kwargs):
        raise AssertionError(f"no request may be made: {args}")


CXX = None  # capabilities.ask's answer for a C++ peer
OLDER = capabilities.Capabilities("orthanc-transfers-py", "0.0.9", frozenset({"skip-existing"}), ("none",))


@pytest.mark.parametrize("caps", [CXX, OLDER], ids=["cxx", "ours-without-the-feature"])
def test_a_push_sends_no_metadata_to_a_peer_without_the_feature(caps):
    config = parse_configuration({})
    job = PushJobType(config, lambda: {"p": PEER}, NoCallTransport(), None,
                      metadata_store=meta.MetadataStore(FakeOrthanc()))
    ctx = RecordingContext({"PeerCapabilities": None if caps is None else caps.to_json(),
                            "Transaction": "/transfers/push/x"})
    descriptor = PushDescriptor((InstanceInfo(ID1, 10, "0" * 32),), (), "none")
    job.send_metadata(ctx, TransferQuery.from_json(query(Metadata=True)), PEER, descriptor)
    assert ctx.content["Metadata"] == "not supported by the peer"


@pytest.mark.parametrize("caps", [CXX, OLDER], ids=["cxx", "ours-without-the-feature"])
def test_a_pull_asks_no_metadata_of_a_peer_without_the_feature(monkeypatch, tmp_path, caps):
    monkeypatch.setattr(capabilities, "ask", lambda *args, **kwargs: caps)
    job = PullJobType(parse_configuration({}), lambda: {"p": PEER}, NoCallTransport(), None, tmp_path,
                      metadata_store=meta.MetadataStore(FakeOrthanc()))
    ctx = RecordingContext()
    assert job.fetch_metadata(ctx, TransferQuery.from_json(query(Metadata=True)), PEER,
                              [InstanceInfo(ID1, 10, "0" * 32)]) is None
    assert ctx.content["Metadata"] == "not supported by the peer"


def test_a_pull_asks_our_source_in_batches_and_checks_its_answer(monkeypatch, tmp_path):
    full = capabilities.Capabilities("orthanc-transfers-py", "0.1.0", frozenset({"metadata"}), ("none",))
    monkeypatch.setattr(capabilities, "ask", lambda *args, **kwargs: full)
    asked = []

    class Transport:
        def __init__(self, answer):
            self.answer = answer

        def call(self, peer, method, uri, **kwargs):
            ids = json.loads(kwargs["body"])["Instances"]
            asked.append((method, uri, len(ids)))
            return HttpAnswer(200, {}, b"", document=self.answer(ids))

    ids = [f"{n:08x}-00000000-00000000-00000000-00000000" for n in range(meta.BATCH + 5)]
    infos = [InstanceInfo(i, 10, "0" * 32) for i in ids]
    q = TransferQuery.from_json(query(Metadata=True))
    store = meta.MetadataStore(FakeOrthanc())
    job = PullJobType(parse_configuration({}), lambda: {"p": PEER},
                      Transport(lambda batch: {"Instances": {i: {"Sample": i[:8]} for i in batch}}), None, tmp_path,
                      metadata_store=store)
    doc = job.fetch_metadata(RecordingContext(), q, PEER, infos)
    assert asked == [("POST", "/transfers/metadata", meta.BATCH), ("POST", "/transfers/metadata", 5)]
    assert len(doc["Instances"]) == len(ids)
    hostile = PullJobType(parse_configuration({}), lambda: {"p": PEER},
                          Transport(lambda batch: {"Instances": {ID1: {"Sample": "x"}}}), None, tmp_path,
                          metadata_store=store)
    with pytest.raises(NetworkProtocol):
        hostile.fetch_metadata(RecordingContext(), q, PEER, infos)


def test_a_value_too_long_is_left_out_with_a_warning_never_cut():
    api = FakeOrthanc(names=("Sample", "Other"))
    api.metadata[ID1]["Other"] = "x" * (meta.MAX_VALUE + 1)
    warnings = []
    doc = meta.MetadataStore(api, warnings.append).collect([ID1])
    assert doc["Instances"] == {ID1: {"Sample": "s1"}}
    assert len(warnings) == 1 and "Other" in warnings[0]
