"""GET /transfers/chunks and POST /transfers/lookup on a real Orthanc holding a whole corpus (tests/corpus.py)."""

import gzip
import hashlib
import random
import zlib

import pytest
from corpus import upload_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def loaded(module_orthanc_factory, corpus):
    # gzip level 6, the C++ plugin's: chunk answers are then byte-identical to a C++ source's.
    server = module_orthanc_factory("source", transfers={"CompressionLevel": 6})
    files = upload_files(server, corpus.files)
    return server, files


def single_gzip_member(body: bytes) -> bytes:
    """Decompresses exactly one gzip member and fails on anything after it."""
    d = zlib.decompressobj(31)
    out = d.decompress(body) + d.flush()
    assert d.eof, "the gzip stream is truncated"
    assert d.unused_data == b"", "bytes follow the gzip member"
    return out


def test_plugin_is_detectable(loaded):
    server, _ = loaded
    plugins = server.get_json("/plugins")
    assert "transfers" in plugins and "python" in plugins
    assert server.get_json("/plugins/transfers")["ID"] == "transfers"


def test_every_file_served_whole_with_each_compression(loaded):
    server, files = loaded
    for instance_id, f in files.items():
        expected = f.read()
        r = server.get(f"/transfers/chunks/{instance_id}")
        assert r.status_code == 200, (f.relative, r.text)
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.content == expected, f.relative
        r = server.get(f"/transfers/chunks/{instance_id}", params={"compression": "gzip"})
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/gzip"
        assert r.content[:10] == bytes.fromhex("1f8b0800000000000003")
        assert single_gzip_member(r.content) == expected, f.relative
        # Level 6, mtime 0: byte for byte what the C++ plugin sends for the same bytes.
        assert r.content == gzip.compress(expected, 6, mtime=0)


def reference_slice(blobs, offset, size):
    whole = b"".join(blobs)
    return whole[offset:] if size == 0 else whole[offset:offset + size]


def test_slices_of_multi_instance_urls(loaded):
    server, files = loaded
    rng = random.Random(20261128)
    ids = sorted(files)
    cases = 0
    for _ in range(40):
        chosen = rng.sample(ids, rng.randint(1, 6))
        blobs = [files[i].read() for i in chosen]
        total = sum(len(b) for b in blobs)
        boundaries = [sum(len(b) for b in blobs[:k]) for k in range(1, len(blobs))]
        offsets = {0, rng.randrange(total)} | {max(0, b - rng.randint(0, 5)) for b in boundaries}
        for offset in sorted(offsets):
            for size in {0, 1, rng.randint(1, total), total - offset, total - offset + rng.randint(1, 5000)}:
                if size < 0:
                    continue
                for compression in ("none", "gzip"):
                    r = server.get(f"/transfers/chunks/{'.'.join(chosen)}",
                                   params={"offset": str(offset), "size": str(size), "compression": compression})
                    assert r.status_code == 200, r.text
                    body = single_gzip_member(r.content) if compression == "gzip" else r.content
                    assert body == reference_slice(blobs, offset, size), (chosen, offset, size, compression)
                    cases += 1
    assert cases > 400


def test_double_slash_paths_and_argument_order(loaded):
    server, files = loaded
    instance_id, f = sorted(files.items())[0]
    data = f.read()
    r = server.get(f"//transfers/chunks/{instance_id}?compression=none&size=10&offset=3")
    assert r.status_code == 200 and r.content == data[3:13]
    r = server.post("//transfers/lookup", json=[{"Level": "Instance", "ID": instance_id}])
    assert r.status_code == 200 and r.json()["Instances"][0]["ID"] == instance_id


def test_same_instance_listed_twice(loaded):
    server, files = loaded
    instance_id, f = sorted(files.items())[5]
    data = f.read()
    r = server.get(f"/transfers/chunks/{instance_id}.{instance_id}", params={"offset": "7"})
    assert r.content == (data + data)[7:]


