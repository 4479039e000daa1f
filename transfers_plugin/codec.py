"""Compression of bucket payloads (protocol.md section 4).

A codec is looked up by its wire name with :func:`get_codec`. It encodes and decodes whole payloads, and
offers incremental encoders and decoders for code that streams. The registry is meant to grow (other
codecs, levels); the wire names the C++ plugin knows are ``none`` and ``gzip``.

``gzip`` writes exactly one RFC 1952 member, byte-identical to what Orthanc's ``GzipCompressor`` writes at
the same level (default header: mtime 0, OS 3). Decoding is strict, because a C++ peer would otherwise
silently truncate or fail: one member, no trailing bytes, no truncation, and, when the expected size is
known, exactly that many bytes, without ever inflating more than one byte past it.

``zstd-shuffle`` (between our peers only, registered when ``zstandard`` imports): a self-describing payload,

    b"TZS1"  u32 n  n x (u8 width, u64 length)  one zstd frame (content size and checksum written)

The segments, in order, make the raw payload (their lengths add up to its size); a segment of width 2 or 4
is the samples of uncompressed pixel data, and the frame holds it "byte shuffled" (all the first bytes of
its samples, then all the second bytes...), which zstd compresses much better than the interleaved bytes;
a segment of width 1 is plain bytes. The encoder is given the segments (dicom_layout.split cuts them at
the source, which has the whole instances); :meth:`Codec.encode` alone makes one plain segment. Decoding
is strict: a bounded header, widths 1, 2 or 4 with whole samples, the lengths adding up to the expected
size, a frame that declares exactly that content size, ends with the payload and decodes without error.
zstandard releases the GIL while it compresses and decompresses; each thread has its own compressor.
"""

import struct
import threading
import zlib
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

try:
    import zstandard
except ImportError:  # an optional dependency: without it, none and gzip only
    zstandard = None

from .errors import BadRequest, ParameterOutOfRange

GZIP_MAGIC = b"\x1f\x8b"
# A gzip member holds at least a 10-byte header and an 8-byte trailer.
GZIP_MIN_LENGTH = 18
GZIP_DEFAULT_LEVEL = 6


class CodecError(BadRequest):
    """A payload that cannot be decoded, or that does not have the expected size."""


class PayloadSizeError(CodecError):
    """A payload that decodes to a size other than the expected one (too short, too long, or a bomb)."""


