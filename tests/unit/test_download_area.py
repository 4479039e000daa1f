"""The download area: files written chunk by chunk at their offsets as buckets arrive, verification."""

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfers_plugin.commitment import CommitmentError
from transfers_plugin.download_area import BucketWriter, DownloadArea, instances_of
from transfers_plugin.errors import NetworkProtocol, NotFound, ParameterOutOfRange
from transfers_plugin.protocol import Bucket, Chunk, InstanceInfo

A = "05790313-0cf6912d-a46d83e8-12e91143-c99106b6"
B = "339979f1-6bf315e6-23860507-baec2024-0428667f"
C = "88241a3c-87775685-25ff2c11-3f1a82e4-b88ca0ac"


def content_of(iid: str, size: int) -> bytes:
    return random.Random(iid).randbytes(size)


def info(iid: str, data: bytes) -> InstanceInfo:
    return InstanceInfo(iid, len(data), hashlib.md5(data).hexdigest())


DATA = {A: content_of(A, 1000), B: content_of(B, 3000), C: content_of(C, 0)}
INFOS = [info(i, d) for i, d in DATA.items()]


def payload_of(bucket: Bucket, data: Dict[str, bytes] = DATA) -> bytes:
    return b"".join(data[c.instance_id][c.offset:c.offset + c.size] for c in bucket.chunks)


@pytest.fixture
def area(tmp_path):
    a = DownloadArea(tmp_path / "job-1", INFOS)
    a.prepare()
    return a


# --- prepare ------------------------------------------------------------------------------------------

def test_a_new_area_gets_its_files_as_buckets_are_written(tmp_path):
    area = DownloadArea(tmp_path / "transfers-tmp" / "job-1", INFOS)
    assert not area.exists()
    assert area.prepare() is True
    assert area.exists()
    assert os.listdir(area.root) == [f"{C}.dcm"], "only the empty instance, which no bucket writes"
    assert area.read(C) == b""
    area.write_bucket(Bucket((Chunk(B, 100, 50),)), DATA[B][100:150])
    assert sorted(os.listdir(area.root)) == sorted([f"{B}.dcm", f"{C}.dcm"])
    assert area.path(B) == tmp_path / "transfers-tmp" / "job-1" / f"{B}.dcm"
    assert area.read(B) == bytes(100) + DATA[B][100:150]


def test_prepare_returns_true_only_the_first_time_and_keeps_what_was_written(area):
    area.write_bucket(Bucket((Chunk(A, 10, 20),)), DATA[A][10:30])
    assert area.prepare() is False
    assert area.read(A)[10:30] == DATA[A][10:30]
    assert area.prepare() is False


def test_prepare_of_an_area_already_there_leaves_it_as_it_is(area):
    area.write_bucket(Bucket((Chunk(A, 10, 20),)), DATA[A][10:30])
    area.path(B).write_bytes(b"x" * 5000)
    assert area.prepare() is False
    assert area.read(A) == bytes(10) + DATA[A][10:30]
    assert area.read(B) == b"x" * 5000, "what is wrong is found by damaged() or verify(), not hidden"


def test_damaged_finds_missing_files_and_complete_ones_of_another_size(area):
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    area.write_bucket(Bucket((Chunk(B, 0, 10),)), DATA[B][:10])
    assert area.damaged(complete=[A], started=[B, C]) == set(), "a started file may be short; C is empty"
    assert area.damaged(complete=[A, B], started=[]) == {B}, "complete, but 10 of 3000 bytes"
    area.path(A).unlink()
    assert area.damaged(complete=[], started=[A, B]) == {A}
    assert area.damaged(complete=[C], started=[]) == set()


def test_forget_deletes_what_was_written_and_the_digest(area):
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    assert A in area.digests
    area.forget([A, B])
    assert not area.path(A).exists() and A not in area.digests
    with pytest.raises(CommitmentError):
        area.verify(A)
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    area.verify(A)


def test_remove(area):
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    area.remove()
    assert not area.exists()
    assert not area.root.exists()
    area.remove()  # twice is fine
    assert area.prepare() is True


# --- writing buckets ----------------------------------------------------------------------------------

def test_chunks_are_written_at_their_offsets(area):
    bucket = Bucket((Chunk(A, 900, 100), Chunk(B, 0, 50), Chunk(B, 2000, 1000)))
    area.write_bucket(bucket, payload_of(bucket))
    a, b = area.read(A), area.read(B)
    assert a[:900] == bytes(900) and a[900:] == DATA[A][900:]
    assert b[:50] == DATA[B][:50] and b[50:2000] == bytes(1950) and b[2000:] == DATA[B][2000:]
    assert len(a) == 1000 and len(b) == 3000


