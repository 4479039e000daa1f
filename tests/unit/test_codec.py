"""Payload codecs: byte-exact gzip as the C++ plugin writes it, strict decoding, round trips."""

import gzip
import json
import types
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transfers_plugin import codec as codec_module
from transfers_plugin.codec import CodecError, GzipCodec, NoneCodec, PayloadSizeError, codec_names, get_codec
from transfers_plugin.errors import BadRequest, ParameterOutOfRange

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cxx-1.4"  # the C++ 1.4 recordings, in the repository

HELLO_GZIP = "1f8b0800000000000003f348cdc9c9d75108cf2fca49510400d0c34aec0d000000"
EMPTY_GZIP = "1f8b080000000000000303000000000000000000"


def reference_gzip(data: bytes, level: int = 6) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31, 8, zlib.Z_DEFAULT_STRATEGY)
    return c.compress(data) + c.flush()


# --- registry -------------------------------------------------------------------------------------------

def test_registry():
    assert set(codec_names()) >= {"none", "gzip"}
    none, gz = get_codec("none"), get_codec("gzip")
    assert isinstance(none, NoneCodec) and none.name == "none"
    assert none.content_type == "application/octet-stream"
    assert isinstance(gz, GzipCodec) and gz.name == "gzip" and gz.level == 6
    assert gz.content_type == "application/gzip"
    assert get_codec("gzip", 9).level == 9
    assert get_codec("none", 5).encode(b"abc") == b"abc"


@pytest.mark.parametrize("name", ["GZIP", "None", "zstd", "", None, 1])
def test_unknown_codec(name):
    with pytest.raises(ParameterOutOfRange):
        get_codec(name)


@pytest.mark.parametrize("level", [-1, 10, 1.5, "6", True])
def test_bad_gzip_level(level):
    with pytest.raises(ParameterOutOfRange):
        get_codec("gzip", level)


def test_errors_are_bad_requests():
    assert issubclass(CodecError, BadRequest)
    assert issubclass(PayloadSizeError, CodecError)
    assert CodecError("x").status == 400


# --- gzip encoding, byte for byte -----------------------------------------------------------------------

def test_gzip_vectors():
    gz = get_codec("gzip")
    assert gz.encode(b"Hello, World!").hex() == HELLO_GZIP
    assert gz.encode(b"").hex() == EMPTY_GZIP
    assert codec_module.encode("gzip", b"Hello, World!").hex() == HELLO_GZIP
    assert gz.decode(bytes.fromhex(HELLO_GZIP), 13) == b"Hello, World!"
    assert gz.decode(bytes.fromhex(EMPTY_GZIP), 0) == b""
    assert codec_module.decode("gzip", bytes.fromhex(HELLO_GZIP)) == b"Hello, World!"


@pytest.mark.parametrize("level", range(10))
def test_gzip_levels_match_zlib(level):
    data = bytes(range(256)) * 300 + b"tail" * 1000
    out = get_codec("gzip", level).encode(data)
    assert out == reference_gzip(data, level)
    assert out[:3] == b"\x1f\x8b\x08" and out[4:8] == b"\0\0\0\0" and out[9] == 3  # no flags, mtime 0, OS 3
    assert gzip.decompress(out) == data


def _bucket_bodies(scenario: str):
    """{bucket key: body} of the PUTs (push) or chunk answers (pull) recorded from C++ 1.4."""
    folder = FIXTURES / scenario
    bodies = {}
    for e in json.loads((folder / "exchange.json").read_text()):
        rq, rs = e["request"], e["response"]
        if rq["method"] == "PUT":
            bodies[rq["path"].rsplit("/", 1)[1]] = (folder / rq["body"]).read_bytes()
        elif rq["path"].startswith("//transfers/chunks/"):
            query = rq["query"].replace("compression=gzip", "").replace("compression=none", "")
            key = rq["path"] + "?" + query
            bodies[key] = ((folder / rs["body"]).read_bytes(), rs["headers"]["Content-Type"])
    return bodies


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_same_bytes_as_the_cxx_plugin(mode):
    raw, packed = _bucket_bodies(f"{mode}-none"), _bucket_bodies(f"{mode}-gzip")
    assert len(raw) == len(packed) == 6 and raw.keys() == packed.keys()
    gz, none = get_codec("gzip"), get_codec("none")
    for key, plain in raw.items():
        compressed = packed[key]
        if mode == "pull":
            (plain, plain_type), (compressed, gzip_type) = plain, compressed
            assert plain_type == none.content_type and gzip_type == gz.content_type
        assert gz.encode(plain) == compressed
        assert gz.decode(compressed, len(plain)) == plain
        assert none.decode(plain, len(plain)) == plain


