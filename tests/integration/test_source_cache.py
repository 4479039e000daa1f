"""The source cache in a real Orthanc: bounded, correct under eviction and concurrency, never stale."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from tools.synthetic import generate_study

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_cache_server(module_orthanc_factory):
    # CacheSize 1 MB while every instance is about 0.5 MB: constant eviction.
    server = module_orthanc_factory("small-cache", transfers={"CacheSize": 1, "Threads": 2})
    files = {}
    for data in generate_study(8, 512, 512, seed=11):
        files[server.upload(data)] = data
    return server, files


def test_correct_bytes_under_eviction_and_concurrency(small_cache_server):
    server, files = small_cache_server
    ids = sorted(files)
    whole = b"".join(files[i] for i in ids)
    requests_to_make = []
    for k in range(40):
        offset = (k * 104729) % (len(whole) - 1)
        requests_to_make.append((offset, 300000 if k % 3 else 0, "gzip" if k % 2 else "none"))

    def fetch(case):
        offset, size, compression = case
        import gzip
        r = server.get(f"/transfers/chunks/{'.'.join(ids)}",
                       params={"offset": offset, "size": size, "compression": compression})
        assert r.status_code == 200, r.text
        body = gzip.decompress(r.content) if compression == "gzip" else r.content
        expected = whole[offset:] if size == 0 else whole[offset:offset + size]
        return body == expected

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fetch, requests_to_make))


def test_deleted_instance_is_not_served_from_the_cache(small_cache_server):
    server, files = small_cache_server
    instance_id = sorted(files)[-1]
    assert hashlib.md5(server.get(f"/transfers/chunks/{instance_id}").content).hexdigest() == \
        hashlib.md5(files[instance_id]).hexdigest()
    assert server.request("DELETE", f"/instances/{instance_id}").status_code == 200
    r = server.get(f"/transfers/chunks/{instance_id}")
    assert r.status_code == 404, "a deleted instance must not be served from the cache"
    assert server.post("/transfers/lookup", json=[{"Level": "Instance", "ID": instance_id}]).status_code == 404
    # Stored again, it is served again.
    assert server.upload(files[instance_id]) == instance_id
    assert server.get(f"/transfers/chunks/{instance_id}").content == files[instance_id]
