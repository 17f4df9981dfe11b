"""The brand node's side of ECDH-PSI as a transport-free state machine.

Round by round (DESIGN.md §5; B = brand, P = partner, ``x^k`` = blind):

``HELLO``     P opens with its declared sizes; B answers ``Accepted`` with
              |S|, the comparison length and the chunk size.
``EXCHANGE``  P streams H(p)^b in consecutive chunks. B re-blinds each to
              H(p)^ba: in MATCH it returns them (truncated) in P's order; in
              CARDINALITY it keeps them. Meanwhile B streams its own set as
              H(s)^a, shuffled.
``VALUES``    CARDINALITY only: P returns H(s)^ab, truncated and shuffled
              across the whole set, so B cannot tell which of its records
              matched. B counts P's records with any slot in that set.
``DONE``      after P's ``Finish``: B emits ``Result``.

Any message outside its round, a repeated or skipped sequence number, more
points than declared, or an invalid curve point raises ``ProtocolError`` or
``InvalidPointError`` and fails the session. Outgoing messages are kept until
the session ends, so a partner whose stream dropped can reconnect and ask for
everything after what it already received (``outgoing(values_from, points_from)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleanroom.matching.bulk import ThreadSteps
from cleanroom.matching.journal import Journal, point_chunk, points_of, value_chunk, values_of
from cleanroom.matching.messages import (
    POINT_LEN,
    Accepted,
    BrandMessage,
    ColumnChunk,
    Finish,
    Hello,
    PartnerMessage,
    PointChunk,
    Protocol,
    Result,
    ValueChunk,
)
from cleanroom.matching.semijoin import SemiJoin, Shuffle, records_hit
from cleanroom.matching.session import OrderedResults, Round, Signal, comparison_length, guarded
from cleanroom.matching.workers import CryptoPool, blind_and_truncate, blind_points
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import ProtocolError

MAX_SLOTS_PER_RECORD = 8


@dataclass(frozen=True, slots=True)
class StoredPoints:
    """A brand set read in batches (a stored audience) rather than held whole."""

    count: int
    batches: Callable[[], Iterator[bytes]]  # packed 32-byte points, in any order


@dataclass(frozen=True, slots=True)
class BrandOutcome:
    """What the brand learned, for its records: sizes and the count."""

    partner_records: int
    partner_points: int
    brand_points: int
    intersection: int | None


class BrandSession:
    """One PSI session on the brand node."""

    def __init__(
        self,
        *,
        session_id: str,
        hello: Hello,
        brand_points: np.ndarray | StoredPoints,
        pool: CryptoPool,
        chunk_size: int,
        key: BlindingKey | None = None,
        rng: np.random.Generator | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        """``spill_dir``: where a large session keeps what it sent and its comparison
        buckets (default: the system's temporary directory); they go when it closes."""
        if isinstance(brand_points, np.ndarray) and brand_points.dtype != np.dtype(f"S{POINT_LEN}"):
            raise TypeError("brand_points must be a numpy array of dtype S32, or StoredPoints")
        _check_hello(hello, chunk_size)
        self.session_id = session_id
        self.hello = hello
        self.protocol = hello.protocol
        self.round = Round.HELLO
        self.error: BaseException | None = None
        self._pool = pool
        self._key = key or BlindingKey.generate()
        self._secret = pool.key(self._key.secret_bytes())
        self._rng = rng or np.random.default_rng()
        self._brand = brand_points
        self._brand_count = (
            len(brand_points) if isinstance(brand_points, np.ndarray) else brand_points.count
        )
        self._spill_dir = spill_dir
        self.chunk_size = chunk_size
        self.value_len = comparison_length(hello.declared_points, self._brand_count)
        self._signal = Signal()
        # Everything sent, kept for resumption (on disk past 64 MB, under spill_dir).
        self.values_out: Journal[ValueChunk] = Journal(
            value_chunk, values_of, spill_dir=spill_dir, name="values"
        )
        self.points_out: Journal[PointChunk] = Journal(
            point_chunk, points_of, spill_dir=spill_dir, name="points"
        )
        self.result: Result | None = None
        # Partner stream bookkeeping.
        self.next_partner_seq = 0
        self.partner_points_received = 0
        self.next_value_seq = 0
        self.values_received = 0
        # CARDINALITY: the partner's H(p)^ba (positioned: slots make records) against
        # H(s)^ab from P, bucketed as they arrive.
        self._join: SemiJoin | None = None
        if hello.protocol is Protocol.CARDINALITY:
            self._join = SemiJoin(
                self.value_len, hello.declared_points, self._brand_count, spill_dir=spill_dir
            )
        self._reblind = OrderedResults[bytes](limit=2 * pool.workers)
        self._finish: Finish | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._reblinded_all = asyncio.Event()
        self._brand_sent_all = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Accepted:
        """Leave HELLO: start streaming the brand set; returns ``Accepted``."""
        if self.round is not Round.HELLO:
            raise ProtocolError(f"session {self.session_id} already started")
        self.round = Round.EXCHANGE
        self._tasks = [
            asyncio.ensure_future(guarded(self._stream_brand_set, self.fail)),
            asyncio.ensure_future(guarded(self._collect_reblinded, self.fail)),
        ]
        if self.hello.declared_points == 0:
            self._reblind.close()
        return self.accepted()

    def accepted(self) -> Accepted:
        return Accepted(
            session_id=self.session_id,
            brand_points=self._brand_count,
            value_len=self.value_len,
            chunk_size=self.chunk_size,
            next_partner_seq=self.next_partner_seq,
            next_value_seq=self.next_value_seq,
        )

    def resume(self, hello: Hello) -> Accepted:
        """A reconnecting partner: check it is the same session, re-accept."""
        if self.round in (Round.DONE, Round.FAILED):
            raise ProtocolError(f"session {self.session_id} is {self.round}; it cannot resume")
        if (hello.audience, hello.protocol) != (self.hello.audience, self.hello.protocol):
            raise ProtocolError("a resumed session must name the same audience and protocol")
        if hello.received_values > len(self.values_out) or hello.received_points > len(
            self.points_out
        ):
            raise ProtocolError("the partner claims chunks that were never sent")
        return self.accepted()

    def fail(self, exc: BaseException) -> None:
        if self.round is Round.DONE:
            return
        self.round = Round.FAILED
        self.error = exc
        self.close()
        self._signal.notify()

    def close(self) -> None:
        """Stop background work and drop key material (and what it kept on disk)."""
        self._reblind.cancel()
        self._pool.forget(self._secret)
        self.values_out.close()
        self.points_out.close()
        if self._join is not None:
            self._join.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    @property
    def finished(self) -> bool:
        return self.round in (Round.DONE, Round.FAILED)

    def outcome(self) -> BrandOutcome:
        return BrandOutcome(
            partner_records=self.hello.declared_records,
            partner_points=self.hello.declared_points,
            brand_points=self._brand_count,
            intersection=(self.result.intersection if self.result and self.result.known else None),
        )

    # ------------------------------------------------------------- incoming

    async def receive(self, msg: PartnerMessage) -> None:
        """Handle one partner message (the stream reader calls this in order)."""
        if self.round is Round.FAILED:
            raise ProtocolError(f"session {self.session_id} has failed") from self.error
        if isinstance(msg, PointChunk):
            await self._on_points(msg)
        elif isinstance(msg, ValueChunk):
            self._on_values(msg)
        elif isinstance(msg, Finish):
            self._on_finish(msg)
        elif isinstance(msg, Hello):
            raise ProtocolError("Hello may only open a stream")
        elif isinstance(msg, ColumnChunk):
            raise ProtocolError("column chunks belong to OT-extension sessions; this one is ECDH")
        else:
            raise TypeError(f"not a partner message: {type(msg).__name__}")

    async def _on_points(self, chunk: PointChunk) -> None:
        if self.round is not Round.EXCHANGE:
            raise ProtocolError(f"points chunk {chunk.seq} arrived in round {self.round}")
        self._check_seq("points", chunk.seq, self.next_partner_seq)
        if not chunk.points or len(chunk.points) % POINT_LEN:
            raise ProtocolError(
                f"points chunk {chunk.seq} holds {len(chunk.points)} bytes,"
                f" not a positive multiple of {POINT_LEN}"
            )
        if chunk.count > self.chunk_size:
            raise ProtocolError(
                f"points chunk {chunk.seq} holds {chunk.count} points;"
                f" the limit is {self.chunk_size}"
            )
        if self.partner_points_received + chunk.count > self.hello.declared_points:
            raise ProtocolError(
                f"points chunk {chunk.seq} exceeds the declared"
                f" {self.hello.declared_points} points;"
                " the brand node re-blinds no more than declared"
            )
        await self._reblind.reserve()
        self.next_partner_seq += 1
        self.partner_points_received += chunk.count
        self._reblind.put(
            self._pool.run(blind_and_truncate, self._secret, chunk.points, self._kept_len())
        )
        if self.partner_points_received == self.hello.declared_points:
            self._reblind.close()

    def _on_values(self, chunk: ValueChunk) -> None:
        if self.protocol is not Protocol.CARDINALITY:
            raise ProtocolError("value chunks from the partner belong to CARDINALITY sessions")
        if self.round is not Round.EXCHANGE:
            raise ProtocolError(f"values chunk {chunk.seq} arrived in round {self.round}")
        self._check_seq("values", chunk.seq, self.next_value_seq)
        if not chunk.values or len(chunk.values) % self.value_len:
            raise ProtocolError(
                f"values chunk {chunk.seq} holds {len(chunk.values)} bytes,"
                f" not a positive multiple of {self.value_len}"
            )
        count = len(chunk.values) // self.value_len
        if self.values_received + count > self._brand_count:
            raise ProtocolError(f"more values than the brand set's {self._brand_count} points")
        self.next_value_seq += 1
        self.values_received += count
        assert self._join is not None
        self._join.right.add(chunk.values)

    def _on_finish(self, finish: Finish) -> None:
        if self.round is not Round.EXCHANGE:
            raise ProtocolError(f"Finish arrived in round {self.round}")
        if self.partner_points_received != self.hello.declared_points:
            raise ProtocolError(
                f"Finish after {self.partner_points_received} of"
                f" {self.hello.declared_points} declared points"
            )
        if self.protocol is Protocol.CARDINALITY and self.values_received != self._brand_count:
            raise ProtocolError(
                f"Finish after {self.values_received} of {self._brand_count} values"
            )
        reported = self.protocol is Protocol.MATCH and finish.report_count
        if reported and finish.matched_records > self.hello.declared_records:
            raise ProtocolError("the reported match count exceeds the declared records")
        self._finish = finish
        self.round = Round.VALUES
        self._tasks.append(asyncio.ensure_future(guarded(self._conclude, self.fail)))

    def _check_seq(self, stream: str, seq: int, expected: int) -> None:
        if seq < expected:
            raise ProtocolError(f"duplicate {stream} chunk {seq}: chunk {expected} is next")
        if seq > expected:
            raise ProtocolError(f"out-of-order {stream} chunk {seq}: chunk {expected} is next")

    def _kept_len(self) -> int:
        return self.value_len

    # ----------------------------------------------------------- background

    async def _stream_brand_set(self) -> None:
        results = OrderedResults[bytes](limit=2 * self._pool.workers)

        async def feed() -> None:
            async for packed in self._brand_chunks():
                await results.submit(self._pool.run(blind_points, self._secret, packed, False))
            results.close()

        feeder = asyncio.ensure_future(feed())
        try:
            async for blinded in results:
                self.points_out.append(PointChunk(seq=len(self.points_out), points=blinded))
                self._signal.notify()
            await feeder
        finally:
            feeder.cancel()
            results.cancel()
        self._brand_sent_all.set()

    async def _brand_chunks(self) -> AsyncIterator[bytes]:
        """The brand set in a uniformly random order, ``chunk_size`` points a chunk: a
        permutation of a set in memory, or a stored one read batch by batch into
        random batches (``Shuffle``: on disk past 256 MB), never held whole."""
        brand = self._brand
        if isinstance(brand, np.ndarray):
            order = self._rng.permutation(len(brand))
            for start in range(0, len(order), self.chunk_size):
                yield brand[order[start : start + self.chunk_size]].tobytes()
            return
        shuffle = Shuffle(POINT_LEN, brand.count, self._rng, spill_dir=self._spill_dir)
        # The session may end while the thread fills the shuffle: it stops at its next
        # batch, and the shuffle's files go once its running batch is in.
        steps = ThreadSteps(shuffle.close)

        def fill() -> None:
            for packed in brand.batches():
                with steps.step():
                    shuffle.add(packed)

        try:
            await asyncio.to_thread(fill)
            if shuffle.count != brand.count:
                raise RuntimeError(
                    f"the stored audience holds {shuffle.count} points, not {brand.count}"
                )
            for chunk in shuffle.chunks(self.chunk_size):
                yield chunk
        finally:
            steps.close()

    async def _collect_reblinded(self) -> None:
        async for values in self._reblind:
            if self.protocol is Protocol.MATCH:
                self.values_out.append(ValueChunk(seq=len(self.values_out), values=values))
                self._signal.notify()
            else:
                assert self._join is not None
                self._join.left.add(values)
        self._reblinded_all.set()

    async def _conclude(self) -> None:
        await self._reblinded_all.wait()
        await self._brand_sent_all.wait()
        finish = self._finish
        assert finish is not None
        if self.protocol is Protocol.MATCH:
            self.result = Result(intersection=finish.matched_records, known=finish.report_count)
        else:
            self.result = Result(intersection=await self._count_matching_records(), known=True)
        self.round = Round.DONE
        self._signal.notify()

    async def _count_matching_records(self) -> int:
        assert self._join is not None
        flags = await self._join.hit_flags(self._pool.run, window=2 * self._pool.workers)
        self._join.close()
        slots = self.hello.slots_per_record
        return await asyncio.to_thread(
            lambda: sum(int(hit.sum()) for hit in records_hit(flags, slots))
        )

    # ------------------------------------------------------------- outgoing

    async def outgoing(
        self, values_from: int = 0, points_from: int = 0
    ) -> AsyncIterator[BrandMessage]:
        """Everything for the partner after what it already holds, then ``Result``."""
        vi, pi = values_from, points_from
        while True:
            if self.error is not None:
                raise self.error
            waiting = self._signal.current()
            while vi < len(self.values_out):
                yield self.values_out[vi]
                vi += 1
            while pi < len(self.points_out):
                yield self.points_out[pi]
                pi += 1
            if self.result is not None:
                yield self.result
                return
            await waiting.wait()


def _check_hello(hello: Hello, chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if hello.declared_points < 0 or hello.declared_records < 0:
        raise ProtocolError("declared sizes cannot be negative")
    if hello.protocol is Protocol.CARDINALITY:
        if not 1 <= hello.slots_per_record <= MAX_SLOTS_PER_RECORD:
            raise ProtocolError(
                f"CARDINALITY needs 1..{MAX_SLOTS_PER_RECORD} slots per record,"
                f" not {hello.slots_per_record}"
            )
        if hello.declared_points != hello.declared_records * hello.slots_per_record:
            raise ProtocolError("CARDINALITY declares exactly records x slots points")
    elif hello.declared_points > hello.declared_records * MAX_SLOTS_PER_RECORD:
        raise ProtocolError(
            f"{hello.declared_points} points for {hello.declared_records} records is more than"
            f" {MAX_SLOTS_PER_RECORD} identifiers per record"
        )
