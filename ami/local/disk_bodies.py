"""The emulator's S3 object bodies on disk, one file each, as S3 keeps them: not in its memory.

moto keeps every object's bytes in a `SpooledTemporaryFile` that stays in memory up to 5 MiB, so
every photo ever uploaded would stay in the emulator's memory. Its own setting for that size
(`MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`) only trades the memory for an open temporary file per object,
with its buffer: 3,000 uploads took 3,000 file descriptors and more memory than before.
A `DiskBody` has the file interface moto uses (seek, read, write, truncate, close) over a file
it opens only for the call, so an object costs a file on disk and three attributes in memory.
The file is made by the first write, and named from a counter: a put opens its file once, and
draws no random bytes for its name.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path


class DiskBody:
    """The bytes of one object, in a file of its own (made by the first write or a truncation
    to a non-zero size; until then the body is empty); `close` deletes the file."""

    __slots__ = ("made", "path", "position")

    def __init__(self, path: str) -> None:
        # A str, not a Path: a Path keeps its parts too, and there is one of these per object.
        self.path: str | None = path
        self.position = 0
        self.made = False

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
            path = self._open_path()
            self.position = (os.path.getsize(path) if self.made else 0) + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        path = self._open_path()
        if not self.made:
            return b""
        with open(path, "rb") as file:
            file.seek(self.position)
            data = file.read(size)
        self.position += len(data)
        return data

    def write(self, data: bytes) -> int:
        with open(self._open_path(), "r+b" if self.made else "xb") as file:
            self.made = True
            file.seek(self.position)
            written = file.write(data)
        self.position += written
        return written

    def truncate(self, size: int | None = None) -> int:
        path = self._open_path()
        size = self.position if size is None else size
        if self.made:
            os.truncate(path, size)
        elif size:
            with open(path, "xb") as file:
                self.made = True
                file.truncate(size)
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
        # The folder is this process's own, so a count names its files uniquely.
        self.numbers = itertools.count()

    def SpooledTemporaryFile(self, *args: object, **kwargs: object) -> DiskBody:  # noqa: N802
        return DiskBody(os.path.join(self.directory, f"{next(self.numbers):x}"))