def test_buckets_in_any_order_rebuild_the_instances(area):
    buckets = [Bucket((Chunk(A, 0, 400),)), Bucket((Chunk(A, 400, 600), Chunk(B, 0, 1000))),
               Bucket((Chunk(B, 1000, 2000),))]
    for bucket in (buckets[2], buckets[0], buckets[1], buckets[0]):  # a repeated bucket rewrites the same bytes
        area.write_bucket(bucket, payload_of(bucket))
    assert area.read(A) == DATA[A] and area.read(B) == DATA[B]
    for i in INFOS:
        area.verify(i.id)


@st.composite
def buckets_and_pieces(draw):
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=4))
    ids = [f"{n:08x}-00000000-00000000-00000000-00000000" for n in range(len(sizes))]
    chunks = []
    for _ in range(draw(st.integers(0, 8))):
        n = draw(st.integers(0, len(ids) - 1))
        offset = draw(st.integers(0, sizes[n]))
        size = draw(st.integers(0, sizes[n] - offset))
        chunks.append(Chunk(ids[n], offset, size))
    total = sum(c.size for c in chunks)
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=10)))
    skip = set(draw(st.lists(st.sampled_from(ids), max_size=2)))
    return dict(zip(ids, sizes)), Bucket(tuple(chunks)), cuts, skip


@settings(max_examples=150, deadline=None)
@given(buckets_and_pieces())
def test_payload_fed_in_arbitrary_pieces(case):
    sizes, bucket, cuts, skip = case
    data = {iid: content_of(iid, size) for iid, size in sizes.items()}
    infos = [info(iid, d) for iid, d in data.items()]
    payload = payload_of(bucket, data)
    with tempfile.TemporaryDirectory() as tmp:
        area = DownloadArea(Path(tmp) / "job", infos)
        area.prepare()
        for iid in skip:  # what is already there for skipped instances stays as it is
            area.path(iid).write_bytes(b"\xaa" * sizes[iid])
        expected = {iid: bytearray(b"\xaa" * sizes[iid] if iid in skip else bytes(sizes[iid])) for iid in sizes}
        written = {iid: 0 for iid in sizes}  # a file ends at the last byte written into it
        for c in bucket.chunks:
            if c.instance_id not in skip:
                expected[c.instance_id][c.offset:c.offset + c.size] = data[c.instance_id][c.offset:c.offset + c.size]
                if c.size:
                    written[c.instance_id] = max(written[c.instance_id], c.offset + c.size)
        writer = area.writer(bucket, skip)
        bounds = [0] + cuts + [len(payload)]
        for start, end in zip(bounds, bounds[1:]):
            writer.write(payload[start:end])
        assert writer.position == len(payload)
        writer.close()
        for iid in sizes:
            if iid in skip:
                assert area.read(iid) == bytes(expected[iid]), iid
            elif written[iid] or not sizes[iid]:
                assert area.read(iid) == bytes(expected[iid][:written[iid]]), iid
            else:
                assert not area.path(iid).exists(), iid


def test_skipped_instances_are_untouched(area):
    area.path(B).write_bytes(b"\x55" * 3000)
    bucket = Bucket((Chunk(A, 0, 500), Chunk(B, 0, 3000), Chunk(A, 500, 500)))
    writer = area.writer(bucket, skip={B})
    payload = payload_of(bucket)
    writer.write(payload[:700])
    writer.write(payload[700:])
    writer.close()
    assert area.read(A) == DATA[A]
    assert area.read(B) == b"\x55" * 3000


def test_writer_of_a_bucket_with_only_skipped_instances_opens_nothing(area):
    area.remove()  # no files: opening one would fail
    bucket = Bucket((Chunk(B, 0, 10),))
    writer = BucketWriter(area, bucket, {B})
    writer.write(DATA[B][:10])
    writer.close()


def test_too_long_payload_is_a_protocol_error(area):
    bucket = Bucket((Chunk(A, 0, 100),))
    writer = area.writer(bucket)
    writer.write(DATA[A][:60])
    with pytest.raises(NetworkProtocol):
        writer.write(DATA[A][60:101])
    writer.close(complete=False)
    with pytest.raises(NetworkProtocol):
        area.write_bucket(bucket, DATA[A][:100] + b"!")


def test_short_payload_is_a_protocol_error_when_complete(area):
    bucket = Bucket((Chunk(A, 0, 100), Chunk(B, 0, 100)))
    writer = area.writer(bucket)
    writer.write(payload_of(bucket)[:150])
    with pytest.raises(NetworkProtocol) as e:
        writer.close(complete=True)
    assert "150" in e.value.message and "200" in e.value.message
    with pytest.raises(NetworkProtocol):
        area.write_bucket(bucket, b"")


