"""Conversion uploads and attribution runs on the brand node (transport-free).

Conversions arrive hashed (customer ids and identifiers as SHA-256 digests,
days, values) and are stored atomically as one partitioned set
(``server.datasets``): the identifiers, each with its event and its token points
hash_to_curve(digest || day - lag) for lags 0..7 (hashed once here in the worker
pool, so that runs only blind them), by identifier type and digest bucket; the
events (customer, day, value) as the set's ``events`` table. Identifiers are
staged by bucket under the work directory as they arrive, so an upload holds one
chunk and one bucket at a time. A set stored by an earlier release (three Parquet
files) is read as it is, its identifiers a run of rows at a time. An attribution
run checks the tenant's policy before any work
(the DP budget, refused when it would be overspent), generates a fresh
Paillier key and blinding key for the run, and hands the servicer a
``BrandAttribution`` state machine that owns the rounds; the report is stored
(``conclude``) only when the partner's aggregates have been decrypted, so a
disconnect never leaves a partial report. The same submission key returns
the stored report instead of running again (``AlreadyReported``).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleanroom.audiences.identifiers import ID_TYPES
from cleanroom.audiences.upload import DIGEST_LEN, ConversionRows, UploadHeader
from cleanroom.federated.attribution.brand import AlreadyReported, BrandAttribution, BrandRun
from cleanroom.federated.attribution.inputs import (
    ConversionIds,
    ConversionSource,
    EventGroup,
)
from cleanroom.federated.attribution.messages import AttrHello, DpParams, Windows
from cleanroom.federated.attribution.report import AttributionReport, DecryptedAggregates, ReportDp
from cleanroom.federated.attribution.tokens import PRECOMPUTED_LAGS, LaggedPoints
from cleanroom.federated.paillier import PaillierPrivateKey, PaillierPublicKey, generate_keypair_on
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import MEMORY_BYTES as SEMIJOIN_MEMORY
from cleanroom.matching.semijoin import POSITION, Buckets, bucket_bits, spill_directory
from cleanroom.matching.workers import RunJobs, hash_mixed
from cleanroom.proto.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ProtocolError,
)
from cleanroom.server.audiences import STAGING_BITS, check_audience_name, fixed_binary_to_numpy
from cleanroom.server.datasets import Dataset, DatasetWriter, open_dataset, remove_stored
from cleanroom.server.files import WORK_DIR
from cleanroom.server.lifecycle import conversion_files, remove_files
from cleanroom.server.store import (
    AuditEntry,
    ConversionSetRecord,
    Partner,
    Principal,
    ReportRecord,
    Role,
    SessionRecord,
    SqlStore,
)
from cleanroom.server.tenants import end_run

EVENTS_SCHEMA = pa.schema(
    [("customer", pa.binary(DIGEST_LEN)), ("day", pa.int32()), ("value", pa.float64())]
)
POINTS_WIDTH = POINT_LEN * PRECOMPUTED_LAGS
IDS_SCHEMA = pa.schema(
    [
        ("id_type", pa.string()),
        ("event", pa.int64()),
        ("day", pa.int32()),
        ("digest", pa.binary(DIGEST_LEN)),
        ("points", pa.binary(POINTS_WIDTH)),
    ]
)
# A staged identifier: its digest first (it picks the bucket), its points, its event
# and the event's day.
STAGED_EVENT = DIGEST_LEN + POINTS_WIDTH
STAGED_DAY = STAGED_EVENT + 8
STAGED_LEN = STAGED_DAY + 4
EVENTS_TABLE = "events"


class ConversionsUpload:
    def __init__(
        self,
        service: AttributionService,
        principal: Principal,
        name: str,
        id_types: tuple[str, ...],
        replace: bool,
    ) -> None:
        if principal.role is not Role.ADMIN:
            raise PermissionDenied("uploading conversions needs an admin token")
        check_audience_name(name)
        if not id_types or any(t not in ID_TYPES for t in id_types):
            raise InvalidInput(f"identifier types must be among {ID_TYPES}")
        if not replace and service.store.get_conversion_set(principal.tenant_id, name):
            raise AlreadyExists(
                f"conversions {name!r} already exist; upload with --replace to replace them"
            )
        self.service = service
        self.principal = principal
        self.name = name
        self.id_types = id_types
        self.replace = replace
        self.set_id = uuid.uuid4().hex
        self._final = DatasetWriter(
            service.data_dir / "conversions" / principal.tenant_id / self.set_id, IDS_SCHEMA
        )
        self._work = spill_directory(service.data_dir / WORK_DIR, f"conversions-{self.set_id}-")
        types = dict.fromkeys(id_types)
        self._staged = {
            t: Buckets(STAGED_LEN, STAGING_BITS, self._work, positioned=False, name=f"type{i}")
            for i, t in enumerate(types)
        }
        # Customers by digest bucket: distinct ones are counted a bucket at a time.
        self._customers = Buckets(
            DIGEST_LEN, STAGING_BITS, self._work, positioned=False, name="customers"
        )
        # Hash-to-curve of every identifier's tokens T(id, day - lag), computed
        # here once (in the worker pool, while later chunks stream in) rather
        # than in every attribution run; staged with its identifier when done.
        self._pending: deque[_PendingIds] = deque()
        self.next_seq = 0
        self.rows = 0
        self.identifiers = 0

    def add(self, chunk: ConversionRows) -> None:
        if chunk.seq != self.next_seq:
            kind = "duplicate" if chunk.seq < self.next_seq else "out-of-order"
            raise ProtocolError(
                f"{kind} conversions chunk {chunk.seq}: chunk {self.next_seq} is next"
            )
        n = len(chunk.days)
        if n == 0 or len(chunk.values) != n or len(chunk.customers) != n * DIGEST_LEN:
            raise InvalidInput(
                f"conversions chunk {chunk.seq}: customers, days and values disagree"
            )
        if not np.all(np.isfinite(chunk.values)) or np.any(chunk.values < 0):
            raise InvalidInput(f"conversions chunk {chunk.seq}: values must be finite and >= 0")
        events = np.arange(self.rows, self.rows + n, dtype=np.int64)
        id_events, id_types, digests = [], [], []
        for column, present, packed in chunk.columns:
            if not 0 <= column < len(self.id_types):
                raise InvalidInput(f"conversions chunk {chunk.seq} names column {column}")
            mask = np.frombuffer(present, dtype=np.uint8).astype(bool)
            if len(mask) != n or len(packed) != int(mask.sum()) * DIGEST_LEN:
                raise InvalidInput(
                    f"conversions chunk {chunk.seq}, column {column}: presence and digests disagree"
                )
            id_events.append(events[mask])
            id_types.extend([self.id_types[column]] * int(mask.sum()))
            digests.append(packed)
        self._final.append_table(
            EVENTS_TABLE,
            pa.table(
                {
                    "customer": _fixed(chunk.customers),
                    "day": pa.array(chunk.days.astype(np.int32)),
                    "value": pa.array(chunk.values.astype(np.float64)),
                },
                schema=EVENTS_SCHEMA,
            ),
        )
        self._customers.add(chunk.customers)
        if id_types:
            id_event = np.concatenate(id_events)
            packed = b"".join(digests)
            types = np.array(id_types, dtype=object)
            matrix = np.frombuffer(packed, dtype=np.uint8).reshape(-1, DIGEST_LEN)
            days = chunk.days.astype(np.int64)[id_event - self.rows]
            lagged = LaggedPoints.of(types, matrix, days, PRECOMPUTED_LAGS)
            self._hash_points(_PendingIds(types, matrix, id_event, days, lagged))
        self.next_seq += 1
        self.rows += n
        self.identifiers += len(id_types)

    def finish(self, chunk_count: int, row_count: int) -> ConversionSetRecord:
        if chunk_count != self.next_seq or row_count != self.rows:
            raise ProtocolError(
                f"the upload ended claiming {chunk_count} chunks and {row_count} rows;"
                f" the brand node received {self.next_seq} chunks and {self.rows} rows"
            )
        if self.rows == 0:
            raise InvalidInput("the upload carries no conversions; nothing was stored")
        try:
            self._stage_points(wait=True)
            for id_type, staged in self._staged.items():
                bits = bucket_bits(staged.count, STAGED_LEN)
                for bucket, rows in staged.regrouped(bits):
                    self._final.write(id_type, bucket, bits, _ids_table(id_type, rows))
            customers = sum(
                len(np.unique(rows.view(f"S{DIGEST_LEN}")))
                for _, rows in self._customers.regrouped(STAGING_BITS)
            )
            path = self._final.commit()
        except BaseException:
            self.abort()
            raise
        finally:
            shutil.rmtree(self._work, ignore_errors=True)
        record = ConversionSetRecord(
            conversions_id=self.set_id,
            tenant_id=self.principal.tenant_id,
            name=self.name,
            path=str(path.relative_to(self.service.data_dir)),
            events=self.rows,
            customers=customers,
            identifiers=self.identifiers,
            created_at=datetime.now(UTC),
        )
        try:
            previous = self.service.store.put_conversion_set(record, replace_existing=self.replace)
        except BaseException:
            remove_stored(path)
            raise
        if previous is not None:
            remove_files(conversion_files(self.service.data_dir, previous))
        self.service.store.audit(
            AuditEntry(
                self.principal.tenant_id,
                "admin",
                "conversions.upload",
                {"name": self.name, "events": self.rows},
            )
        )
        return record

    def abort(self) -> None:
        for pending in self._pending:
            for future in pending.futures:
                future.cancel()
        self._pending.clear()
        self._final.abort()
        shutil.rmtree(self._work, ignore_errors=True)

    def _hash_points(self, pending: _PendingIds) -> None:
        executor = self.service.executor
        for _, job in pending.lagged.hash_jobs():
            if executor is not None:
                pending.futures.append(executor.submit(hash_mixed, *job))
            else:
                pending.futures.append(Future())
                pending.futures[-1].set_result(hash_mixed(*job))
        self._pending.append(pending)
        self._stage_points(wait=False)

    def _stage_points(self, wait: bool) -> None:
        """Stage the hashed chunks' identifiers: all of them, or those already done."""
        while self._pending and (wait or all(f.done() for f in self._pending[0].futures)):
            pending = self._pending.popleft()
            points = pending.lagged.per_identifier(b"".join(f.result() for f in pending.futures))
            rows = np.empty((len(pending.types), STAGED_LEN), dtype=np.uint8)
            rows[:, :DIGEST_LEN] = pending.digests
            rows[:, DIGEST_LEN:STAGED_EVENT] = np.frombuffer(points.tobytes(), np.uint8).reshape(
                len(rows), POINTS_WIDTH
            )
            rows[:, STAGED_EVENT:STAGED_DAY] = _le_bytes(pending.events, "<i8")
            rows[:, STAGED_DAY:] = _le_bytes(pending.days, "<i4")
            for id_type in dict.fromkeys(pending.types.tolist()):
                self._staged[id_type].add(rows[pending.types == id_type].tobytes())


