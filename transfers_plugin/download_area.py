"""Where received buckets become instances: one file per expected instance, on disk.

Buckets are written as they arrive, in any order, each chunk at its offset (a repeated bucket rewrites
the same bytes). Memory stays bounded: a bucket is written piece by piece as it is decoded. Nothing here
touches Orthanc: committing is the caller's job, after :meth:`verify` has checked size and MD5.
"""

import contextlib
import errno
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Set

from .commitment import check_digest, check_file
from .errors import DiskError, InsufficientStorage, NetworkProtocol, NotFound, ParameterOutOfRange
from .protocol import MB, ORTHANC_ID, Bucket, InstanceInfo, check_orthanc_id, shown

EMPTY_MD5 = hashlib.md5(b"").hexdigest()
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_error(e: OSError, folder: Path, doing: str) -> DiskError:
    """An error of the operating system on the download area, in words a PACS administrator acts on."""
    why = e.strerror or type(e).__name__
    if e.errno in FULL:
        return InsufficientStorage(f"The download area {folder} is full ({why}) while {doing}: free some space "
                                   f"on its disk, or set Transfers.DownloadArea to a folder on a larger one")
    if e.errno in (errno.EACCES, errno.EPERM):
        return DiskError(f"Orthanc is not allowed to write in the download area {folder} ({why}) while {doing}: "
                         f"check the owner and permissions of that folder")
    if e.errno == errno.EROFS:
        return DiskError(f"The download area {folder} is on a read-only file system ({why}) while {doing}")
    if e.errno == errno.EIO:
        return DiskError(f"The disk of the download area {folder} failed ({why}) while {doing}: check the disk")
    return DiskError(f"The download area {folder} cannot be used ({why}) while {doing}")


@contextlib.contextmanager
def on_disk(folder: Path, doing: str) -> Iterator[None]:
    """Turns the operating system's errors of the block into :func:`disk_error`."""
    try:
        yield
    except OSError as e:
        raise disk_error(e, folder, doing) from None


def free_space(folder: Path) -> int:
    """Bytes free for Orthanc on the disk of ``folder`` (created if missing)."""
    with on_disk(folder, "measuring its free space"):
        folder.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(folder).free


def check_room(folder: Path, needed: int, free: int, what: str) -> None:
    """Refuses a ``what`` (transfer, push) of ``needed`` bytes that does not fit in the ``free`` bytes of the
    download area's disk."""
    if needed > free:
        raise InsufficientStorage(f"The download area {folder} has {free // MB} MB free, and this {what} needs "
                                  f"{(needed + MB - 1) // MB} MB: free some space on its disk, or set "
                                  f"Transfers.DownloadArea to a folder on a larger one")


class DownloadArea:
    """The files of one transfer, in ``root``. Only instance IDs in Orthanc's format make file names, and a
    name that would resolve outside ``root`` is refused as well."""

    def __init__(self, root: Path, instances: Sequence[InstanceInfo]):
        self.root = Path(root)
        for info in instances:
            check_orthanc_id(info.id, "An instance ID")
        self.instances: Dict[str, InstanceInfo] = {i.id: i for i in instances}
        # MD5 of instances written whole by one bucket, computed while writing: no need to read them back.
        self.digests: Dict[str, str] = {}

    def path(self, instance_id: str) -> Path:
        if instance_id not in self.instances:
            raise NotFound(f"Instance {shown(instance_id)} is not part of this transfer")
        name = f"{instance_id}.dcm"
        path = self.root / name
        if not ORTHANC_ID.fullmatch(instance_id) or path.name != name or path.parent != self.root:
            raise ParameterOutOfRange(f"Instance ID {shown(instance_id)} does not make a file name of the "
                                      f"download area")
        return path

    def disk(self, doing: str):
        """A block whose operating system errors become :class:`DiskError` naming this area's folder."""
        return on_disk(self.root.parent, doing)

    def exists(self) -> bool:
        return self.root.is_dir()

    def prepare(self) -> bool:
        """Creates the folder; True if it was new.

        Files are created as buckets are written (creating hundreds of files up front delayed the first
        bucket of a push by tens of milliseconds); only empty instances, which no bucket writes, get one
        now. What an area that was already there (a job resumed) holds is left as it is: see
        :meth:`damaged`."""
        with self.disk("creating the folder of a transfer"):
            new = not self.root.is_dir()
            self.root.mkdir(parents=True, exist_ok=True)
            for info in self.instances.values():
                if not info.size:
                    self.path(info.id).touch()
        return new

    def damaged(self, complete: Iterable[str], started: Iterable[str]) -> Set[str]:
        """Of the instances said to be ``complete`` (all their bytes written and verified) and ``started``
        (some bytes written), those whose file is gone, or, when complete, has another size: a resumed job
        must fetch them again (after :meth:`forget`)."""
        damaged = set()
        for instance_id in set(complete) | set(started):
            info = self.instances.get(instance_id)
            if info is None or not info.size:
                continue
            try:
                size = self.path(instance_id).stat().st_size
            except FileNotFoundError:
                damaged.add(instance_id)
                continue
            except OSError as e:
                raise disk_error(e, self.root.parent, "checking the files of a resumed transfer") from None
            if instance_id in complete and size != info.size:
                damaged.add(instance_id)
        return damaged

    def forget(self, instance_ids: Iterable[str]) -> None:
        """Deletes what was written of these instances (their buckets will be written again)."""
        for instance_id in instance_ids:
            self.digests.pop(instance_id, None)
            try:
                self.path(instance_id).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise disk_error(e, self.root.parent, "deleting a partial file") from None

    def writer(self, bucket: Bucket, skip: Optional[Set[str]] = None) -> "BucketWriter":
        for c in bucket.chunks:
            info = self.instances.get(c.instance_id)
            if info is None:
                raise NotFound(f"Instance {c.instance_id} is not part of this transfer")
            if c.offset + c.size > info.size:
                raise ParameterOutOfRange(f"Chunk ({c.instance_id}, {c.offset}, {c.size}) goes past the end "
                                          f"of the instance ({info.size} bytes)")
        return BucketWriter(self, bucket, skip or set())

    def write_bucket(self, bucket: Bucket, pieces: Iterable[bytes], skip: Optional[Set[str]] = None) -> None:
        """Writes a bucket's payload, given as one bytes object or as pieces of it; its files are closed
        whatever happens (a full disk is freed once they are deleted)."""
        w = self.writer(bucket, skip)
        done = False
        try:
            for piece in ([pieces] if isinstance(pieces, (bytes, bytearray, memoryview)) else pieces):
                w.write(piece)
            done = True
        finally:
            w.close(complete=done)

    def verify(self, instance_id: str) -> None:
        """Raises CommitmentError unless the file has the announced size and MD5 (computed while the
        instance was written, when one chunk carried it whole; read back from the file otherwise). An
        instance no bucket wrote yet has no file: it counts as empty."""
        info = self.instances.get(instance_id)
        path = self.path(instance_id)
        digest = self.digests.get(instance_id)
        try:
            if digest is None:
                check_file(path, info)
            else:
                check_digest(info, path.stat().st_size, digest)
        except FileNotFoundError:  # no byte of it was written: it is empty
            check_digest(info, 0, EMPTY_MD5)
        except OSError as e:
            raise disk_error(e, self.root.parent, f"checking instance {instance_id}") from None

    def read(self, instance_id: str) -> bytes:
        with self.disk(f"reading instance {instance_id} for its import"):
            return self.path(instance_id).read_bytes()

    def files(self) -> Set[str]:
        """The instances that have a file in the area."""
        with self.disk("listing the files of a transfer"):
            try:
                names = os.listdir(self.root)
            except FileNotFoundError:
                return set()
        return {n[:-4] for n in names if n.endswith(".dcm") and n[:-4] in self.instances}

    def remove(self) -> None:
        """Deletes the folder and everything in it; raises :class:`DiskError` if something stays."""
        failures: list = []
        if sys.version_info >= (3, 12):
            shutil.rmtree(self.root, onexc=lambda function, path, error: failures.append(error))
        else:
            shutil.rmtree(self.root, onerror=lambda function, path, info: failures.append(info[1]))
        failures = [e for e in failures if not isinstance(e, FileNotFoundError)]
        if failures:
            raise disk_error(failures[0], self.root.parent, f"deleting the folder {self.root.name}")


