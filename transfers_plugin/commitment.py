"""The commitment check: a reassembled instance has the size and MD5 its sender announced (protocol.md 7.3).

Files are hashed block by block, so an instance is never held whole in memory just to be checked.
"""

import hashlib
import os
from typing import Tuple, Union

from .errors import CorruptedFile
from .protocol import InstanceInfo

DEFAULT_BLOCK_SIZE = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]


class CommitmentError(CorruptedFile):
    """A reassembled instance whose size or MD5 differs from the announced ones."""

    def __init__(self, instance_id: str, expected_size: int, actual_size: int, expected_md5: str,
                 actual_md5: str):
        problems = []
        if actual_size != expected_size:
            problems.append("size")
        if actual_md5 != expected_md5.lower():
            problems.append("MD5")
        what = " and ".join(problems) or "content"
        super().__init__(
            f"Instance {instance_id} arrived with a bad {what}: expected {expected_size} bytes with "
            f"MD5 {expected_md5}, got {actual_size} bytes with MD5 {actual_md5}")
        self.instance_id = instance_id
        self.expected_size = expected_size
        self.actual_size = actual_size
        self.expected_md5 = expected_md5
        self.actual_md5 = actual_md5


def md5_bytes(data: bytes) -> str:
    """The MD5 of ``data`` as 32 lowercase hexadecimal digits, as on the wire."""
    return hashlib.md5(data).hexdigest()


def file_digest(path: PathLike, block_size: int = DEFAULT_BLOCK_SIZE) -> Tuple[int, str]:
    """The size in bytes and the MD5 of a file, read block by block."""
    if block_size < 1:
        raise ValueError(f"The block size must be positive, not {block_size}")
    digest = hashlib.md5()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(block_size)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def md5_file(path: PathLike, block_size: int = DEFAULT_BLOCK_SIZE) -> str:
    """The MD5 of a file, read block by block."""
    return file_digest(path, block_size)[1]


def check_digest(expected: InstanceInfo, actual_size: int, actual_md5: str) -> None:
    """Raise :class:`CommitmentError` unless the actual size and MD5 are the expected ones."""
    if actual_size != expected.size or actual_md5 != expected.md5.lower():
        raise CommitmentError(expected.id, expected.size, actual_size, expected.md5, actual_md5)


def check_bytes(data: bytes, expected: InstanceInfo) -> None:
    """Raise :class:`CommitmentError` unless ``data`` has the announced size and MD5."""
    check_digest(expected, len(data), md5_bytes(data))


def check_file(path: PathLike, expected: InstanceInfo, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
    """Raise :class:`CommitmentError` unless the file at ``path`` has the announced size and MD5."""
    size, md5 = file_digest(path, block_size)
    check_digest(expected, size, md5)