@dataclass
class _PendingIds:
    """A chunk's identifiers while their token points are being hashed."""

    types: np.ndarray  # object: each identifier's type
    digests: np.ndarray  # (k, 32) uint8
    events: np.ndarray  # int64: each identifier's event
    days: np.ndarray  # int64: its event's day
    lagged: LaggedPoints  # its tokens, whose points ``futures`` compute
    futures: list[Future[bytes]] = field(default_factory=list)


def _ids_table(id_type: str, rows: np.ndarray) -> pa.Table:
    """Staged rows (digest | points | event | day) as the set's identifier columns."""

    def field(start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(rows[:, start:stop])

    return pa.table(
        {
            "id_type": pa.array([id_type] * len(rows), pa.string()),
            "event": pa.array(field(STAGED_EVENT, STAGED_DAY).view("<i8").ravel()),
            "day": pa.array(field(STAGED_DAY, STAGED_LEN).view("<i4").ravel()),
            "digest": _fixed(field(0, DIGEST_LEN).tobytes()),
            "points": _fixed(field(DIGEST_LEN, STAGED_EVENT).tobytes(), POINTS_WIDTH),
        },
        schema=IDS_SCHEMA,
    )


def _le_bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    """Numbers (integers or floats, as ``dtype`` says) as rows of their little-endian
    bytes (uint8 ``(k, itemsize)``)."""
    packed = np.ascontiguousarray(values, dtype=dtype)
    return packed.view(np.uint8).reshape(len(packed), -1)


def _fixed(packed: bytes, width: int = DIGEST_LEN) -> pa.FixedSizeBinaryArray:
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(packed) // width, [None, pa.py_buffer(packed)]
    )


