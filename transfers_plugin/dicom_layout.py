"""Where the native pixel data of a DICOM file lies: a small, bounded, never-raising parser.

:func:`find_pixel_data` reads a Part 10 file (128-byte preamble, ``DICM``, the group 0002 meta header in
explicit VR little endian) whose transfer syntax is implicit or explicit VR little endian, walks the
top-level elements of its dataset (skipping sequences, of defined or undefined length, without decoding
them) and answers the value range of Pixel Data (7FE0,0010) with the sample width of Bits Allocated
(0028,0100): 8, 16 or 32 bits. Anything else (another or no transfer syntax, encapsulated pixel data, no
Part 10 header, bytes that do not parse, more than ``MAX_ELEMENTS`` elements) answers None: the codec then
compresses the file as plain bytes. The bytes are a peer's or a client's, so every read is bounds-checked
and nothing raises.

:func:`split` cuts a byte range of an instance into segments for the ``zstd-shuffle`` codec (codec.py):
the whole samples of pixel data that it holds, with their width, and the rest as plain bytes.
"""

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
PIXEL_DATA = 0x7FE00010
BITS_ALLOCATED = 0x00280100
TRANSFER_SYNTAX = 0x00020010
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
# VRs whose explicit header has 2 reserved bytes and a 32-bit length.
LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV",
                      b"UV"))
MAX_ELEMENTS = 100_000  # elements (and items) visited before giving up: bounded work on any bytes
MAX_DEPTH = 32  # nested sequences
MIN_SHUFFLED = 256  # fewer pixel bytes in a range than this stay plain

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


@dataclass(frozen=True)
class PixelLayout:
    """The value of Pixel Data: ``length`` bytes at ``offset`` of the file, samples of ``width`` bytes."""

    offset: int
    length: int
    width: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class _Malformed(Exception):
    pass


class _Walker:
    def __init__(self, data: memoryview):
        self.mv = data
        self.n = len(data)
        self.budget = MAX_ELEMENTS

    def tag(self, pos: int) -> int:
        if pos + 8 > self.n:
            raise _Malformed()
        self.budget -= 1
        if self.budget < 0:
            raise _Malformed()
        group, element = _TAG.unpack_from(self.mv, pos)
        return (group << 16) | element

    def header(self, pos: int, tag: int, implicit: bool) -> Tuple[int, bytes, int]:
        """(header length, VR or b"", value length) of the element at ``pos``."""
        if implicit or tag >> 16 == 0xFFFE:
            return 8, b"", _U32.unpack_from(self.mv, pos + 4)[0]
        vr = bytes(self.mv[pos + 4:pos + 6])
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise _Malformed()
        if vr in LONG_VRS:
            if pos + 12 > self.n:
                raise _Malformed()
            return 12, vr, _U32.unpack_from(self.mv, pos + 8)[0]
        return 8, vr, _U16.unpack_from(self.mv, pos + 6)[0]

    def skip_sequence(self, pos: int, implicit: bool, depth: int) -> int:
        """Skips the items of an undefined-length sequence (or encapsulated fragments) from ``pos``, its
        delimiter included; answers the position after it."""
        if depth > MAX_DEPTH:
            raise _Malformed()
        while True:
            tag = self.tag(pos)
            length = _U32.unpack_from(self.mv, pos + 4)[0]
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise _Malformed()
            if length != UNDEFINED:
                pos += length
                if pos > self.n:
                    raise _Malformed()
                continue
            while True:  # the elements of an undefined-length item, up to its delimiter
                tag = self.tag(pos)
                if tag == ITEM_END:
                    pos += 8
                    break
                size, vr, length = self.header(pos, tag, implicit)
                pos += size
                if length == UNDEFINED:
                    pos = self.skip_sequence(pos, implicit or vr == b"UN", depth + 1)
                else:
                    pos += length
                    if pos > self.n:
                        raise _Malformed()

    def meta_transfer_syntax(self) -> Tuple[Optional[str], int]:
        """The transfer syntax of the group 0002 meta header, and where the dataset starts."""
        pos = 132
        syntax = None
        while pos + 8 <= self.n:
            tag = self.tag(pos)
            if tag >> 16 != 0x0002:
                break
            size, _, length = self.header(pos, tag, False)
            if length == UNDEFINED or pos + size + length > self.n:
                raise _Malformed()
            if tag == TRANSFER_SYNTAX:
                syntax = bytes(self.mv[pos + size:pos + size + length]).rstrip(b"\0 ").decode("ascii", "replace")
            pos += size + length
        return syntax, pos

    def pixel_data(self, pos: int, implicit: bool) -> Optional[PixelLayout]:
        bits = None
        while pos + 8 <= self.n:
            tag = self.tag(pos)
            size, vr, length = self.header(pos, tag, implicit)
            value = pos + size
            if tag == PIXEL_DATA:
                if length == UNDEFINED or value + length > self.n or bits not in (8, 16, 32):
                    return None  # encapsulated (compressed), cut short, or samples we do not shuffle
                return PixelLayout(value, length, bits // 8)
            if tag > PIXEL_DATA:
                return None
            if length == UNDEFINED:
                pos = self.skip_sequence(value, implicit or vr == b"UN", 1)
                continue
            if value + length > self.n:
                return None
            if tag == BITS_ALLOCATED and length == 2:
                bits = _U16.unpack_from(self.mv, value)[0]
            pos = value + length
        return None


def find_pixel_data(data: bytes) -> Optional[PixelLayout]:
    """The native pixel data of a DICOM file in implicit or explicit VR little endian, or None."""
    try:
        mv = memoryview(data).cast("B")
        if len(mv) < 140 or bytes(mv[128:132]) != b"DICM":
            return None
        walker = _Walker(mv)
        syntax, start = walker.meta_transfer_syntax()
        if syntax == IMPLICIT_LITTLE:
            return walker.pixel_data(start, True)
        if syntax == EXPLICIT_LITTLE:
            return walker.pixel_data(start, False)
        return None
    except (_Malformed, struct.error, ValueError, TypeError, IndexError, RecursionError):
        return None


Segment = Tuple[memoryview, int]


def split(view: memoryview, start: int, layout: Optional[PixelLayout]) -> List[Segment]:
    """``view``, the bytes of an instance from offset ``start``, as segments ``(bytes, width)``: the whole
    samples of pixel data in it (aligned on the samples of the file, whatever ``start``) with the width of
    a sample, the bytes around them with width 1."""
    if layout is None or layout.width == 1:
        return [(view, 1)]
    stop = start + len(view)
    width = layout.width
    first = max(start, layout.offset)
    first += (layout.offset - first) % width
    last = min(stop, layout.end)
    if last - first < MIN_SHUFFLED:
        return [(view, 1)]
    last -= (last - first) % width
    parts: List[Segment] = []
    if first > start:
        parts.append((view[:first - start], 1))
    parts.append((view[first - start:last - start], width))
    if stop > last:
        parts.append((view[last - start:], 1))
    return parts
