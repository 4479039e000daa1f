"""A cluster node's identity in the configuration: its own download area, the cluster's one Originator."""

import os

import pytest

from transfers_plugin.config import ConfigError, node_folder_name, parse_configuration


def test_single_node_keeps_the_download_area_of_earlier_versions():
    config = parse_configuration({"StorageDirectory": "/data"})
    assert config.download_area == os.path.join("/data", "transfers-tmp")
    assert config.node_id is None and config.originator is None


def test_a_node_with_an_identifier_has_its_own_subfolder_of_the_shared_area():
    a = parse_configuration({"StorageDirectory": "/shared", "DatabaseServerIdentifier": "node-a"})
    b = parse_configuration({"StorageDirectory": "/shared", "DatabaseServerIdentifier": "node-b"})
    assert a.download_area == "/shared/transfers-tmp/node-node-a"
    assert b.download_area == "/shared/transfers-tmp/node-node-b"
    explicit = parse_configuration({"DatabaseServerIdentifier": "n1", "Transfers": {"DownloadArea": "/scratch"}})
    assert explicit.download_area == "/scratch/node-n1"


@pytest.mark.parametrize("identifier", ["../../etc", "a/b", "..", ".hidden", "x" * 65, "é", "a b"])
def test_an_identifier_that_is_not_a_plain_name_becomes_a_digest_inside_the_area(identifier):
    name = node_folder_name(identifier)
    assert name.startswith("node-sha1-") and "/" not in name and len(name) == len("node-sha1-") + 40
    assert node_folder_name(identifier + "z") != name


@pytest.mark.parametrize("value", ["", "   ", 7, ["a"], "a\nb"])
def test_a_bad_identifier_is_a_configuration_error(value):
    with pytest.raises(ConfigError, match="DatabaseServerIdentifier"):
        parse_configuration({"DatabaseServerIdentifier": value})


def test_the_originator_option_is_checked_and_kept():
    assert parse_configuration({"Transfers": {"Originator": "site-cluster"}}).originator == "site-cluster"
    for bad in ("", " x", "é", 3, "x" * 257):
        with pytest.raises(ConfigError, match="Originator"):
            parse_configuration({"Transfers": {"Originator": bad}})


def test_a_cluster_node_without_an_originator_is_warned():
    config = parse_configuration({"DatabaseServerIdentifier": "a", "PostgreSQL": {"Host": "db"}})
    assert any("Transfers.Originator" in w for w in config.warnings)
    assert not parse_configuration({"DatabaseServerIdentifier": "a"}).warnings
