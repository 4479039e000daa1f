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
    assert data["Version"] == FORMAT_VERSION == 2
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
    json.dumps({"Version": 3, "Jobs": []}),
    json.dumps({"Version": True, "Jobs": []}),
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


# -- format 2: big resume-state values in properties of their own, written only when they change -------------

class CountingProperties(FakeProperties):
    def __init__(self) -> None:
        super().__init__()
        self.sets: List[int] = []
        self.fail_on: Optional[int] = None

    def set(self, property_id: int, value: str) -> None:
        if property_id == self.fail_on:
            raise OSError("disk full")
        self.sets.append(property_id)
        super().set(property_id, value)


def big_job(job_id: str = "a", n: int = 300) -> JobRecord:
    instances = [{"ID": f"{job_id}-{i:040d}", "MD5": "0" * 32, "Size": "1000"} for i in range(n)]
    return JobRecord(id=job_id, type="PullTransfer", parameters={"Peer": "p"}, sequence=1,
                     resume_state={"Instances": instances, "DoneBuckets": [0], "Verified": []})


def small_store(props, **kwargs) -> GlobalPropertyJobStore:
    return GlobalPropertyJobStore(props.get, props.set, blob_min_chars=1000, **kwargs)


def test_a_big_value_goes_to_a_blob_and_comes_back():
    props = CountingProperties()
    record = big_job()
    small_store(props).save([record.to_persisted()])
    index = json.loads(props.values[JOBS_PROPERTY])
    job = index["Jobs"][0]
    assert set(job["ResumeState"]) == {"DoneBuckets", "Verified"} and list(job["Blobs"]) == ["Instances"]
    blob = json.loads(props.values[job["Blobs"]["Instances"]])
    assert blob["Job"] == "a" and blob["Key"] == "Instances" and len(blob["Value"]) == 300
    loaded = small_store(props).load()
    assert JobRecord.from_persisted(loaded[0]) == record


def test_an_unchanged_big_value_is_not_written_again_and_a_changed_one_moves():
    props = CountingProperties()
    store = small_store(props)
    record = big_job()
    snapshot = store.snapshot([record.to_persisted()], {})
    store.write(snapshot)
    first_blob = json.loads(props.values[JOBS_PROPERTY])["Jobs"][0]["Blobs"]["Instances"]
    props.sets.clear()
    record.resume_state["DoneBuckets"] = [0, 1]
    store.write(store.snapshot([record.to_persisted()], {}))
    assert props.sets == [JOBS_PROPERTY], "only the index: the instance list did not change"
    record.resume_state["Instances"] = record.resume_state["Instances"][:200]  # a new object
    props.sets.clear()
    store.write(store.snapshot([record.to_persisted()], {}))
    second_blob = json.loads(props.values[JOBS_PROPERTY])["Jobs"][0]["Blobs"]["Instances"]
    assert second_blob != first_blob and props.sets == [second_blob, JOBS_PROPERTY, first_blob]
    assert props.values[first_blob] == "", "the blob no longer referenced is emptied after the index is written"
    assert len(small_store(props).load()[0]["ResumeState"]["Instances"]) == 200


def test_a_value_changed_in_place_is_written_when_said_or_when_its_length_changes():
    props = CountingProperties()
    store = small_store(props)
    record = big_job()
    store.save([record.to_persisted()])
    record.resume_state["Instances"][0] = {"ID": "changed", "MD5": "1" * 32, "Size": "1"}  # same length
    store.write(store.snapshot([record.to_persisted()], {"a": {"Instances"}}))
    assert small_store(props).load()[0]["ResumeState"]["Instances"][0]["ID"] == "changed"
    record.resume_state["Instances"][1] = {"ID": "again", "MD5": "1" * 32, "Size": "1"}
    store.write(store.snapshot([record.to_persisted()], {"a": None}))  # None: any key
    assert small_store(props).load()[0]["ResumeState"]["Instances"][1]["ID"] == "again"
    record.resume_state["Instances"].append({"ID": "appended", "MD5": "1" * 32, "Size": "1"})
    store.write(store.snapshot([record.to_persisted()], {}))  # not said, but the length changed
    assert small_store(props).load()[0]["ResumeState"]["Instances"][-1]["ID"] == "appended"


