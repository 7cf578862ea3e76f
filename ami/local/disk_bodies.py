"""The emulator's S3 object bodies on disk, one file each, as S3 keeps them: not in its memory.

moto keeps every object's bytes in a `SpooledTemporaryFile` that stays in memory up to 5 MiB, so
every photo ever uploaded would stay in the emulator's memory. Its own setting for that size
(`MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`) only trades the memory for an open temporary file per object,
with its buffer: 3,000 uploads took 3,000 file descriptors and more memory than before.
A `DiskBody` has the file interface moto uses (seek, read, write, truncate, close) over a file
it opens only for the call, so an object costs a file on disk and two attributes in memory.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


class DiskBody:
    """The bytes of one object, in a file of its own; `close` deletes the file."""

    __slots__ = ("path", "position")

    def __init__(self, directory: Path) -> None:
        # A str, not a Path: a Path keeps its parts too, and there is one of these per object.
        self.path: str | None = os.path.join(directory, uuid.uuid4().hex)
        with open(self.path, "xb"):
            pass
        self.position = 0

    def _open_path(self) -> str:
        if self.path is None:
            raise ValueError("I/O operation on closed file.")  # as a closed file says it
        return self.path

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self.position = offset
        elif whence == os.SEEK_CUR:
            self.position += offset
        else:
            self.position = os.path.getsize(self._open_path()) + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        with open(self._open_path(), "rb") as file:
            file.seek(self.position)
            data = file.read(size)
        self.position += len(data)
        return data

    def write(self, data: bytes) -> int:
        with open(self._open_path(), "r+b") as file:
            file.seek(self.position)
            written = file.write(data)
        self.position += written
        return written

    def truncate(self, size: int | None = None) -> int:
        size = self.position if size is None else size
        os.truncate(self._open_path(), size)
        return size

    def close(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None

    @property
    def closed(self) -> bool:
        return self.path is None


class DiskBodies:
    """Stands in for the `tempfile` module in moto's S3 models: its `SpooledTemporaryFile` makes
    a `DiskBody` in `directory` whatever the size."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def SpooledTemporaryFile(self, *args: object, **kwargs: object) -> DiskBody:  # noqa: N802
        return DiskBody(self.directory)
