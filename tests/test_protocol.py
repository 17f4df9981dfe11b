"""The PSI state machines wired to each other in-process (no transport)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from cleanroom.matching.brand import BrandSession
from cleanroom.matching.bulk import ArrayAppender, ColumnAppender, FileArray, whole, whole_array
from cleanroom.matching.hash_to_curve import hash_to_curve
from cleanroom.matching.messages import Finish, Hello, PointChunk, Protocol, Result, ValueChunk
from cleanroom.matching.partner import (
    PaddedSlots,
    PartnerColumn,
    PartnerSession,
    PartnerSet,
    match_outcome,
)
from cleanroom.matching.session import comparison_length
from cleanroom.matching.workers import CryptoPool, dst_for, hash_and_blind_mixed, hash_points
from cleanroom.matching.x25519 import InvalidPointError
from cleanroom.proto.errors import ProtocolError

T = TypeVar("T")


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def brand_points(items: list[tuple[str, str]]) -> np.ndarray:
    pts = b"".join(hash_to_curve(digest(v), dst_for(t)) for t, v in items)
    return np.frombuffer(pts, dtype="S32")


def partner_set(rows: list[dict[str, str]], types: list[str]) -> PartnerSet:
    columns = []
    for t in types:
        idx = [i for i, r in enumerate(rows) if t in r]
        columns.append(
            PartnerColumn(
                t, np.array(idx, dtype=np.int64), b"".join(digest(rows[i][t]) for i in idx)
            )
        )
    return PartnerSet(row_count=len(rows), columns=columns)


async def converse(brand: BrandSession, partner: PartnerSession) -> None:
    """Carry messages both ways until both sides are done."""
    accepted = brand.start()
    await partner.receive(accepted)

    async def to_brand() -> None:
        async for msg in partner.outgoing():
            await brand.receive(msg)

    async def to_partner() -> None:
        async for msg in brand.outgoing():
            await partner.receive(msg)

    await asyncio.wait_for(asyncio.gather(to_brand(), to_partner()), 60)


BRAND = [("email", f"user{i}@example.com") for i in range(60)] + [
    ("phone", f"+1201555{i:04d}") for i in range(40)
]


def partner_rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for i in range(50):
        row: dict[str, str] = {}
        if i % 3 != 0:
            row["email"] = f"user{i * 2}@example.com"  # even i*2 < 60 match
        if i % 2 == 0:
            row["phone"] = f"+1201555{i:04d}"  # i < 40 match
        rows.append(row)
    rows.append({})  # a row without identifiers
    return rows


def expected_matched_on(rows: list[dict[str, str]]) -> list[int]:
    brand = set(BRAND)
    out = []
    for row in rows:
        hit = -1
        for index, t in enumerate(["email", "phone"]):
            if t in row and (t, row[t]) in brand:
                hit = index
                break
        out.append(hit)
    return out


def prepared(pset: PartnerSet) -> PartnerSet:
    """The same set with H(x) computed ahead of the session."""
    columns = [
        replace(c, points=hash_points(whole(c.digests), dst_for(c.id_type)) if len(c.rows) else b"")
        for c in pset.columns
    ]
    return PartnerSet(pset.row_count, columns)


def make(
    protocol: Protocol, pool: CryptoPool, rows: list[dict[str, str]], prepare: bool = False
) -> tuple[BrandSession, PartnerSession]:
    pset = partner_set(rows, ["email", "phone"])
    if prepare:
        pset = prepared(pset)
    partner = PartnerSession(
        audience="crm", protocol=protocol, data=pset, pool=pool, rng=np.random.default_rng(1)
    )
    brand = BrandSession(
        session_id="s1",
        hello=partner.hello(),
        brand_points=brand_points(BRAND),
        pool=pool,
        chunk_size=7,
        rng=np.random.default_rng(2),
    )
    return brand, partner


@pytest.mark.parametrize("prepare", [False, True])
def test_match_flags_equal_plaintext_join(thread_pool: CryptoPool, prepare: bool) -> None:
    rows = partner_rows()
    brand, partner = make(Protocol.MATCH, thread_pool, rows, prepare)
    asyncio.run(converse(brand, partner))
    assert partner.outcome is not None
    assert whole_array(partner.outcome.matched_on).tolist() == expected_matched_on(rows)
    expected = sum(1 for x in expected_matched_on(rows) if x >= 0)
    assert brand.result == Result(intersection=expected, known=True)
    assert brand.outcome().partner_records == 42  # rows with an identifier


@pytest.mark.parametrize("prepare", [False, True])
def test_cardinality_counts_records_once(thread_pool: CryptoPool, prepare: bool) -> None:
    rows = partner_rows()
    brand, partner = make(Protocol.CARDINALITY, thread_pool, rows, prepare)
    asyncio.run(converse(brand, partner))
    expected = sum(1 for x in expected_matched_on(rows) if x >= 0)
    assert brand.result == Result(intersection=expected, known=True)
    assert partner.result == brand.result
    # Padded slots: every record sends exactly two points.
    assert brand.partner_points_received == 42 * 2


class HeldPartnerPoints(CryptoPool):
    """Runs jobs inline, except the partner's own points, held until ``release``."""

    def __init__(self, executor: Executor) -> None:
        super().__init__(executor, 2)
        self.release = asyncio.Event()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if fn is hash_and_blind_mixed:
            await self.release.wait()
        return fn(*args)