EVENT_BATCH_ROWS = 1 << 20  # events read from a stored set at a time
CUSTOMER_ROW = DIGEST_LEN + 8  # a staged event: its customer's digest, its value


def event_groups(
    open_events: Callable[[], pq.ParquetFile],
    work: Path | None,
    *,
    memory_bytes: int | None = None,
    bits: int | None = None,
) -> Generator[EventGroup, None, None]:
    """The events of a stored events table grouped by a bucket of their customers'
    digests, read a batch at a time: per group the events, their values and their
    customers numbered in digest order (as one ``np.unique`` over the group would). A set
    past 256 MB of staged events (``memory_bytes``) keeps its buckets in files in a
    directory inside ``work``, removed when the groups end or the iterator is closed;
    ``bits``: 2^bits buckets instead of sized by the count."""
    with open_events() as events:
        count = events.metadata.num_rows
        limit = SEMIJOIN_MEMORY if memory_bytes is None else memory_bytes
        bits = bucket_bits(count, CUSTOMER_ROW) if bits is None else bits
        directory = None if count * CUSTOMER_ROW < limit else spill_directory(work, "events-")
        try:
            if directory is None:
                staged = Buckets.in_memory(CUSTOMER_ROW, positioned=True, bits=bits)
            else:
                staged = Buckets(CUSTOMER_ROW, bits, directory, positioned=True, name="customers")
            for batch in events.iter_batches(
                batch_size=EVENT_BATCH_ROWS, columns=["customer", "value"]
            ):
                rows = np.empty((batch.num_rows, CUSTOMER_ROW), dtype=np.uint8)
                digests = fixed_binary_to_numpy(batch.column("customer"), DIGEST_LEN)
                rows[:, :DIGEST_LEN] = digests.view(np.uint8).reshape(-1, DIGEST_LEN)
                value = batch.column("value").to_numpy(zero_copy_only=False)
                rows[:, DIGEST_LEN:] = _le_bytes(value, "<f8")
                staged.add(rows.tobytes())
            staged.close()
            for b in range(staged.buckets):
                packed, positions = staged.bucket(b)
                if not packed:
                    continue
                rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, CUSTOMER_ROW)
                digests = np.ascontiguousarray(rows[:, :DIGEST_LEN]).view(f"S{DIGEST_LEN}")
                distinct, inverse = np.unique(digests.ravel(), return_inverse=True)
                yield EventGroup(
                    event=np.frombuffer(positions, dtype=POSITION).astype(np.int64),
                    customer=inverse.astype(np.int64),
                    customers=len(distinct),
                    value=np.ascontiguousarray(rows[:, DIGEST_LEN:]).view("<f8").ravel(),
                )
        finally:
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)


