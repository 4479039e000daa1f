"""Compression of bucket payloads (protocol.md section 4).

A codec is looked up by its wire name with :func:`get_codec`. It encodes and decodes whole payloads, and
offers incremental encoders and decoders for code that streams. The registry is meant to grow (other
codecs, levels); the wire names the C++ plugin knows are ``none`` and ``gzip``.

``gzip`` writes exactly one RFC 1952 member, byte-identical to what Orthanc's ``GzipCompressor`` writes at
the same level (default header: mtime 0, OS 3). Decoding is strict, because a C++ peer would otherwise
silently truncate or fail: one member, no trailing bytes, no truncation, and, when the expected size is
known, exactly that many bytes, without ever inflating more than one byte past it.
"""

import zlib
from typing import Callable, Dict, Iterator, List, Optional, Tuple

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

    def encode(self, data: bytes) -> bytes:
        encoder = self.encoder()
        return encoder.update(data) + encoder.finish()

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
