"""Audience uploads and the stored brand sets (transport-free service).

An upload streams digests into a staging file; ``finish`` deduplicates per
identifier type, hashes every distinct digest to the curve once (DESIGN.md
§12: the points are deterministic, so sessions never recompute them), writes
the final Parquet file atomically and only then records the audience. A
stream that breaks, or a chunk that is wrong, leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cleanroom.audiences.identifiers import ID_TYPES
from cleanroom.audiences.upload import DIGEST_LEN, UploadChunk, UploadEnd, UploadHeader
from cleanroom.matching.brand import StoredPoints
from cleanroom.matching.hash_to_curve import hash_to_curve_batch
from cleanroom.matching.kkrt import brand_items
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import bucket_bits, bucket_groups, bucket_of
from cleanroom.matching.workers import CryptoPool, dst_for
from cleanroom.proto.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ProtocolError,
)
from cleanroom.server.files import AtomicParquetWriter
from cleanroom.server.store import AudienceRecord, AuditEntry, Principal, Role, SqlStore

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STAGING_SCHEMA = pa.schema(
    [("id_type", pa.string()), ("digest", pa.binary(DIGEST_LEN)), ("label", pa.uint8())]
)
AUDIENCE_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("digest", pa.binary(DIGEST_LEN)),
        ("point", pa.binary(POINT_LEN)),
        ("label", pa.uint8()),  # 1: some record holding the identifier is a seed member
    ]
)
H2C_BATCH = 4096


def fixed_binary_to_numpy(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """A fixed-size-binary Arrow column as a numpy ``S{width}`` array (one copy)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary(width))
    if column.null_count:
        raise ValueError("unexpected nulls in a fixed-size binary column")
    data = column.buffers()[1]
    if data is None:
        return np.empty(0, dtype=f"S{width}")
    return np.frombuffer(data, dtype=f"S{width}", count=len(column), offset=column.offset * width)


def check_audience_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid audience name {name!r}: use 1-100 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


POINT_BATCH_ROWS = 1 << 16  # points read from a stored audience at a time


@dataclass
class AudienceService:
    store: SqlStore
    data_dir: Path
    pool: CryptoPool
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def audience_path(self, tenant_id: str, audience_id: str) -> Path:
        return self.data_dir / "audiences" / tenant_id / f"{audience_id}.parquet"

    def begin(self, principal: Principal, header: UploadHeader) -> AudienceUpload:
        if principal.role is not Role.ADMIN:
            raise PermissionDenied("uploading an audience needs an admin token")
        check_audience_name(header.name)
        if not header.id_types:
            raise InvalidInput("the upload header names no identifier columns")
        for t in header.id_types:
            if t not in ID_TYPES:
                raise InvalidInput(f"unknown identifier type {t!r}; expected one of {ID_TYPES}")
        if not header.replace and self.store.get_audience(principal.tenant_id, header.name):
            raise AlreadyExists(
                f"audience {header.name!r} already exists; upload with --replace to replace it"
            )
        return AudienceUpload(self, principal, header)

    def get(self, principal: Principal, name: str) -> AudienceRecord:
        record = self.store.get_audience(principal.tenant_id, name)
        if record is None:
            raise NotFound(f"no audience named {name!r} for this tenant")
        return record

    def stored_points(self, record: AudienceRecord) -> StoredPoints:
        """The audience's distinct curve points, to be read in batches (a session
        streams them in a random order without holding them whole)."""
        path = self.data_dir / record.path
        count = pq.ParquetFile(path).metadata.num_rows

        def batches() -> Iterator[bytes]:
            for batch in pq.ParquetFile(path).iter_batches(
                batch_size=POINT_BATCH_ROWS, columns=["point"]
            ):
                yield fixed_binary_to_numpy(batch.column(0), POINT_LEN).tobytes()

        return StoredPoints(count, batches)

    def load_items(self, record: AudienceRecord) -> np.ndarray:
        """The audience's KKRT item blocks, ``(n, 16)``: one per distinct (type, digest).

        Nothing of a session goes into them (one AES pass over the stored digests, done
        per session: the cuckoo keys and the code are the session's own)."""
        table = pq.read_table(self.data_dir / record.path, columns=["id_type", "digest"])
        types = table.column("id_type").to_numpy(zero_copy_only=False).astype(str)
        digests = fixed_binary_to_numpy(table.column("digest"), DIGEST_LEN)
        digests = digests.view(np.uint8).reshape(-1, DIGEST_LEN)
        kinds = list(dict.fromkeys(types.tolist()))
        return brand_items(kinds, [digests[types == t] for t in kinds])

    def load_labelled_points(self, record: AudienceRecord) -> tuple[np.ndarray, np.ndarray]:
        """The distinct curve points (``S32``) and each one's seed label (uint8 0/1).

        An identifier carries the highest label of the records that hold it;
        audiences stored before labels existed are all seeds.
        """
        path = self.data_dir / record.path
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=["point", *(["label"] if "label" in names else [])])
        points = fixed_binary_to_numpy(table.column("point"), POINT_LEN)
        if "label" not in names:
            return points, np.ones(len(points), dtype=np.uint8)
        return points, table.column("label").to_numpy().astype(np.uint8)