class Encoder:
    """Incremental encoder: feed data with :meth:`update`, end with :meth:`finish`."""

    def update(self, data: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError


class Decoder:
    """Incremental decoder: feed data with :meth:`update`, end with :meth:`finish` (which checks)."""

    def update(self, data: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError

    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        """``data`` decoded, then :meth:`finish`ed, as pieces of at most ``step`` bytes: a small compressed
        body never becomes a large buffer at once (a gzip bomb costs ``step`` bytes of memory)."""
        out = memoryview(self.update(data) + self.finish())
        for position in range(0, len(out), step):
            yield out[position:position + step]


class Codec:
    """A payload codec: its wire name, the ``Content-Type`` of encoded payloads, and the transforms."""

    name = ""
    content_type = "application/octet-stream"
    level: Optional[int] = None

    def encoder(self) -> Encoder:
        raise NotImplementedError

    def decoder(self, expected_size: Optional[int] = None) -> Decoder:
        raise NotImplementedError

    # Whether encode_parts uses the segments it is given (the source then cuts instances with dicom_layout).
    uses_layout = False

    def encode(self, data: bytes) -> bytes:
        encoder = self.encoder()
        return encoder.update(data) + encoder.finish()

    def encode_parts(self, parts: Sequence[Tuple[memoryview, int]]) -> bytes:
        """The payload made of ``parts`` ``(bytes, sample width)``, in order; only ``zstd-shuffle`` uses the
        widths, the others encode the bytes joined."""
        return self.encode(b"".join(view for view, _ in parts))

    def decode(self, data: bytes, expected_size: Optional[int] = None) -> bytes:
        decoder = self.decoder(expected_size)
        return decoder.update(data) + decoder.finish()

    def __repr__(self) -> str:
        level = "" if self.level is None else f", level={self.level}"
        return f"{type(self).__name__}(name={self.name!r}{level})"


def _check_expected_size(expected_size: Optional[int]) -> None:
    if expected_size is not None and (
            not isinstance(expected_size, int) or isinstance(expected_size, bool) or expected_size < 0):
        raise ParameterOutOfRange(f"The expected payload size must be an integer >= 0, not {expected_size!r}")


# --- none ------------------------------------------------------------------------------------------------

class _IdentityEncoder(Encoder):
    def update(self, data: bytes) -> bytes:
        return bytes(data)

    def finish(self) -> bytes:
        return b""


class _IdentityDecoder(Decoder):
    def __init__(self, expected_size: Optional[int]):
        self._expected = expected_size
        self._length = 0

    def update(self, data: bytes) -> bytes:
        self._length += len(data)
        if self._expected is not None and self._length > self._expected:
            raise PayloadSizeError(
                f"The payload is longer than the expected {self._expected} bytes")
        return bytes(data)

    def finish(self) -> bytes:
        if self._expected is not None and self._length != self._expected:
            raise PayloadSizeError(
                f"The payload has {self._length} bytes instead of the expected {self._expected}")
        return b""


class NoneCodec(Codec):
    """No compression: the payload is the raw bytes. A level, if given, is ignored."""

    name = "none"
    content_type = "application/octet-stream"

    def encoder(self) -> Encoder:
        return _IdentityEncoder()

    def decoder(self, expected_size: Optional[int] = None) -> Decoder:
        _check_expected_size(expected_size)
        return _IdentityDecoder(expected_size)


# --- gzip ------------------------------------------------------------------------------------------------

class _GzipEncoder(Encoder):
    def __init__(self, level: int):
        # windowBits 15 + 16: one gzip member with zlib's default header, as Orthanc's GzipCompressor.
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31, 8, zlib.Z_DEFAULT_STRATEGY)
        self._finished = False

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("This gzip encoder is already finished")
        return self._compressor.compress(data)

    def finish(self) -> bytes:
        if self._finished:
            raise ValueError("This gzip encoder is already finished")
        self._finished = True
        return self._compressor.flush(zlib.Z_FINISH)


class _GzipDecoder(Decoder):
    def __init__(self, expected_size: Optional[int]):
        self._decompressor = zlib.decompressobj(31)
        self._expected = expected_size
        self._consumed = 0
        self._produced = 0

    def update(self, data: bytes) -> bytes:
        self._consumed += len(data)
        if self._decompressor.eof:
            if data:
                raise self._trailing_error(bytes(data))
            return b""
        # Stop one byte past the expected size (max_length 0 would mean no limit, hence the + 1).
        limit = 0 if self._expected is None else self._expected - self._produced + 1
        try:
            out = self._decompressor.decompress(data, limit)
        except zlib.error as e:
            raise CodecError(f"The payload is not a valid gzip stream: {e}") from None
        self._produced += len(out)
        if self._expected is not None and self._produced > self._expected:
            raise PayloadSizeError(
                f"The gzip payload inflates to more than the expected {self._expected} bytes")
        if self._decompressor.unused_data:
            raise self._trailing_error(self._decompressor.unused_data)
        return out

    def finish(self) -> bytes:
        if not self._decompressor.eof:
            if self._consumed < GZIP_MIN_LENGTH:
                raise CodecError(
                    f"The gzip payload is too short ({self._consumed} bytes): it is truncated or not gzip")
            raise CodecError(f"The gzip payload is truncated (the stream ends after {self._consumed} bytes"
                             " without its end marker and trailer)")
        if self._expected is not None and self._produced != self._expected:
            raise PayloadSizeError(f"The gzip payload inflates to {self._produced} bytes"
                                   f" instead of the expected {self._expected}")
        return b""

    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        remaining = data
        while True:
            if self._decompressor.eof:
                if remaining:
                    raise self._trailing_error(bytes(remaining))
                break
            limit = step if self._expected is None else min(step, self._expected - self._produced + 1)
            try:
                out = self._decompressor.decompress(remaining, limit)
            except zlib.error as e:
                raise CodecError(f"The payload is not a valid gzip stream: {e}") from None
            self._consumed += len(remaining) - len(self._decompressor.unconsumed_tail)
            self._produced += len(out)
            if self._expected is not None and self._produced > self._expected:
                raise PayloadSizeError(f"The gzip payload inflates to more than the expected {self._expected} bytes")
            if self._decompressor.unused_data:
                raise self._trailing_error(self._decompressor.unused_data)
            if out:
                yield out
            before, remaining = len(remaining), self._decompressor.unconsumed_tail
            if not out and (not remaining or len(remaining) == before):  # nothing more comes out of it
                break
        self.finish()

    @staticmethod
    def _trailing_error(extra: bytes) -> CodecError:
        if extra.startswith(GZIP_MAGIC):
            return CodecError("The payload holds more than one gzip member; exactly one is allowed")
        return CodecError("The gzip payload has trailing bytes after the end of its gzip member")


class GzipCodec(Codec):
    """gzip (RFC 1952), one member, level 0 to 9 (default 6, as the C++ plugin)."""

    name = "gzip"
    content_type = "application/gzip"

    def __init__(self, level: Optional[int] = None):
        if level is None:
            level = GZIP_DEFAULT_LEVEL
        if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level <= 9:
            raise ParameterOutOfRange(f"The gzip level must be an integer from 0 to 9, not {level!r}")
        self.level = level

    def encoder(self) -> Encoder:
        return _GzipEncoder(self.level)

    def decoder(self, expected_size: Optional[int] = None) -> Decoder:
        _check_expected_size(expected_size)
        return _GzipDecoder(expected_size)

    def decode(self, data: bytes, expected_size: Optional[int] = None) -> bytes:
        if len(data) < GZIP_MIN_LENGTH:
            _check_expected_size(expected_size)
            raise CodecError(
                f"The gzip payload is too short ({len(data)} bytes): it is truncated or not gzip")
        return super().decode(data, expected_size)


# --- zstd-shuffle ----------------------------------------------------------------------------------------

ZSTD_SHUFFLE = "zstd-shuffle"
AUTO = "auto"  # in a transfer query only: the best codec both ends have (capabilities.choose_compression)
ZSTD_MAGIC = b"TZS1"
ZSTD_DEFAULT_LEVEL = 1
ZSTD_MAX_LEVEL = 19
MAX_SEGMENTS = 65536
WIDTHS = (1, 2, 4)
MAX_UNBOUNDED_SIZE = 1 << 30  # the most a payload decodes to when no expected size is given
_SEGMENT = struct.Struct("<BQ")
_COUNT = struct.Struct("<I")
_HEADER_FIXED = len(ZSTD_MAGIC) + _COUNT.size
_local = threading.local()


def zstd_available() -> bool:
    return zstandard is not None


def _compressor(level: int):
    """This thread's compressor at ``level`` (a ZstdCompressor is not thread-safe)."""
    found = getattr(_local, "compressors", None)
    if found is None:
        found = _local.compressors = {}
    compressor = found.get(level)
    if compressor is None:
        compressor = found[level] = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                                             write_checksum=True)
    return compressor