def event_days(events: pq.ParquetFile) -> np.ndarray:
    """Every event's day, whole (int32): what a set stored without the identifiers' days
    costs a run, 4 bytes an event."""
    days = np.empty(events.metadata.num_rows, dtype=np.int32)
    at = 0
    for batch in events.iter_batches(batch_size=EVENT_BATCH_ROWS, columns=["day"]):
        days[at : at + batch.num_rows] = batch.column("day").to_numpy(zero_copy_only=False)
        at += batch.num_rows
    return days


def _points(column: pa.ChunkedArray) -> np.ndarray:
    stored = fixed_binary_to_numpy(column, POINTS_WIDTH)
    return np.frombuffer(stored.tobytes(), dtype=np.uint8).reshape(-1, PRECOMPUTED_LAGS, POINT_LEN)


def _digests(column: pa.ChunkedArray) -> np.ndarray:
    """A digest column as uint8 rows (k, 32)."""
    stored = fixed_binary_to_numpy(column, DIGEST_LEN)
    return np.frombuffer(stored.tobytes(), dtype=np.uint8).reshape(-1, DIGEST_LEN)


@dataclass
class StoredConversions:
    """A stored conversion set as a run reads it (``ConversionSource``): the identifiers
    one partition (type, digest bucket) at a time, the events a group of customers at a
    time. A set stored before the identifiers carried their event's day has its events'
    days read whole once (4 bytes an event)."""

    dataset: Dataset
    events: int
    work: Path | None = None
    _days: np.ndarray | None = None

    @classmethod
    def open(cls, dataset: Dataset, work: Path | None = None) -> StoredConversions:
        with dataset.side_file(EVENTS_TABLE) as events:
            return cls(dataset, events.metadata.num_rows, work)

    def held_types(self) -> tuple[str, ...]:
        return tuple(sorted({p.id_type for p in self.dataset.parts if p.id_type and p.rows}))

    def identifier_count(self, id_types: tuple[str, ...]) -> int:
        return sum(p.rows for p in self.dataset.parts if p.id_type in id_types)

    def identifier_parts(self, id_types: tuple[str, ...]) -> Iterator[ConversionIds]:
        with_days = "day" in self.dataset.names
        columns = ["event", "digest", "points"] + (["day"] if with_days else [])
        for part in self.dataset.parts:
            if part.id_type not in id_types or not part.rows:
                continue
            ids = self.dataset.read(part, columns)
            event = ids.column("event").to_numpy().astype(np.int64)
            yield ConversionIds(
                event=event,
                day=(
                    ids.column("day").to_numpy().astype(np.int64)
                    if with_days
                    else self._event_days()[event].astype(np.int64)
                ),
                id_type=np.full(ids.num_rows, part.id_type, dtype=object),
                digest=_digests(ids.column("digest")),
                points=_points(ids.column("points")),
            )

    def event_groups(self) -> Iterator[EventGroup]:
        return event_groups(lambda: self.dataset.side_file(EVENTS_TABLE), self.work)

    def _event_days(self) -> np.ndarray:
        if self._days is None:
            with self.dataset.side_file(EVENTS_TABLE) as events:
                self._days = event_days(events)
        return self._days


