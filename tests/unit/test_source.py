"""The source side: byte ranges of R1 (protocol.md section 3), lookup from attachment records, corrupt files."""

import hashlib
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfers_plugin.cache import CachedInstance
from transfers_plugin.codec import ZSTD_SHUFFLE, codec_names, get_codec
from transfers_plugin.errors import CorruptedFile, NotFound, ParameterOutOfRange, PayloadTooLarge
from transfers_plugin.protocol import Bucket, Chunk, ChunkRequest, InstanceInfo, Resource
from transfers_plugin.source import Source, read_range


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def reference(datas: List[bytes], offset: int, size: int) -> Optional[bytes]:
    """protocol.md R1, said plainly: concatenate, skip ``offset``, keep ``size`` (0: the rest).

    None when the request is refused: an offset at or after the end, unless it is 0.
    """
    whole = b"".join(datas)
    if offset and offset >= len(whole):
        return None
    return whole[offset:] if size == 0 else whole[offset:offset + size]


class Getter:
    """``get(id)`` over a dict of bytes, recording the order of the calls."""

    def __init__(self, files: Dict[str, bytes]):
        self.files = files
        self.calls: List[str] = []

    def __call__(self, instance_id: str) -> CachedInstance:
        self.calls.append(instance_id)
        if instance_id not in self.files:
            raise NotFound(f"Unknown instance {instance_id}")
        return CachedInstance.from_bytes(instance_id, self.files[instance_id])


def make_files(sizes: List[int]) -> Tuple[List[str], Dict[str, bytes]]:
    ids = [f"{k:04x}" for k in range(len(sizes))]
    # distinct bytes per instance and per position, so that a wrong slice cannot look right
    files = {i: bytes((k * 37 + j) % 251 for j in range(n)) for k, (i, n) in enumerate(zip(ids, sizes))}
    return ids, files


# --- read_range ----------------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=6), st.data())
def test_read_range_matches_the_reference(sizes, data):
    ids, files = make_files(sizes)
    total = sum(sizes)
    offset = data.draw(st.integers(min_value=0, max_value=total + 5), "offset")
    size = data.draw(st.integers(min_value=0, max_value=total + 5), "size")
    get = Getter(files)
    expected = reference([files[i] for i in ids], offset, size)
    if expected is None:
        with pytest.raises(ParameterOutOfRange) as info:
            read_range(get, ids, offset, size)
        assert info.value.status == 400
        return
    result = read_range(get, ids, offset, size)
    assert isinstance(result, bytes)
    assert result == expected
    # Instances are loaded in URL order; none after the one holding the last requested byte.
    end = offset + size
    if size and end <= total:
        cumulative, needed = 0, 0
        while cumulative < end:
            cumulative += sizes[needed]
            needed += 1
        assert get.calls == ids[:needed]
    else:
        assert get.calls == ids


def test_read_range_examples():
    files = {"a": b"0123456789", "b": b"abcdef", "c": b"XYZ"}
    get = Getter(files)
    ids = ["a", "b", "c"]
    assert read_range(get, ids, 0, 0) == b"0123456789abcdefXYZ"
    assert read_range(get, ids, 8, 4) == b"89ab"
    assert read_range(get, ids, 10, 0) == b"abcdefXYZ"
    assert read_range(get, ["c", "a"], 1, 3) == b"YZ0"  # URL order, not sorted
    assert read_range(get, ids, 0, 1000) == b"0123456789abcdefXYZ"  # past the end: a short answer
    assert read_range(get, ids, 18, 5) == b"Z"
    assert read_range(get, ["a", "a"], 5, 10) == b"5678901234"


def test_an_assembled_answer_is_bounded_but_a_whole_instance_is_not_copied():
    from transfers_plugin.errors import PayloadTooLarge

    files = {"a": b"0123456789", "b": b"abcdef"}
    get = Getter(files)
    with pytest.raises(PayloadTooLarge) as e:
        read_range(get, ["a"] * 300, 0, 0, max_bytes=100)  # one instance listed 300 times
    assert e.value.status == 413
    assert read_range(get, ["a"] * 10, 0, 0, max_bytes=100) == files["a"] * 10
    assert read_range(get, ["a"], 0, 0, max_bytes=5) is files["a"]  # served as it is, no copy made


