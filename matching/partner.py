"""The partner's side of ECDH-PSI as a transport-free state machine.

Rounds mirror ``cleanroom.matching.brand``: the partner sends ``Hello``, waits
for ``Accepted``, then streams H(p)^b while it re-blinds the brand's H(s)^a.

- MATCH: points go column by column in priority order, so the brand's
  H(p)^ba values (returned in order) map back to (column, row). The partner
  flags rows whose value is among the H(s)^ab values; ``matched_on`` is the
  highest-priority column that matched.
- CARDINALITY: every record becomes ``slots`` points (its identifiers plus
  random dummy points for the missing ones), records and slots shuffled, so
  the brand sees neither row order nor which identifiers a record has. The
  partner returns H(s)^ab shuffled over the whole brand set.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import ReadReport, read_hashed_chunks
from cleanroom.audiences.upload import DIGEST_LEN
from cleanroom.matching.bulk import (
    ArrayAppender,
    ArrayColumn,
    ByteColumn,
    ColumnAppender,
)
from cleanroom.matching.journal import Journal, point_chunk, points_of, value_chunk, values_of
from cleanroom.matching.messages import (
    POINT_LEN,
    Accepted,
    BrandMessage,
    Finish,
    Hello,
    PartnerMessage,
    PointChunk,
    Protocol,
    Result,
    ValueChunk,
)
from cleanroom.matching.semijoin import SemiJoin, Shuffle
from cleanroom.matching.session import OrderedResults, Round, Signal, guarded
from cleanroom.matching.workers import (
    DUMMY_DST,
    CryptoPool,
    blind_and_truncate,
    blind_points,
    dst_for,
    hash_and_blind,
    hash_and_blind_mixed,
)
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import ProtocolError


@dataclass(frozen=True)
class PartnerColumn:
    """One identifier column: which rows have a value, and their digests.

    Row indices, digests and points are read by slice only, so a large column's live in
    files (``cleanroom.matching.bulk``): 72 bytes an identifier once prepared, none of
    them held by the process.
    """

    id_type: str
    rows: ArrayColumn = field(repr=False)  # int64 row indices, ascending
    digests: ByteColumn = field(repr=False)  # 32 bytes per row in ``rows``
    # H(digest), when prepared ahead (``prepare_points``): hash to curve is
    # keyless and deterministic, so like the brand at upload time the
    # partner may compute it before the session instead of inside it.
    points: ByteColumn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.digests) != DIGEST_LEN * len(self.rows):
            raise ValueError("one 32-byte digest per row is required")
        if self.points is not None and len(self.points) != POINT_LEN * len(self.rows):
            raise ValueError("one 32-byte point per row is required")


#: A window of file rows (start, stop), and each column's (first entry index, rows) in it.
ColumnWindow = tuple[int, int, list[tuple[int, np.ndarray]]]
#: A window's records, and each column's (first entry index, rows) in it.
RecordWindow = tuple[np.ndarray, list[tuple[int, np.ndarray]]]


@dataclass(frozen=True)
class PartnerSet:
    """The partner's identifiers, columns in matching priority order."""

    row_count: int
    columns: Sequence[PartnerColumn]

    @property
    def points(self) -> int:
        return sum(len(c.rows) for c in self.columns)

    def records(self) -> np.ndarray:
        """Rows that carry at least one identifier (whole: for callers that hold them)."""
        parts = [rec for rec, _ in self.record_windows(1 << 20)]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def record_count(self, window: int = 1 << 20) -> int:
        """How many rows carry at least one identifier, ``window`` rows at a time."""
        return sum(len(rec) for rec, _ in self.record_windows(window))

    def column_windows(self, window: int) -> Iterator[ColumnWindow]:
        """The file rows ``window`` at a time, each window with every column's entries in
        it: (index of its first entry in the column, their rows). No window holds more
        than ``window`` entries a column, since a column has at most one entry a row."""
        taken = [0] * len(self.columns)
        for start in range(0, self.row_count, window):
            stop = min(start + window, self.row_count)
            parts = []
            for c, column in enumerate(self.columns):
                ahead = column.rows[taken[c] : taken[c] + (stop - start)]
                n = int(np.searchsorted(ahead, stop))
                parts.append((taken[c], ahead[:n]))
                taken[c] += n
            yield start, stop, parts

    def record_windows(self, window: int) -> Iterator[RecordWindow]:
        """The records (rows with an identifier) ``window`` file rows at a time, ascending,
        each with every column's entries in that window (as ``column_windows``)."""
        for start, stop, parts in self.column_windows(window):
            # A flag a file row of the window: cheaper than sorting the columns' rows.
            seen = np.zeros(stop - start, dtype=bool)
            for _, rows in parts:
                seen[rows - start] = True
            yield np.flatnonzero(seen).astype(np.int64) + start, parts


