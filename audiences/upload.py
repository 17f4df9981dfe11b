"""Typed messages of the brand's uploads, audiences and conversions (the domain side of the wire).

The uploader hashes on its own machine; these carry only SHA-256 digests.
``cleanroom.proto.serde`` converts them to and from protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DIGEST_LEN = 32  # SHA-256: every identifier crosses the wire as this digest


@dataclass(frozen=True, slots=True)
class UploadHeader:
    name: str
    id_types: tuple[str, ...]  # one per identifier column, priority order
    replace: bool = False


@dataclass(frozen=True, slots=True)
class ColumnDigests:
    column: int  # index into UploadHeader.id_types
    digests: bytes = field(repr=False)  # concatenated 32-byte digests
    # One byte per digest: its record's seed label (1 seed, 0 not); empty: all seeds.
    labels: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class UploadChunk:
    seq: int
    row_count: int
    columns: tuple[ColumnDigests, ...] = field(default_factory=tuple)
    seeds: int | None = None  # records labelled seed; None: every record is a seed


@dataclass(frozen=True, slots=True)
class UploadEnd:
    chunk_count: int
    row_count: int


@dataclass(frozen=True)
class ConversionRows:
    """One chunk of a conversions upload: per row the customer digest, day and
    value; per identifier column the rows that have one and their digests."""

    seq: int
    customers: bytes  # 32-byte SHA-256 digests, one per row
    days: np.ndarray  # int32 per row: days since 1970-01-01 UTC
    values: np.ndarray  # float64 per row
    columns: tuple[tuple[int, bytes, bytes], ...]  # (column, present per row, digests)