def _decompressor():
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def _shuffled(view: memoryview, width: int) -> bytes:
    if width == 1:
        return view
    raw = bytes(view)
    return b"".join(raw[k::width] for k in range(width))


def max_encoded_size(raw_size: int) -> int:
    """An upper bound of the payload of ``raw_size`` bytes in any valid encoding (zstd's bound plus the
    largest header)."""
    return _HEADER_FIXED + MAX_SEGMENTS * _SEGMENT.size + raw_size + raw_size // 128 + 4096


def parse_zstd_payload(data: bytes, expected_size: Optional[int]) -> bytes:
    """The raw bytes of a ``zstd-shuffle`` payload, checked (see the module's description)."""
    mv = memoryview(data).cast("B")
    if len(mv) < _HEADER_FIXED or bytes(mv[:4]) != ZSTD_MAGIC:
        raise CodecError(f"The payload is not a {ZSTD_SHUFFLE} payload (no {ZSTD_MAGIC!r} header)")
    (count,) = _COUNT.unpack_from(mv, 4)
    if count > MAX_SEGMENTS:
        raise CodecError(f"The {ZSTD_SHUFFLE} payload lists {count} segments, more than {MAX_SEGMENTS}")
    end = _HEADER_FIXED + count * _SEGMENT.size
    if len(mv) < end:
        raise CodecError(f"The {ZSTD_SHUFFLE} payload is truncated in its header ({len(mv)} bytes)")
    segments = list(_SEGMENT.iter_unpack(mv[_HEADER_FIXED:end]))
    total = 0
    for width, length in segments:
        if width not in WIDTHS or length == 0 or length % width:
            raise CodecError(f"The {ZSTD_SHUFFLE} payload has a bad segment ({length} bytes of width {width})")
        total += length
    limit = MAX_UNBOUNDED_SIZE if expected_size is None else expected_size
    if (expected_size is not None and total != expected_size) or total > limit:
        raise PayloadSizeError(f"The {ZSTD_SHUFFLE} payload lists {total} bytes instead of the expected {limit}")
    frame = mv[end:]
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise CodecError(f"The {ZSTD_SHUFFLE} payload has no valid zstd frame: {e}") from None
    if declared != total:
        raise PayloadSizeError(f"The zstd frame of the payload declares {declared} bytes instead of the {total} "
                               f"of its segments")
    decompressor = _decompressor().decompressobj()
    try:
        raw = decompressor.decompress(frame)
    except zstandard.ZstdError as e:
        raise CodecError(f"The {ZSTD_SHUFFLE} payload has a damaged zstd frame: {e}") from None
    if not decompressor.eof:
        raise CodecError(f"The {ZSTD_SHUFFLE} payload is truncated (its zstd frame does not end)")
    if decompressor.unused_data:
        raise CodecError(f"The {ZSTD_SHUFFLE} payload has trailing bytes after its zstd frame")
    if len(raw) != total:
        raise PayloadSizeError(f"The {ZSTD_SHUFFLE} payload decodes to {len(raw)} bytes instead of {total}")
    if all(width == 1 for width, _ in segments):
        return raw
    out = bytearray(raw)
    source = memoryview(raw)
    position = 0
    for width, length in segments:
        if width > 1:
            plane = length // width
            for k in range(width):
                out[position + k:position + length:width] = source[position + k * plane:position + (k + 1) * plane]
        position += length
    return out


