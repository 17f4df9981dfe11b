"""The brand node's side of attribution as a transport-free state machine.

Rounds (``AttrRound``; the package docstring has the protocol):

``HELLO``   constructed from the partner's ``AttrHello``: windows and the
            identifier types in common are checked here, before the node
            charges any budget. ``start()`` answers ``AttrAccepted`` and
            starts on the brand's own tokens and encrypted values.
``CELLS``   waits for ``AttrCells``.
``TOKENS``  re-blinds each cell's ``CellTokens`` as they stream in and sends
            a complete cell back shuffled, in chunks (``CellValues``); once
            every cell is back, streams ``ConversionTokens`` and
            ``EventValues``.
``RESULT``  after ``AttrAggregates``: decrypts them (and only them) and hands
            them to ``conclude`` (the node stores the report), then sends
            ``AttrDone`` with the report id.
``DONE`` / ``FAILED``.

Any message outside its round, a repeated or skipped chunk, more tokens than
declared or a malformed aggregate raises ``ProtocolError`` and fails the run;
so does the partner's stream ending before its aggregates (``end_of_input``).

Nothing of the set is held whole but its events: the identifiers are read a part at a
time, the tokens and each cell wait in a ``Shuffle`` (files past ``memory_bytes``), the
ciphertexts in a column (a file past 64 MiB), all in ``spill_dir``, removed by ``close``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from cleanroom.federated.attribution.inputs import ConversionIds, ConversionSource
from cleanroom.federated.attribution.messages import (
    CUSTOMER_LEN,
    GROUPS,
    VALUE_SCALE,
    AttrAccepted,
    AttrAggregates,
    AttrBrandMessage,
    AttrCells,
    AttrDone,
    AttrHello,
    AttrPartnerMessage,
    AttrRound,
    Cell,
    CellTokens,
    CellValues,
    ConversionTokens,
    DpParams,
    EventValues,
)
from cleanroom.federated.attribution.numbering import KeyedPermutation
from cleanroom.federated.attribution.report import DecryptedAggregates, GroupStats
from cleanroom.federated.attribution.tokens import POINT_CHUNK, LaggedPoints
from cleanroom.federated.jobs import encrypt_packed
from cleanroom.federated.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    private_key_to_json,
)
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.semijoin import PositionedRows, Shuffle
from cleanroom.matching.session import RoundMachine, comparison_length, in_order
from cleanroom.matching.workers import RunJobs, blind_and_truncate, hash_and_blind_mixed
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import PolicyViolation, ProtocolError

# A conversion token as it waits in its shuffle: point | anonymous event (uint32 LE) | lag.
TOKEN_ROW = POINT_LEN + 4 + 1
OUTBOX_AHEAD = 16  # messages queued ahead of the network
CELL_WINDOW = 8  # re-blinding jobs in flight for the cell being received
EVENT_PART = 16_384  # events per encryption job (a worker keeps the key's tables)
CUSTOMER_DOMAIN = 1 << 32

T = TypeVar("T")


def common_id_types(held: tuple[str, ...], declared: tuple[str, ...]) -> tuple[str, ...]:
    """The identifier types both sides hold, or PolicyViolation when there is none."""
    common = tuple(t for t in held if t in set(declared))
    if not common:
        raise PolicyViolation(
            "no identifier type in common: the conversions hold "
            f"{', '.join(held) or 'no identifiers'}, the partner declared "
            f"{', '.join(declared) or 'none'}"
        )
    return common


class BrandRun(Protocol):
    """What a transport drives on the brand's side: a run, or a repeated submission's answer."""

    @property
    def public_key(self) -> PaillierPublicKey | None:
        """The run's key, for serde to read and write ciphertexts (None: no run)."""
        ...

    def start(self) -> AttrAccepted: ...

    async def receive(self, msg: AttrPartnerMessage) -> None: ...

    def outgoing(self) -> AsyncIterator[AttrBrandMessage]: ...

    def end_of_input(self) -> None: ...

    def fail(self, exc: BaseException) -> None: ...

    def close(self) -> None: ...


