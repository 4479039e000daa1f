"""The fallback corpus of a clone without ../shared (tests/corpus.py), checked against a real Orthanc even
where the full corpus is present: every computed Orthanc ID is the one Orthanc gives, every file comes back
byte-identical, one study per (PatientID, StudyInstanceUID)."""

import pytest
from corpus import fallback_corpus, upload_files

pytestmark = pytest.mark.integration


def test_orthanc_stores_the_fallback_as_described(orthanc_factory, fixtures_dir, tmp_path):
    fallback = fallback_corpus(fixtures_dir, tmp_path / "corpus", "built by the test")
    server = orthanc_factory("fallback", with_plugin=False)
    files = upload_files(server, fallback.files)
    assert sorted(server.instances()) == sorted(files) and len(files) == len(fallback.files)
    assert len(server.get_json("/studies")) == fallback.study_count()
    for instance_id, f in files.items():
        assert server.get(f"/instances/{instance_id}/file").content == f.read(), f.relative