def test_cardinality_finish_waits_for_points_produced_during_a_send(
    thread_pool: CryptoPool,
) -> None:
    """CARDINALITY: the partner's values are often ready before its own points.

    If its points complete while a values chunk is being sent, they still go
    before ``Finish`` (a Finish ahead of them failed the session with
    "Finish after 0 of N declared points").
    """
    pool = HeldPartnerPoints(thread_pool.executor)
    brand, partner = make(Protocol.CARDINALITY, pool, partner_rows())

    async def run() -> list[str]:
        await partner.receive(brand.start())

        async def to_partner() -> None:
            async for msg in brand.outgoing():
                await partner.receive(msg)

        down = asyncio.ensure_future(to_partner())
        sent: list[str] = []
        async for msg in partner.outgoing():
            sent.append(type(msg).__name__)
            if isinstance(msg, ValueChunk) and not pool.release.is_set():
                # While this chunk is on its way, every point becomes ready.
                pool.release.set()
                while partner.finish is None:
                    await asyncio.sleep(0)
            await brand.receive(msg)
        await down
        return sent

    sent = asyncio.run(asyncio.wait_for(run(), 60))
    assert sent[0] == "ValueChunk" and sent[-1] == "Finish"
    assert sent.count("PointChunk") == len(partner.points_out) == 12  # 84 points, 7 per chunk
    assert brand.partner_points_received == 42 * 2
    expected = sum(1 for x in expected_matched_on(partner_rows()) if x >= 0)
    assert brand.result == partner.result == Result(intersection=expected, known=True)


def test_match_count_kept_private_when_partner_declines(thread_pool: CryptoPool) -> None:
    rows = partner_rows()
    pset = partner_set(rows, ["email", "phone"])
    partner = PartnerSession(
        audience="crm", protocol=Protocol.MATCH, data=pset, pool=thread_pool, report_count=False
    )
    brand = BrandSession(
        session_id="s",
        hello=partner.hello(),
        brand_points=brand_points(BRAND),
        pool=thread_pool,
        chunk_size=16,
    )
    asyncio.run(converse(brand, partner))
    assert brand.result == Result(intersection=0, known=False)
    assert brand.outcome().intersection is None


def hello(points: int = 40, records: int = 40) -> Hello:
    return Hello(
        audience="crm", protocol=Protocol.MATCH, declared_records=records, declared_points=points
    )


def point(i: int) -> bytes:
    return hash_to_curve(digest(str(i)), b"test")


def test_wrong_round_and_sequence_errors(thread_pool: CryptoPool) -> None:
    async def run() -> None:
        brand = BrandSession(
            session_id="s",
            hello=hello(),
            brand_points=brand_points(BRAND[:5]),
            pool=thread_pool,
            chunk_size=8,
        )
        with pytest.raises(ProtocolError, match="round hello"):
            await brand.receive(PointChunk(0, point(1)))
        brand.start()
        with pytest.raises(ProtocolError, match="Hello may only open"):
            await brand.receive(hello())
        await brand.receive(PointChunk(0, point(1) + point(2)))
        with pytest.raises(ProtocolError, match="duplicate points chunk 0"):
            await brand.receive(PointChunk(0, point(3)))
        with pytest.raises(ProtocolError, match="out-of-order points chunk 5"):
            await brand.receive(PointChunk(5, point(3)))
        with pytest.raises(ProtocolError, match="not a positive multiple"):
            await brand.receive(PointChunk(1, b"\x01" * 33))
        with pytest.raises(ProtocolError, match="limit is 8"):
            await brand.receive(PointChunk(1, b"".join(point(i) for i in range(9))))
        with pytest.raises(ProtocolError, match="belong to CARDINALITY"):
            await brand.receive(ValueChunk(0, b"x" * 12))
        with pytest.raises(ProtocolError, match="Finish after 2 of 40"):
            await brand.receive(Finish())
        brand.close()

    asyncio.run(run())


