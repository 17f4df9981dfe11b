"""Audience uploads and the stored brand sets (transport-free service).

An upload stages digests by their leading byte under the work directory;
``finish`` deduplicates per identifier type and digest bucket, hashes every
distinct digest to the curve once (DESIGN.md §12: the points are deterministic,
so sessions never recompute them), writes the set as a partitioned dataset
(``server.datasets``: id_type, then bucket; made visible at once) and only then
records the audience. A stream that breaks, or a chunk that is wrong, leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from cleanroom.audiences.identifiers import ID_TYPES
from cleanroom.audiences.upload import DIGEST_LEN, UploadChunk, UploadEnd, UploadHeader
from cleanroom.federated.lookalike.brand import LabelledPoints
from cleanroom.matching.brand import StoredPoints
from cleanroom.matching.hash_to_curve import hash_to_curve_batch
from cleanroom.matching.kkrt import BrandItems, brand_items
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import (
    Buckets,
    bucket_bits,
    spill_directory,
)
from cleanroom.matching.workers import CryptoPool, dst_for
from cleanroom.proto.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ProtocolError,
)
from cleanroom.server.datasets import Dataset, DatasetWriter, open_dataset, remove_stored
from cleanroom.server.files import WORK_DIR
from cleanroom.server.store import AudienceRecord, AuditEntry, Principal, Role, SqlStore

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
STAGING_BITS = 8  # an upload's digests are staged by their leading byte
STAGED_LEN = DIGEST_LEN + 1  # a staged row: the digest, then its 0/1 label
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
        return self.data_dir / "audiences" / tenant_id / audience_id

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

    def dataset(self, record: AudienceRecord) -> Dataset:
        """The audience's stored set (partitioned, or one file of an earlier release)."""
        return open_dataset(self.data_dir / record.path)

    def stored_points(self, record: AudienceRecord) -> StoredPoints:
        """The audience's distinct curve points, to be read in batches (a session
        streams them in a random order without holding them whole)."""
        dataset = self.dataset(record)

        def batches() -> Iterator[bytes]:
            for batch in dataset.batches(["point"], batch_rows=POINT_BATCH_ROWS):
                yield fixed_binary_to_numpy(batch.column(0), POINT_LEN).tobytes()

        return StoredPoints(dataset.rows, batches)

    def kkrt_items(self, record: AudienceRecord) -> BrandItems:
        """The audience's KKRT item blocks, one per distinct (type, digest), to be read
        part by part (a session reads them once and never holds them whole).

        Nothing of a session goes into them (one AES pass over the stored digests, done
        per session: the cuckoo keys and the code are the session's own)."""
        dataset = self.dataset(record)

        def batches() -> Iterator[np.ndarray]:
            for id_type, digests in _typed_digests(dataset):
                if len(digests):
                    yield brand_items([id_type], [digests])

        return BrandItems(dataset.rows, batches)

    def labelled_points(self, record: AudienceRecord) -> LabelledPoints:
        """The distinct curve points and each one's seed label (uint8 0/1), to be read in
        batches (a lookalike streams each list in a random order without holding it).

        An identifier carries the highest label of the records that hold it;
        audiences stored before labels existed are all seeds. The seeds are counted
        here, from the labels alone."""
        dataset = self.dataset(record)
        if "label" not in dataset.names:

            def unlabelled() -> Iterator[tuple[bytes, np.ndarray]]:
                for batch in dataset.batches(["point"], batch_rows=POINT_BATCH_ROWS):
                    points = fixed_binary_to_numpy(batch.column(0), POINT_LEN).tobytes()
                    yield points, np.ones(batch.num_rows, dtype=np.uint8)

            return LabelledPoints(dataset.rows, 0, unlabelled)
        seeds = others = 0
        for batch in dataset.batches(["label"], batch_rows=1 << 20):
            labels = batch.column(0).to_numpy()
            seeds += int((labels == 1).sum())
            others += int((labels == 0).sum())

        def labelled() -> Iterator[tuple[bytes, np.ndarray]]:
            for batch in dataset.batches(["point", "label"], batch_rows=POINT_BATCH_ROWS):
                points = fixed_binary_to_numpy(batch.column(0), POINT_LEN).tobytes()
                yield points, batch.column(1).to_numpy().astype(np.uint8)

        return LabelledPoints(seeds, others, labelled)


