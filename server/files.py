"""Bulk files under the data directory, written atomically.

A writer streams to a temporary file in the destination's directory; only
``commit`` makes it visible, by fsync and rename (atomic on POSIX), then
fsyncs the directory so the rename itself survives a crash. A crash or an
exception before ``commit`` leaves no trace under the final name.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import pyarrow as pa
import pyarrow.parquet as pq

# Under the data directory: what uploads and large sessions keep on disk while they run
# (staged digests, journals, comparison buckets), each in a temporary directory of its
# own; emptied at start-up.
WORK_DIR = "work"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AbortsUnlessCommitted:
    """The atomic writers' context-manager protocol: a block left before ``commit``
    (an exception, a return) aborts, so nothing of the write remains."""

    def is_open(self) -> bool:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.is_open():
            self.abort()


class AtomicParquetWriter(AbortsUnlessCommitted):
    """Write a Parquet file in batches; it appears at ``path`` only on commit."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.tmp_path, schema, compression="zstd"
        )
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if self._writer is None:
            raise ValueError("the writer is closed")
        if isinstance(batch, pa.RecordBatch):
            self._writer.write_batch(batch)
        else:
            self._writer.write_table(batch)
        self.rows += batch.num_rows

    def commit(self) -> Path:
        if self._writer is None:
            raise ValueError("the writer is closed")
        self._writer.close()
        self._writer = None
        fsync_path(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        fsync_path(self.path.parent)
        return self.path

    def is_open(self) -> bool:
        return self._writer is not None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp_path.unlink(missing_ok=True)


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporaries (files, and the directories a partitioned set is written in)
    a crashed process left behind; returns how many."""
    removed = 0
    if root.exists():
        for tmp in list(root.rglob(".*.tmp")):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink(missing_ok=True)
            else:
                continue  # inside a directory removed already
            removed += 1
    return removed
