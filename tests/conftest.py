"""Shared fixtures: real Orthanc servers, the DICOM corpus of ../shared/dicom, server logs on failure."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.orthanc_launcher import OrthancServer  # noqa: E402

SHARED = Path(os.environ.get("TRANSFERS_SHARED_DIR", REPO_ROOT.parent / "shared"))
CORPUS_DIR = SHARED / "dicom"
FIXTURES_DIR = SHARED / "fixtures" / "cxx-1.4"

_RUNNING: "list[OrthancServer]" = []


class OrthancFactory:
    """Starts real Orthanc servers in a temporary folder; ``close()`` stops every one of them."""

    def __init__(self, base: Path):
        self.base = base
        self.servers: list[OrthancServer] = []

    def __call__(self, name: str = "orthanc", **kwargs) -> OrthancServer:
        server = OrthancServer(name, self.base / f"{name}-{len(self.servers)}", **kwargs)
        self.servers.append(server)
        _RUNNING.append(server)
        return server.start()

    def close(self) -> None:
        for server in self.servers:
            try:
                server.stop()
            finally:
                if server in _RUNNING:
                    _RUNNING.remove(server)


@pytest.fixture
def orthanc_factory(tmp_path):
    factory = OrthancFactory(tmp_path)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_orthanc_factory(tmp_path_factory):
    factory = OrthancFactory(tmp_path_factory.mktemp("orthanc"))
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not (CORPUS_DIR / "manifest.json").exists():
        pytest.fail(f"The DICOM corpus is missing: {CORPUS_DIR} (set TRANSFERS_SHARED_DIR)")
    return CORPUS_DIR


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not (FIXTURES_DIR / "README.md").exists():
        pytest.fail(f"The C++ wire fixtures are missing: {FIXTURES_DIR} (set TRANSFERS_SHARED_DIR)")
    return FIXTURES_DIR


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the log of every running Orthanc server to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server in list(_RUNNING):
            report.sections.append((f"Orthanc log: {server.name} ({server.url})", server.log_tail(300)))


def pytest_report_header(config):
    from tools.orthanc_launcher import default_platform
    return f"Orthanc platform of the integration tests: {default_platform()} (TRANSFERS_PLATFORM)"