class AlreadyReported:
    """The answer to a submission that already has a report: that report, and no run."""

    public_key: PaillierPublicKey | None = None

    def __init__(self, report_id: str) -> None:
        self.report_id = report_id

    def start(self) -> AttrAccepted:
        return AttrAccepted("", 0, 0, 0, 0, DpParams(), report_id=self.report_id)

    async def receive(self, msg: AttrPartnerMessage) -> None:
        raise ProtocolError(f"this submission already has report {self.report_id}")

    async def outgoing(self) -> AsyncIterator[AttrBrandMessage]:
        yield AttrDone(report_id=self.report_id)

    def end_of_input(self) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class BrandAttribution(RoundMachine[AttrRound]):
    """B's state machine for one run. Crypto runs in ``jobs`` (the node's worker pool)."""

    def __init__(
        self,
        *,
        session_id: str,
        hello: AttrHello,
        data: ConversionSource,
        public_key: PaillierPublicKey,
        private_key: PaillierPrivateKey,
        dp: DpParams,
        jobs: RunJobs | None = None,
        conclude: Callable[[DecryptedAggregates], str] | None = None,
        on_cells: Callable[[BrandAttribution], None] | None = None,
        rng: np.random.Generator | None = None,
        key: BlindingKey | None = None,
        chunk_size: int = 8192,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        h = hello
        if h.click_days < 0 or h.view_days < 0 or max(h.click_days, h.view_days) > 90:
            raise ProtocolError("attribution windows are 0..90 days")
        super().__init__(AttrRound.HELLO, jobs)
        self.session_id = session_id
        self.hello = hello
        self.public_key = public_key
        self.private_key = private_key
        self.dp = dp
        self.rng = rng or np.random.default_rng()
        # Tokens per ConversionTokens message; half as many ciphertexts per EventValues.
        self.chunk_size = chunk_size
        # Shuffles and the ciphertext column go to files in ``spill_dir`` past this size.
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        # ``conclude`` stores what the run produced and names it (the report id).
        self._conclude = conclude or (lambda _result: session_id)
        self._cells_listener = on_cells
        self.result: DecryptedAggregates | None = None
        self.max_lag = max(h.click_days, h.view_days)
        self._secret = self._jobs.key((key or BlindingKey.generate()).secret_bytes())
        # Only types both sides hold are tokenized: tokens are domain-separated
        # by type, so any other token could never match.
        self.id_types = common_id_types(data.held_types(), h.id_types)
        self.data = data
        self.brand_tokens = data.identifier_count(self.id_types) * (self.max_lag + 1)
        self.point_count = 0  # distinct tokens blinded (each once), counted as they are
        self.cells: tuple[Cell, ...] = ()
        self.cell_tokens: tuple[int, ...] = ()
        self.value_len = 0  # known once P's cells are
        self._cells_in: dict[int, _CellBack] = {}
        self._received_count: list[int] = []
        self._token_shuffle: Shuffle | None = None
        self._event_rows: PositionedRows | None = None
        self._cells_back = 0
        self._next_seq = 0
        # Anonymous event and customer numbers, fresh per session: computed for any part
        # of the set (``numbering``), never a table of the whole set. Customers are
        # numbered in a 32-bit domain: the partner counts distinct ones, and learns
        # their number either way.
        self._event_anon = KeyedPermutation.random(self.rng, self.data.events)
        self._customer_anon = KeyedPermutation.random(self.rng, CUSTOMER_DOMAIN)
        # Cells are shuffled on another thread than the conversion tokens are
        # built on (they overlap); numpy generators are not thread-safe.
        self._cell_rng = np.random.default_rng(self.rng.integers(2**63))
        self._every_cell_back = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    def accepted(self) -> AttrAccepted:
        return AttrAccepted(
            session_id=self.session_id,
            public_key_n=self.public_key.n,
            max_lag=self.max_lag,
            events=self.data.events,
            brand_tokens=self.brand_tokens,
            dp=self.dp,
            id_types=self.id_types,
        )

    def start(self) -> AttrAccepted:
        """Leave HELLO: answer the partner and start on the brand's own tokens."""
        if self.round is not AttrRound.HELLO:
            raise ProtocolError(f"run {self.session_id} already started")
        self.round = AttrRound.CELLS
        self.spawn(self._send_brand_set)
        return self.accepted()

    def close(self) -> None:
        super().close()
        for back in self._cells_in.values():
            back.close()
        self._cells_in.clear()
        if self._token_shuffle is not None:
            self._token_shuffle.close()
        if self._event_rows is not None:
            self._event_rows.close()

    def end_of_input(self) -> None:
        """The partner's stream ended: fine after its aggregates, a failure before."""
        if self.round in (AttrRound.CELLS, AttrRound.TOKENS):
            self.fail(ProtocolError("the stream ended before the aggregates; no report was stored"))

    # ------------------------------------------------------------- incoming

    async def receive(self, msg: AttrPartnerMessage) -> None:
        """Handle one partner message, in stream order; an error fails the run."""
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: AttrPartnerMessage) -> None:
        if isinstance(msg, AttrCells):
            await self._on_cells(msg)
        elif isinstance(msg, CellTokens):
            await self._on_cell_tokens(msg)
        elif isinstance(msg, AttrAggregates):
            await self._on_aggregates(msg)
        elif isinstance(msg, AttrHello):
            raise ProtocolError("AttrHello may only open a stream")
        else:
            raise TypeError(f"not an attribution partner message: {type(msg).__name__}")

    async def _on_cells(self, msg: AttrCells) -> None:
        """P's cells: from here its tokens may stream in."""
        if self.round is not AttrRound.CELLS:
            raise ProtocolError(f"cells arrived in round {self.round}")
        if len(msg.cells) != len(msg.cell_tokens) or not msg.cells:
            raise ProtocolError("one token count per cell, and at least one cell")
        if len(set(msg.cells)) != len(msg.cells):
            raise ProtocolError("cells must be distinct")
        if min(msg.cell_tokens) < 1:
            raise ProtocolError("every cell carries at least one token")
        self.cells, self.cell_tokens = tuple(msg.cells), tuple(msg.cell_tokens)
        self.value_len = comparison_length(sum(self.cell_tokens), self.brand_tokens)
        self._received_count = [0] * len(self.cells)
        self.round = AttrRound.TOKENS
        if self._cells_listener is not None:
            await asyncio.to_thread(self._cells_listener, self)

    async def _on_cell_tokens(self, msg: CellTokens) -> None:
        """Re-blind a chunk; a complete cell goes back shuffled."""
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"cell tokens arrived in round {self.round}")
        if msg.seq != self._next_seq:
            kind = "duplicate" if msg.seq < self._next_seq else "out-of-order"
            raise ProtocolError(f"{kind} cell chunk {msg.seq}: chunk {self._next_seq} is next")
        if not 0 <= msg.cell < len(self.cells):
            raise ProtocolError(f"cell chunk {msg.seq} names unknown cell {msg.cell}")
        if not msg.points or len(msg.points) % POINT_LEN:
            raise ProtocolError(f"cell chunk {msg.seq} is not a whole number of points")
        count = len(msg.points) // POINT_LEN
        expected = self.cell_tokens[msg.cell]
        if self._received_count[msg.cell] + count > expected:
            raise ProtocolError(f"cell {msg.cell} exceeds its declared {expected} tokens")
        self._next_seq += 1
        self._received_count[msg.cell] += count
        back = self._cells_in.get(msg.cell)
        if back is None:
            shuffle = Shuffle(
                self.value_len,
                expected,
                self._cell_rng,
                memory_bytes=self._memory_bytes,
                spill_dir=self._spill_dir,
            )
            back = self._cells_in[msg.cell] = _CellBack(shuffle)
        # Re-blinded as the chunks arrive, a few jobs in flight; into the cell's shuffle.
        job = self._jobs.call(blind_and_truncate, self._secret, msg.points, self.value_len)
        back.running.append(asyncio.ensure_future(job))
        while len(back.running) > CELL_WINDOW:
            back.shuffle.add(await back.running.popleft())
        if self._received_count[msg.cell] < expected:
            return
        # The whole cell is in: it goes back in a uniformly random order, in chunks, so
        # that P can no longer link a value to a user.
        while back.running:
            back.shuffle.add(await back.running.popleft())
        async for values in _threaded(back.shuffle.chunks(self.chunk_size)):
            await self.room(OUTBOX_AHEAD)
            self.put(CellValues(cell=msg.cell, values=values))
        del self._cells_in[msg.cell]
        back.close()
        self._cells_back += 1
        if self._cells_back == len(self.cells):
            self._every_cell_back.set()

    async def _on_aggregates(self, msg: AttrAggregates) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"aggregates arrived in round {self.round}")
        if any(self._received_count[i] != n for i, n in enumerate(self.cell_tokens)):
            raise ProtocolError("aggregates arrived before every cell's tokens")
        self.round = AttrRound.RESULT
        self.result = await asyncio.to_thread(self.decrypt, msg)
        report_id = await asyncio.to_thread(self._conclude, self.result)
        self.put(AttrDone(report_id=report_id))
        self.round = AttrRound.DONE
        self._signal.notify()

    def decrypt(self, msg: AttrAggregates) -> DecryptedAggregates:
        """Decrypt the aggregates (and only them) into the report's inputs."""
        pk = self.public_key
        groups: dict[tuple[str, str], GroupStats] = {}
        for g in msg.groups:
            if g.group not in GROUPS:
                raise ProtocolError(f"unknown group {g.group!r}")
            if (g.campaign_id, g.group) in groups:
                raise ProtocolError(f"{g.campaign_id}/{g.group} is aggregated twice")
            # Noise can push a small sum below zero; clamping is post-processing,
            # so it costs no privacy.
            revenue = max(0.0, self.private_key.decrypt(pk.validate(g.revenue)) / VALUE_SCALE)
            converters = g.converters
            if converters > g.conversions:
                if self.dp.mechanism == "off":
                    raise ProtocolError(
                        f"{g.campaign_id}/{g.group}: more converters than conversions"
                    )
                converters = g.conversions  # independent noise on both; post-processing
            groups[(g.campaign_id, g.group)] = GroupStats(
                users=g.users, conversions=g.conversions, revenue=revenue, converters=converters
            )
        attributed: dict[str, tuple[int, float]] = {}
        for a in msg.attributed:
            if a.campaign_id in attributed:
                raise ProtocolError(f"{a.campaign_id} is attributed twice")
            revenue = max(0.0, self.private_key.decrypt(pk.validate(a.revenue)) / VALUE_SCALE)
            attributed[a.campaign_id] = (a.conversions, revenue)
        return DecryptedAggregates(groups=groups, attributed=attributed, spend=dict(msg.spend))

    # ------------------------------------------------------------- outgoing

    def outgoing(self) -> AsyncIterator[AttrBrandMessage]:
        """Everything for the partner after ``AttrAccepted``, in order, ending with ``AttrDone``.

        A message is dropped once handed out (a run never resends), so what the brand
        holds of its outgoing stream is ``OUTBOX_AHEAD`` messages."""
        return self.drain(AttrDone, forget=True)

    async def _send_brand_set(self) -> None:
        """The brand's tokens and encrypted values, once every cell went back.

        Both are built from the start (they do not depend on the partner's), into a
        shuffle and the events in anonymous order, which go to disk for a large set; they
        go out after the cells, so the partner's workers re-blind them once its own tokens
        are sent.
        """
        self._token_shuffle = Shuffle(
            TOKEN_ROW,
            self.brand_tokens,
            self.rng,
            memory_bytes=self._memory_bytes,
            spill_dir=self._spill_dir,
        )
        tokens = asyncio.ensure_future(
            asyncio.to_thread(self.shuffle_conversion_tokens, self._token_shuffle)
        )
        try:
            event_rows = await self.encrypt_event_values()
            await tokens
            await self._every_cell_back.wait()
            async for msg in _threaded(self.conversion_tokens(self._token_shuffle)):
                await self.room(OUTBOX_AHEAD)
                self.put(msg)
            self._token_shuffle.close()
            async for ev in _threaded(self.event_values(event_rows)):
                await self.room(OUTBOX_AHEAD)
                self.put(ev)
            event_rows.close()
        finally:
            # A cancelled run's thread ends with its jobs cancelled: mark its outcome
            # as seen.
            tokens.add_done_callback(_retrieve)

    def shuffle_conversion_tokens(self, shuffle: Shuffle) -> None:
        """T(y)^b for every (identifier, lag), with its anonymous event and lag, into
        ``shuffle``: one part of the set at a time.

        Each distinct token of a part is blinded once, from its point stored at upload
        when there is one (lags below ``PRECOMPUTED_LAGS``), else hashed here.
        """
        lags = self.max_lag + 1
        for part in self.data.identifier_parts(self.id_types):
            if not len(part.event):
                continue
            lagged = LaggedPoints.of(part.id_type, part.digest, part.day, lags)
            blinded = self._blind(part, lagged)
            self.point_count += len(blinded)
            rows = np.empty((len(part.event) * lags, TOKEN_ROW), dtype=np.uint8)
            rows[:, :POINT_LEN] = blinded[lagged.keys.reshape(-1)]
            anon = np.repeat(self._event_anon(part.event), lags).astype("<u4")
            rows[:, POINT_LEN:-1] = anon.view(np.uint8).reshape(-1, 4)
            rows[:, -1] = np.tile(np.arange(lags, dtype=np.uint8), len(part.event))
            shuffle.add(rows.tobytes())

    def _blind(self, part: ConversionIds, lagged: LaggedPoints) -> np.ndarray:
        """Every distinct token of ``part`` blinded (uint8 (keys, 32), in key order)."""
        lags = self.max_lag + 1
        rep_id, rep_lag = lagged.first_item // lags, lagged.first_item % lags
        stored_lags = 0 if part.points is None else part.points.shape[1]
        from_store = np.flatnonzero(rep_lag < stored_lags)
        targets: list[np.ndarray] = []
        jobs: list[tuple[Any, ...]] = []
        for start in range(0, len(from_store), POINT_CHUNK):
            sel = from_store[start : start + POINT_CHUNK]
            assert part.points is not None
            stored = part.points[rep_id[sel], rep_lag[sel]].tobytes()
            targets.append(sel)
            jobs.append((self._secret, stored, bytes(len(sel)), (None,), POINT_LEN))
        for keys, job in lagged.hash_jobs(np.flatnonzero(rep_lag >= stored_lags)):
            targets.append(keys)
            jobs.append((self._secret, *job))
        blinded = np.empty((len(lagged.first_item), POINT_LEN), dtype=np.uint8)
        for sel, out in zip(targets, self._jobs.run_many(hash_and_blind_mixed, jobs), strict=True):
            blinded[sel] = np.frombuffer(out, dtype=np.uint8).reshape(-1, POINT_LEN)
        return blinded

    def conversion_tokens(self, shuffle: Shuffle) -> Iterator[ConversionTokens]:
        """The shuffled tokens as messages of ``chunk_size`` tokens."""
        for seq, packed in enumerate(shuffle.chunks(self.chunk_size)):
            rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, TOKEN_ROW)
            yield ConversionTokens(
                seq=seq,
                points=rows[:, :POINT_LEN].tobytes(),
                events=rows[:, POINT_LEN:-1].tobytes(),
                lags=rows[:, -1].tobytes(),
            )

    async def encrypt_event_values(self) -> PositionedRows:
        """Per event, in anonymous order: its anonymous customer (4 bytes) and Enc(clipped
        scaled value) (``ciphertext_bytes``), in rows that go to files for a large set.

        The events are read a group of customers at a time (customers are numbered group
        after group), encrypted ``EVENT_PART`` a job over the workers, a few jobs in
        flight, and put at their anonymous positions: the node never holds the set's
        events or ciphertexts, nor the big-integer work that would hold the GIL its
        event loop needs."""
        width = self.public_key.ciphertext_bytes
        rows = self._event_rows = PositionedRows(
            CUSTOMER_LEN + width,
            self.data.events,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        key = self._jobs.key(json.dumps(private_key_to_json(self.private_key)))
        bits = self.public_key.n.bit_length()
        cap = self.dp.value_cap if self.dp.mechanism != "off" else np.inf
        numbered = 0
        # Groups are read on threads (a stored set's come from files); a run that ends
        # early drops the generator, whose cleanup removes its files.
        async for group in _threaded(self.data.event_groups()):
            if numbered + group.customers > CUSTOMER_DOMAIN:
                raise ProtocolError(f"a run counts at most {CUSTOMER_DOMAIN} customers")
            anon_event = self._event_anon(group.event)
            anon_customer = self._customer_anon(group.customer + numbered).astype("<u4")
            numbered += group.customers
            scaled = np.minimum(group.value, cap) * VALUE_SCALE
            jobs = (
                (key, bits, [round(float(v)) for v in scaled[at : at + EVENT_PART]])
                for at in range(0, len(scaled), EVENT_PART)
            )
            at = 0
            async for packed in in_order(self._jobs, encrypt_packed, jobs):
                n = len(packed) // width
                out = np.empty((n, CUSTOMER_LEN + width), dtype=np.uint8)
                out[:, :CUSTOMER_LEN] = anon_customer[at : at + n].view(np.uint8).reshape(n, -1)
                out[:, CUSTOMER_LEN:] = np.frombuffer(packed, dtype=np.uint8).reshape(n, width)
                rows.put(anon_event[at : at + n], out)
                at += n
        return rows

    def event_values(self, rows: PositionedRows) -> Iterator[EventValues]:
        """Per anonymous event, ``chunk_size / 2`` a message: anonymous customer, Enc(value)."""
        chunk = max(1, self.chunk_size // 2)
        start = 0
        for seq, packed in enumerate(rows.chunks(chunk)):
            block = np.frombuffer(packed, dtype=np.uint8).reshape(-1, rows.width)
            yield EventValues(
                seq=seq,
                start=start,
                customers=block[:, :CUSTOMER_LEN].tobytes(),
                ciphertexts=block[:, CUSTOMER_LEN:].tobytes(),
            )
            start += len(block)


class _CellBack:
    """A partner cell being received: its re-blinding jobs in flight, and its shuffle."""

    def __init__(self, shuffle: Shuffle) -> None:
        self.shuffle = shuffle
        self.running: deque[asyncio.Future[bytes]] = deque()

    def close(self) -> None:
        for job in self.running:
            job.cancel()
        self.shuffle.close()


async def _threaded(items: Iterator[T]) -> AsyncIterator[T]:
    """Each of ``items``, read on a thread (a shuffle or a column may read files)."""
    while (item := await asyncio.to_thread(next, items, None)) is not None:
        yield item


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