@dataclass
class MatchOutcome:
    """MATCH: per input row, the index of the column it matched on, or -1 (int8; a file
    for a large set, read by slice), and how many rows matched on each column."""

    matched_on: ArrayColumn = field(repr=False)
    matched_per_column: tuple[int, ...]
    brand_points: int

    @property
    def matched_records(self) -> int:
        return sum(self.matched_per_column)


#: Hit flags over a set's column entries, concatenated in column order: one byte (0 or 1)
#: an entry, as bytes (a file for a large set) or as a boolean array.
HitFlags = ByteColumn | np.ndarray


def match_outcome(
    data: PartnerSet,
    hits: HitFlags,
    brand_points: int,
    *,
    window: int = 1 << 20,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> MatchOutcome:
    """Per row, the first column (in priority order) whose identifier matched, or -1,
    ``window`` file rows at a time into a column (past ``memory_bytes``, a file in
    ``spill_dir``), with the count of rows per column."""
    if len(hits) != data.points:
        raise ValueError(f"{len(hits)} hit flags for a set of {data.points} identifiers")
    offsets = np.cumsum([0] + [len(c.rows) for c in data.columns]).tolist()
    out = ArrayAppender(np.int8, spill_dir=spill_dir, memory_bytes=memory_bytes)
    per_column = np.zeros(len(data.columns), dtype=np.int64)
    for start, stop, parts in data.column_windows(window):
        matched_on = np.full(stop - start, -1, dtype=np.int8)
        for index, (first, rows) in enumerate(parts):
            at = offsets[index] + first
            part = hits[at : at + len(rows)]
            flags = (
                part.astype(bool, copy=False)
                if isinstance(part, np.ndarray)
                else np.frombuffer(part, dtype=np.bool_)
            )
            found = rows[flags] - start
            found = found[matched_on[found] < 0]
            matched_on[found] = index
            per_column[index] += len(found)
        out.append(matched_on)
    return MatchOutcome(out.finish(), tuple(per_column.tolist()), brand_points)


@dataclass
class PartnerProgress:
    points_total: int = 0
    points_sent: int = 0
    brand_total: int = 0
    brand_done: int = 0
    listeners: list[Callable[[PartnerProgress], None]] = field(default_factory=list)

    def update(self) -> None:
        for listener in self.listeners:
            listener(self)


class PaddedSlots:
    """Every record as ``slots`` points, records and slots shuffled: what the brand sees of
    the partner's set.

    Slot ``j`` of position ``i`` holds column ``codes[i, j]``'s value (digest or point)
    of record ``records[order[i]]`` (``records``: ``data.records()``), or a random dummy
    (code ``slots``), so the brand sees neither row order nor which identifiers a record
    has. Built without holding the set: ``fill`` writes record rows, a window of file rows
    at a time, to a ``Shuffle`` (on disk past its memory limit), and ``chunks`` reads them
    back in a uniformly random order and shuffles each record's slots. ``order``, 8 bytes
    a record, is kept only with ``keep_order`` (a caller that maps positions back to its
    records) and is complete once ``chunks`` has run. ``keep`` (a flag per record) limits
    the positions to the flagged records.
    """

    def __init__(
        self,
        data: PartnerSet,
        slots: int,
        rng: np.random.Generator,
        random_bytes: Callable[[int], bytes] = os.urandom,
        *,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
        batch_records: int = 1 << 16,
        keep_order: bool = False,
        record_count: int | None = None,
        keep: np.ndarray | None = None,
    ) -> None:
        """``record_count``: ``data.record_count()``, for a caller that has it already."""
        self.data = data
        self.slots = slots
        self._keep = None if keep is None else np.asarray(keep, dtype=bool)
        if self._keep is not None:
            self.record_count = int(self._keep.sum())
        else:
            self.record_count = data.record_count() if record_count is None else record_count
        self.order = np.empty(0, dtype=np.int64)  # position -> index into records
        self._keep_order = keep_order
        # A generator of its own: ``fill`` may run on another thread than the caller's.
        self._rng = np.random.default_rng(rng.integers(2**63))
        self._random_bytes = random_bytes
        self._batch = batch_records
        self._width = slots * (DIGEST_LEN + 1) + 8  # values, codes, index into records
        self._shuffle = Shuffle(
            self._width,
            self.record_count,
            self._rng,
            memory_bytes=memory_bytes,
            spill_dir=spill_dir,
        )

    @property
    def on_disk(self) -> bool:
        return self._shuffle.on_disk

    def fill(self) -> None:
        """Every record's row, in row order, into the shuffle."""
        k, start = self.slots, 0
        for rec, parts in self.data.record_windows(self._batch):
            index = np.arange(start, start + len(rec), dtype="<i8")  # into records
            start += len(rec)
            # Only the kept records' rows are built (their dummies drawn): a column entry
            # of a record left out has no row.
            kept = None if self._keep is None else self._keep[index]
            if kept is not None:
                index = index[kept]
            if not len(index):
                continue
            values = np.frombuffer(self._random_bytes(len(index) * k * DIGEST_LEN), np.uint8)
            values = values.reshape(len(index), k, DIGEST_LEN).copy()
            codes = np.full((len(index), k), k, dtype=np.uint8)  # k = dummy
            for c, (column, (lo, rows)) in enumerate(zip(self.data.columns, parts, strict=True)):
                if not len(rows):
                    continue
                source = column.points if column.points is not None else column.digests
                pos = np.searchsorted(rec, rows)
                part = source[lo * DIGEST_LEN : (lo + len(rows)) * DIGEST_LEN]
                entries = np.frombuffer(part, np.uint8).reshape(-1, DIGEST_LEN)
                if kept is not None:
                    mine = kept[pos]
                    pos, entries = (np.cumsum(kept) - 1)[pos[mine]], entries[mine]
                values[pos, c] = entries
                codes[pos, c] = c
            rows = np.empty((len(index), self._width), dtype=np.uint8)
            rows[:, : k * DIGEST_LEN] = values.reshape(len(index), -1)
            rows[:, k * DIGEST_LEN : -8] = codes
            rows[:, -8:] = index.view(np.uint8).reshape(-1, 8)
            self._shuffle.add(rows.tobytes())

    def chunks(self, size: int) -> Iterator[tuple[bytes, bytes]]:
        """Slot values (32 bytes each) and codes, ``size`` slots a chunk, position-major."""
        k = self.slots
        order: list[np.ndarray] = []
        values, codes = bytearray(), bytearray()
        try:
            for packed in self._shuffle.chunks(max(1, self._batch)):
                rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, self._width)
                if self._keep_order:
                    order.append(np.ascontiguousarray(rows[:, -8:]).view("<i8").ravel())
                slot_order = np.argsort(self._rng.random((len(rows), k)), axis=1)
                held = rows[:, : k * DIGEST_LEN].reshape(len(rows), k, DIGEST_LEN)
                values += np.take_along_axis(held, slot_order[:, :, None], axis=1).tobytes()
                codes += np.take_along_axis(rows[:, k * DIGEST_LEN : -8], slot_order, 1).tobytes()
                while len(codes) >= size:
                    yield bytes(values[: size * DIGEST_LEN]), bytes(codes[:size])
                    del values[: size * DIGEST_LEN], codes[:size]
            if codes:
                yield bytes(values), bytes(codes)
        finally:
            self.close()
        self.order = np.concatenate(order) if order else np.empty(0, dtype=np.int64)

    def close(self) -> None:
        """Remove the batch files (``chunks`` does once it is read; safe to repeat)."""
        self._shuffle.close()


