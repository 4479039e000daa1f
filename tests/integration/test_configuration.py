"""A wrong Transfers option is named in Orthanc's log; the plugin then registers nothing, Orthanc runs on.

(Orthanc itself refuses malformed OrthancPeers before plugins see them: the unit tests cover those.)
"""

import pytest

pytestmark = pytest.mark.integration


def test_bad_values_are_named_and_nothing_is_registered(orthanc_factory):
    server = orthanc_factory("badconfig", transfers={
        "Threads": "4", "BucketSize": -1, "CacheSize": 0, "MaxHttpRetries": 1.5, "PeerCommitTimeout": True})
    log = server.log_text()
    for name in ("Transfers.Threads", "Transfers.BucketSize", "Transfers.CacheSize", "Transfers.MaxHttpRetries",
                 "Transfers.PeerCommitTimeout"):
        assert name in log, name
    assert "plugin is disabled" in log
    assert server.get("/system").status_code == 200
    assert "transfers" not in server.get_json("/plugins")
    assert server.get("/transfers/peers").status_code == 404
    assert server.post("/transfers/lookup", json=[]).status_code == 404


def test_defaults_and_unknown_options(orthanc_factory):
    server = orthanc_factory("goodconfig", transfers={"Threads": 2, "SomethingElse": 1})
    log = server.log_text()
    assert "Unknown option Transfers.SomethingElse" in log
    assert "Threads 2, BucketSize 4096 KB, CacheSize 512 MB" in log
    assert "transfers" in server.get_json("/plugins")
