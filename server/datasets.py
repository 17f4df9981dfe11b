"""Stored sets as Parquet datasets partitioned by identifier type and digest bucket.

Layout of one set (an audience today)::

    <root>/<id>/_manifest.json
    <root>/<id>/id_type=phone/bucket=007/part-0.parquet
    <root>/<id>/id_type=email/bucket=000/part-0.parquet

Rules the writers and readers keep:

- A bucket is the leading ``bits`` bits of the digest (``semijoin.bucket_of``), with
  ``bits`` chosen per identifier type from its size, so a bucket is a unit of work that
  fits in memory and an equal digest is always in the same bucket. The identifier type
  is in the path, not in the part files, so the directory is also a plain Hive-style
  dataset (``pyarrow.parquet.read_table(path)`` reads it; the manifest's leading ``_``
  keeps such readers off it); this module's readers put ``id_type`` back.
- ``DatasetWriter`` writes into a temporary directory beside the final one and makes it
  visible by one ``rename`` after the manifest, written last, is on disk: a reader sees
  the whole set or nothing, and a directory without a manifest is never a set.
- The manifest lists every part with its row count; readers go by it, not by listing
  directories, so a stray file is never read.
- A set stored by an earlier release is one Parquet file; ``open_dataset`` reads it as
  a set of one part, so nothing has to be migrated.
- A set may also hold named side tables, not partitioned (a conversion set's events,
  which are per conversion, not per identifier): ``<root>/<id>/_<name>/part-0.parquet``,
  listed in the manifest's ``tables``. The leading ``_`` keeps Hive-style readers off
  them as off the manifest; this module's part readers never see them.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cleanroom.server.files import AbortsUnlessCommitted, fsync_path

MANIFEST = "_manifest.json"
FORMAT = "cleanroom.dataset"
VERSION = 1


class DatasetError(Exception):
    """A stored set is missing or damaged (a message for the operator, never the client)."""


@dataclass(frozen=True)
class Part:
    """One part file of a set: its identifier type, bucket, path and row count."""

    id_type: str | None  # None: a single-file set of an earlier release (any type)
    bucket: int
    path: Path
    rows: int


@dataclass(frozen=True)
class Dataset:
    """A stored set, for reading part by part."""

    path: Path
    parts: tuple[Part, ...]
    names: tuple[str, ...]  # the columns every part has
    bits: dict[str, int]  # bucket bits per identifier type (empty for a single file)
    tables: dict[str, Part] = field(default_factory=dict)  # side tables by name

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def parts_of(self, id_type: str) -> list[Part]:
        """The parts holding ``id_type`` (a single-file set's one part holds every type)."""
        return [p for p in self.parts if p.id_type in (id_type, None)]

    def batches(
        self, columns: Sequence[str], *, batch_rows: int = 1 << 16
    ) -> Iterator[pa.RecordBatch]:
        """The columns, a batch of at most ``batch_rows`` rows at a time, part by part
        in manifest order."""
        for part in self.parts:
            stored = _stored_columns(part, columns)
            for batch in pq.ParquetFile(part.path).iter_batches(
                batch_size=batch_rows, columns=stored
            ):
                yield pa.RecordBatch.from_arrays(
                    _with_type(part, columns, stored, batch.columns, batch.num_rows),
                    names=list(columns),
                )

    def read(self, part: Part, columns: Sequence[str]) -> pa.Table:
        stored = _stored_columns(part, columns)
        table = pq.read_table(part.path, columns=stored)
        return pa.Table.from_arrays(
            _with_type(part, columns, stored, table.columns, table.num_rows),
            names=list(columns),
        )

    def read_all(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole set as one table, in manifest order (small sets, tests, tools)."""
        wanted = list(columns or self.names)
        return pa.concat_tables([self.read(p, wanted) for p in self.parts])

    def side_table(self, name: str) -> pa.Table:
        """A side table, whole (small sets, tests, tools)."""
        return pq.read_table(self._side_path(name))

    def side_file(self, name: str) -> pq.ParquetFile:
        """A side table's file, for reading in batches (``iter_batches``); close it."""
        return pq.ParquetFile(self._side_path(name))

    def _side_path(self, name: str) -> Path:
        part = self.tables.get(name)
        if part is None:
            raise DatasetError(f"the set at {self.path} has no {name!r} table")
        return part.path


def open_dataset(path: Path) -> Dataset:
    """The set stored at ``path``: a partitioned directory, or one Parquet file."""
    if path.is_file():
        meta = pq.ParquetFile(path)
        names = tuple(meta.schema_arrow.names)
        return Dataset(path, (Part(None, 0, path, meta.metadata.num_rows),), names, {})
    manifest = path / MANIFEST
    try:
        doc = json.loads(manifest.read_text())
    except FileNotFoundError as exc:
        raise DatasetError(f"no stored set at {path} (no {MANIFEST})") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(f"the manifest of {path} cannot be read: {exc}") from exc
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise DatasetError(
            f"{manifest} is not a {FORMAT} manifest of version {VERSION}"
            f" (format {doc.get('format')!r}, version {doc.get('version')!r})"
        )
    parts = tuple(
        Part(p["id_type"], int(p["bucket"]), path / p["path"], int(p["rows"])) for p in doc["parts"]
    )
    tables = {
        name: Part(None, 0, path / t["path"], int(t["rows"]))
        for name, t in doc.get("tables", {}).items()
    }
    bits = {k: int(v) for k, v in doc["bits"].items()}
    return Dataset(path, parts, tuple(doc["columns"]), bits, tables)


def _stored_columns(part: Part, columns: Sequence[str]) -> list[str]:
    """What to read from the part's file: ``id_type`` is its path's in a partitioned set."""
    if part.id_type is None:
        return list(columns)
    return [c for c in columns if c != "id_type"]


def _with_type(
    part: Part, columns: Sequence[str], stored: list[str], arrays: Sequence[object], rows: int
) -> list[object]:
    by_name = dict(zip(stored, arrays, strict=True))
    if part.id_type is not None:
        by_name["id_type"] = pa.array([part.id_type] * rows, pa.string())
    return [by_name[c] for c in columns]


def remove_stored(path: Path) -> None:
    """Delete a stored set, partitioned or a single file (missing is fine)."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def bucket_directory(id_type: str, bucket: int, bits: int) -> str:
    width = len(str((1 << bits) - 1))
    return f"id_type={id_type}/bucket={bucket:0{width}d}"


class DatasetWriter(AbortsUnlessCommitted):
    """Writes a partitioned set part by part; it appears at ``path`` only on commit."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        if "id_type" not in schema.names:
            raise ValueError("a partitioned set needs an id_type column")
        self.path = path
        self.schema = schema
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.tmp_path.mkdir()
        self._parts: list[Part] = []  # paths relative to the set's directory
        self._bits: dict[str, int] = {}
        self._parts_in: Counter[str] = Counter()  # parts written per bucket directory
        self._tables: dict[str, tuple[pq.ParquetWriter, Path]] = {}
        self._table_rows: Counter[str] = Counter()
        self._open = True

    def write(self, id_type: str, bucket: int, bits: int, table: pa.Table) -> None:
        """Add ``table`` (rows of ``id_type`` whose digests are in ``bucket`` of ``bits``
        leading bits) as the next part of that bucket."""
        if not self._open:
            raise ValueError("the writer is closed")
        if self._bits.setdefault(id_type, bits) != bits:
            raise ValueError(f"{id_type} is bucketed by {self._bits[id_type]} bits, not {bits}")
        if not 0 <= bucket < 1 << bits:
            raise ValueError(f"bucket {bucket} is not one of {1 << bits}")
        if table.num_rows == 0:
            return
        directory = bucket_directory(id_type, bucket, bits)
        relative = Path(directory, f"part-{self._parts_in[directory]}.parquet")
        self._parts_in[directory] += 1
        (self.tmp_path / directory).mkdir(parents=True, exist_ok=True)
        stored = table.cast(self.schema).drop_columns(["id_type"])
        pq.write_table(stored, self.tmp_path / relative, compression="zstd")
        self._parts.append(Part(id_type, bucket, relative, table.num_rows))

    def append_table(self, name: str, table: pa.Table) -> None:
        """Append ``table`` to the side table ``name`` (one file, a row group a call)."""
        if not self._open:
            raise ValueError("the writer is closed")
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a side table name")
        if name not in self._tables:
            relative = Path(f"_{name}", "part-0.parquet")
            (self.tmp_path / relative.parent).mkdir()
            writer = pq.ParquetWriter(self.tmp_path / relative, table.schema, compression="zstd")
            self._tables[name] = (writer, relative)
        self._tables[name][0].write_table(table)
        self._table_rows[name] += table.num_rows

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self._parts)

    def _close_tables(self) -> None:
        for writer, _ in self._tables.values():
            writer.close()

    def commit(self) -> Path:
        """Write the manifest, make everything durable, then rename into place."""
        if not self._open:
            raise ValueError("the writer is closed")
        self._open = False
        self._close_tables()
        tables = {
            name: {"path": str(relative), "rows": self._table_rows[name]}
            for name, (_, relative) in self._tables.items()
        }
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "columns": self.schema.names,
            "bits": self._bits,
            "rows": self.rows,
            "parts": [
                {"id_type": p.id_type, "bucket": p.bucket, "path": str(p.path), "rows": p.rows}
                for p in self._parts
            ],
            "tables": tables,
        }
        files = [p.path for p in self._parts] + [relative for _, relative in self._tables.values()]
        for relative in files:
            fsync_path(self.tmp_path / relative)
        target = self.tmp_path / MANIFEST
        target.write_text(json.dumps(manifest, indent=1))
        fsync_path(target)
        # Every bucket directory and every id_type directory, once each, then the set's.
        buckets = {part.path.parent for part in self._parts}
        sides = {relative.parent for _, relative in self._tables.values()}
        for directory in sorted(buckets | {b.parent for b in buckets} | sides | {Path()}):
            fsync_path(self.tmp_path / directory)
        os.replace(self.tmp_path, self.path)
        fsync_path(self.path.parent)
        return self.path

    def is_open(self) -> bool:
        return self._open

    def abort(self) -> None:
        if self._open:
            self._close_tables()
        self._open = False
        shutil.rmtree(self.tmp_path, ignore_errors=True)