def test_refuses_to_reblind_more_than_declared(thread_pool: CryptoPool) -> None:
    async def run() -> None:
        brand = BrandSession(
            session_id="s",
            hello=hello(points=3, records=3),
            brand_points=brand_points(BRAND[:5]),
            pool=thread_pool,
            chunk_size=8,
        )
        brand.start()
        await brand.receive(PointChunk(0, point(1) + point(2)))
        with pytest.raises(ProtocolError, match="exceeds the declared 3 points"):
            await brand.receive(PointChunk(1, point(3) + point(4)))
        brand.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b"\x00" * 32, "low-order"),
        ((2**255 - 19).to_bytes(32, "little"), "canonical"),
    ],
)
def test_invalid_partner_points_fail_the_session(
    thread_pool: CryptoPool, bad: bytes, why: str
) -> None:
    async def run() -> None:
        brand = BrandSession(
            session_id="s",
            hello=hello(points=3, records=3),
            brand_points=brand_points(BRAND[:5]),
            pool=thread_pool,
            chunk_size=8,
        )
        brand.start()
        await brand.receive(PointChunk(0, point(1) + bad + point(2)))
        with pytest.raises(InvalidPointError, match=why):
            async for _ in brand.outgoing():
                pass
        assert brand.finished

    asyncio.run(run())


def test_hello_validation() -> None:
    with ThreadPool() as pool:
        for bad, msg in [
            (Hello("crm", Protocol.CARDINALITY, 10, 20, slots_per_record=0), "slots per record"),
            (Hello("crm", Protocol.CARDINALITY, 10, 21, slots_per_record=2), "records x slots"),
            (Hello("crm", Protocol.MATCH, 1, 9), "identifiers per record"),
        ]:
            with pytest.raises(ProtocolError, match=msg):
                BrandSession(
                    session_id="s",
                    hello=bad,
                    brand_points=brand_points(BRAND[:2]),
                    pool=pool,
                    chunk_size=8,
                )


class ThreadPool:
    def __enter__(self) -> CryptoPool:
        from concurrent.futures import ThreadPoolExecutor

        self._ex = ThreadPoolExecutor(1)
        return CryptoPool(self._ex, 1)

    def __exit__(self, *exc: object) -> None:
        self._ex.shutdown()


def test_comparison_length_meets_false_positive_bound() -> None:
    for p, s in [(1, 1), (1000, 1000), (10**6, 10**6), (10**7, 10**8)]:
        n = comparison_length(p, s)
        assert p * s / 2 ** (8 * n) <= 2**-40
        assert n == 8 or p * s / 2 ** (8 * (n - 1)) > 2**-40


@pytest.mark.parametrize("memory_bytes", [None, 0])  # in memory, and through batch files
@pytest.mark.parametrize("size", [1, 7, 64])
@pytest.mark.parametrize("some", [False, True])  # every record, or those ``keep`` flags
def test_padded_slots_hold_each_record_once_with_its_identifiers_and_dummies(
    tmp_path: Path, memory_bytes: int | None, size: int, some: bool
) -> None:
    rng = np.random.default_rng(5)
    row_count = 300
    columns = []
    for index, id_type in enumerate(["email", "phone"]):
        rows = np.flatnonzero(rng.random(row_count) < (0.7 if index == 0 else 0.4))
        digests = rng.integers(0, 256, (len(rows), 32), dtype=np.uint8).tobytes()
        columns.append(PartnerColumn(id_type, rows.astype(np.int64), digests))
    data = PartnerSet(row_count, columns)
    records = data.records()
    keep = rng.random(len(records)) < 0.3 if some else None
    slots = PaddedSlots(
        data,
        3,
        rng,
        spill_dir=tmp_path,
        memory_bytes=memory_bytes,
        batch_records=50,
        keep_order=True,
        keep=keep,
    )
    slots.fill()
    assert slots.on_disk is (memory_bytes == 0)
    chunks = list(slots.chunks(size))
    assert all(len(c) == size for _, c in chunks[:-1]) and 0 < len(chunks[-1][1]) <= size
    values = np.frombuffer(b"".join(v for v, _ in chunks), np.uint8).reshape(-1, 3, 32)
    codes = np.frombuffer(b"".join(c for _, c in chunks), np.uint8).reshape(-1, 3)
    expected = list(range(len(records))) if keep is None else np.flatnonzero(keep).tolist()
    assert slots.record_count == len(expected)
    assert sorted(slots.order.tolist()) == expected  # each (kept) record once
    assert slots.order.tolist() != expected  # in a shuffled order
    for position, index in enumerate(slots.order.tolist()):
        row = records[index]
        held = {}
        for c, column in enumerate(columns):
            rows = whole_array(column.rows)
            at = np.searchsorted(rows, row)
            if at < len(rows) and rows[at] == row:
                held[c] = column.digests[at * 32 : (at + 1) * 32]
        got = {int(code): values[position, j].tobytes() for j, code in enumerate(codes[position])}
        dummies = [j for j, code in enumerate(codes[position]) if code == 3]
        assert len(dummies) == 3 - len(held)
        assert {c: got[c] for c in held} == held
    # Slots are shuffled within records: a record's identifier is not always in slot 0.
    assert len({int(np.flatnonzero(r == 0)[0]) for r in codes if 0 in r}) > 1
    assert list(tmp_path.iterdir()) == []  # the batch files went with the last chunk