def parents(server, files, level):
    """Instance ID -> its Orthanc parent ID at a level, asked from Orthanc's core API."""
    key = {"Patient": "patient", "Study": "study", "Series": "series"}[level]
    return {i: server.get_json(f"/instances/{i}/{key}")["ID"] for i in files}


def check_lookup_answer(answer, files, expected_ids):
    expected_ids = sorted(set(expected_ids))
    got = [i["ID"] for i in answer["Instances"]]
    assert got == expected_ids, "each instance once, in ascending ID order"
    for item in answer["Instances"]:
        f = files[item["ID"]]
        assert item == {"ID": item["ID"], "Size": str(f.size), "MD5": f.md5}
        assert isinstance(item["Size"], str)
    total = sum(files[i].size for i in expected_ids)
    assert answer["CountInstances"] == len(expected_ids)
    assert answer["TotalSize"] == str(total)
    assert answer["TotalSizeMB"] == int(total / 1048576 + 0.5)
    assert isinstance(answer["Originator"], str) and len(answer["Originator"]) == 36


def test_lookup_each_level(loaded):
    server, files = loaded
    for level in ("Patient", "Study", "Series"):
        parent_of = parents(server, files, level)
        by_parent = {}
        for i, p in parent_of.items():
            by_parent.setdefault(p, []).append(i)
        # the largest group and a few others
        for parent in sorted(by_parent, key=lambda p: -len(by_parent[p]))[:4]:
            r = server.post("/transfers/lookup", json=[{"Level": level, "ID": parent}])
            assert r.status_code == 200, r.text
            check_lookup_answer(r.json(), files, by_parent[parent])
    some = sorted(files)[10:13]
    r = server.post("/transfers/lookup", json=[{"Level": "Instance", "ID": i} for i in some])
    check_lookup_answer(r.json(), files, some)


def test_lookup_mixed_overlapping_and_aliases(loaded):
    server, files = loaded
    study_of = parents(server, files, "Study")
    series_of = parents(server, files, "Series")
    patient_of = parents(server, files, "Patient")
    biggest_study = max(set(study_of.values()), key=lambda s: sum(1 for v in study_of.values() if v == s))
    in_study = [i for i, s in study_of.items() if s == biggest_study]
    one_series = series_of[in_study[0]]
    patient = patient_of[in_study[0]]
    other_instance = next(i for i in sorted(files) if patient_of[i] != patient)
    resources = [
        {"Level": "series", "ID": one_series},
        {"Level": "Studies", "ID": biggest_study},
        {"Level": "IMAGE", "ID": in_study[0]},
        {"Level": "Instances", "ID": other_instance},
        {"Level": "patients", "ID": patient},
        {"Level": "Study", "ID": biggest_study, "Extra": "ignored"},
    ]
    expected = [i for i, p in patient_of.items() if p == patient] + [other_instance]
    r = server.post("/transfers/lookup", json=resources)
    assert r.status_code == 200, r.text
    answer = r.json()
    check_lookup_answer(answer, files, expected)
    # The Originator identifies this plugin process: the same for every lookup.
    again = server.post("/transfers/lookup", json=[]).json()
    assert again["Originator"] == answer["Originator"]
    assert again["CountInstances"] == 0 and again["Instances"] == [] and again["TotalSize"] == "0"


def test_lookup_everything(loaded):
    server, files = loaded
    patients = server.get_json("/patients")
    r = server.post("/transfers/lookup", json=[{"Level": "Patient", "ID": p} for p in patients])
    check_lookup_answer(r.json(), files, list(files))
    assert r.json()["TotalSizeMB"] == round(sum(f.size for f in files.values()) / 1048576)
    md5s = {i["ID"]: i["MD5"] for i in r.json()["Instances"]}
    # The announced MD5 is the MD5 of what the chunks route serves.
    for instance_id in sorted(files)[:20]:
        assert hashlib.md5(server.get(f"/transfers/chunks/{instance_id}").content).hexdigest() == md5s[instance_id]
