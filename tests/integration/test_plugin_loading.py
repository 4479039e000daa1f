"""The plugin loads from a checkout and from a copy installed elsewhere, and serves from both."""

import shutil

import pytest

from tools.orthanc_launcher import REPO_ROOT
from tools.synthetic import generate_study

pytestmark = pytest.mark.integration


def test_loads_from_an_installed_copy(orthanc_factory, tmp_path):
    site = tmp_path / "site-packages"
    shutil.copytree(REPO_ROOT / "transfers_plugin", site / "transfers_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    server = orthanc_factory("installed", plugin_script=site / "transfers_plugin" / "plugin.py")
    assert "transfers" in server.get_json("/plugins")
    assert f'directory: {site / "transfers_plugin"}' in server.log_text()
    data = next(generate_study(1, 64, 64, seed=3))
    instance_id = server.upload(data)
    assert server.get(f"/transfers/chunks/{instance_id}").content == data


def test_info_route_and_startup_line(orthanc_factory):
    server = orthanc_factory("checkout", transfers={"Threads": 3, "BucketSize": 1024, "CacheSize": 64})
    info = server.get_json("/plugins/transfers")
    assert info["ID"] == "transfers" and info["Version"]
    assert "Threads 3, BucketSize 1024 KB, CacheSize 64 MB" in server.log_text()
