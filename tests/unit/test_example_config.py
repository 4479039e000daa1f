"""orthanc.json.example is a valid configuration: defaults of the C++ plugin, one push and one pull peer."""

import json
from pathlib import Path

from transfers_plugin.config import INT_OPTIONS, TRANSFERS_OPTIONS, parse_configuration

EXAMPLE = Path(__file__).resolve().parents[2] / "orthanc.json.example"


def test_example_parses_with_the_documented_defaults():
    cfg = json.loads(EXAMPLE.read_text())
    config = parse_configuration(cfg)
    assert config.warnings == ()
    for option, (default, *_rest) in TRANSFERS_OPTIONS.items():
        assert cfg["Transfers"][option] == default, option
    assert cfg["PythonScript"].endswith("transfers_plugin/plugin.py")
    assert config.peers["hospital-b"].remote_self is None
    assert config.peers["hospital-c"].remote_self == "hospital-a"
    assert config.peers["hospital-b"].headers == {"X-Site": "hospital-a"}
    assert config.peer_timeout(config.peers["hospital-b"]) == 120
    assert config.peer_timeout(config.peers["hospital-c"]) == 60


def test_readme_documents_every_option():
    readme = (EXAMPLE.parent / "README.md").read_text()
    for option, (default, lo, hi, _meaning) in INT_OPTIONS.items():
        assert f"| `{option}` | {default} | {lo}-{hi} |" in readme, option
    assert "| `DownloadArea` |" in readme
