"""What a PSI session sent, kept for resumption without holding it in memory.

A session that may resume must be able to send again every chunk the peer did not
acknowledge. ``Journal`` is the list of sent chunks: the most recent ones in memory
(what the live stream is about to send), every payload appended to a file under a
temporary directory, so a resumed stream reads the older ones back. The file holds
only what crossed the wire (blinded values), and goes with ``close``. A small session
never opens a file.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from cleanroom.matching.messages import PointChunk, ValueChunk
from cleanroom.matching.semijoin import spill_directory

M = TypeVar("M")

# Payload bytes a journal keeps in memory before it starts writing to disk, and the
# number of recent messages it keeps in memory once it does (the stream's read-ahead).
MEMORY_BYTES = 64 * 1024 * 1024
RECENT = 64


class Journal(Generic[M]):
    """Sent messages by sequence number (``append``, ``len``, ``[i]``), spilled to a file
    past ``memory_bytes`` of payload."""

    def __init__(
        self,
        make: Callable[[int, bytes], M],
        payload: Callable[[M], bytes],
        *,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
        name: str = "sent",
    ) -> None:
        self._make = make
        self._payload = payload
        self._spill_dir = spill_dir
        self._limit = MEMORY_BYTES if memory_bytes is None else memory_bytes
        self._name = name
        self._held: OrderedDict[int, M] = OrderedDict()
        self._held_bytes = 0
        self._offsets: list[int] = [0]
        self._dir: Path | None = None
        self._file: Path | None = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def next_message(self, data: bytes) -> M:
        """Append the next message, carrying ``data``; returns it."""
        msg = self._make(len(self), data)
        self.append(msg)
        return msg

    def append(self, msg: M) -> None:
        data = self._payload(msg)
        seq = len(self)
        self._offsets.append(self._offsets[-1] + len(data))
        if self._file is None and self._held_bytes + len(data) > self._limit:
            self._spill()
        if self._file is not None:
            with self._file.open("ab") as fh:
                fh.write(data)
        self._held[seq] = msg
        self._held_bytes += len(data)
        if self._file is not None:
            while len(self._held) > RECENT:
                _, old = self._held.popitem(last=False)
                self._held_bytes -= len(self._payload(old))

    def __getitem__(self, seq: int) -> M:
        if not 0 <= seq < len(self):
            raise IndexError(seq)
        held = self._held.get(seq)
        if held is not None:
            return held
        assert self._file is not None
        start, end = self._offsets[seq], self._offsets[seq + 1]
        with self._file.open("rb") as fh:
            fh.seek(start)
            return self._make(seq, fh.read(end - start))

    def _spill(self) -> None:
        """Start the file with every message held so far."""
        self._dir = spill_directory(self._spill_dir, "journal-")
        self._file = self._dir / f"{self._name}.bin"
        fd = os.open(self._file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            for msg in self._held.values():
                fh.write(self._payload(msg))

    def close(self) -> None:
        """Forget everything (the session ended); the file goes."""
        self._held.clear()
        self._held_bytes = 0
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


# The PSI chunks a journal holds: how to make one from its payload, and back.
def point_chunk(seq: int, data: bytes) -> PointChunk:
    return PointChunk(seq=seq, points=data)


def points_of(msg: PointChunk) -> bytes:
    return msg.points


def value_chunk(seq: int, data: bytes) -> ValueChunk:
    return ValueChunk(seq=seq, values=data)


def values_of(msg: ValueChunk) -> bytes:
    return msg.values