def test_a_failed_write_leaves_the_previous_save_readable_and_the_next_save_complete():
    props = CountingProperties()
    store = small_store(props)
    record = big_job()
    store.save([record.to_persisted()])
    before = small_store(props).load()
    record.resume_state["Instances"] = record.resume_state["Instances"][:10] * 30  # a new value: a new blob
    props.fail_on = JOBS_PROPERTY  # the blob is written, the index is not (a crash at that point)
    with pytest.raises(OSError):
        store.save([record.to_persisted()])
    assert small_store(props).load() == before, "the old index and its blobs are intact"
    props.fail_on = None
    store.save([record.to_persisted()])
    assert JobRecord.from_persisted(small_store(props).load()[0]) == record


def test_a_missing_blob_makes_that_job_unreadable_only():
    props = CountingProperties()
    small_store(props).save([big_job("a").to_persisted(), big_job("b").to_persisted()])
    blob_a = json.loads(props.values[JOBS_PROPERTY])["Jobs"][0]["Blobs"]["Instances"]
    props.values[blob_a] = ""
    loaded = small_store(props).load()
    with pytest.raises(ValueError, match="missing"):
        JobRecord.from_persisted(loaded[0])
    assert JobRecord.from_persisted(loaded[1]) == big_job("b")


def test_without_a_free_blob_property_a_value_stays_inline():
    props = CountingProperties()
    store = small_store(props, blob_ids=[30000])
    records = [big_job("a"), big_job("b")]
    store.save([r.to_persisted() for r in records])
    jobs_saved = json.loads(props.values[JOBS_PROPERTY])["Jobs"]
    assert [bool(j.get("Blobs")) for j in jobs_saved] == [True, False]
    assert [JobRecord.from_persisted(d) for d in small_store(props, blob_ids=[30000]).load()] == records


def test_format_1_is_still_read(props):
    saved = jobs()
    props.values[JOBS_PROPERTY] = json.dumps({"Version": 1, "Jobs": saved})
    assert GlobalPropertyJobStore(props.get, props.set).load() == saved


def test_blob_properties_are_the_plugins_own_and_apart_from_the_journal():
    from transfers_plugin.jobs.store import BLOB_IDS
    from transfers_plugin.journal import JOURNAL_PROPERTY
    assert min(BLOB_IDS) >= 1024 and JOBS_PROPERTY not in BLOB_IDS and JOURNAL_PROPERTY not in BLOB_IDS


def test_the_engine_saves_in_place_changes_it_is_told_of_and_a_new_engine_goes_on_from_them():
    import threading
    import time

    from transfers_plugin.jobs.engine import JobEngine

    props = CountingProperties()
    touched, release, seen = threading.Event(), threading.Event(), []

    class Growing:
        name = "Grow"

        def run(self, ctx) -> None:
            seen.append(len(ctx.resume_state.get("L", [])))
            if "L" not in ctx.resume_state:
                ctx.update_resume_state(L=[f"{i:050d}" for i in range(100)])
                ctx.save_now()
            items = ctx.resume_state["L"]
            items[0] = "changed in place"
            ctx.touch("L")
            touched.set()
            while not release.is_set():
                ctx.wait(0.01)

        def cleanup(self, record, reason) -> None:
            pass

    def saved_list() -> List[str]:
        text = props.values.get(JOBS_PROPERTY)
        if not text:
            return []
        loaded = small_store(props).load()
        return loaded[0]["ResumeState"].get("L", []) if loaded else []

    engine = JobEngine({"Grow": Growing()}, small_store(props))
    engine.start()
    try:
        job = engine.submit("Grow", {})
        assert touched.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (saved_list()[:1] != ["changed in place"]):
            time.sleep(0.05)
        assert saved_list()[:1] == ["changed in place"] and len(saved_list()) == 100
        assert json.loads(props.values[JOBS_PROPERTY])["Jobs"][0]["Blobs"], "the list is in a blob"
    finally:
        engine.stop(timeout=5, save=False)  # as a kill -9: nothing more is written
    touched.clear()
    again = JobEngine({"Grow": Growing()}, small_store(props))
    again.start()
    try:
        assert touched.wait(10)
        assert seen == [0, 100], "the second run went on from the saved list"
        release.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and again.job_json(job.id)["State"] != "Success":
            time.sleep(0.05)
        assert again.job_json(job.id)["State"] == "Success"
    finally:
        again.stop(timeout=5)