class AudienceUpload:
    """One upload in progress: header accepted, chunks arriving in order."""

    def __init__(
        self, service: AudienceService, principal: Principal, header: UploadHeader
    ) -> None:
        self.service = service
        self.principal = principal
        self.header = header
        self.audience_id = uuid.uuid4().hex
        final = service.audience_path(principal.tenant_id, self.audience_id)
        self._staging = AtomicParquetWriter(final.with_suffix(".staging.parquet"), STAGING_SCHEMA)
        self.next_seq = 0
        self.rows = 0
        self.seeds = 0
        self.identifiers = 0
        self._done = False

    def add_chunk(self, chunk: UploadChunk) -> None:
        if self._done:
            raise ProtocolError("the upload has already ended")
        if chunk.seq != self.next_seq:
            kind = "duplicate" if chunk.seq < self.next_seq else "out-of-order"
            raise ProtocolError(f"{kind} upload chunk {chunk.seq}: chunk {self.next_seq} is next")
        if chunk.row_count <= 0:
            raise InvalidInput(f"upload chunk {chunk.seq} carries no rows")
        seeds = chunk.row_count if chunk.seeds is None else chunk.seeds
        if not 0 <= seeds <= chunk.row_count:
            raise InvalidInput(
                f"upload chunk {chunk.seq} claims {seeds} seeds among {chunk.row_count} rows"
            )
        types: list[str] = []
        digests: list[bytes] = []
        labels: list[np.ndarray] = []
        seen: set[int] = set()
        for col in chunk.columns:
            if not 0 <= col.column < len(self.header.id_types) or col.column in seen:
                raise InvalidInput(f"upload chunk {chunk.seq} names column {col.column} badly")
            seen.add(col.column)
            if len(col.digests) % DIGEST_LEN:
                raise InvalidInput(
                    f"upload chunk {chunk.seq}, column {col.column}: {len(col.digests)} bytes"
                    " is not"
                    f" a whole number of {DIGEST_LEN}-byte SHA-256 digests"
                )
            n = len(col.digests) // DIGEST_LEN
            if n > chunk.row_count:
                raise InvalidInput(f"upload chunk {chunk.seq}: more digests than rows in a column")
            labels.append(_labels(chunk.seq, col.column, col.labels, n))
            types.extend([self.header.id_types[col.column]] * n)
            digests.append(col.digests)
        packed = b"".join(digests)
        if packed:
            arr = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(DIGEST_LEN), len(types), [None, pa.py_buffer(packed)]
            )
            self._staging.write(
                pa.table(
                    {
                        "id_type": pa.array(types, pa.string()),
                        "digest": arr,
                        "label": pa.array(np.concatenate(labels), pa.uint8()),
                    }
                )
            )
        self.next_seq += 1
        self.rows += chunk.row_count
        self.seeds += seeds
        self.identifiers += len(types)

    async def finish(self, end: UploadEnd) -> AudienceRecord:
        if self._done:
            raise ProtocolError("the upload has already ended")
        if end.chunk_count != self.next_seq or end.row_count != self.rows:
            raise ProtocolError(
                f"the upload ended claiming {end.chunk_count} chunks and {end.row_count} rows;"
                f" the brand node received {self.next_seq} chunks and {self.rows} rows"
            )
        if self.identifiers == 0:
            raise InvalidInput("the upload carries no identifiers; nothing was stored")
        self._done = True
        staging = self._staging.commit()
        final = AtomicParquetWriter(
            self.service.audience_path(self.principal.tenant_id, self.audience_id), AUDIENCE_SCHEMA
        )
        try:
            by_type: dict[str, int] = {}
            for id_type in dict.fromkeys(self.header.id_types):
                table = pq.read_table(
                    staging, filters=[("id_type", "=", id_type)], columns=["digest", "label"]
                )
                count = 0
                # Deduplicated and hashed one bucket of leading bits at a time (an equal
                # digest is always in the same bucket), so what is held beyond the type's
                # digests is a bucket's work; the buckets in order keep the file sorted.
                for digests, labels in _digest_buckets(table):
                    distinct, which = np.unique(digests, return_inverse=True)
                    # An identifier several records share is a seed if any of them is.
                    label = np.zeros(len(distinct), dtype=np.uint8)
                    np.maximum.at(label, which, labels)
                    points = await self._hash_to_curve(distinct.tobytes(), dst_for(id_type))
                    final.write(
                        pa.table(
                            {
                                "id_type": pa.array([id_type] * len(distinct), pa.string()),
                                "digest": _fixed(distinct.tobytes(), DIGEST_LEN),
                                "point": _fixed(points, POINT_LEN),
                                "label": pa.array(label, pa.uint8()),
                            }
                        )
                    )
                    count += len(distinct)
                if count:
                    by_type[id_type] = count
            path = final.commit()
        except BaseException:
            final.abort()
            raise
        finally:
            staging.unlink(missing_ok=True)
        elements = sum(by_type.values())
        record = AudienceRecord(
            audience_id=self.audience_id,
            tenant_id=self.principal.tenant_id,
            name=self.header.name,
            path=str(path.relative_to(self.service.data_dir)),
            records=self.rows,
            elements=elements,
            duplicates=self.identifiers - elements,
            elements_by_type=by_type,
            created_at=self.service.clock(),
            seeds=self.seeds,
        )
        try:
            previous = self.service.store.put_audience(record, replace_existing=self.header.replace)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if previous is not None:
            (self.service.data_dir / previous.path).unlink(missing_ok=True)
        self.service.store.audit(
            AuditEntry(
                self.principal.tenant_id,
                self.principal.role.value,
                "audience.upload",
                {
                    "audience": record.name,
                    "records": record.records,
                    "seeds": record.seeds,
                    "elements": elements,
                },
            )
        )
        return record

    async def _hash_to_curve(self, packed: bytes, dst: bytes) -> bytes:
        step = H2C_BATCH * DIGEST_LEN
        limit = asyncio.Semaphore(2 * self.service.pool.workers)

        async def one(part: bytes) -> bytes:
            async with limit:
                return await self.service.pool.run(hash_to_curve_batch, part, DIGEST_LEN, dst)

        parts = [packed[i : i + step] for i in range(0, len(packed), step)]
        return b"".join(await asyncio.gather(*(one(p) for p in parts)))

    def abort(self) -> None:
        """Drop everything this upload wrote (safe to call more than once)."""
        self._done = True
        self._staging.abort()
        self._staging.path.unlink(missing_ok=True)


