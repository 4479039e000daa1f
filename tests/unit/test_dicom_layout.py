"""dicom_layout: the pixel data of native little-endian files, found as pydicom finds it; None on anything
else; never an exception on hostile bytes; split() aligned on samples whatever the offset."""

import io
import random

import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tools.synthetic import generate_study
from transfers_plugin import dicom_layout
from transfers_plugin.dicom_layout import PixelLayout, find_pixel_data, split

NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)


def expected_layout(data: bytes):
    """The pixel data as pydicom reads it: (value bytes, width) for native 8/16/32-bit, else None."""
    if data[128:132] != b"DICM":
        return None
    ds = pydicom.dcmread(io.BytesIO(data))
    if ds.file_meta.TransferSyntaxUID not in NATIVE or "PixelData" not in ds:
        return None
    if ds.get("BitsAllocated") not in (8, 16, 32):
        return None
    return ds.PixelData, ds.BitsAllocated // 8


def test_every_corpus_file_as_pydicom_reads_it(corpus):
    found = 0
    for f in corpus.files:
        data = f.read()
        layout = find_pixel_data(data)
        try:
            expected = expected_layout(data)
        except Exception:  # pydicom cannot read it: we must not find pixel data in it either... or say None
            expected = None
        if expected is None:
            assert layout is None, f.relative
            continue
        assert layout is not None, f.relative
        assert (bytes(data[layout.offset:layout.end]), layout.width) == expected, f.relative
        found += 1
    assert found >= (10 if corpus.full else 1)


def make(syntax, bits: int = 16, with_sequence: bool = True, undefined: bool = True) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Test^Layout"
    if with_sequence:
        item = pydicom.Dataset()
        item.CodeValue = "123"
        inner = pydicom.Dataset()
        inner.CodeMeaning = "nested"
        item.ConceptNameCodeSequence = Sequence([inner])
        ds.ReferencedStudySequence = Sequence([item, item])
        if undefined:
            ds.ReferencedStudySequence.is_undefined_length = True
            for it in ds.ReferencedStudySequence:
                it.is_undefined_length_sequence_item = True
    ds.Rows, ds.Columns = 4, 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256))[:4 * 8 * bits // 8] * 1
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", NATIVE)
@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("undefined", [True, False])
def test_made_files_with_sequences(syntax, bits, undefined):
    data = make(syntax, bits, True, undefined)
    layout = find_pixel_data(data)
    value, width = expected_layout(data)
    assert layout is not None and layout.width == width == bits // 8
    assert bytes(data[layout.offset:layout.end]) == value


def test_synthetic_ct():
    data = next(generate_study(1, 64, 64))
    layout = find_pixel_data(data)
    assert layout == PixelLayout(len(data) - 64 * 64 * 2, 64 * 64 * 2, 2)


def test_other_syntaxes_and_no_header_are_none():
    data = make(ExplicitVRLittleEndian)
    assert find_pixel_data(data[128:]) is None  # no preamble
    # A deflated or big-endian syntax (same length UID, changed in place): None.
    other = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0")
    assert other != data and find_pixel_data(other) is None
    assert find_pixel_data(b"") is None and find_pixel_data(b"\0" * 132) is None


def test_truncated_and_garbage_bytes_never_raise():
    data = make(ExplicitVRLittleEndian)
    layout = find_pixel_data(data)
    for n in range(0, len(data)):
        got = find_pixel_data(data[:n])
        assert got is None or got.end <= n
    assert find_pixel_data(data[:layout.end - 1]) is None  # the pixel value cut short
    rng = random.Random(15)
    for _ in range(2000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(132, len(damaged))] = rng.randrange(256)
        got = find_pixel_data(bytes(damaged))
        assert got is None or (got.end <= len(damaged) and got.width in (1, 2, 4))
    for _ in range(200):
        blob = b"\0" * 128 + b"DICM" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 600)))
        find_pixel_data(blob)


def test_bounded_work_on_a_flood_of_elements(monkeypatch):
    data = make(ImplicitVRLittleEndian, with_sequence=False)
    assert find_pixel_data(data) is not None
    monkeypatch.setattr(dicom_layout, "MAX_ELEMENTS", 5)
    assert find_pixel_data(data) is None


def nested(depth: int) -> bytes:
    """Undefined-length sequences of undefined-length items nested ``depth`` deep, in implicit VR."""
    seq = bytes.fromhex("08000511") + b"\xff\xff\xff\xff"  # (0008,1105), undefined length
    item = bytes.fromhex("feff00e0") + b"\xff\xff\xff\xff"
    item_end = bytes.fromhex("feff0de0") + bytes(4)
    seq_end = bytes.fromhex("feffdde0") + bytes(4)
    return (seq + item) * depth + (item_end + seq_end) * depth


def test_nesting_is_walked_up_to_a_depth():
    data = make(ImplicitVRLittleEndian, with_sequence=False)
    start = data.index(b"\x08\x00\x18\x00")  # (0008,0018), in the dataset
    layout = find_pixel_data(data)
    shallow = find_pixel_data(data[:start] + nested(10) + data[start:])
    assert layout is not None and shallow == PixelLayout(layout.offset + len(nested(10)), layout.length, 2)
    assert find_pixel_data(data[:start] + nested(dicom_layout.MAX_DEPTH + 5) + data[start:]) is None


@pytest.mark.parametrize("width", [2, 4])
def test_split_aligns_on_samples_at_any_offset(width):
    layout = PixelLayout(101, 4000, width)
    data = bytes(range(256)) * 20  # 5120 bytes: header 0-100, pixels 101-4100, trailer after
    for start in (0, 1, 100, 101, 102, 103, 2000, 4000, 4099):
        for stop in (start + 1, start + 300, start + 2501, len(data)):
            if stop > len(data) or stop <= start:
                continue
            parts = split(memoryview(data)[start:stop], start, layout)
            assert b"".join(bytes(v) for v, _ in parts) == data[start:stop]
            position = start
            for view, w in parts:
                if w > 1:
                    assert w == width and (position - layout.offset) % width == 0 and len(view) % width == 0
                    assert layout.offset <= position and position + len(view) <= layout.end
                position += len(view)
            if stop - start < dicom_layout.MIN_SHUFFLED:
                assert [w for _, w in parts] == [1]


def test_split_without_layout_or_8_bit():
    view = memoryview(b"abc")
    assert split(view, 0, None) == [(view, 1)]
    assert split(view, 0, PixelLayout(0, 3, 1)) == [(view, 1)]
