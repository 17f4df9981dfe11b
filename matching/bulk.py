"""A set's bulk columns (digests, points, row indices, per-row results), in memory while
small, else in a file.

The partner's whole set is the one thing its process would otherwise hold: 72 bytes an
identifier once prepared (a digest, a point, a row index), 7.2 GB at 100M. Every reader
of those columns takes them slice by slice (a chunk for a worker, a chunk for the wire,
a window of rows), so a column past ``MEMORY_BYTES`` is written to an unnamed temporary
file and read back by ``os.pread``; the process holds only the slices in flight. Byte
columns come back as ``bytes``; numeric ones (``ArrayAppender``) as numpy arrays.

The file is unnamed (``tempfile.TemporaryFile``: ``O_TMPFILE`` on Linux): nothing is
left behind if the process dies, and it goes when the column is garbage collected or
``close``\\ d. It holds what the process computed from the partner's own file (SHA-256
digests, hash-to-curve points: no key material), in ``spill_dir`` (the system's
temporary directory by default) with the file mode ``TemporaryFile`` gives, 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np
import numpy.typing as npt

#: A column up to this many bytes stays in memory.
MEMORY_BYTES = 64 * 1024 * 1024


class FileBytes:
    """Read-only bytes in a temporary file: ``len`` and contiguous slices, as ``bytes``."""

    __slots__ = ("__weakref__", "_closer", "_fd", "_length")

    def __init__(self, file: BinaryIO, length: int) -> None:
        self._fd = file.fileno()
        self._length = length
        self._closer = weakref.finalize(self, file.close)

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, key: slice) -> bytes: ...
    @overload
    def __getitem__(self, key: int) -> int: ...
    def __getitem__(self, key: slice | int) -> bytes | int:
        if isinstance(key, int):
            index = key + self._length if key < 0 else key
            if not 0 <= index < self._length:
                raise IndexError(key)
            return self._read(index, index + 1)[0]
        start, stop, step = key.indices(self._length)
        if step != 1:
            raise ValueError("file-backed bytes are read in contiguous slices only")
        return self._read(start, stop)

    def _read(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        if not self._closer.alive:
            raise ValueError("read of closed file-backed bytes")
        data = os.pread(self._fd, stop - start, start)
        while len(data) < stop - start:  # a short read is legal; a zero one is damage
            more = os.pread(self._fd, stop - start - len(data), start + len(data))
            if not more:
                raise OSError(f"file-backed bytes truncated at {start + len(data)} of {stop}")
            data += more
        return data

    def tobytes(self) -> bytes:
        """Everything, in memory (for the few callers that need a whole column)."""
        return self._read(0, self._length)

    def close(self) -> None:
        self._closer()

    def __repr__(self) -> str:
        return f"FileBytes({self._length} bytes)"


#: A bulk column as its readers see it.
ByteColumn = bytes | FileBytes


class FileArray:
    """A one-dimensional numeric array in a temporary file (``FileBytes``): ``len`` and
    contiguous slices, as read-only numpy arrays. What a large column's row indices or
    per-row flags become, so that their readers, which take them a window at a time, see
    the same slices as of an in-memory array."""

    __slots__ = ("_bytes", "dtype")

    def __init__(self, data: FileBytes, dtype: np.dtype) -> None:
        if len(data) % dtype.itemsize:
            raise ValueError(f"{len(data)} bytes are not whole {dtype} values")
        self._bytes = data
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self._bytes) // self.dtype.itemsize

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("a file-backed array is read in contiguous slices only")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("a file-backed array is read in contiguous slices only")
        size = self.dtype.itemsize
        return np.frombuffer(self._bytes[start * size : max(start, stop) * size], self.dtype)

    def whole(self) -> np.ndarray:
        """Everything, in memory (for the few callers that need a whole column)."""
        return np.frombuffer(self._bytes.tobytes(), self.dtype)

    def close(self) -> None:
        self._bytes.close()

    def __repr__(self) -> str:
        return f"FileArray({len(self)} x {self.dtype})"


#: A numeric column as its readers see it: an array while small, else in a file.
ArrayColumn = np.ndarray | FileArray


def whole_array(column: ArrayColumn) -> np.ndarray:
    """The column as one array (a copy for a file-backed one)."""
    return column.whole() if isinstance(column, FileArray) else column


def whole(column: ByteColumn) -> bytes:
    """The column as one ``bytes`` (a copy for a file-backed one)."""
    return column.tobytes() if isinstance(column, FileBytes) else column


def fixed_rows(column: ByteColumn, index: np.ndarray, width: int) -> np.ndarray:
    """Rows ``index`` (any order, repeats allowed) of a column of ``width``-byte rows, as
    uint8 ``(len(index), width)``; a file-backed column is read row by row in position
    order, never whole."""
    index = np.asarray(index, dtype=np.int64)
    if isinstance(column, bytes):
        return np.frombuffer(column, dtype=np.uint8).reshape(-1, width)[index]
    rows = len(column) // width
    if len(index) and (index.min() < 0 or index.max() >= rows):
        raise IndexError(f"row {int(index.max())} of a column of {rows} rows")
    out = np.empty((len(index), width), dtype=np.uint8)
    order = np.argsort(index, kind="stable")
    for at in order:
        start = int(index[at]) * width
        out[at] = np.frombuffer(column[start : start + width], dtype=np.uint8)
    return out


class ThreadSteps:
    """Threads' steps on files that ``close`` (from the event loop) removes: a step begun
    after ``close`` is refused (``CancelledError``), and a ``close`` during steps removes
    the files when the last of them ends: never under a step, never blocking its caller."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove = remove
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise CancelledError("closed: no further step")
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                last = self._closed and self._running == 0
            if last:
                self._remove()

    def close(self) -> None:
        """Remove the files now, or when the running steps end (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._running:
                return
        self._remove()


def _temporary(spill_dir: Path | None) -> BinaryIO:
    if spill_dir is not None:
        spill_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=spill_dir)


class ColumnAppender:
    """Build a column chunk by chunk; it moves to a file once past ``memory_bytes``."""

    def __init__(self, *, spill_dir: Path | None = None, memory_bytes: int | None = None) -> None:
        self._limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._spill_dir = spill_dir
        self._chunks: list[bytes] = []
        self._length = 0
        self._file: BinaryIO | None = None

    def append(self, data: bytes) -> None:
        if self._file is None and self._length + len(data) > self._limit:
            self._file = _temporary(self._spill_dir)
            for chunk in self._chunks:
                self._file.write(chunk)
            self._chunks.clear()
        if self._file is not None:
            self._file.write(data)
        else:
            self._chunks.append(data)
        self._length += len(data)

    def finish(self) -> ByteColumn:
        if self._file is None:
            column = b"".join(self._chunks)
            self._chunks.clear()
            return column
        self._file.flush()
        file, self._file = self._file, None
        return FileBytes(file, self._length)


class ArrayAppender:
    """Build a numeric column chunk by chunk: an array while it is at most ``memory_bytes``
    (``MEMORY_BYTES`` by default), else a ``FileArray``."""

    def __init__(
        self,
        dtype: npt.DTypeLike,
        *,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self._bytes = ColumnAppender(spill_dir=spill_dir, memory_bytes=memory_bytes)

    def append(self, values: np.ndarray) -> None:
        self._bytes.append(np.ascontiguousarray(values, dtype=self.dtype).tobytes())

    def finish(self) -> ArrayColumn:
        column = self._bytes.finish()
        if isinstance(column, FileBytes):
            return FileArray(column, self.dtype)
        return np.frombuffer(column, self.dtype)


class ColumnBuffer:
    """A column of known size filled at offsets, in any order (results as they finish)."""

    def __init__(
        self, size: int, *, spill_dir: Path | None = None, memory_bytes: int | None = None
    ) -> None:
        limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._size = size
        self._memory: bytearray | None = bytearray(size) if size <= limit else None
        self._file: BinaryIO | None = None
        if self._memory is None:
            self._file = _temporary(spill_dir)
            self._file.truncate(size)

    def write_at(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > self._size:
            raise ValueError(f"{len(data)} bytes at {offset} overrun a column of {self._size}")
        if self._memory is not None:
            self._memory[offset : offset + len(data)] = data
            return
        assert self._file is not None
        written = 0
        while written < len(data):
            written += os.pwrite(self._file.fileno(), data[written:], offset + written)

    def finish(self) -> ByteColumn:
        if self._memory is not None:
            column = bytes(self._memory)
            self._memory = None
            return column
        assert self._file is not None
        file, self._file = self._file, None
        return FileBytes(file, self._size)

    def abort(self) -> None:
        """Drop what was written (the column will not be used)."""
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None
