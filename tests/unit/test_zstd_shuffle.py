"""zstd-shuffle: byte-exact round trips on real DICOM cut at any offset, strict decoding of hostile payloads,
negotiation (auto, C++ peers), and everything as before without zstandard."""

import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zstandard

from tools.synthetic import generate_study
from transfers_plugin import capabilities, codec, dicom_layout
from transfers_plugin.cache import CachedInstance
from transfers_plugin.capabilities import Capabilities, choose_compression
from transfers_plugin.codec import (
    ZSTD_MAGIC,
    ZSTD_SHUFFLE,
    CodecError,
    PayloadSizeError,
    ZstdShuffleCodec,
    get_codec,
    parse_zstd_payload,
)
from transfers_plugin.errors import BadRequest, ParameterOutOfRange
from transfers_plugin.protocol import Bucket, Chunk, ChunkRequest, PushDescriptor, TransferQuery
from transfers_plugin.source import Source

ROOT = Path(__file__).resolve().parents[2]
CODEC = ZstdShuffleCodec()


def parts_of(files, start_offsets=None):
    out = []
    for f in files:
        out.extend(dicom_layout.split(memoryview(f), 0, dicom_layout.find_pixel_data(f)))
    return out


def payload(segments, frame: bytes) -> bytes:
    return ZSTD_MAGIC + struct.pack("<I", len(segments)) + b"".join(struct.pack("<BQ", w, n) for w, n in segments) \
        + frame


def frame_of(data: bytes, **kw) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=True, **kw).compress(data)


# --- round trips ------------------------------------------------------------------------------------------

def test_registered_with_its_levels():
    assert ZSTD_SHUFFLE in codec.codec_names() and codec.zstd_available()
    assert get_codec(ZSTD_SHUFFLE).level == 1 and get_codec(ZSTD_SHUFFLE, 3).level == 3
    for bad in (0, 20, True, "1"):
        with pytest.raises(ParameterOutOfRange):
            get_codec(ZSTD_SHUFFLE, bad)


def test_synthetic_ct_round_trip_beats_gzip_and_plain_zstd():
    files = list(generate_study(4, 256, 256))
    raw = b"".join(files)
    encoded = CODEC.encode_parts(parts_of(files))
    assert CODEC.decode(encoded, len(raw)) == raw
    header = struct.unpack_from("<I", encoded, 4)[0]
    assert header == 8  # per file: its header plain, then its 16-bit pixel data
    assert len(encoded) < len(get_codec("gzip", 1).encode(raw))
    assert len(encoded) < len(CODEC.encode(raw))  # the shuffle helps on pixel data


