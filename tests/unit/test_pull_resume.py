"""A resumed pull whose download area lost files: their progress is forgotten, so they are fetched again."""

import hashlib
from typing import List

from job_context import FakeJobContext

from transfers_plugin.download_area import DownloadArea
from transfers_plugin.jobs.pull import forget_damaged
from transfers_plugin.protocol import Bucket, Chunk, InstanceInfo

A = "0000000a-00000000-00000000-00000000-00000000"
B = "0000000b-00000000-00000000-00000000-00000000"
C = "0000000c-00000000-00000000-00000000-00000000"
DATA = {A: b"a" * 300, B: b"b" * 500, C: b"c" * 200}
# Bucket 0: A whole and the start of B; bucket 1: the rest of B; bucket 2: C.
BUCKETS = [Bucket((Chunk(A, 0, 300), Chunk(B, 0, 100))), Bucket((Chunk(B, 100, 400),)), Bucket((Chunk(C, 0, 200),))]


def area_with_everything(tmp_path) -> DownloadArea:
    infos = [InstanceInfo(i, len(d), hashlib.md5(d).hexdigest()) for i, d in DATA.items()]
    area = DownloadArea(tmp_path / "job", infos)
    area.prepare()
    for bucket in BUCKETS:
        area.write_bucket(bucket, b"".join(DATA[c.instance_id][c.offset:c.offset + c.size] for c in bucket.chunks))
    return area


def test_an_intact_area_keeps_its_progress(tmp_path):
    area = area_with_everything(tmp_path)
    ctx = FakeJobContext({"DoneBuckets": [0, 1, 2], "Verified": [A, B, C]})
    assert forget_damaged(ctx, area, BUCKETS) == set()
    assert ctx.resume_state == {"DoneBuckets": [0, 1, 2], "Verified": [A, B, C]}


def test_a_deleted_verified_file_is_fetched_again_with_every_bucket_carrying_it(tmp_path):
    area = area_with_everything(tmp_path)
    area.path(B).unlink()
    warnings: List[str] = []
    ctx = FakeJobContext({"DoneBuckets": [0, 1, 2], "Verified": [A, B, C]})
    assert forget_damaged(ctx, area, BUCKETS, warnings.append) == {B}
    assert ctx.resume_state == {"DoneBuckets": [2], "Verified": [A, C]}
    assert len(warnings) == 1 and "1 instance" in warnings[0]
    assert area.path(A).exists(), "A stays: only its bucket is fetched again (it skips verified instances)"


def test_a_verified_file_of_another_size_is_deleted_and_fetched_again(tmp_path):
    area = area_with_everything(tmp_path)
    with open(area.path(C), "ab") as f:
        f.write(b"garbage")
    ctx = FakeJobContext({"DoneBuckets": [0, 1, 2], "Verified": [A, B, C]})
    assert forget_damaged(ctx, area, BUCKETS) == {C}
    assert ctx.resume_state == {"DoneBuckets": [0, 1], "Verified": [A, B]}
    assert not area.path(C).exists(), "rewritten from scratch: pwrite alone would not shorten it"


def test_a_started_instance_whose_file_is_gone_loses_its_done_buckets(tmp_path):
    area = area_with_everything(tmp_path)
    area.path(B).unlink()  # bucket 0 was done, B not verified yet (bucket 1 missing)
    ctx = FakeJobContext({"DoneBuckets": [0, 2], "Verified": [A, C]})
    assert forget_damaged(ctx, area, BUCKETS) == {B}
    assert ctx.resume_state == {"DoneBuckets": [2], "Verified": [A, C]}