@pytest.mark.parametrize("offset", [19, 20, 10**12])
def test_read_range_offset_at_or_after_the_end(offset):
    get = Getter({"a": b"0123456789", "b": b"abcdef", "c": b"XYZ"})
    with pytest.raises(ParameterOutOfRange) as info:
        read_range(get, ["a", "b", "c"], offset, 0)
    assert info.value.status == 400 and info.value.orthanc_code == 3
    with pytest.raises(ParameterOutOfRange):
        read_range(get, ["a", "b", "c"], offset, 1)


def test_read_range_offset_zero_of_empty_instances_is_empty():
    get = Getter({"e": b"", "f": b""})
    assert read_range(get, ["e", "f"], 0, 0) == b""
    assert read_range(get, ["e"], 0, 10) == b""
    with pytest.raises(ParameterOutOfRange):
        read_range(get, ["e", "f"], 1, 0)


def test_read_range_does_not_load_instances_after_the_range():
    get = Getter({"a": b"aaaa", "b": b"bbbb"})  # "missing" would fail if it were loaded
    assert read_range(get, ["a", "b", "missing"], 2, 6) == b"aabbbb"
    assert get.calls == ["a", "b"]
    get.calls.clear()
    assert read_range(get, ["a", "missing"], 0, 4) == b"aaaa"
    assert get.calls == ["a"]


def test_read_range_skipped_instances_are_loaded_for_their_size():
    get = Getter({"a": b"aaaa", "b": b"bbbb"})
    assert read_range(get, ["a", "b"], 5, 2) == b"bb"
    assert get.calls == ["a", "b"]


def test_read_range_unknown_instance():
    with pytest.raises(NotFound):
        read_range(Getter({"a": b"a"}), ["a", "zz"], 0, 0)


# --- a fake store --------------------------------------------------------------------------------------

class FakeStore:
    def __init__(self):
        self.files: Dict[str, bytes] = {}
        self.records: Dict[str, Tuple[int, Optional[str]]] = {}
        self.children: Dict[Tuple[str, str], List[str]] = {}
        self.reads: List[str] = []
        self.info_calls: List[str] = []
        self.child_calls: List[Tuple[str, str]] = []
        self.lock = threading.Lock()
        self.read_delay = 0.0
        self.active = 0
        self.max_active = 0

    def add(self, instance_id: str, data: bytes, record_md5: bool = True) -> None:
        self.files[instance_id] = data
        self.records[instance_id] = (len(data), md5(data) if record_md5 else None)

    def child_instances(self, level: str, resource_id: str) -> List[str]:
        self.child_calls.append((level, resource_id))
        try:
            return list(self.children[(level, resource_id)])
        except KeyError:
            raise NotFound(f"Unknown {level} {resource_id}") from None

    def attachment_info(self, instance_id: str) -> Tuple[int, Optional[str]]:
        self.info_calls.append(instance_id)
        if instance_id not in self.records:
            raise NotFound(f"Unknown instance {instance_id}")
        return self.records[instance_id]

    def read_dicom(self, instance_id: str) -> bytes:
        with self.lock:
            self.reads.append(instance_id)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.read_delay:
                time.sleep(self.read_delay)
            if instance_id not in self.files:
                raise NotFound(f"Unknown instance {instance_id}")
            return self.files[instance_id]
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def store() -> FakeStore:
    s = FakeStore()
    s.add("0a", b"first file")
    s.add("0b", b"second, longer file")
    s.add("1c", b"third")
    s.children[("Series", "se1")] = ["1c", "0a"]
    s.children[("Study", "st1")] = ["0b", "1c", "0a"]
    s.children[("Patient", "pa1")] = ["1c", "0b", "0a"]
    return s


# --- expand and lookup ---------------------------------------------------------------------------------