#: Identifiers of a set stored by an earlier release read at a time.
LEGACY_PART_ROWS = 1 << 20


@dataclass
class LegacyConversions:
    """A conversion set stored by an earlier release: three Parquet files beside the
    set's path (its events; its identifiers; their token points, when it has them).
    The events are read a group of customers at a time, as for a partitioned set, but
    their days are held whole (4 bytes an event: the identifiers do not carry them); the
    identifiers ``part_rows`` at a time, a run of the files' rows per part. A digest in
    two runs has its tokens blinded twice, to the same values: the same answer, a little
    more work than a digest bucket's."""

    events_path: Path
    day: np.ndarray  # int32 per event
    ids_path: Path
    points_path: Path | None  # None: no points (or not one per identifier), hashed per run
    type_counts: dict[str, int]
    part_rows: int = LEGACY_PART_ROWS
    work: Path | None = None

    @classmethod
    def open(
        cls, base: Path, part_rows: int | None = None, work: Path | None = None
    ) -> LegacyConversions:
        """``part_rows``: identifiers a part (``LEGACY_PART_ROWS`` by default); ``work``:
        where the events' customers are numbered past 256 MB."""
        part_rows = LEGACY_PART_ROWS if part_rows is None else part_rows
        ids_path, points_path = Path(f"{base}.ids.parquet"), Path(f"{base}.points.parquet")
        rows = pq.read_metadata(ids_path).num_rows
        with_points = points_path.exists() and pq.read_metadata(points_path).num_rows == rows
        counts: dict[str, int] = {}
        with pq.ParquetFile(ids_path) as ids:
            for batch in ids.iter_batches(batch_size=part_rows, columns=["id_type"]):
                for entry in pc.value_counts(batch.column(0)).to_pylist():
                    name = str(entry["values"])
                    counts[name] = counts.get(name, 0) + entry["counts"]
        points = points_path if with_points else None
        events_path = Path(f"{base}.events.parquet")
        with pq.ParquetFile(events_path) as events:
            days = event_days(events)
        return cls(events_path, days, ids_path, points, counts, part_rows, work)

    @property
    def events(self) -> int:
        return len(self.day)

    def event_groups(self) -> Iterator[EventGroup]:
        return event_groups(lambda: pq.ParquetFile(self.events_path), self.work)

    def held_types(self) -> tuple[str, ...]:
        return tuple(sorted(t for t, n in self.type_counts.items() if n))

    def identifier_count(self, id_types: tuple[str, ...]) -> int:
        return sum(self.type_counts.get(t, 0) for t in id_types)

    def identifier_parts(self, id_types: tuple[str, ...]) -> Iterator[ConversionIds]:
        files = [(self.ids_path, ["event", "id_type", "digest"])]
        if self.points_path is not None:
            files.append((self.points_path, ["points"]))
        for tables in _row_runs(files, self.part_rows):
            ids = tables[0]
            id_type = np.asarray(ids.column("id_type").to_pylist(), dtype=object)
            keep = np.isin(id_type, list(id_types))
            if not keep.any():
                continue
            event = ids.column("event").to_numpy().astype(np.int64)[keep]
            yield ConversionIds(
                event=event,
                day=self.day[event].astype(np.int64),
                id_type=id_type[keep],
                digest=_digests(ids.column("digest"))[keep],
                points=_points(tables[1].column("points"))[keep] if len(tables) > 1 else None,
            )