def read_partner_set(
    path: str | Path,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    *,
    keep: Sequence[str] = (),
    chunk_rows: int = 50_000,
    on_rows: Callable[[int], None] | None = None,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> tuple[PartnerSet, ReadReport, dict[str, np.ndarray]]:
    """Read, normalize and hash a partner file into a ``PartnerSet`` (rows = file rows),
    with the text of every ``keep`` column per row. A column's digests past
    ``memory_bytes`` (default ``bulk.MEMORY_BYTES``) go to a file in ``spill_dir``, and
    so do its row indices past the same size."""
    report = ReadReport()
    rows = [
        ArrayAppender(np.int64, spill_dir=spill_dir, memory_bytes=memory_bytes) for _ in id_columns
    ]
    digests = [ColumnAppender(spill_dir=spill_dir, memory_bytes=memory_bytes) for _ in id_columns]
    kept: dict[str, list[np.ndarray]] = {name: [] for name in keep}
    total = 0
    for chunk in read_hashed_chunks(
        path, id_columns, options, chunk_rows=chunk_rows, report=report, keep=keep
    ):
        for index, col in enumerate(chunk.columns):
            rows[index].append(chunk.first_row + np.flatnonzero(col.present))
            digests[index].append(col.digests)
        for name in keep:
            kept[name].append(chunk.kept[name])
        total = chunk.first_row + chunk.row_count
        if on_rows is not None:
            on_rows(chunk.row_count)
    columns = [
        PartnerColumn(
            id_type=str(c.id_type),
            rows=rows[i].finish(),
            digests=digests[i].finish(),
        )
        for i, c in enumerate(id_columns)
    ]
    texts = {
        name: np.concatenate(parts) if parts else np.empty(0, dtype=object)
        for name, parts in kept.items()
    }
    return PartnerSet(row_count=total, columns=columns), report, texts


class PartnerSession:
    def __init__(
        self,
        *,
        audience: str,
        protocol: Protocol,
        data: PartnerSet,
        pool: CryptoPool,
        key: BlindingKey | None = None,
        rng: np.random.Generator | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        report_count: bool = True,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        """``spill_dir``: where a large session keeps what it sent, its comparison buckets
        and its outcome's per-row column (default: the system's temporary directory); they
        go when it closes. ``memory_bytes``: the size past which the buckets and the
        outcome go to files (by default, ``semijoin.MEMORY_BYTES`` a side and
        ``bulk.MEMORY_BYTES``)."""
        if protocol is Protocol.CARDINALITY and not data.columns:
            raise ValueError("CARDINALITY needs at least one identifier column")
        self.audience = audience
        self.protocol = protocol
        self.data = data
        self.report_count = report_count
        self.round = Round.HELLO
        self.progress = PartnerProgress()
        self._pool = pool
        self._key = key or BlindingKey.generate(random_bytes)
        self._secret = pool.key(self._key.secret_bytes())
        self._rng = rng or np.random.default_rng()
        self._random_bytes = random_bytes
        self._signal = Signal()
        self.session_id = ""
        self.accepted: Accepted | None = None
        # Everything sent, kept for resumption (on disk past 64 MB, under spill_dir).
        self.points_out: Journal[PointChunk] = Journal(
            point_chunk, points_of, spill_dir=spill_dir, name="points"
        )
        self.values_out: Journal[ValueChunk] = Journal(
            value_chunk, values_of, spill_dir=spill_dir, name="values"
        )
        self.finish: Finish | None = None
        self.value_chunks_in = 0  # MATCH: chunks of H(p)^ba, in our order
        self._values_in_count = 0
        self.brand_chunks_in = 0
        self._shuffle: Shuffle | None = None  # CARDINALITY: H(s)^ab, shuffled and returned
        self._brand_bytes = 0
        # MATCH: ours (H(p)^ba) against theirs (H(s)^ab), bucketed as they arrive.
        self._join: SemiJoin | None = None
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        self._concluding = False
        self._brand_results = OrderedResults[bytes](limit=2 * pool.workers)
        self._tasks: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None
        self.outcome: MatchOutcome | None = None
        self.result: Result | None = None
        self._done = asyncio.Event()
        self._points_done = False
        self._records = data.record_count()
        if protocol is Protocol.MATCH:
            self._points = data.points
            self._slots = 0
        else:
            self._slots = len(data.columns)
            self._points = self._records * self._slots
        self.progress.points_total = self._points

    # ------------------------------------------------------------ handshake

    def hello(self) -> Hello:
        """The opening message, or the resuming one after a dropped stream."""
        return Hello(
            audience=self.audience,
            protocol=self.protocol,
            declared_records=self._records,
            declared_points=self._points,
            slots_per_record=self._slots,
            resume_session_id=self.session_id,
            received_values=self.value_chunks_in if self.protocol is Protocol.MATCH else 0,
            received_points=self.brand_chunks_in,
            id_types=tuple(dict.fromkeys(c.id_type for c in self.data.columns if len(c.rows))),
        )

    def on_accepted(self, accepted: Accepted) -> None:
        if self.round is Round.HELLO:
            self.session_id = accepted.session_id
            self.accepted = accepted
            self.round = Round.EXCHANGE
            self.progress.brand_total = accepted.brand_points
            if self.protocol is Protocol.MATCH:
                self._join = SemiJoin(
                    accepted.value_len,
                    self._points,
                    accepted.brand_points,
                    spill_dir=self._spill_dir,
                    memory_bytes=self._memory_bytes,
                )
            else:
                self._shuffle = Shuffle(
                    accepted.value_len,
                    accepted.brand_points,
                    self._rng,
                    spill_dir=self._spill_dir,
                    memory_bytes=self._memory_bytes,
                )
            self._tasks = [asyncio.ensure_future(guarded(self._produce_points, self.fail))]
            self._tasks.append(asyncio.ensure_future(guarded(self._collect_brand, self.fail)))
            if accepted.brand_points == 0:
                self._brand_results.close()
        elif accepted.session_id != self.session_id:
            raise ProtocolError("the brand node resumed a different session")

    # ------------------------------------------------------------- incoming

    async def receive(self, msg: BrandMessage) -> None:
        if self.error is not None:
            raise self.error
        if isinstance(msg, Accepted):
            self.on_accepted(msg)
            return
        if self.round is Round.HELLO:
            raise ProtocolError(f"{type(msg).__name__} arrived before Accepted")
        if isinstance(msg, ValueChunk):
            self._on_values(msg)
        elif isinstance(msg, PointChunk):
            await self._on_brand_points(msg)
        elif isinstance(msg, Result):
            self._on_result(msg)
        else:
            raise TypeError(f"not a brand message: {type(msg).__name__}")

    def _on_values(self, chunk: ValueChunk) -> None:
        assert self.accepted is not None
        if self.protocol is not Protocol.MATCH:
            raise ProtocolError("the brand sends value chunks only in MATCH sessions")
        if chunk.seq != self.value_chunks_in:
            raise ProtocolError(
                f"values chunk {chunk.seq} out of order; expected {self.value_chunks_in}"
            )
        if not chunk.values or len(chunk.values) % self.accepted.value_len:
            raise ProtocolError(f"values chunk {chunk.seq} has a partial value")
        self._values_in_count += len(chunk.values) // self.accepted.value_len
        if self._values_in_count > self._points:
            raise ProtocolError("the brand returned more values than points sent")
        assert self._join is not None
        self._join.left.add(chunk.values)
        self.value_chunks_in += 1
        self._maybe_conclude()

    async def _on_brand_points(self, chunk: PointChunk) -> None:
        assert self.accepted is not None
        if chunk.seq != self.brand_chunks_in:
            raise ProtocolError(
                f"brand points chunk {chunk.seq} out of order; expected {self.brand_chunks_in}"
            )
        if not chunk.points or len(chunk.points) % POINT_LEN:
            raise ProtocolError(f"brand points chunk {chunk.seq} has a partial point")
        if self.progress.brand_done + chunk.count > self.accepted.brand_points:
            raise ProtocolError("the brand sent more points than it announced")
        await self._brand_results.reserve()
        self.brand_chunks_in += 1
        self.progress.brand_done += chunk.count
        self._brand_results.put(
            self._pool.run(blind_and_truncate, self._secret, chunk.points, self.accepted.value_len)
        )
        if self.progress.brand_done == self.accepted.brand_points:
            self._brand_results.close()
        self.progress.update()

    def _on_result(self, result: Result) -> None:
        if self.finish is None:
            raise ProtocolError("Result arrived before the partner finished")
        self.result = result
        self.round = Round.DONE
        self._done.set()
        self._signal.notify()

    # ----------------------------------------------------------- background

    def fail(self, exc: BaseException) -> None:
        if self.round is Round.DONE:
            return
        self.error = exc
        self.round = Round.FAILED
        self._done.set()
        self.close()
        self._signal.notify()

    def close(self) -> None:
        self._brand_results.cancel()
        self._pool.forget(self._secret)
        self.points_out.close()
        self.values_out.close()
        if self._join is not None:
            self._join.close()
        if self._shuffle is not None:
            self._shuffle.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def wait(self) -> None:
        await self._done.wait()
        if self.error is not None:
            raise self.error

    async def _produce_points(self) -> None:
        assert self.accepted is not None
        size = self.accepted.chunk_size
        results = OrderedResults[bytes](limit=2 * self._pool.workers)

        async def feed() -> None:
            if self.protocol is Protocol.MATCH:
                for column in self.data.columns:
                    dst = dst_for(column.id_type)
                    step = size * DIGEST_LEN
                    for start in range(0, len(column.digests), step):
                        if column.points is not None:
                            part = column.points[start : start + step]
                            job = self._pool.run(blind_points, self._secret, part, False)
                        else:
                            part = column.digests[start : start + step]
                            job = self._pool.run(hash_and_blind, self._secret, part, dst)
                        await results.submit(job)
            else:
                slots = PaddedSlots(
                    self.data,
                    self._slots,
                    self._rng,
                    self._random_bytes,
                    spill_dir=self._spill_dir,
                    record_count=self._records,
                )
                dsts: list[bytes | None] = [
                    None if c.points is not None else dst_for(c.id_type) for c in self.data.columns
                ]
                dsts.append(DUMMY_DST)
                try:
                    await asyncio.to_thread(slots.fill)
                    for part, codes in slots.chunks(size):
                        await results.submit(
                            self._pool.run(hash_and_blind_mixed, self._secret, part, codes, dsts)
                        )
                finally:
                    slots.close()  # a failed or cancelled session leaves no batch file
            results.close()

        feeder = asyncio.ensure_future(feed())
        try:
            async for points in results:
                self.points_out.append(PointChunk(seq=len(self.points_out), points=points))
                self.progress.points_sent += len(points) // POINT_LEN
                self.progress.update()
                self._signal.notify()
            await feeder
        finally:
            feeder.cancel()
            results.cancel()
        self._points_done = True
        self._maybe_conclude()

    async def _collect_brand(self) -> None:
        async for values in self._brand_results:
            self._brand_bytes += len(values)
            if self._join is not None:
                self._join.right.add(values)
            else:
                assert self._shuffle is not None
                self._shuffle.add(values)
        if self.protocol is Protocol.CARDINALITY:
            self._send_shuffled_brand_values()
        self._maybe_conclude()

    def _send_shuffled_brand_values(self) -> None:
        assert self.accepted is not None and self._shuffle is not None
        for chunk in self._shuffle.chunks(self.accepted.chunk_size):
            self.values_out.next_message(chunk)
        self._shuffle.close()
        self._signal.notify()

    def _maybe_conclude(self) -> None:
        assert self.accepted is not None
        if self.finish is not None or not self._points_done:
            return
        if self.progress.brand_done != self.accepted.brand_points:
            return
        if not self._brand_results_done():
            return
        if self.protocol is Protocol.MATCH:
            if self._values_in_count != self._points or self._concluding:
                return
            self._concluding = True
            self._tasks.append(asyncio.ensure_future(guarded(self._conclude_match, self.fail)))
            return
        self.finish = Finish()
        self._signal.notify()

    async def _conclude_match(self) -> None:
        self.outcome = await self._match_rows()
        self.finish = Finish(
            report_count=self.report_count,
            matched_records=self.outcome.matched_records if self.report_count else 0,
        )
        self._signal.notify()

    def _brand_results_done(self) -> bool:
        assert self.accepted is not None
        return self._brand_bytes == self.accepted.brand_points * self.accepted.value_len

    async def _match_rows(self) -> MatchOutcome:
        assert self.accepted is not None and self._join is not None
        hits = await self._join.hit_flags(self._pool.run, window=2 * self._pool.workers)
        self._join.close()
        return await asyncio.to_thread(
            match_outcome,
            self.data,
            hits,
            self.accepted.brand_points,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )

    # ------------------------------------------------------------- outgoing

    async def outgoing(
        self, points_from: int = 0, values_from: int = 0
    ) -> AsyncIterator[PartnerMessage]:
        """Everything after what the brand already holds, ending with ``Finish``.

        One message per pass, chosen from the state as it is after the
        previous ``yield``: chunks produced while a message was being sent
        (in CARDINALITY the values are often ready before the points) still go
        before ``Finish``, which the brand refuses unless every point came first.
        """
        pi, vi = points_from, values_from
        sent_finish = False
        while True:
            if self.error is not None:
                raise self.error
            waiting = self._signal.current()
            if pi < len(self.points_out):
                yield self.points_out[pi]
                pi += 1
            elif vi < len(self.values_out):
                yield self.values_out[vi]
                vi += 1
            elif self.finish is not None and not sent_finish:
                sent_finish = True
                yield self.finish
            elif self.round in (Round.DONE, Round.FAILED):
                return
            else:
                await waiting.wait()