def test_expand_dedups_and_sorts(store):
    source = Source(store, 1 << 20)
    resources = [Resource("Series", "se1"), Resource("Instance", "0b"), Resource("Study", "st1"),
                 Resource("Instance", "1c")]
    assert source.expand(resources) == ["0a", "0b", "1c"]
    assert store.child_calls == [("Series", "se1"), ("Study", "st1")]  # instances are used as they are
    assert source.expand([]) == []


def test_expand_byte_wise_order(store):
    store.children[("Series", "s")] = ["b", "a-", "a0", "B", "a"]
    assert Source(store, 1 << 20).expand([Resource("Series", "s")]) == ["B", "a", "a-", "a0", "b"]


def test_expand_unknown_resource(store):
    with pytest.raises(NotFound) as info:
        Source(store, 1 << 20).expand([Resource("Study", "nope")])
    assert info.value.status == 404


def test_lookup_uses_the_attachment_record_and_reads_no_file(store):
    source = Source(store, 1 << 20)
    infos = source.lookup([Resource("Patient", "pa1")])
    assert infos == [InstanceInfo("0a", 10, md5(b"first file")),
                     InstanceInfo("0b", 19, md5(b"second, longer file")),
                     InstanceInfo("1c", 5, md5(b"third"))]
    assert store.reads == []
    assert sorted(store.info_calls) == ["0a", "0b", "1c"]
    assert len(source.cache) == 0


def test_lookup_trusts_the_record(store):
    # The record is what Orthanc says: the file is not read at lookup time (it is checked when served).
    store.records["0a"] = (1234, "0123456789abcdef0123456789abcdef")
    assert Source(store, 1 << 20).lookup([Resource("Instance", "0a")]) == [
        InstanceInfo("0a", 1234, "0123456789abcdef0123456789abcdef")]
    assert store.reads == []


@pytest.mark.parametrize("recorded_md5", [None, ""])
def test_lookup_reads_the_file_when_the_md5_is_unknown(store, recorded_md5):
    store.records["0b"] = (19, recorded_md5)
    source = Source(store, 1 << 20)
    infos = source.lookup([Resource("Series", "se1"), Resource("Instance", "0b")])
    assert infos[1] == InstanceInfo("0b", 19, md5(b"second, longer file"))
    assert store.reads == ["0b"]
    assert "0b" in source.cache  # loaded once, then served from the cache
    source.read(ChunkRequest(("0b",)))
    assert store.reads == ["0b"]


def test_lookup_unknown_instance(store):
    with pytest.raises(NotFound):
        Source(store, 1 << 20).lookup([Resource("Instance", "ffff")])


# --- loading and serving -------------------------------------------------------------------------------

def test_read_serves_ranges_through_the_cache(store):
    source = Source(store, 1 << 20)
    assert source.read(ChunkRequest(("0a", "1c"), 6, 7)) == b"filethi"
    assert "0a" in source.cache and "1c" in source.cache  # bytes of each remain to be served
    assert source.read(ChunkRequest(("1c",), 3, 0)) == b"rd"
    assert "1c" not in source.cache  # its last bytes served: no one asks for them again
    assert source.read(ChunkRequest(("0a",), 0, 6)) == b"first "
    assert len(source.cache) == 0 and source.cache.used_bytes == 0
    assert store.reads == ["0a", "1c"]
    assert source.cache.misses == 2 and source.cache.hits == 2
    # Asked again (a retry, another transfer): read again.
    assert source.read(ChunkRequest(("0a", "1c"), 0, 0)) == b"first filethird"
    assert store.reads == ["0a", "1c", "0a", "1c"] and source.cache.misses == 4
    assert len(source.cache) == 0


def test_a_refused_answer_counts_nothing_as_served(store):
    source = Source(store, 1 << 20)
    with pytest.raises(PayloadTooLarge):
        read_range(source.get, ("0a", "1c"), 0, 0, 4, source.cache.served)
    assert "0a" in source.cache and "1c" in source.cache


