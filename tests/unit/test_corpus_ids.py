"""The test corpus's Orthanc instance IDs, computed from the DICOM files, against IDs a real Orthanc gave."""

import hashlib
import json

import pytest
from corpus import GENERATED, PYDICOM_FILES, dicom_identifiers, fallback_corpus


def test_ids_of_the_recorded_instances(fixtures_dir):
    """The 5 instances of the C++ recordings are named after the ID Orthanc 1.10.1 gave them."""
    paths = sorted((fixtures_dir / "instances").glob("*.dcm"))
    assert len(paths) == 5
    for path in paths:
        assert dicom_identifiers(path)[0] == path.stem


def test_ids_of_the_full_corpus(corpus):
    corpus.skip_unless_full("Checking the ID computation against the IDs Orthanc gave 102 varied files")
    for f in corpus.files:
        assert dicom_identifiers(f.path)[0] == f.orthanc_id, f.relative


def test_the_fallback_corpus(fixtures_dir, tmp_path):
    fallback = fallback_corpus(fixtures_dir, tmp_path, "built by the test")
    assert not fallback.full and "built by the test" in fallback.origin
    by_relative = {f.relative: f for f in fallback.files}
    assert len({f.orthanc_id for f in fallback.files}) == len(fallback.files)
    recorded = json.loads((fixtures_dir / "instances" / "instances.json").read_text())
    assert set(recorded) <= {f.orthanc_id for f in fallback.files}
    for name in PYDICOM_FILES:
        assert any(r.startswith(f"pydicom/{name}") for r in by_relative), name
    assert len([r for r in by_relative if r.startswith("pydicom/dicomdirtests/")]) == 31
    carried = [f for f in fallback.files if f.relative.startswith("fixtures/cxx-1.4/instances/")]
    assert [f.size for f in carried] == [526432], "the recordings' CT slice (LCTSC), its 4 others from pydicom"
    for folder, _, count, *_ in GENERATED:
        assert len([r for r in by_relative if r.startswith(f"generated/{folder}/")]) == count
    for f in fallback.files:
        data = f.read()
        assert len(data) == f.size and hashlib.md5(data).hexdigest() == f.md5
    assert {f.group for f in fallback.files} >= {"studies", "transfer-syntaxes", "multiframe", "edge-cases", "large"}
    assert max(f.size for f in fallback.files) > 2 * 1024 * 1024
    study = fallback.largest_study()
    assert len(study) > 1 and all(f.relative.startswith("generated/mr-256/") for f in study)


def test_skip_unless_full_names_the_shared_corpus(fixtures_dir, tmp_path):
    fallback = fallback_corpus(fixtures_dir, tmp_path, "/x/shared/dicom is absent")
    with pytest.raises(pytest.skip.Exception, match=r"Thing needs the full DICOM corpus of \.\./shared/dicom; "
                                                    r"/x/shared/dicom is absent"):
        fallback.skip_unless_full("Thing")
