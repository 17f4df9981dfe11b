"""File-backed bulk columns: the same bytes back, by slice, and nothing left on disk."""

from __future__ import annotations

import concurrent.futures
import gc
import os
from pathlib import Path

import numpy as np
import pytest

from cleanroom.matching.bulk import (
    ArrayAppender,
    ColumnAppender,
    ColumnBuffer,
    FileArray,
    FileBytes,
    ThreadSteps,
    fixed_rows,
    whole,
    whole_array,
)


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


@pytest.mark.parametrize("dtype", ["<i8", "i1"])
def test_an_array_column_reads_back_the_same_slices_in_memory_or_in_a_file(
    tmp_path: Path, dtype: str
) -> None:
    values = np.random.default_rng(4).integers(-100, 100, 5_000).astype(dtype)
    kept = ArrayAppender(dtype, spill_dir=tmp_path, memory_bytes=values.nbytes)
    spilled = ArrayAppender(dtype, spill_dir=tmp_path, memory_bytes=values.nbytes // 3)
    for start in range(0, len(values), 777):
        kept.append(values[start : start + 777])
        spilled.append(values[start : start + 777].astype(np.int64))  # cast to the column's
    in_memory, in_file = kept.finish(), spilled.finish()
    assert isinstance(in_memory, np.ndarray) and isinstance(in_file, FileArray)
    assert len(in_file) == len(values) and in_file.dtype == np.dtype(dtype)
    for start, stop in [(0, 1), (4_990, 5_000), (1_000, 3_333), (7, 7), (4_000, 9_000), (-4, None)]:
        np.testing.assert_array_equal(in_file[start:stop], values[start:stop])
        np.testing.assert_array_equal(in_memory[start:stop], values[start:stop])
    np.testing.assert_array_equal(whole_array(in_file), values)
    assert whole_array(in_memory) is in_memory
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="contiguous"):
        in_file[::2]
    with pytest.raises(TypeError, match="contiguous"):
        in_file[3]  # type: ignore[index]
    assert repr(in_file) == f"FileArray(5000 x {np.dtype(dtype)})"
    in_file.close()
    with pytest.raises(ValueError, match="closed"):
        in_file[0:1]


def test_an_empty_array_column_is_an_empty_array() -> None:
    column = ArrayAppender(np.int64, memory_bytes=0).finish()
    assert isinstance(column, np.ndarray) and column.dtype == np.int64 and len(column) == 0


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


@pytest.mark.parametrize("memory_bytes", [None, 0])
def test_fixed_rows_gathers_rows_in_any_order_from_memory_or_a_file(
    memory_bytes: int | None, tmp_path: Path
) -> None:
    rows = np.random.default_rng(3).integers(0, 256, (500, 7), dtype=np.uint8)
    appender = ColumnAppender(spill_dir=tmp_path, memory_bytes=memory_bytes)
    appender.append(rows.tobytes())
    column = appender.finish()
    assert isinstance(column, FileBytes) == (memory_bytes == 0)
    index = np.asarray([499, 0, 17, 17, 250, 3])
    assert np.array_equal(fixed_rows(column, index, 7), rows[index])
    assert fixed_rows(column, np.zeros(0, np.int64), 7).shape == (0, 7)
    if isinstance(column, FileBytes):
        with pytest.raises(IndexError):
            fixed_rows(column, np.asarray([500]), 7)


def test_thread_steps_remove_the_files_after_the_last_running_step() -> None:
    removed: list[int] = []
    steps = ThreadSteps(lambda: removed.append(1))
    with steps.step(), steps.step():
        steps.close()
        assert removed == []  # two steps still run
    assert removed == [1]
    with pytest.raises(concurrent.futures.CancelledError), steps.step():
        pass
    steps.close()
    assert removed == [1]  # once
    idle = ThreadSteps(lambda: removed.append(2))
    idle.close()
    assert removed == [1, 2]  # no step running: at once