class AudienceUpload:
    """One upload in progress: header accepted, chunks arriving in order."""

    def __init__(
        self, service: AudienceService, principal: Principal, header: UploadHeader
    ) -> None:
        self.service = service
        self.principal = principal
        self.header = header
        self.audience_id = uuid.uuid4().hex
        # Each type's digests (with their labels) are staged by their leading byte as they
        # arrive, in files under the work directory, so that ``finish`` deduplicates and
        # hashes one bucket at a time without ever reading a type's digests whole.
        self._work = spill_directory(service.data_dir / WORK_DIR, f"upload-{self.audience_id}-")
        self._staged = {
            t: Buckets(STAGED_LEN, STAGING_BITS, self._work, positioned=False, name=f"type{i}")
            for i, t in enumerate(dict.fromkeys(header.id_types))
        }
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
        staged: list[tuple[str, bytes, np.ndarray]] = []
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
            labels = _labels(chunk.seq, col.column, col.labels, n)
            staged.append((self.header.id_types[col.column], col.digests, labels))
        for id_type, digests, labels in staged:  # only once the whole chunk is valid
            rows = np.empty((len(labels), STAGED_LEN), dtype=np.uint8)
            rows[:, :DIGEST_LEN] = np.frombuffer(digests, np.uint8).reshape(-1, DIGEST_LEN)
            rows[:, DIGEST_LEN] = labels
            self._staged[id_type].add(rows.tobytes())
            self.identifiers += len(labels)
        self.next_seq += 1
        self.rows += chunk.row_count
        self.seeds += seeds

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
        final = DatasetWriter(
            self.service.audience_path(self.principal.tenant_id, self.audience_id), AUDIENCE_SCHEMA
        )
        try:
            by_type: dict[str, int] = {}
            for id_type, staged in self._staged.items():
                staged.close()
                bits = bucket_bits(staged.count, DIGEST_LEN)
                count = 0
                # An equal digest is always in the same bucket, so each bucket is
                # deduplicated and hashed on its own; in bucket order, sorted within.
                for bucket, rows in staged.regrouped(bits):
                    digests = np.ascontiguousarray(rows[:, :DIGEST_LEN]).view(f"S{DIGEST_LEN}")
                    distinct, which = np.unique(digests.ravel(), return_inverse=True)
                    # An identifier several records share is a seed if any of them is.
                    label = np.zeros(len(distinct), dtype=np.uint8)
                    np.maximum.at(label, which.ravel(), rows[:, DIGEST_LEN])
                    points = await self._hash_to_curve(distinct.tobytes(), dst_for(id_type))
                    final.write(
                        id_type,
                        bucket,
                        bits,
                        pa.table(
                            {
                                "id_type": pa.array([id_type] * len(distinct), pa.string()),
                                "digest": _fixed(distinct.tobytes(), DIGEST_LEN),
                                "point": _fixed(points, POINT_LEN),
                                "label": pa.array(label, pa.uint8()),
                            }
                        ),
                    )
                    count += len(distinct)
                if count:
                    by_type[id_type] = count
            path = final.commit()
        except BaseException:
            final.abort()
            raise
        finally:
            shutil.rmtree(self._work, ignore_errors=True)
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
            remove_stored(path)
            raise
        if previous is not None:
            remove_stored(self.service.data_dir / previous.path)
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
        shutil.rmtree(self._work, ignore_errors=True)


def _typed_digests(dataset: Dataset) -> Iterator[tuple[str, np.ndarray]]:
    """Each part's identifier type and digests (``(k, 32)`` uint8), part by part; a
    single-file set of an earlier release is split by its id_type column."""
    for part in dataset.parts:
        columns = ["digest"] if part.id_type else ["id_type", "digest"]
        table = dataset.read(part, columns)
        digests = fixed_binary_to_numpy(table.column("digest"), DIGEST_LEN)
        digests = digests.view(np.uint8).reshape(-1, DIGEST_LEN)
        if part.id_type:
            yield part.id_type, digests
            continue
        types = table.column("id_type").to_numpy(zero_copy_only=False).astype(str)
        for t in dict.fromkeys(types.tolist()):
            yield t, digests[types == t]


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