def test_padded_slots_keep_no_order_unless_asked() -> None:
    """The overlap never maps positions back (8 bytes a record it need not hold)."""
    rows = np.array([1, 4, 5], dtype=np.int64)
    data = PartnerSet(8, [PartnerColumn("email", rows, bytes(96))])
    slots = PaddedSlots(data, 1, np.random.default_rng(1), batch_records=2)
    slots.fill()
    assert len(b"".join(c for _, c in slots.chunks(2))) == 3
    assert len(slots.order) == 0


@pytest.mark.parametrize("window", [1, 3, 50, 1 << 20])
def test_records_counted_a_window_at_a_time_are_the_rows_with_an_identifier(window: int) -> None:
    rng = np.random.default_rng(11)
    row_count = 400  # the last rows carry nothing: windows past every column's end
    columns = []
    for id_type, share in [("email", 0.3), ("phone", 0.1), ("maid", 0.0)]:
        rows = np.flatnonzero(rng.random(350) < share).astype(np.int64)
        columns.append(PartnerColumn(id_type, rows, bytes(32 * len(rows))))
    data = PartnerSet(row_count, columns)
    expected = set(np.concatenate([c.rows for c in columns]).tolist())
    assert data.record_count(window) == len(expected) == len(data.records())
    seen: dict[int, list[int]] = {c: [] for c in range(len(columns))}
    got: list[int] = []
    for rec, parts in data.record_windows(window):
        got += rec.tolist()
        for c, (first, rows) in enumerate(parts):
            assert first == len(seen[c])  # each column's entries in order, each once
            seen[c] += rows.tolist()
    assert got == sorted(expected)
    assert all(seen[c] == whole_array(columns[c].rows).tolist() for c in seen)
    assert PartnerSet(0, []).record_count(window) == 0


@pytest.mark.parametrize("in_files", [False, True])
@pytest.mark.parametrize("window", [1, 7, 64, 1 << 20])
def test_match_outcome_a_window_at_a_time_is_the_first_matching_column_per_row(
    window: int, in_files: bool, tmp_path: Path
) -> None:
    """Per row, the highest-priority column whose identifier hit, or -1, with the count
    per column: the same as a row-by-row computation, whether rows, hit flags and the
    outcome are arrays or files."""
    rng = np.random.default_rng(window)
    row_count = 500  # the last rows carry nothing
    limit = 0 if in_files else None
    columns, by_column, hit_parts = [], [], []
    for id_type, share in [("email", 0.5), ("phone", 0.4), ("maid", 0.0), ("idfa", 0.6)]:
        rows = np.flatnonzero(rng.random(470) < share).astype(np.int64)
        hit = rng.random(len(rows)) < 0.5
        by_column.append(dict(zip(rows.tolist(), hit.tolist(), strict=True)))
        hit_parts.append(hit)
        stored = ArrayAppender(np.int64, spill_dir=tmp_path, memory_bytes=limit)
        stored.append(rows)
        columns.append(PartnerColumn(id_type, stored.finish(), bytes(32 * len(rows))))
    data = PartnerSet(row_count, columns)
    hits = np.concatenate(hit_parts)
    flags = ColumnAppender(spill_dir=tmp_path, memory_bytes=limit)
    flags.append(hits.astype(np.uint8).tobytes())
    expected = [
        next((c for c, by_row in enumerate(by_column) if by_row.get(row)), -1)
        for row in range(row_count)
    ]
    for given in (hits, flags.finish()):
        outcome = match_outcome(
            data, given, 9, window=window, spill_dir=tmp_path, memory_bytes=limit
        )
        assert isinstance(outcome.matched_on, FileArray) is in_files
        assert whole_array(outcome.matched_on).tolist() == expected
        assert outcome.matched_per_column == tuple(expected.count(c) for c in range(4))
        assert outcome.matched_records == sum(1 for e in expected if e >= 0) > 0
        assert outcome.brand_points == 9
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="hit flags"):
        match_outcome(data, hits[:-1], 9)