def test_short_payload_is_fine_when_aborted(area):
    bucket = Bucket((Chunk(A, 0, 100),))
    writer = area.writer(bucket)
    writer.write(DATA[A][:30])
    writer.close(complete=False)
    assert area.read(A)[:30] == DATA[A][:30]


def test_close_closes_the_files(area):
    bucket = Bucket((Chunk(A, 0, 100), Chunk(B, 0, 100)))
    writer = area.writer(bucket)
    writer.write(payload_of(bucket))
    fds = list(writer._fds.values())
    assert len(fds) == 2
    writer.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


@pytest.mark.parametrize("chunk", [Chunk(A, 0, 1001), Chunk(A, 1000, 1), Chunk(A, 999, 2), Chunk(C, 0, 1),
                                   Chunk(B, 2**63, 2**63)])
def test_chunk_beyond_the_instance_is_out_of_range(area, chunk):
    with pytest.raises(ParameterOutOfRange) as e:
        area.writer(Bucket((Chunk(B, 0, 10), chunk)))
    assert e.value.status == 400
    assert not area.path(B).exists(), "nothing written"


def test_chunk_at_the_very_end_is_fine(area):
    area.write_bucket(Bucket((Chunk(A, 1000, 0), Chunk(A, 999, 1), Chunk(C, 0, 0))), DATA[A][999:])
    assert area.read(A)[999:] == DATA[A][999:]


def test_unknown_instance_is_not_found(area):
    with pytest.raises(NotFound) as e:
        area.writer(Bucket((Chunk("ffffffff-0000", 0, 1),)))
    assert e.value.status == 404
    with pytest.raises(NotFound):
        area.path("ffffffff-0000")
    with pytest.raises(NotFound):
        area.verify("ffffffff-0000")


# --- verify -------------------------------------------------------------------------------------------

def test_verify_passes_once_every_byte_is_in(area):
    bucket = Bucket((Chunk(A, 0, 1000),))
    area.write_bucket(bucket, DATA[A])
    area.verify(A)
    area.verify(C)  # empty instance


def test_verify_fails_on_missing_or_wrong_bytes(area):
    with pytest.raises(CommitmentError) as e:
        area.verify(A)  # nothing written yet: no file, an empty instance
    assert e.value.instance_id == A and e.value.status == 500 and e.value.actual_size == 0
    area.write_bucket(Bucket((Chunk(A, 0, 10),)), DATA[A][:10])
    with pytest.raises(CommitmentError) as e:
        area.verify(A)  # the first bytes only
    assert e.value.actual_size == 10
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    corrupted = bytearray(DATA[A])
    corrupted[500] ^= 1
    area.write_bucket(Bucket((Chunk(A, 500, 1),)), bytes(corrupted[500:501]))
    with pytest.raises(CommitmentError) as e:
        area.verify(A)
    assert "MD5" in e.value.message


def test_verify_fails_on_a_wrong_size(area):
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    with open(area.path(A), "ab") as f:
        f.write(b"extra")
    with pytest.raises(CommitmentError) as e:
        area.verify(A)
    assert e.value.actual_size == 1005 and "size" in e.value.message


def test_instances_of():
    buckets: List[Bucket] = [Bucket((Chunk(A, 0, 10), Chunk(B, 0, 5))), Bucket((Chunk(B, 5, 5),)), Bucket(())]
    assert instances_of(buckets) == {0: {A, B}, 1: {B}, 2: set()}


def test_whole_instances_are_hashed_while_written(area, monkeypatch):
    """An instance carried whole by one chunk is verified from the MD5 computed while writing it."""
    import transfers_plugin.download_area as module

    area.write_bucket(Bucket((Chunk(A, 0, 1000), Chunk(B, 0, 1500))), DATA[A] + DATA[B][:1500])
    area.write_bucket(Bucket((Chunk(B, 1500, 1500),)), DATA[B][1500:])
    assert area.digests == {A: hashlib.md5(DATA[A]).hexdigest()}  # B came in two pieces: no digest
    reads = []
    real_check_file = module.check_file
    monkeypatch.setattr(module, "check_file", lambda path, info: reads.append(info.id) or real_check_file(path, info))
    area.verify(A)
    area.verify(B)
    assert reads == [B], "only the instance written in pieces is read back"


def test_a_rewrite_forgets_the_digest_until_complete(area):
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    writer = area.writer(Bucket((Chunk(A, 0, 1000),)))
    writer.write(b"x" * 10)  # an interrupted rewrite with other bytes
    writer.close(complete=False)
    assert A not in area.digests
    with pytest.raises(CommitmentError):
        area.verify(A)
    area.write_bucket(Bucket((Chunk(A, 0, 1000),)), DATA[A])
    area.verify(A)