def test_a_push_bucket_counts_as_served(store):
    source = Source(store, 1 << 20)
    first = Bucket((Chunk("0a", 0, 10), Chunk("1c", 0, 2)))
    assert source.bucket_payload(first) == b"first fileth"
    assert "0a" not in source.cache and "1c" in source.cache
    assert source.bucket_payload(Bucket((Chunk("1c", 2, 3),))) == b"ird"
    assert len(source.cache) == 0 and store.reads == ["0a", "1c"]


@pytest.mark.skipif(ZSTD_SHUFFLE not in codec_names(), reason="zstandard is not importable here")
def test_answers_and_buckets_in_zstd_shuffle_count_as_served(store):
    """The codec that cuts instances around their pixel data reads them its own way: its ranges count too."""
    codec = get_codec(ZSTD_SHUFFLE, 1)
    source = Source(store, 1 << 20)
    body = source.encoded(ChunkRequest(("0a", "1c"), 6, 7), codec)
    assert codec.decode(body, 7) == b"filethi"
    assert "0a" in source.cache and "1c" in source.cache
    assert codec.decode(source.encoded(ChunkRequest(("1c",), 3, 0), codec), 2) == b"rd"
    assert "1c" not in source.cache
    bucket = Bucket((Chunk("0a", 0, 6),))
    assert codec.decode(source.encoded_bucket(bucket, codec), 6) == b"first "
    assert len(source.cache) == 0 and store.reads == ["0a", "1c"]


def test_load_refuses_a_size_mismatch(store):
    store.records["0a"] = (11, md5(b"first file"))
    source = Source(store, 1 << 20)
    with pytest.raises(CorruptedFile) as info:
        source.read(ChunkRequest(("0a",)))
    assert info.value.status == 500 and info.value.orthanc_code == 20
    assert "0a" in info.value.message
    assert "0a" not in source.cache


def test_load_refuses_an_md5_mismatch(store):
    store.records["1c"] = (5, md5(b"THIRD"))
    source = Source(store, 1 << 20)
    with pytest.raises(CorruptedFile):
        source.read(ChunkRequest(("1c",)))
    assert "1c" not in source.cache
    store.records["1c"] = (5, md5(b"third"))  # repaired: the next request reads again
    assert source.read(ChunkRequest(("1c",))) == b"third"
    assert store.reads == ["1c", "1c"]


def test_load_without_a_recorded_md5_checks_the_size(store):
    store.records["1c"] = (5, None)
    assert Source(store, 1 << 20).read(ChunkRequest(("1c",))) == b"third"
    store.records["0a"] = (3, None)
    with pytest.raises(CorruptedFile):
        Source(store, 1 << 20).read(ChunkRequest(("0a",)))


def test_instance_info_with_unknown_md5_and_a_wrong_size_is_refused(store):
    store.records["0a"] = (999, None)
    with pytest.raises(CorruptedFile):
        Source(store, 1 << 20).lookup([Resource("Instance", "0a")])


def test_read_of_an_unknown_instance(store):
    with pytest.raises(NotFound) as info:
        Source(store, 1 << 20).read(ChunkRequest(("0a", "dead")))
    assert info.value.status == 404