def _row_runs(files: list[tuple[Path, list[str]]], rows: int) -> Iterator[list[pa.Table]]:
    """The same rows of each file together, ``rows`` at a time (the last run shorter),
    whatever the files' row groups; the files hold as many rows each."""
    with contextlib.ExitStack() as opened:
        readers = [
            iter(opened.enter_context(pq.ParquetFile(p)).iter_batches(batch_size=rows, columns=c))
            for p, c in files
        ]
        pending: list[list[pa.RecordBatch]] = [[] for _ in files]
        held = [0] * len(files)
        while True:
            for i, reader in enumerate(readers):
                while held[i] < rows and (batch := next(reader, None)) is not None:
                    pending[i].append(batch)
                    held[i] += batch.num_rows
            run = min(rows, *held)
            if run == 0:
                return
            out = []
            for i in range(len(files)):
                table = pa.Table.from_batches(pending[i])
                out.append(table.slice(0, run))
                pending[i] = table.slice(run).to_batches()
                held[i] -= run
            yield out


@dataclass
class AttributionService:
    store: SqlStore
    data_dir: Path
    executor: Executor | None = None
    key_bits: int = 2048
    # Key generation; default: generate_keypair in a worker process (off the event loop).
    keygen: Callable[[int], tuple[PaillierPublicKey, PaillierPrivateKey]] | None = None
    # Runs in progress: who runs them and the report id they will store.
    _live: dict[str, tuple[Principal, str]] = field(default_factory=dict)

    def begin_upload(self, principal: Principal, header: UploadHeader) -> ConversionsUpload:
        return ConversionsUpload(self, principal, header.name, header.id_types, header.replace)

    def load(self, principal: Principal, name: str) -> tuple[ConversionSetRecord, ConversionSource]:
        """The set named ``name``, for a run to read a part at a time: its identifiers a
        partition at a time (a set from an earlier release, in three files, a run of rows
        at a time), its events a group of customers at a time."""
        record = self.store.get_conversion_set(principal.tenant_id, name)
        if record is None:
            raise NotFound(f"no conversions named {name!r} for this tenant")
        base = self.data_dir / record.path
        work = self.data_dir / WORK_DIR
        if base.is_dir():
            return record, StoredConversions.open(open_dataset(base), work)
        # Three files, from an earlier release.
        return record, LegacyConversions.open(base, work=work)

    def open(self, principal: Principal, hello: AttrHello) -> BrandRun:
        """Policy checks, then a run (or the stored report for a repeated submission).

        The run's own checks (windows, an identifier type in common) and the
        policy's refuse it before the DP charge, which comes before any work.
        """
        if principal.role is not Role.PARTNER:
            raise PermissionDenied("attribution runs need a partner token")
        partnership = principal.partnership
        if not math.isfinite(hello.epsilon) or hello.epsilon < 0:
            raise InvalidInput(f"epsilon must be a finite number >= 0, not {hello.epsilon}")
        if len(hello.submission_key) > 128:
            raise InvalidInput("a submission key is at most 128 characters")
        tenant = self.store.get_tenant(principal.tenant_id)
        partner = self.store.get_partner(principal.tenant_id, partnership.partner_id)
        if tenant is None or partner is None:
            raise PermissionDenied("this token's partner no longer exists")
        policy = tenant.policy.for_partner(partner)
        if hello.submission_key:
            existing = self.store.find_report(
                principal.tenant_id, hello.submission_key, partnership.partner_id
            )
            if existing is not None:
                return AlreadyReported(existing.report_id)
        record, data = self.load(principal, hello.conversions)
        dp = DpParams()
        report_id = uuid.uuid4().hex
        if policy.dp != "off":
            if hello.epsilon <= 0:
                remaining = policy.epsilon_budget - self.store.epsilon_spent(partnership)
                raise FailedPrecondition(
                    f"this brand's policy applies {policy.dp} differential privacy: pass --epsilon"
                    f" (remaining budget {remaining:g})"
                )
            dp = DpParams(
                policy.dp, hello.epsilon, policy.delta if policy.dp == "gaussian" else 0.0
            )
        public_key, private_key = (
            self.keygen(self.key_bits)
            if self.keygen is not None
            else generate_keypair_on(self.executor, self.key_bits)
        )
        session_id = uuid.uuid4().hex
        run = BrandAttribution(
            session_id=session_id,
            hello=hello,
            data=data,
            public_key=public_key,
            private_key=private_key,
            dp=dp,
            jobs=RunJobs(self.executor),
            conclude=lambda result: self._store_report(
                partner, hello, report_id, dp, result, policy.aggregation_threshold
            ),
            on_cells=lambda brand: self._record_cells(principal, brand),
            spill_dir=self.data_dir / WORK_DIR,
        )
        if dp.mechanism != "off":
            # Charged before any work: an overspending run is refused up front.
            self.store.charge_epsilon(partnership, report_id, hello.epsilon, policy.epsilon_budget)
        self.store.create_session(
            SessionRecord(
                session_id=session_id,
                tenant_id=principal.tenant_id,
                audience_id=record.conversions_id,
                protocol="attribution",
                status="running",
                declared_records=0,  # known with the partner's cells
                declared_points=0,
                brand_points=run.brand_tokens,
                created_at=datetime.now(UTC),
                partner_id=partnership.partner_id,
            )
        )
        self.store.audit(
            AuditEntry(
                principal.tenant_id,
                "partner",
                "attribution.start",
                {"session": session_id, "conversions": record.name, "epsilon": hello.epsilon},
                partner_id=partnership.partner_id,
            )
        )
        self._live[session_id] = (principal, report_id)
        return run

    def _record_cells(self, principal: Principal, run: BrandAttribution) -> None:
        tokens = int(sum(run.cell_tokens))
        self.store.update_session(
            principal.tenant_id, run.session_id, declared_records=tokens, declared_points=tokens
        )

    def _store_report(
        self,
        partner: Partner,
        hello: AttrHello,
        report_id: str,
        dp: DpParams,
        result: DecryptedAggregates,
        threshold: int,
    ) -> str:
        report = AttributionReport(
            report_id=report_id,
            conversions_name=hello.conversions,
            partner=partner.name,
            created_at=datetime.now(UTC),
            windows=Windows(hello.click_days, hello.view_days),
            dp=ReportDp(
                mechanism=dp.mechanism,  # type: ignore[arg-type]
                epsilon=dp.epsilon,
                delta=dp.delta,
                value_cap=dp.value_cap if dp.mechanism != "off" else None,
            ),
            aggregation_threshold=threshold,
            campaigns=result.campaigns(threshold),
        )
        stored = self.store.put_report(
            ReportRecord(
                tenant_id=partner.tenant_id,
                report=report,
                submission_key=hello.submission_key or report_id,
                partner_id=partner.partner_id,
            )
        )
        return stored.report_id

    def finish(self, run: BrandRun) -> None:
        """The run's stream ended: record how, and stop what is left of its work."""
        if not isinstance(run, BrandAttribution):
            return  # a repeated submission: nothing ran
        principal, report_id = self._live.pop(run.session_id)
        end_run(
            self.store,
            run,
            run.session_id,
            principal,
            protocol="attribution",
            result=("report", report_id),
            now=datetime.now(UTC),
        )
