"""The Orthanc Explorer button, driven in Debian's Chromium (headless) by Playwright, against real servers."""

import hashlib
import os
import re
import shutil

import pytest
from corpus import upload_files
from transfer_helpers import wait_job

from tools.orthanc_launcher import REPO_ROOT, free_port

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def servers(module_orthanc_factory, corpus):
    port_a, port_b = free_port(), free_port()
    a = module_orthanc_factory("a", http_port=port_a, peers={
        "b-push": {"Url": f"http://127.0.0.1:{port_b}/"},
        "b": {"Url": f"http://127.0.0.1:{port_b}/", "RemoteSelf": "a"},
        "nowhere": [f"http://127.0.0.1:{free_port()}/"],
    })
    b = module_orthanc_factory("b", http_port=port_b, peers={"a": {"Url": f"http://127.0.0.1:{port_a}/"}})
    # The corpus's largest study of several instances: studies/lctsc-rt (a CT slice and a 2 MB RT Structure Set)
    # in ../shared/dicom, a generated MR study in the fallback.
    files = upload_files(a, corpus.largest_study())
    study = a.get_json(f"/instances/{next(iter(files))}/study")["ID"]
    return a, b, files, study


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: apt-get install chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def clear(server):
    for patient in server.get_json("/patients"):
        server.request("DELETE", f"/patients/{patient}")


def assert_study_at(server, files):
    assert sorted(server.instances()) == sorted(files)
    for instance_id, f in files.items():
        assert hashlib.md5(server.get(f"/instances/{instance_id}/file").content).hexdigest() == f.md5


def assert_sizes_said(text, content):
    """The dialog says "X of Y MB" in the instances' own size (X = Y at the end), the wire's bytes apart."""
    said = re.search(r"(\d+) of (\d+) MB, (\d+) MB on the wire, (\d+) KB/s", text)
    assert said, text
    completed, total, wire, _ = (int(g) for g in said.groups())
    assert completed == total == content["TotalSizeMB"] == content["CompletedSizeMB"], (text, content)
    assert wire == content["WireSizeMB"], (text, content)
    assert "left" not in text  # no time left once it is done


def open_dialog(page, a, study):
    page.goto(f"{a.url}/app/explorer.html#study?uuid={study}")
    button = page.locator("#study-transfers")
    button.wait_for(state="visible", timeout=20000)
    button.click()
    page.locator("#transfers-peer option[value='b-push']").wait_for(state="attached", timeout=10000)
    assert page.locator("#transfers-peer option[value='nowhere']").get_attribute("disabled") is not None
    return page


def test_send_from_the_explorer_in_push_and_pull_mode(servers, browser):
    a, b, files, study = servers
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    clear(b)
    open_dialog(page, a, study)
    page.select_option("#transfers-peer", "b-push")
    page.select_option("#transfers-compression", "auto")
    page.click("#transfers-send")
    page.locator("#transfers-status[data-state='Success']").wait_for(timeout=60000)
    text = page.inner_text("#transfers-status")
    assert "Transfer complete" in text
    page.screenshot(path=str(ARTIFACTS / "explorer-transfers-push.png"))
    assert_study_at(b, files)
    page.click("#transfers-close")
    page.locator("#transfers-dialog").wait_for(state="detached", timeout=10000)
    jobs = [j for j in a.get_json("/jobs?expand") if j["Type"] == "PushTransfer"]
    # "auto" between two of our peers: the pixel-aware codec.
    assert jobs and jobs[-1]["State"] == "Success" and jobs[-1]["Content"]["Compression"] == "zstd-shuffle"
    assert_sizes_said(text, jobs[-1]["Content"])

    clear(b)
    open_dialog(page, a, study)
    page.select_option("#transfers-peer", "b")
    page.select_option("#transfers-compression", "none")
    page.click("#transfers-send")
    # Pull mode: the dialog follows the local RemotePullTransfer job, which follows B's job.
    page.locator("#transfers-status[data-state='Success']").wait_for(timeout=60000)
    text = page.inner_text("#transfers-status")
    assert "Transfer complete" in text and "pull mode" in text, text
    remote_job = next(j for j in b.get_json("/jobs") if j in text)
    page.screenshot(path=str(ARTIFACTS / "explorer-transfers-pull.png"))
    assert wait_job(b, remote_job)["State"] == "Success"
    follow = [j for j in a.get_json("/jobs?expand") if j["Type"] == "RemotePullTransfer"]
    assert follow and follow[-1]["State"] == "Success" and follow[-1]["Content"]["RemoteJob"] == remote_job
    assert_sizes_said(text, b.get_json(f"/jobs/{remote_job}")["Content"])
    assert_study_at(b, files)
    assert errors == [], errors


def test_the_pages_still_work_when_the_plugin_routes_fail(servers, browser):
    """With the peers route answering an error, the dialog says so and the page keeps working."""
    a, b, files, study = servers
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route(re.compile(r".*/transfers/peers(\?.*)?$"), lambda route: route.fulfill(status=500, body="{}"))
    page.goto(f"{a.url}/app/explorer.html#study?uuid={study}")
    page.locator("#study-transfers").click()
    page.locator("#transfers-status[data-state='Failure']").wait_for(timeout=10000)
    assert "peers" in page.inner_text("#transfers-status").lower()
    assert page.locator("#transfers-send").get_attribute("class").find("ui-disabled") >= 0
    # The Explorer's own links still work.
    page.goto(f"{a.url}/app/explorer.html#series?uuid={a.get_json(f'/studies/{study}')['Series'][0]}")
    page.locator("#series-transfers").wait_for(state="visible", timeout=10000)
    page.goto(f"{a.url}/app/explorer.html#instance?uuid={sorted(files)[0]}")
    page.locator("#instance-transfers").wait_for(state="visible", timeout=10000)
    page.goto(f"{a.url}/app/explorer.html#patient?uuid={a.get_json(f'/studies/{study}')['ParentPatient']}")
    page.locator("#patient-transfers").wait_for(state="visible", timeout=10000)
    assert errors == [], errors