class _ZstdEncoder(Encoder):
    """Incremental form of :meth:`ZstdShuffleCodec.encode`: the bytes are kept, encoded at the end."""

    def __init__(self, codec: "ZstdShuffleCodec"):
        self._codec = codec
        self._parts: List[bytes] = []
        self._finished = False

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError(f"This {ZSTD_SHUFFLE} encoder is already finished")
        self._parts.append(bytes(data))
        return b""

    def finish(self) -> bytes:
        if self._finished:
            raise ValueError(f"This {ZSTD_SHUFFLE} encoder is already finished")
        self._finished = True
        return self._codec.encode_parts([(memoryview(p), 1) for p in self._parts])


class _ZstdDecoder(Decoder):
    """The payload is kept (at most :func:`max_encoded_size` of the expected size), decoded by finish."""

    def __init__(self, expected_size: Optional[int]):
        self._expected = expected_size
        self._limit = max_encoded_size(MAX_UNBOUNDED_SIZE if expected_size is None else expected_size)
        self._parts: List[bytes] = []
        self._length = 0
        self._finished = False

    def update(self, data: bytes) -> bytes:
        self._length += len(data)
        if self._length > self._limit:
            raise PayloadSizeError(f"The {ZSTD_SHUFFLE} payload is longer ({self._length} bytes) than any encoding "
                                   f"of the expected {self._expected} bytes")
        self._parts.append(bytes(data))
        return b""

    def finish(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        return parse_zstd_payload(data, self._expected)


class ZstdShuffleCodec(Codec):
    """zstd (level 1 to 19, default 1) of segments, pixel samples byte-shuffled (see the module)."""

    name = ZSTD_SHUFFLE
    content_type = "application/octet-stream"
    uses_layout = True

    def __init__(self, level: Optional[int] = None):
        if zstandard is None:
            raise ParameterOutOfRange(f"The {ZSTD_SHUFFLE} compression needs the zstandard module")
        if level is None:
            level = ZSTD_DEFAULT_LEVEL
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= ZSTD_MAX_LEVEL:
            raise ParameterOutOfRange(f"The zstd level must be an integer from 1 to {ZSTD_MAX_LEVEL}, not {level!r}")
        self.level = level

    def encoder(self) -> Encoder:
        return _ZstdEncoder(self)

    def decoder(self, expected_size: Optional[int] = None) -> Decoder:
        _check_expected_size(expected_size)
        return _ZstdDecoder(expected_size)

    def encode(self, data: bytes) -> bytes:
        return self.encode_parts([(memoryview(data).cast("B"), 1)])

    def encode_parts(self, parts: Iterable[Tuple[memoryview, int]]) -> bytes:
        kept: List[Tuple[memoryview, int]] = []
        header: List[List[int]] = []  # [width, length]; consecutive plain segments are one
        for view, width in parts:
            n = len(view)
            if not n:
                continue
            if width not in WIDTHS or n % width:
                width = 1
            kept.append((view, width))
            if header and width == 1 and header[-1][0] == 1:
                header[-1][1] += n
            else:
                header.append([width, n])
        if len(header) > MAX_SEGMENTS:  # a bucket of very many tiny instances: all plain
            header = [[1, sum(n for _, n in header)]]
            kept = [(view, 1) for view, _ in kept]
        total = sum(n for _, n in header)
        out = [ZSTD_MAGIC, _COUNT.pack(len(header))]
        out.extend(_SEGMENT.pack(width, n) for width, n in header)
        stream = _compressor(self.level).compressobj(size=total)
        for view, width in kept:
            out.append(stream.compress(_shuffled(view, width)))
        out.append(stream.flush())
        return b"".join(out)


# --- registry --------------------------------------------------------------------------------------------

CodecFactory = Callable[[Optional[int]], Codec]

_REGISTRY: Dict[str, CodecFactory] = {}


def register_codec(name: str, factory: CodecFactory) -> None:
    """Make ``get_codec(name, level)`` return ``factory(level)``; the factory validates the level."""
    _REGISTRY[name] = factory


def codec_names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def get_codec(name: str, level: Optional[int] = None) -> Codec:
    """The codec with this wire name (``none``, ``gzip``); ``level`` None means the codec's default."""
    factory = _REGISTRY.get(name) if isinstance(name, str) else None
    if factory is None:
        names: List[str] = list(_REGISTRY)
        raise ParameterOutOfRange(f"Unknown compression {name!r}: expected one of {', '.join(names)}")
    return factory(level)


def encode(name: str, data: bytes, level: Optional[int] = None) -> bytes:
    return get_codec(name, level).encode(data)


def decode(name: str, data: bytes, expected_size: Optional[int] = None) -> bytes:
    return get_codec(name).decode(data, expected_size)


register_codec("none", lambda level: NoneCodec())
register_codec("gzip", GzipCodec)
if zstandard is not None:
    register_codec(ZSTD_SHUFFLE, ZstdShuffleCodec)
