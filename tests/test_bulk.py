"""File-backed bulk columns: the same bytes back, by slice, and nothing left on disk."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from cleanroom.matching.bulk import ColumnAppender, ColumnBuffer, FileBytes, whole


def test_an_appender_moves_to_a_file_past_its_limit_and_reads_back_every_slice(
    tmp_path: Path,
) -> None:
    data = os.urandom(10_000)
    small = ColumnAppender(spill_dir=tmp_path, memory_bytes=len(data))
    big = ColumnAppender(spill_dir=tmp_path, memory_bytes=4_000)
    for start in range(0, len(data), 999):
        small.append(data[start : start + 999])
        big.append(data[start : start + 999])
    kept, spilled = small.finish(), big.finish()
    assert kept == data and isinstance(kept, bytes)
    assert isinstance(spilled, FileBytes)
    assert len(spilled) == len(data)
    for start, stop in [(0, 32), (9_990, 10_000), (4_000, 4_001), (5, 5), (9_000, 20_000)]:
        assert spilled[start:stop] == data[start:stop]
    assert spilled[-3:] == data[-3:] and spilled[7] == data[7] and spilled[-1] == data[-1]
    assert whole(spilled) == data and whole(kept) is kept
    assert list(tmp_path.iterdir()) == []  # unnamed: nothing to clean up after a crash
    with pytest.raises(IndexError):
        spilled[len(data)]
    with pytest.raises(ValueError, match="contiguous"):
        spilled[::2]
    assert repr(spilled) == "FileBytes(10000 bytes)"


def test_a_buffer_filled_out_of_order_is_the_column_and_refuses_overruns(tmp_path: Path) -> None:
    data = os.urandom(8 * 512)
    for limit in (len(data), 0):
        buffer = ColumnBuffer(len(data), spill_dir=tmp_path, memory_bytes=limit)
        for start in reversed(range(0, len(data), 512)):
            buffer.write_at(start, data[start : start + 512])
        with pytest.raises(ValueError, match="overrun"):
            buffer.write_at(len(data) - 1, b"xx")
        column = buffer.finish()
        assert isinstance(column, FileBytes if limit == 0 else bytes)
        assert whole(column) == data


def _file_at(fd: int) -> int | None:
    """The inode open at ``fd``, if any (a reused number shows another inode)."""
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def test_a_closed_or_collected_column_lets_its_file_go(tmp_path: Path) -> None:
    appender = ColumnAppender(spill_dir=tmp_path, memory_bytes=0)
    appender.append(b"x" * 64)
    column = appender.finish()
    assert isinstance(column, FileBytes)
    fd = column._fd
    inode = _file_at(fd)
    assert inode is not None
    column.close()
    with pytest.raises(ValueError, match="closed"):
        column[0:1]
    assert _file_at(fd) != inode
    collected = ColumnBuffer(64, spill_dir=tmp_path, memory_bytes=0).finish()
    assert isinstance(collected, FileBytes)
    fd = collected._fd
    inode = _file_at(fd)
    assert inode is not None
    del collected
    gc.collect()
    assert _file_at(fd) != inode