class BucketWriter:
    """Writes a bucket's decoded payload, given in pieces of any size, into the instance files."""

    def __init__(self, area: DownloadArea, bucket: Bucket, skip: Set[str]):
        self.area = area
        self.chunks = list(bucket.chunks)
        self.total = bucket.total_size
        self.skip = skip
        self.position = 0  # bytes of the payload written so far
        self._index = 0  # current chunk
        self._within = 0  # bytes of the current chunk written
        self._fds: Dict[str, int] = {}
        self._hash: Optional[Any] = None  # MD5 of the current chunk, when it carries a whole instance
        self._start_chunk()

    def _start_chunk(self) -> None:
        if self._index >= len(self.chunks):
            return
        chunk = self.chunks[self._index]
        self._hash = None
        if chunk.instance_id in self.skip:
            return
        self.area.digests.pop(chunk.instance_id, None)  # whatever was known of it no longer holds
        if chunk.offset == 0 and chunk.size == self.area.instances[chunk.instance_id].size:
            self._hash = hashlib.md5()

    def _end_chunk(self, chunk) -> None:
        if self._hash is not None:
            self.area.digests[chunk.instance_id] = self._hash.hexdigest()
            self._hash = None

    def _fd(self, instance_id: str) -> int:
        fd = self._fds.get(instance_id)
        if fd is None:
            fd = self._fds[instance_id] = os.open(self.area.path(instance_id), os.O_WRONLY | os.O_CREAT, 0o600)
        return fd

    def write(self, data: bytes) -> None:
        with self.area.disk("writing a bucket"):
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        if self.position + len(view) > self.total:
            raise NetworkProtocol(f"The bucket payload is longer than the {self.total} bytes announced")
        while view:
            chunk = self.chunks[self._index]
            n = min(len(view), chunk.size - self._within)
            if n and chunk.instance_id not in self.skip:
                fd = self._fd(chunk.instance_id)
                offset = chunk.offset + self._within
                piece = view[:n]
                if self._hash is not None:
                    self._hash.update(piece)
                while piece:
                    written = os.pwrite(fd, piece, offset)
                    piece, offset = piece[written:], offset + written
            view = view[n:]
            self._within += n
            self.position += n
            if self._within == chunk.size:
                self._end_chunk(chunk)
                if self._index + 1 < len(self.chunks):
                    self._index += 1
                    self._within = 0
                    self._start_chunk()

    def close(self, complete: bool = True) -> None:
        fds, self._fds = list(self._fds.values()), {}
        error: Optional[OSError] = None
        for fd in fds:
            try:
                os.close(fd)
            except OSError as e:  # every file is closed; the first failure is reported
                error = error or e
        if error is not None:
            raise disk_error(error, self.area.root.parent, "writing a bucket")
        if complete and self.position != self.total:
            raise NetworkProtocol(f"The bucket payload has {self.position} bytes instead of {self.total}")


def instances_of(buckets: Iterable[Bucket]) -> Dict[int, Set[str]]:
    """Bucket index -> the instances it carries bytes of."""
    return {i: {c.instance_id for c in b.chunks} for i, b in enumerate(buckets)}
