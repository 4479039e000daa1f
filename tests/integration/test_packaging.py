"""``pip install`` of the project: a wheel carries the whole package and its Explorer script, one command
prints the path for Orthanc's ``PythonScript``, and Orthanc loads the plugin from that path."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools.orthanc_launcher import REPO_ROOT
from tools.synthetic import generate_study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the project's files (the checkout stays free of build folders)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "transfers_plugin", src / "transfers_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(out), str(src)], check=True)
    [built] = out.glob("orthanc_transfers_py-*.whl")
    return built


def test_the_wheel_carries_every_module_and_the_explorer_script(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO_ROOT / "transfers_plugin"
    wanted = {str(p.relative_to(REPO_ROOT)) for p in package.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert wanted, "no files in the package?"
    assert wanted <= names, f"left out of the wheel: {sorted(wanted - names)}"
    assert "transfers_plugin/explorer/transfers.js" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "orthanc-transfers-py = transfers_plugin.__main__:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()


def test_installed_wheel_prints_its_script_and_orthanc_loads_it(wheel, tmp_path, orthanc_factory):
    site = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--target", str(site), str(wheel)], check=True)
    env = dict(os.environ, PYTHONPATH=str(site))
    printed = subprocess.run([sys.executable, "-m", "transfers_plugin"], env=env, cwd=str(tmp_path),
                             check=True, capture_output=True, text=True).stdout
    script = Path(printed.strip())
    assert printed.count("\n") == 1 and script == site / "transfers_plugin" / "plugin.py" and script.is_file()
    console = subprocess.run([str(site / "bin" / "orthanc-transfers-py"), "--config"], env=env,
                             check=True, capture_output=True, text=True).stdout
    fragment = json.loads(console)
    assert fragment["PythonScript"] == str(script)
    assert len(fragment["Plugins"]) == 1 and "libOrthancPython" in fragment["Plugins"][0]

    server = orthanc_factory("pip", plugin_script=script)
    assert "transfers" in server.get_json("/plugins")
    assert f"directory: {script.parent}" in server.log_text()
    explorer = server.get("/plugins/explorer.js").text
    marker = next(line for line in (REPO_ROOT / "transfers_plugin/explorer/transfers.js").read_text().splitlines()
                  if len(line.strip()) > 30)
    assert marker in explorer
    data = next(generate_study(1, 64, 64, seed=5))
    instance_id = server.upload(data)
    assert server.get(f"/transfers/chunks/{instance_id}").content == data
