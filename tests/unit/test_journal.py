"""The commit journal: instances created after a change number found in Orthanc's change log (paged as
Orthanc pages it), and commits in progress kept in a global property."""

import json

import pytest
from change_log import ChangeLog

from transfers_plugin.journal import CommitJournal, created_since, last_change


def test_last_change_of_an_empty_log_is_zero():
    assert last_change(ChangeLog().get_json) == 0


def test_created_since_finds_new_instances_of_the_set_only(monkeypatch):
    log = ChangeLog()
    log.add("NewInstance", "Instance", "old")
    since = last_change(log.get_json)
    log.add("NewInstance", "Instance", "a")
    log.add("NewSeries", "Series", "b")  # not an instance
    log.add("NewInstance", "Instance", "other")  # not of this commit
    log.add("Deleted", "Instance", "a")
    log.add("NewInstance", "Instance", "c")
    assert since == 1
    assert created_since(log.get_json, since, ["a", "b", "c", "old", "never"]) == ["a", "c"]


def test_created_since_pages_through_a_long_log(monkeypatch):
    monkeypatch.setattr("transfers_plugin.journal.CHANGES_PAGE", 7)
    log = ChangeLog()
    wanted = []
    for k in range(100):
        log.add("NewInstance", "Instance", f"i{k}")
        if k % 9 == 0:
            wanted.append(f"i{k}")
    assert created_since(log.get_json, 0, wanted) == wanted
    assert len(log.requests) >= 100 // 7


def test_created_since_stops_once_every_instance_is_found(monkeypatch):
    monkeypatch.setattr("transfers_plugin.journal.CHANGES_PAGE", 10)
    log = ChangeLog()
    for k in range(100):
        log.add("NewInstance", "Instance", f"i{k}")
    assert created_since(log.get_json, 0, ["i3"]) == ["i3"]
    assert len(log.requests) == 1


def test_created_since_with_nothing_new():
    log = ChangeLog()
    log.add("NewInstance", "Instance", "a")
    assert created_since(log.get_json, 1, ["a"]) == []


@pytest.fixture
def properties():
    return {}


def journal_over(properties, owner="run-1") -> CommitJournal:
    return CommitJournal(lambda pid, default: properties.get(pid, default),
                         lambda pid, value: properties.__setitem__(pid, value), owner=owner)


def test_journal_gives_the_commits_of_earlier_starts_only(properties):
    journal_over(properties).begin("t1", 5, ["b", "a"])
    journal_over(properties).begin("t2", 9, ["c"])
    assert journal_over(properties).entries() == {}, "this start's commits are running, not interrupted"
    again = journal_over(properties, owner="run-2")  # as after a restart
    assert again.entries() == {"t1": (5, ["a", "b"]), "t2": (9, ["c"])}
    again.begin("t3", 12, ["d"])
    again.end("t1")
    again.end("unknown")
    assert again.entries() == {"t2": (9, ["c"])}
    assert journal_over(properties, owner="run-3").entries() == {"t2": (9, ["c"]), "t3": (12, ["d"])}
    assert list(properties) == [23452] and json.loads(properties[23452])["t2"]["Since"] == 9


def test_journal_empty(properties):
    assert journal_over(properties).entries() == {}