def test_reads_of_the_store_are_bounded(store):
    for k in range(8):
        store.add(f"f{k}", bytes([k]) * 10)
    store.read_delay = 0.05
    source = Source(store, 1 << 20, max_concurrent_reads=2)
    threads = [threading.Thread(target=source.read, args=(ChunkRequest((f"f{k}",)),), daemon=True)
               for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert store.max_active == 2
    assert sorted(store.reads) == [f"f{k}" for k in range(8)]


def test_cache_capacity_is_the_one_given(store):
    source = Source(store, 15)  # loaded, not served yet (a lookup without MD5s)
    source.get("0a")  # 10 bytes
    source.get("1c")  # 5 more: 15 fits
    assert "0a" in source.cache and "1c" in source.cache
    source.get("0b")  # 19 bytes: alone
    assert len(source.cache) == 1 and "0b" in source.cache


# --- cached instances are checked against Orthanc's record before they are served ----------------------

def _forget(store, instance_id):
    del store.files[instance_id]
    del store.records[instance_id]


def test_a_deleted_instance_is_not_served_from_the_cache(store):
    source = Source(store, 1 << 20)
    assert source.read(ChunkRequest(("0a",))) == b"first file"
    _forget(store, "0a")  # deleted in Orthanc; no notification has reached the cache
    with pytest.raises(NotFound):
        source.read(ChunkRequest(("0a",)))
    assert "0a" not in source.cache


def test_a_replaced_instance_is_served_as_it_is_now(store):
    source = Source(store, 1 << 20)
    assert source.read(ChunkRequest(("1c",), 0, 3)) == b"thi"  # cached: 2 bytes remain to be served
    store.add("1c", b"THIRD")  # same ID, other bytes (stored again with overwriting)
    assert source.read(ChunkRequest(("1c",))) == b"THIRD"
    assert store.reads == ["1c", "1c"] and source.cache.stale_drops == 1


def test_a_replaced_instance_is_not_pushed_with_old_bytes(store):
    from transfers_plugin.protocol import Bucket, Chunk
    source = Source(store, 1 << 20)
    bucket = Bucket((Chunk("1c", 0, 5),))
    assert source.bucket_payload(bucket) == b"third"
    store.add("1c", b"thirD")
    assert source.bucket_payload(bucket) == b"thirD"


def test_a_cache_hit_costs_one_record_check_and_no_read(store):
    source = Source(store, 1 << 20)
    source.get("0a")
    source.get("1c")
    store.info_calls.clear()
    assert source.read(ChunkRequest(("0a", "1c"))) == b"first filethird"
    assert store.info_calls == ["0a", "1c"] and store.reads == ["0a", "1c"]


# --- memory: the bytes of an answer are copied at most once; freed memory is given back ----------------

def _peak_allocated_while(function):
    import tracemalloc
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = function()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_answers_copy_the_bytes_of_an_instance_at_most_once():
    from transfers_plugin.memory import FreedMemory
    big = FakeStore()
    instance = bytes(range(256)) * (32 * 1024)  # 8 MB
    big.add("0a", instance)
    big.add("0b", instance[:1024])
    source = Source(big, 64 << 20, freed=FreedMemory(trim=None))
    cached = source.get("0a")
    source.get("0b")
    slack = 256 * 1024
    # A whole instance (after one skipped): served as the cached bytes, nothing allocated.
    whole, peak = _peak_allocated_while(lambda: source.read(ChunkRequest(("0b", "0a"), 1024, 0)))
    assert whole is cached.data
    assert peak < slack
    big.add("0a", instance)
    source = Source(big, 64 << 20, freed=FreedMemory(trim=None))
    source.get("0a")
    # Half of it: one copy of that half (the join), not of the instance.
    half, peak = _peak_allocated_while(lambda: source.read(ChunkRequest(("0a",), 0, len(instance) // 2)))
    assert half == instance[:len(instance) // 2]
    assert peak < len(instance) // 2 + slack
    _, peak = _peak_allocated_while(lambda: source.bucket_payload(Bucket((Chunk("0a", len(instance) // 2,
                                                                                  len(instance) // 2),))))
    assert peak < len(instance) // 2 + slack


def test_instances_read_are_noted_and_their_memory_given_back():
    from transfers_plugin.memory import FreedMemory
    calls = []
    s = FakeStore()
    s.add("0a", b"first file")
    s.add("1c", b"third")
    source = Source(s, 1 << 20, freed=FreedMemory(threshold=15, interval=0, trim=lambda: calls.append(1)))
    source.read(ChunkRequest(("0a",)))
    assert calls == []  # 10 bytes noted, fewer than the threshold
    source.read(ChunkRequest(("1c",)))
    assert calls == [1] and source.freed.trims == 1


def test_a_lookup_gives_freed_memory_back_first(store):
    from transfers_plugin.memory import FreedMemory
    calls = []
    source = Source(store, 1 << 20, freed=FreedMemory(interval=0, trim=lambda: calls.append(1)))
    source.lookup([Resource("Study", "st1")])
    assert calls == [1]