def test_corpus_round_trips_at_odd_offsets(corpus):
    for f in corpus.files:
        data = f.read()
        layout = dicom_layout.find_pixel_data(data)
        n = len(data)
        for start, stop in ((0, n), (1, n), (n // 3 | 1, n - 1), (n // 2, n // 2 + 1001)):
            if not 0 <= start < stop <= n:
                continue
            view = memoryview(data)[start:stop]
            parts = dicom_layout.split(view, start, layout)
            encoded = CODEC.encode_parts(parts)
            assert CODEC.decode(encoded, stop - start) == data[start:stop], f.relative
            decoder = CODEC.decoder(stop - start)
            pieces = [encoded[k:k + 777] for k in range(0, len(encoded), 777)]
            out = b"".join(decoder.update(p) for p in pieces) + decoder.finish()
            assert out == data[start:stop]
            assert b"".join(bytes(p) for p in CODEC.decoder(stop - start).pieces(encoded, 4096)) == data[start:stop]


def test_source_encodes_requests_and_buckets_split_at_any_offset():
    files = list(generate_study(3, 64, 64))
    ids = [f"{k:08x}-00000000-00000000-00000000-00000000" for k in range(3)]
    entries = {i: CachedInstance.from_bytes(i, d) for i, d in zip(ids, files)}

    class Store:
        def attachment_info(self, iid):
            return entries[iid].size, entries[iid].md5

        def read_dicom(self, iid):
            return entries[iid].data

    source = Source(Store(), 64 << 20)
    joined = b"".join(files)
    for offset, size in ((0, 0), (1, 0), (len(files[0]) - 5, 9000), (333, 1)):
        request = ChunkRequest(tuple(ids), offset, size)
        expected = source.read(request)
        assert CODEC.decode(source.encoded(request, CODEC), len(expected)) == expected
        assert expected == (joined[offset:offset + size] if size else joined[offset:])
        assert source.encoded(request, get_codec("gzip", 1)) == get_codec("gzip", 1).encode(expected)
    bucket = Bucket((Chunk(ids[0], 7, len(files[0]) - 7), Chunk(ids[1], 0, 4097), Chunk(ids[2], 1001, 3)))
    expected = source.bucket_payload(bucket)
    assert CODEC.decode(source.encoded_bucket(bucket, CODEC), bucket.total_size) == expected
    assert source.layout(entries[ids[0]]) == dicom_layout.find_pixel_data(files[0])


def test_empty_and_plain_payloads():
    assert CODEC.decode(CODEC.encode(b""), 0) == b""
    data = os.urandom(5000) + b"x" * 10000
    assert CODEC.decode(CODEC.encode(data), len(data)) == data
    assert CODEC.decode(CODEC.encode(data)) == data  # no expected size: bounded by MAX_UNBOUNDED_SIZE
    encoder = CODEC.encoder()
    assert encoder.update(data[:7]) == b"" and CODEC.decode(encoder.update(data[7:]) + encoder.finish()) == data


def test_many_segments_fall_back_to_one_plain_segment(monkeypatch):
    monkeypatch.setattr(codec, "MAX_SEGMENTS", 3)
    data = bytes(range(256)) * 8
    parts = [(memoryview(data)[k:k + 512], 2 if k % 1024 == 0 else 1) for k in range(0, len(data), 512)]
    encoded = CODEC.encode_parts(parts)
    assert struct.unpack_from("<I", encoded, 4)[0] == 1 and CODEC.decode(encoded, len(data)) == data


def test_threads_share_nothing():
    files = list(generate_study(2, 128, 128))
    raw = b"".join(files)
    errors = []

    def work():
        try:
            for _ in range(5):
                assert CODEC.decode(CODEC.encode_parts(parts_of(files)), len(raw)) == raw
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --- hostile payloads -----------------------------------------------------------------------------------

def test_bad_headers():
    data = b"abcd" * 100
    good = payload([(1, 400)], frame_of(data))
    assert parse_zstd_payload(good, 400) == data
    cases = [
        b"", b"TZS", b"TZS2" + good[4:], b"\x28\xb5\x2f\xfd" + good[4:],  # no or another magic
        ZSTD_MAGIC + struct.pack("<I", codec.MAX_SEGMENTS + 1),  # too many segments
        ZSTD_MAGIC + struct.pack("<I", 3) + struct.pack("<BQ", 1, 400),  # header cut short
        payload([(3, 400)], frame_of(data)),  # width 3
        payload([(2, 399), (1, 1)], frame_of(data)),  # a width-2 segment of odd length
        payload([(1, 0), (1, 400)], frame_of(data)),  # an empty segment
    ]
    for bad in cases:
        with pytest.raises(CodecError) as info:
            parse_zstd_payload(bad, 400)
        assert isinstance(info.value, BadRequest) and info.value.status == 400


def test_wrong_sizes_and_bombs():
    data = b"\0" * 1000
    with pytest.raises(PayloadSizeError):  # segments listing another size than expected
        parse_zstd_payload(payload([(1, 1000)], frame_of(data)), 999)
    with pytest.raises(PayloadSizeError):  # a frame declaring more than its segments: a bomb
        parse_zstd_payload(payload([(1, 1000)], frame_of(b"\0" * 10_000_000)), 1000)
    with pytest.raises(PayloadSizeError):  # a frame declaring less
        parse_zstd_payload(payload([(1, 1000)], frame_of(data[:10])), 1000)
    with pytest.raises(PayloadSizeError):  # no expected size: the lengths are still bounded
        parse_zstd_payload(payload([(1, codec.MAX_UNBOUNDED_SIZE + 1)], frame_of(data)), None)
    no_size = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(b"\0" * 10_000_000)
    with pytest.raises(CodecError):  # a frame that does not declare its size is refused before decoding
        parse_zstd_payload(payload([(1, 1000)], no_size), 1000)
    decoder = CODEC.decoder(10)
    with pytest.raises(PayloadSizeError):  # a body larger than any encoding of the expected size
        decoder.update(b"\0" * (codec.max_encoded_size(10) + 1))


def test_truncated_damaged_and_trailing_frames():
    data = os.urandom(3000) + b"z" * 3000
    frame = frame_of(data, write_checksum=True)
    good = payload([(1, 6000)], frame)
    assert parse_zstd_payload(good, 6000) == data
    for n in range(len(good) - 1, len(good) - len(frame), -97):
        with pytest.raises(CodecError):
            parse_zstd_payload(good[:n], 6000)
    for bad in (good + b"\0", good + frame, good[:-1] + bytes([good[-1] ^ 1])):
        with pytest.raises(CodecError):
            parse_zstd_payload(bad, 6000)
    with pytest.raises(CodecError):
        CODEC.decode(b"\0" * 100, 100)


def test_random_damage_never_escapes_as_another_error():
    import random
    rng = random.Random(15)
    files = list(generate_study(1, 64, 64))
    good = CODEC.encode_parts(parts_of(files))
    for _ in range(500):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            out = CODEC.decode(bytes(damaged), len(files[0]))
        except CodecError:
            continue
        assert len(out) == len(files[0])  # a change the checksum missed cannot happen silently in size


# --- negotiation ----------------------------------------------------------------------------------------

OURS = Capabilities("orthanc-transfers-py", "0.2.0", frozenset(), ("none", "gzip", ZSTD_SHUFFLE))
OLDER = Capabilities("orthanc-transfers-py", "0.1.0", frozenset(), ("none", "gzip"))


def test_choose_compression():
    logged = []
    assert choose_compression("auto", OURS, "p") == ZSTD_SHUFFLE
    assert choose_compression(ZSTD_SHUFFLE, OURS, "p") == ZSTD_SHUFFLE
    assert choose_compression("auto", None, "p", logged.append) == "gzip" and not logged  # a C++ peer
    assert choose_compression("auto", OLDER, "p", logged.append) == "gzip" and not logged
    assert choose_compression(ZSTD_SHUFFLE, None, "cxx", logged.append) == "gzip"
    assert "cxx" in logged[-1] and "gzip" in logged[-1]
    for name in ("none", "gzip"):
        assert choose_compression(name, OURS, "p") == choose_compression(name, None, "p") == name
    assert capabilities.local_capabilities("0.1.0")["Compression"] == ["none", "gzip", ZSTD_SHUFFLE]


def test_where_each_name_is_accepted():
    body = {"Resources": [{"Level": "Study", "ID": "0" * 8 + "-00000000" * 4}], "Peer": "p"}
    for name in ("none", "gzip", ZSTD_SHUFFLE, "auto"):
        assert TransferQuery.from_json({**body, "Compression": name}).compression == name
    with pytest.raises(ParameterOutOfRange):
        TransferQuery.from_json({**body, "Compression": "zstd"})
    assert ChunkRequest.parse("0" * 8 + "-00000000" * 4, {"compression": ZSTD_SHUFFLE}).compression == ZSTD_SHUFFLE
    with pytest.raises(ParameterOutOfRange):  # "auto" never goes on the wire
        ChunkRequest.parse("0" * 8 + "-00000000" * 4, {"compression": "auto"})
    with pytest.raises(ParameterOutOfRange):
        PushDescriptor.from_json({"Instances": [], "Buckets": [], "Compression": "auto"})


WITHOUT_ZSTANDARD = r"""
import json, sys
sys.modules["zstandard"] = None  # import zstandard raises ImportError
from transfers_plugin import capabilities, codec, protocol
from transfers_plugin.config import parse_configuration
from transfers_plugin.errors import ParameterOutOfRange
out = {"names": list(codec.codec_names()), "available": codec.zstd_available(),
       "advertised": capabilities.local_capabilities("x")["Compression"]}
ours = capabilities.Capabilities("orthanc-transfers-py", "1", frozenset(), ("none", "gzip", "zstd-shuffle"))
logged = []
out["auto"] = capabilities.choose_compression("auto", ours, "p", logged.append)
out["named"] = capabilities.choose_compression("zstd-shuffle", ours, "p", logged.append)
out["logged"] = logged
for what, call in (("chunks", lambda: protocol.ChunkRequest.parse("0" * 8 + "-00000000" * 4,
                                                                  {"compression": "zstd-shuffle"})),
                   ("codec", lambda: codec.get_codec("zstd-shuffle"))):
    try:
        call()
        out[what] = "accepted"
    except ParameterOutOfRange as e:
        out[what] = e.status
config = parse_configuration({})
out["gzip"] = config.codec("gzip").decode(config.codec("gzip").encode(b"abc" * 100)) == b"abc" * 100
print(json.dumps(out))
"""


def test_without_zstandard_everything_works_as_before_with_gzip():
    done = subprocess.run([sys.executable, "-c", WITHOUT_ZSTANDARD], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=120)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["names"] == ["none", "gzip"] and out["available"] is False
    assert out["advertised"] == ["none", "gzip"]
    assert out["auto"] == "gzip" and out["named"] == "gzip"
    assert len(out["logged"]) == 1 and "zstandard is not installed" in out["logged"][0]
    assert out["chunks"] == 400 and out["codec"] == 400 and out["gzip"] is True