# --- round trips ----------------------------------------------------------------------------------------

repeated = st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=20), st.integers(0, 3000))
payloads = st.one_of(st.binary(max_size=5000), repeated)


@settings(max_examples=200, deadline=None)
@given(payloads, st.sampled_from([("none", None), ("gzip", None), ("gzip", 0), ("gzip", 1), ("gzip", 6),
                                  ("gzip", 9)]))
def test_round_trip(data, spec):
    c = get_codec(*spec)
    encoded = c.encode(data)
    assert c.decode(encoded) == data
    assert c.decode(encoded, len(data)) == data
    if c.name == "gzip":
        assert gzip.decompress(encoded) == data
        assert encoded == reference_gzip(data, c.level)


@settings(max_examples=100, deadline=None)
@given(payloads, st.lists(st.integers(1, 700), min_size=1, max_size=20), st.sampled_from(["none", "gzip"]))
def test_incremental_round_trip(data, cuts, name):
    c = get_codec(name)
    enc = c.encoder()
    pieces, pos, i = [], 0, 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        pieces.append(enc.update(data[pos:pos + step]))
        pos += step
        i += 1
    pieces.append(enc.finish())
    encoded = b"".join(pieces)
    assert c.decode(encoded, len(data)) == data

    dec = c.decoder(len(data))
    out = [dec.update(encoded[j:j + 3]) for j in range(0, len(encoded), 3)]
    out.append(dec.finish())
    assert b"".join(out) == data


def test_finished_encoder_refuses_more():
    enc = get_codec("gzip").encoder()
    enc.finish()
    with pytest.raises(ValueError):
        enc.update(b"x")


# --- strict decoding ------------------------------------------------------------------------------------

DATA = b"The quick brown fox jumps over the lazy dog. " * 50
GOOD = reference_gzip(DATA)


def test_good_member_decodes():
    assert get_codec("gzip").decode(GOOD, len(DATA)) == DATA
    # Any header variant is accepted (python's gzip module writes its own header on older versions).
    assert get_codec("gzip").decode(gzip.compress(DATA, 9), len(DATA)) == DATA