def _digest_buckets(table: pa.Table) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A staged type's digests (``S32``) and labels, bucket by bucket of the digests'
    leading bits (buckets of about ``semijoin.BUCKET_BYTES``), in bucket order."""
    digests = fixed_binary_to_numpy(table.column("digest"), DIGEST_LEN)
    labels = table.column("label").to_numpy().astype(np.uint8)
    bits = bucket_bits(len(digests), DIGEST_LEN)
    if bits == 0:
        if len(digests):
            yield digests, labels
        return
    which = bucket_of(digests.view(np.uint8).reshape(-1, DIGEST_LEN), bits)
    for _b, idx in bucket_groups(which, 1 << bits):
        yield digests[idx], labels[idx]


def _labels(seq: int, column: int, packed: bytes, count: int) -> np.ndarray:
    """One 0/1 label per digest of a column (none sent: all seeds)."""
    if not packed:
        return np.ones(count, dtype=np.uint8)
    labels = np.frombuffer(packed, dtype=np.uint8)
    if len(labels) != count or labels.max(initial=0) > 1:
        raise InvalidInput(
            f"upload chunk {seq}, column {column}: {len(labels)} labels for {count} digests;"
            " send one 0/1 byte per digest"
        )
    return labels


def _fixed(packed: bytes, width: int) -> pa.FixedSizeBinaryArray:
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(packed) // width, [None, pa.py_buffer(packed)]
    )
