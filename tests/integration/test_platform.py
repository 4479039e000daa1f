"""The servers of this run are the platform it names (``TRANSFERS_PLATFORM``): Debian 12's Orthanc 1.10.1
with Python plugin 4.0 on the host, or Debian 13's Orthanc 1.12.7 with Python plugin 5.0 in its root
filesystem; versions read from the platform's own package database, not written here."""

import subprocess
import time

import pytest

from tools.orthanc_launcher import DEBIAN13, HOST, debian13_root, default_platform

pytestmark = pytest.mark.integration


def package_version(platform: str, package: str) -> str:
    command = ["dpkg-query", "-W", "-f", "${Version}", package]
    if platform == DEBIAN13:
        command = ["chroot", str(debian13_root())] + command
    full = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return full.split(":")[-1].split("+")[0].split("-")[0]  # 1.12.7+dfsg-4 -> 1.12.7


def test_servers_run_the_platform_of_this_run(orthanc_factory):
    platform = default_platform()
    server = orthanc_factory("platform")
    assert server.platform == platform
    system = server.get_json("/system")
    assert system["Version"] == package_version(platform, "orthanc")
    python_plugin = server.get_json("/plugins/python")
    assert python_plugin["Version"] == package_version(platform, "orthanc-python")
    expected_major = {HOST: "1.10.", DEBIAN13: "1.12."}[platform]
    assert system["Version"].startswith(expected_major)
    # The plugin's own startup line names the Python it runs in: Debian 12's 3.11, Debian 13's 3.13.
    python = {HOST: "3.11", DEBIAN13: "3.13"}[platform]
    assert f"Python {python}" in server.log_text(), server.log_tail(40)


def plugin_version(server) -> tuple:
    return tuple(int(part) for part in server.get_json("/plugins/python")["Version"].split(".")[:2])


def test_sdk_differences_between_plugin_versions_are_handled(orthanc_factory):
    """What differs between Python plugin 4.0 and 5.0, and what the plugin does about each, on this platform.

    - Error answers: 4.0's ``SendHttpStatus`` takes (status, str, length) and refuses bytes, later versions
      take (status, body): either way a refused request answers its JSON body.
    - 405: ``SendMethodNotAllowed`` with the ``Allow`` header on both.
    - The references to REST arguments that 4.0 leaks (fixed in 4.1): measured at start; given back only
      where measured, so the warning is logged on 4.0 and not on 5.0.
    """
    server = orthanc_factory("sdk")
    r = server.post("/transfers/lookup", data=b"[" * 100 + b"]" * 100)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    assert r.json()["HttpStatus"] == 400 and "nest" in r.json()["Message"].lower(), r.text
    r = server.request("DELETE", "/transfers/lookup")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    leaky = plugin_version(server) < (4, 1)
    deadline = time.monotonic() + (15 if leaky else 3)  # the probe runs once Orthanc has started
    while time.monotonic() < deadline and "leaks the arguments of REST callbacks" not in server.log_text():
        time.sleep(0.2)
    assert ("leaks the arguments of REST callbacks" in server.log_text()) == leaky, server.log_tail(40)
    assert "unexpected reference counts" not in server.log_text()
    # What a leak would show: 20 bodies of 4 MB refused or not, the process grows by far less than 80 MB.
    before = server.memory_mb()
    for _ in range(20):
        server.post("/transfers/push", data=b"x" * (4 << 20))
    assert server.memory_mb() - before < 40, (before, server.memory_mb())
    assert server.answers()