@pytest.mark.parametrize("bad, what", [
    (GOOD + b"\0", "trailing"),
    (GOOD + b"garbage", "trailing"),
    (GOOD + GOOD, "more than one gzip member"),
    (GOOD + reference_gzip(b""), "more than one gzip member"),
    (GOOD[:-1], "truncated"),
    (GOOD[:-8], "truncated"),
    (GOOD[:len(GOOD) // 2], "truncated"),
    (GOOD[:20], "truncated"),
    (GOOD[:10], "too short"),
    (b"", "too short"),
    (b"\x1f", "too short"),
    (b"\x1f\x8b\x08", "too short"),
    (b"this is definitely not a gzip stream", "not a valid gzip"),
    (b"\x1f\x8b\x08" + b"\xff" * 40, "not a valid gzip"),
    (zlib.compress(DATA), "not a valid gzip"),  # zlib wrapper, not gzip
])
def test_decode_refuses(bad, what):
    with pytest.raises(CodecError, match=what):
        get_codec("gzip").decode(bad)
    with pytest.raises(CodecError):
        get_codec("gzip").decode(bad, len(DATA))


@pytest.mark.parametrize("offset_from_end", [8, 7, 4, 1])  # CRC32 bytes, then ISIZE bytes
def test_decode_checks_crc_and_isize(offset_from_end):
    bad = bytearray(GOOD)
    bad[-offset_from_end] ^= 0x01
    with pytest.raises(CodecError, match="not a valid gzip"):
        get_codec("gzip").decode(bytes(bad))


def test_decode_refuses_corrupted_deflate_data():
    bad = bytearray(reference_gzip(bytes(range(256)) * 40))
    bad[30] ^= 0xFF
    with pytest.raises(CodecError):
        get_codec("gzip").decode(bytes(bad))


@pytest.mark.parametrize("expected", [0, 1, len(DATA) - 1, len(DATA) + 1, 10 * len(DATA)])
def test_decode_refuses_wrong_size(expected):
    with pytest.raises(PayloadSizeError, match=str(expected)):
        get_codec("gzip").decode(GOOD, expected)
    with pytest.raises(PayloadSizeError, match=str(expected)):
        get_codec("none").decode(DATA, expected)


def test_negative_expected_size():
    with pytest.raises(ParameterOutOfRange):
        get_codec("gzip").decode(GOOD, -1)
    with pytest.raises(ParameterOutOfRange):
        get_codec("none").decode(DATA, -1)


def test_streaming_decoder_stops_early():
    gz = get_codec("gzip")
    dec = gz.decoder(len(DATA))
    assert dec.update(GOOD) == DATA
    with pytest.raises(CodecError, match="trailing"):
        dec.update(b"x")
    dec = gz.decoder(len(DATA))
    with pytest.raises(CodecError, match="truncated"):
        dec.update(GOOD[:-3])
        dec.finish()
    dec = get_codec("none").decoder(3)
    dec.update(b"ab")
    with pytest.raises(PayloadSizeError):
        dec.update(b"cd")


# --- decompression bombs --------------------------------------------------------------------------------

def test_bomb_is_refused():
    bomb = reference_gzip(bytes(64 << 20))  # 64 MiB of zeros in about 64 KB
    assert len(bomb) < 100_000
    with pytest.raises(PayloadSizeError, match="more than the expected 1048576 bytes"):
        get_codec("gzip").decode(bomb, 1 << 20)


@pytest.mark.parametrize("expected", [0, 1, 1000, 99_999])
def test_bomb_guard_never_inflates_more_than_expected_plus_one(monkeypatch, expected):
    produced = []

    class Spy:
        def __init__(self, wbits):
            self._d = zlib.decompressobj(wbits)

        def decompress(self, data, max_length=0):
            out = self._d.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._d, name)

    fake = types.SimpleNamespace(**{k: getattr(zlib, k) for k in dir(zlib) if not k.startswith("_")})
    fake.decompressobj = Spy
    monkeypatch.setattr(codec_module, "zlib", fake)
    bomb = reference_gzip(bytes(10 << 20))
    with pytest.raises(PayloadSizeError):
        get_codec("gzip").decode(bomb, expected)
    assert produced and sum(produced) <= expected + 1
    # Feeding the bomb piece by piece does not help either.
    produced.clear()
    dec = get_codec("gzip").decoder(expected)
    with pytest.raises(PayloadSizeError):
        for i in range(0, len(bomb), 1000):
            dec.update(bomb[i:i + 1000])
    assert sum(produced) <= expected + 1


# --- decoding piece by piece -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200_000), st.integers(1, 70_000), st.sampled_from(["none", "gzip"]))
def test_pieces_give_the_payload_in_pieces_of_at_most_step(data, step, name):
    codec = get_codec(name)
    pieces = list(codec.decoder(len(data)).pieces(codec.encode(data), step))
    assert b"".join(bytes(p) for p in pieces) == data
    assert all(0 < len(p) <= step for p in pieces)


def test_pieces_of_a_bomb_never_hold_more_than_a_step():
    import tracemalloc

    bomb = reference_gzip(bytes(256 << 20), 9)  # 256 MB of zeros in about 250 KB
    tracemalloc.start()
    try:
        total = sum(len(p) for p in get_codec("gzip").decoder(256 << 20).pieces(bomb, 1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 256 << 20 and peak < 8 << 20, peak
    with pytest.raises(PayloadSizeError):  # announced smaller: refused one byte past it
        for _ in get_codec("gzip").decoder(10 << 20).pieces(bomb, 1 << 20):
            pass


@pytest.mark.parametrize("body,error", [(reference_gzip(b"x" * 1000)[:-5], "truncated"),
                                        (b"abc", "short|not a valid gzip"),
                                        (reference_gzip(b"x" * 1000) + b"junk", "trailing"),
                                        (reference_gzip(b"x" * 1000) * 2, "more than one"),
                                        (b"\x1f\x8b" + bytes(40), "not a valid gzip")])
def test_pieces_refuse_what_decode_refuses(body, error):
    with pytest.raises(CodecError, match=error):
        list(get_codec("gzip").decoder(1000).pieces(body, 64))
    with pytest.raises(CodecError):
        get_codec("gzip").decode(body, 1000)


def test_pieces_refuse_a_wrong_size():
    with pytest.raises(PayloadSizeError):
        list(get_codec("gzip").decoder(1001).pieces(reference_gzip(b"x" * 1000), 64))
    with pytest.raises(PayloadSizeError):
        list(get_codec("none").decoder(1001).pieces(b"x" * 1000, 64))
