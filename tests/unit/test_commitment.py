"""The commitment check: size and MD5 of reassembled instances."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from transfers_plugin import commitment
from transfers_plugin.commitment import (
    CommitmentError,
    check_bytes,
    check_digest,
    check_file,
    file_digest,
    md5_bytes,
    md5_file,
)
from transfers_plugin.errors import CorruptedFile
from transfers_plugin.protocol import InstanceInfo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cxx-1.4"  # the C++ 1.4 recordings, in the repository
IID = "a36d4be2-f419c44c-5157e814-171573f6-d151a103"


def info_of(data: bytes, iid: str = IID) -> InstanceInfo:
    return InstanceInfo(iid, len(data), hashlib.md5(data).hexdigest())


def test_md5_vectors():
    assert md5_bytes(b"") == "d41d8cd98f00b204e9800998ecf8427e"
    assert md5_bytes(b"Hello, World!") == "65a8e27d8879283831b664bd8b7f0ad4"


def test_good_bytes_pass():
    data = os.urandom(10_000)
    check_bytes(data, info_of(data))
    check_bytes(b"", info_of(b""))
    # Upper-case hexadecimal from a peer is the same MD5.
    check_bytes(data, InstanceInfo(IID, len(data), hashlib.md5(data).hexdigest().upper()))


def test_flipped_byte_fails_naming_the_instance():
    data = bytearray(os.urandom(10_000))
    expected = info_of(bytes(data))
    data[5000] ^= 0x40
    with pytest.raises(CommitmentError) as err:
        check_bytes(bytes(data), expected)
    e = err.value
    assert isinstance(e, CorruptedFile) and e.orthanc_code == 20
    assert IID in e.message and "MD5" in e.message and "size" not in e.message.split(":")[0]
    assert expected.md5 in e.message and hashlib.md5(data).hexdigest() in e.message
    assert (e.instance_id, e.expected_size, e.actual_size) == (IID, 10_000, 10_000)
    assert (e.expected_md5, e.actual_md5) == (expected.md5, hashlib.md5(data).hexdigest())


@pytest.mark.parametrize("change", [lambda d: d[:-1], lambda d: d + b"\0", lambda d: b""])
def test_wrong_size_fails(change):
    data = os.urandom(1000)
    expected = info_of(data)
    bad = change(data)
    with pytest.raises(CommitmentError, match=IID) as err:
        check_bytes(bad, expected)
    assert "expected 1000 bytes" in err.value.message
    assert f"got {len(bad)} bytes" in err.value.message
    assert err.value.actual_size == len(bad)


def test_check_digest_compares_both_size_and_md5():
    expected = info_of(b"abc")
    check_digest(expected, 3, expected.md5)
    with pytest.raises(CommitmentError, match="bad size:"):
        check_digest(expected, 4, expected.md5)
    with pytest.raises(CommitmentError, match="bad MD5:"):
        check_digest(expected, 3, md5_bytes(b"abd"))
    with pytest.raises(CommitmentError, match="bad size and MD5:"):
        check_digest(expected, 2, md5_bytes(b"ab"))


def test_right_size_and_md5_of_another_instance_fails():
    a, b = b"a" * 100, b"b" * 100
    with pytest.raises(CommitmentError):
        check_bytes(a, info_of(b))


# --- files ----------------------------------------------------------------------------------------------

@pytest.fixture
def big_file(tmp_path):
    data = os.urandom(3 << 20) + b"odd tail"  # a few MB, not a multiple of the block size
    path = tmp_path / "instance.dcm"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("block_size", [1, 4096, 1 << 20, 64 << 20])
def test_check_file_passes(big_file, block_size):
    path, data = big_file
    if block_size == 1:
        path.write_bytes(data[:5000])
        data = data[:5000]
    check_file(path, info_of(data), block_size)
    check_file(str(path), info_of(data), block_size)
    assert file_digest(path, block_size) == (len(data), hashlib.md5(data).hexdigest())
    assert md5_file(path, block_size) == hashlib.md5(data).hexdigest()


def test_check_file_detects_a_flipped_byte(big_file):
    path, data = big_file
    expected = info_of(data)
    with open(path, "r+b") as f:
        f.seek(2_000_001)
        byte = f.read(1)
        f.seek(2_000_001)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CommitmentError, match=IID) as err:
        check_file(path, expected)
    assert err.value.actual_size == len(data) and err.value.actual_md5 != expected.md5


def test_check_file_detects_wrong_size(big_file):
    path, data = big_file
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CommitmentError, match="got 3145737 bytes"):
        check_file(path, info_of(data))
    # A sparse file of the right size that was never filled in.
    with open(path, "r+b") as f:
        f.truncate(len(data))
        f.seek(0)
        f.write(b"\0" * len(data))
    with pytest.raises(CommitmentError):
        check_file(path, info_of(data))


def test_check_file_streams(big_file, monkeypatch):
    """The file is read in blocks of at most block_size bytes, never whole."""
    path, data = big_file
    reads = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            reads.append(n)
            return self._f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(commitment, "open", lambda p, mode="r": Spy(real_open(p, mode)), raising=False)
    check_file(path, info_of(data), block_size=65536)
    assert reads and all(0 < n <= 65536 for n in reads)
    assert len(reads) >= len(data) // 65536


def test_bad_block_size(big_file):
    with pytest.raises(ValueError):
        md5_file(big_file[0], 0)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        check_file("/nonexistent/instance.dcm", InstanceInfo(IID, 1, "0" * 32))


def test_fixture_instances():
    infos = json.loads((FIXTURES / "instances" / "instances.json").read_text())
    for iid, meta in infos.items():
        expected = InstanceInfo(iid, meta["size"], meta["md5"])
        check_file(FIXTURES / "instances" / f"{iid}.dcm", expected)
        with pytest.raises(CommitmentError, match=iid):
            check_file(FIXTURES / "instances" / f"{iid}.dcm", InstanceInfo(iid, meta["size"], "0" * 32))
