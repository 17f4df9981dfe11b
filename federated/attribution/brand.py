"""The brand node's side of attribution as a transport-free state machine.

Rounds (``AttrRound``; the package docstring has the protocol):

``HELLO``   constructed from the partner's ``AttrHello``: windows and the
            identifier types in common are checked here, before the node
            charges any budget. ``start()`` answers ``AttrAccepted`` and
            starts on the brand's own tokens and encrypted values.
``CELLS``   waits for ``AttrCells``.
``TOKENS``  re-blinds each cell's ``CellTokens`` as they stream in and sends
            a complete cell back shuffled (``CellValues``); once every cell is
            back, streams ``ConversionTokens`` and ``EventValues``.
``RESULT``  after ``AttrAggregates``: decrypts them (and only them) and hands
            them to ``conclude`` (the node stores the report), then sends
            ``AttrDone`` with the report id.
``DONE`` / ``FAILED``.

Any message outside its round, a repeated or skipped chunk, more tokens than
declared or a malformed aggregate raises ``ProtocolError`` and fails the run;
so does the partner's stream ending before its aggregates (``end_of_input``).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import numpy as np

from cleanroom.federated.attribution.inputs import BrandConversions
from cleanroom.federated.attribution.messages import (
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
from cleanroom.federated.attribution.report import DecryptedAggregates, GroupStats
from cleanroom.federated.attribution.tokens import POINT_CHUNK, LaggedPoints
from cleanroom.federated.jobs import encrypt_scaled
from cleanroom.federated.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    private_key_to_json,
)
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.session import RoundMachine, comparison_length
from cleanroom.matching.workers import RunJobs, blind_and_truncate, hash_and_blind_mixed
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import PolicyViolation, ProtocolError


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
        data: BrandConversions,
        public_key: PaillierPublicKey,
        private_key: PaillierPrivateKey,
        dp: DpParams,
        jobs: RunJobs | None = None,
        conclude: Callable[[DecryptedAggregates], str] | None = None,
        on_cells: Callable[[BrandAttribution], None] | None = None,
        rng: np.random.Generator | None = None,
        key: BlindingKey | None = None,
        chunk_size: int = 8192,
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
        # ``conclude`` stores what the run produced and names it (the report id).
        self._conclude = conclude or (lambda _result: session_id)
        self._cells_listener = on_cells
        self.result: DecryptedAggregates | None = None
        self.max_lag = max(h.click_days, h.view_days)
        self._secret = self._jobs.key((key or BlindingKey.generate()).secret_bytes())
        # Only types both sides hold are tokenized: tokens are domain-separated
        # by type, so any other token could never match.
        held = data.held_types()
        self.id_types = common_id_types(held, h.id_types)
        self.data = data.with_types(self.id_types) if len(self.id_types) < len(held) else data
        self.brand_tokens = int(len(self.data.id_event) * (self.max_lag + 1))
        self.cells: tuple[Cell, ...] = ()
        self.cell_tokens: tuple[int, ...] = ()
        self.value_len = 0  # known once P's cells are
        self._received: dict[int, list[bytes]] = {}
        self._received_count: list[int] = []
        self._cells_back = 0
        self._next_seq = 0
        # Anonymous event and customer numbering, fresh per session.
        self._event_order = self.rng.permutation(self.data.events)  # anonymous -> event
        self._event_anon = np.empty(self.data.events, dtype=np.int64)
        self._event_anon[self._event_order] = np.arange(self.data.events)
        customers = int(self.data.customer.max()) + 1 if self.data.events else 0
        self._customer_anon = self.rng.permutation(customers)
        # Cells are shuffled on another thread than the conversion tokens are
        # built on (they overlap); numpy generators are not thread-safe.
        self._cell_rng = np.random.default_rng(self.rng.integers(2**63))
        self._every_cell_back = asyncio.Event()

    @functools.cached_property
    def _lagged(self) -> LaggedPoints:
        # Built on first use, off the hello's path: the partner waits for the answer.
        d = self.data
        return LaggedPoints.of(d.id_type, d.id_digest, d.day[d.id_event], self.max_lag + 1)

    @property
    def point_count(self) -> int:
        """Distinct tokens: each is blinded once."""
        return len(self._lagged.first_item)

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
        self._received = {i: [] for i in range(len(self.cells))}
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
        self._received[msg.cell].append(msg.points)
        self._received_count[msg.cell] += count
        if self._received_count[msg.cell] < expected:
            return
        # A whole cell at once, re-blinded over all workers, then shuffled.
        chunks = self._received.pop(msg.cell)
        values = await asyncio.gather(
            *(
                self._jobs.call(blind_and_truncate, self._secret, pts, self.value_len)
                for pts in chunks
            )
        )
        arr = np.frombuffer(b"".join(values), dtype=np.uint8)
        arr = arr.reshape(-1, self.value_len)[self._cell_rng.permutation(expected)]
        self.put(CellValues(cell=msg.cell, values=arr.tobytes()))
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
        """Everything for the partner after ``AttrAccepted``, in order, ending with ``AttrDone``."""
        return self.drain(AttrDone)

    async def _send_brand_set(self) -> None:
        """The brand's tokens and encrypted values, once every cell went back.

        Both are built from the start (they do not depend on the partner's);
        they go out after the cells, so the partner's workers re-blind them
        once its own tokens are sent.
        """
        tokens = asyncio.ensure_future(asyncio.to_thread(self.conversion_tokens))
        values = asyncio.ensure_future(asyncio.to_thread(self.event_values))
        try:
            await self._every_cell_back.wait()
            for msg in await tokens:
                self.put(msg)
            for ev in await values:
                self.put(ev)
        finally:
            # A cancelled run's threads end with its jobs cancelled: mark their
            # outcome as seen.
            for job in (tokens, values):
                job.add_done_callback(_retrieve)

    def conversion_tokens(self, chunk: int | None = None) -> list[ConversionTokens]:
        """T(y)^b for every (identifier, lag), shuffled, with event and lag labels.

        Each distinct token is blinded once, from its point stored at upload
        when there is one (lags below ``PRECOMPUTED_LAGS``), else hashed here.
        """
        chunk = chunk or self.chunk_size
        d, lp = self.data, self._lagged
        lags = self.max_lag + 1
        order = self.rng.permutation(len(d.id_event) * lags)  # flat: identifier * lags + lag
        tok_id, tok_lag = order // lags, order % lags
        rep_id, rep_lag = lp.first_item // lags, lp.first_item % lags
        stored_lags = 0 if d.id_points is None else d.id_points.shape[1]
        from_store = np.flatnonzero(rep_lag < stored_lags)
        to_hash = np.flatnonzero(rep_lag >= stored_lags)
        targets: list[np.ndarray] = []
        jobs: list[tuple[Any, ...]] = []
        for start in range(0, len(from_store), POINT_CHUNK):
            sel = from_store[start : start + POINT_CHUNK]
            assert d.id_points is not None
            stored = d.id_points[rep_id[sel], rep_lag[sel]].tobytes()
            targets.append(sel)
            jobs.append((self._secret, stored, bytes(len(sel)), (None,), POINT_LEN))
        for part, job in lp.hash_jobs(to_hash):
            targets.append(part)
            jobs.append((self._secret, *job))
        blinded = np.empty((self.point_count, POINT_LEN), dtype=np.uint8)
        for sel, out in zip(targets, self._jobs.run_many(hash_and_blind_mixed, jobs), strict=True):
            blinded[sel] = np.frombuffer(out, dtype=np.uint8).reshape(-1, POINT_LEN)
        points = blinded[lp.keys.reshape(-1)[order]]
        anon = self._event_anon[d.id_event[tok_id]].astype("<u4")
        lag8 = tok_lag.astype(np.uint8)
        return [
            ConversionTokens(
                seq=i,
                points=points[s : s + chunk].tobytes(),
                events=anon[s : s + chunk].tobytes(),
                lags=lag8[s : s + chunk].tobytes(),
            )
            for i, s in enumerate(range(0, len(order), chunk))
        ]

    def event_values(self, chunk: int | None = None) -> list[EventValues]:
        """Per anonymous event: anonymous customer and Enc(clipped scaled value)."""
        chunk = chunk or max(1, self.chunk_size // 2)
        d = self.data
        order = self._event_order
        customers = self._customer_anon[d.customer[order]].astype("<u4")
        clipped = np.minimum(
            d.value[order], self.dp.value_cap if self.dp.mechanism != "off" else np.inf
        )
        scaled = [round(float(v) * VALUE_SCALE) for v in clipped]
        if self._jobs.parallel:
            # Spread the encryptions over the workers in a few large parts (each
            # worker builds its fixed-base table once per part); a small set too, in
            # one part: big-integer work here would hold the GIL the node's event
            # loop needs.
            key = self._jobs.key(json.dumps(private_key_to_json(self.private_key)))
            step = max(1, -(-len(scaled) // (4 if len(scaled) > 4 * chunk else 1)))
            bits = self.public_key.n.bit_length()
            jobs: list[tuple[Any, ...]] = [
                (key, bits, scaled[i : i + step]) for i in range(0, len(scaled), step)
            ]
            encrypted = [c for part in self._jobs.run_many(encrypt_scaled, jobs) for c in part]
        else:
            encrypted = self.private_key.encrypt_many(scaled)
        out = []
        for i, start in enumerate(range(0, len(order), chunk)):
            cts = encrypted[start : start + chunk]
            out.append(
                EventValues(
                    seq=i,
                    start=start,
                    customers=customers[start : start + chunk].tobytes(),
                    ciphertexts=tuple(cts),
                )
            )
        return out


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
