"""Job persistence in one Orthanc global property, with a dict standing for Orthanc's database."""

import json
from typing import Dict, List, Optional, Tuple

import pytest

from transfers_plugin.jobs.model import FAILURE, PENDING, JobRecord
from transfers_plugin.jobs.store import FORMAT_VERSION, JOBS_PROPERTY, GlobalPropertyJobStore


class FakeProperties:
    """Orthanc's GetGlobalProperty(id, default) / SetGlobalProperty(id, value)."""

    def __init__(self) -> None:
        self.values: Dict[int, str] = {}
        self.gets: List[Tuple[int, str]] = []

    def get(self, property_id: int, default: str) -> Optional[str]:
        self.gets.append((property_id, default))
        return self.values.get(property_id, default)

    def set(self, property_id: int, value: str) -> None:
        assert isinstance(value, str)
        self.values[property_id] = value


@pytest.fixture
def props():
    return FakeProperties()


def jobs() -> List[dict]:
    a = JobRecord(id="a", type="PullTransfer", parameters={"Peer": "p", "Resources": [{"Level": "Study", "ID": "x"}]},
                  priority=2, sequence=1, creation_time=1700000000.5, resume_state={"DoneBuckets": [0, 3]})
    b = JobRecord(id="b", type="PullTransfer", parameters={"Peer": "q"}, state=FAILURE, sequence=2,
                  creation_time=1700000001.0, completion_time=1700000002.25, error_code=37,
                  error_description="This job was canceled", content={"Peer": "q", "TotalSizeMB": 3})
    return [a.to_persisted(), b.to_persisted()]


def test_empty_property_is_no_jobs(props):
    store = GlobalPropertyJobStore(props.get, props.set)
    assert store.load() == []
    assert props.gets == [(JOBS_PROPERTY, "")]


def test_none_from_orthanc_is_no_jobs():
    store = GlobalPropertyJobStore(lambda pid, default: None, lambda pid, value: None)
    assert store.load() == []


def test_round_trip(props):
    store = GlobalPropertyJobStore(props.get, props.set)
    saved = jobs()
    store.save(saved)
    assert list(props.values) == [JOBS_PROPERTY]
    loaded = store.load()
    assert loaded == saved
    assert [JobRecord.from_persisted(d) for d in loaded] == [JobRecord.from_persisted(d) for d in saved]
    assert JobRecord.from_persisted(loaded[0]).state == PENDING


def test_saved_text_is_versioned_compact_json(props):
    store = GlobalPropertyJobStore(props.get, props.set)
    store.save(jobs())
    text = props.values[JOBS_PROPERTY]
    data = json.loads(text)
    assert data["Version"] == FORMAT_VERSION == 1
    assert [j["ID"] for j in data["Jobs"]] == ["a", "b"]
    assert ", " not in text and ": " not in text


def test_save_replaces_the_previous_list(props):
    store = GlobalPropertyJobStore(props.get, props.set)
    store.save(jobs())
    store.save(jobs()[1:])
    assert [j["ID"] for j in store.load()] == ["b"]
    store.save([])
    assert store.load() == []


def test_other_property_id(props):
    store = GlobalPropertyJobStore(props.get, props.set, property_id=4242)
    store.save(jobs())
    assert list(props.values) == [4242]
    assert GlobalPropertyJobStore(props.get, props.set).load() == []
    assert len(GlobalPropertyJobStore(props.get, props.set, property_id=4242).load()) == 2


def test_jobs_property_is_the_plugins_own():
    assert JOBS_PROPERTY >= 1024  # ids below 1024 belong to Orthanc


@pytest.mark.parametrize("text", [
    json.dumps({"Version": 2, "Jobs": []}),
    json.dumps({"Version": "1", "Jobs": []}),
    json.dumps({"Jobs": []}),
    json.dumps([{"ID": "a"}]),
    json.dumps("jobs"),
])
def test_unknown_format_is_refused(props, text):
    props.values[JOBS_PROPERTY] = text
    with pytest.raises(ValueError, match="unknown format"):
        GlobalPropertyJobStore(props.get, props.set).load()


def test_not_json_is_refused(props):
    props.values[JOBS_PROPERTY] = "{not json"
    with pytest.raises(ValueError):
        GlobalPropertyJobStore(props.get, props.set).load()


def test_version_without_jobs_is_empty(props):
    props.values[JOBS_PROPERTY] = json.dumps({"Version": 1})
    assert GlobalPropertyJobStore(props.get, props.set).load() == []
