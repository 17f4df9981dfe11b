"""The partner's side of attribution as a transport-free state machine.

Rounds (``AttrRound``; the package docstring has the protocol):

``HELLO``   ``hello()`` opens the run; ``AttrAccepted`` names the identifier
            types both sides hold and the Paillier key (or, for a repeated
            submission, the report that already exists: nothing runs, and
            ``AttrDone`` follows).
``CELLS``   the log is read and hashed a part at a time, for those types
            only (``exposures``), and cut into cells (``ExposureLog``);
            ``AttrCells`` goes out.
``TOKENS``  the log's points are blinded a digest bucket at a time, then
            ``CellTokens`` stream out, each cell in a uniformly random
            order; meanwhile the brand's ``CellValues``,
            ``ConversionTokens`` and ``EventValues`` arrive and are
            re-blinded as they come.
``RESULT``  once everything arrived: intersect, sum, add noise, send
            ``AttrAggregates``; wait for ``AttrDone``.
``DONE`` / ``FAILED``.

A message outside its round, or inconsistent with what the brand announced,
raises ``ProtocolError`` and fails the run. ``progress`` tells listeners the
phase and the token counts as they move.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cleanroom.federated.attribution.exposure_log import BlindedCells, ExposureLog
from cleanroom.federated.attribution.inputs import ExposureParts, PartnerExposures
from cleanroom.federated.attribution.messages import (
    CUSTOMER_LEN,
    AttrAccepted,
    AttrAggregates,
    AttrBrandMessage,
    AttrCells,
    AttrDone,
    AttrHello,
    AttributedAggregate,
    AttrPartnerMessage,
    AttrRound,
    Cell,
    CellTokens,
    CellValues,
    ConversionTokens,
    EventValues,
    GroupAggregate,
)
from cleanroom.federated.attribution.noise import Noise, family_dp
from cleanroom.federated.attribution.tokens import (
    TokenJoin,
)
from cleanroom.federated.jobs import check_packed
from cleanroom.federated.paillier import MIN_KEY_BITS, PaillierPublicKey
from cleanroom.matching.bulk import ByteColumn, ColumnBuffer, FileBytes, fixed_rows
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.session import Progress, RoundMachine, comparison_length
from cleanroom.matching.workers import RunJobs, blind_and_truncate
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import ProtocolError

_log = logging.getLogger(__name__)

BRAND_WINDOW = 8  # the brand's token chunks being re-blinded at once


class Phase:
    """What the partner is doing, as ``AttributionProgress.phase`` says it."""

    WAITING = "waiting for the brand node"
    HASHING = "hashing the exposure log"
    SENDING = "blinding and sending tokens"
    SUMMING = "computing the encrypted sums"
    REPORT = "waiting for the report"


@dataclass
class AttributionProgress(Progress):
    """Where a partner's run is; each listener sees it at every change."""

    phase: str = Phase.WAITING
    tokens_total: int = 0  # the partner's tokens, one per (cell, identifier, day)
    tokens_sent: int = 0
    brand_total: int = 0  # the brand's conversion tokens, re-blinded here
    brand_received: int = 0


class PartnerAttribution(RoundMachine[AttrRound]):
    """P's state machine for one run. Crypto runs in ``jobs`` (the partner's worker pool).

    ``exposures`` hashes the log for the identifier types both sides hold
    (called once, when the brand has named them); ``spend`` is echoed into the
    report; ``submission_key`` makes a resubmission return the stored report.
    """

    def __init__(
        self,
        *,
        conversions: str,
        click_days: int,
        view_days: int,
        id_types: Sequence[str],
        exposures: Callable[[tuple[str, ...]], PartnerExposures | ExposureParts] | None = None,
        jobs: RunJobs | None = None,
        epsilon: float = 0.0,
        submission_key: str = "",
        spend: Mapping[str, float] | None = None,
        rng: np.random.Generator | None = None,
        key: BlindingKey | None = None,
        min_key_bits: int = MIN_KEY_BITS,
        chunk_size: int = 8192,
        ahead: int = 8,
        spill_dir: Path | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        super().__init__(AttrRound.HELLO, jobs)
        self.conversions = conversions
        self.click_days = click_days
        self.view_days = view_days
        self.id_types = tuple(id_types)  # P's identifier types (those its log may carry)
        self.exposures = exposures
        self.epsilon = epsilon
        self.submission_key = submission_key
        self.spend = dict(spend or {})
        self.rng = rng or np.random.default_rng()
        self.min_key_bits = min_key_bits
        self.progress = AttributionProgress()
        self.report_id = ""
        self.public_key: PaillierPublicKey | None = None
        self._ahead = ahead
        self.chunk_size = chunk_size  # tokens per CellTokens message
        self._secret = self._jobs.key((key or BlindingKey.generate()).secret_bytes())
        self.accepted: AttrAccepted | None = None
        self.cells: tuple[Cell, ...] = ()
        self.users: dict[tuple[str, str], int] = {}
        self.point_count = 0
        self.value_len = 0
        self.cell_tokens: tuple[int, ...] = ()
        # The join's buckets and the ciphertext column go to files in ``spill_dir`` past
        # this size.
        self._spill_dir = spill_dir
        self._memory_bytes = memory_bytes
        self._join: TokenJoin | None = None  # the cells' values and the brand's tokens
        self._cell_received: list[int] = []
        self._cells_complete = 0
        self._brand_running: deque[tuple[asyncio.Future[bytes], bytes, bytes]] = deque()
        self._brand_count = 0  # brand tokens received
        # Anonymous customer (uint32) by anonymous event: a file for a large set.
        self._event_customer: ColumnBuffer | None = None
        self._event_ct: ColumnBuffer | None = None  # packed, fixed-width, by anonymous event
        self._ciphertexts: ByteColumn = b""  # the same, once every one arrived
        self._events_received = 0
        self._cells_out: AttrCells | None = None
        self._aggregates_out: AttrAggregates | None = None
        self._summing = False
        self._log: ExposureLog | None = None
        self._blinded: BlindedCells | None = None
        # The cells' token order (its own stream: the noise's draws stay as seeded).
        self._order_rng = self.rng.spawn(1)[0]
        self._seen: set[str] = set()  # message kinds received (for the log)

    def _paillier(self) -> PaillierPublicKey:
        if self.public_key is None:
            raise ProtocolError(f"no Paillier key yet in round {self.round}")
        return self.public_key

    def hello(self) -> AttrHello:
        return AttrHello(
            conversions=self.conversions,
            click_days=self.click_days,
            view_days=self.view_days,
            id_types=self.id_types,
            epsilon=self.epsilon,
            submission_key=self.submission_key,
        )

    def close(self) -> None:
        super().close()
        if self._log is not None:
            self._log.close()
        if self._blinded is not None:
            self._blinded.close()
        for job, _, _ in self._brand_running:
            job.cancel()
        self._brand_running.clear()
        if self._join is not None:
            self._join.close()
        if self._event_ct is not None:
            self._event_ct.abort()
        if self._event_customer is not None:
            self._event_customer.abort()

    # ------------------------------------------------------------- incoming

    async def receive(self, msg: AttrBrandMessage) -> None:
        """Handle one brand message, in stream order; an error fails the run."""
        kind = type(msg).__name__
        if kind not in self._seen:
            self._seen.add(kind)
            _log.info("attribution: first %s from the brand node", kind)
        await self.step(self._dispatch(msg))

    async def _dispatch(self, msg: AttrBrandMessage) -> None:
        if isinstance(msg, AttrAccepted):
            self._on_accepted(msg)
        elif isinstance(msg, CellValues):
            self._on_cell_values(msg)
        elif isinstance(msg, ConversionTokens):
            await self._on_conversion_tokens(msg)
            received = self.progress.brand_received + len(msg.points) // POINT_LEN
            self.progress.update(brand_received=received)
        elif isinstance(msg, EventValues):
            self._on_event_values(msg)
        elif isinstance(msg, AttrDone):
            self._on_done(msg)
        else:
            raise TypeError(f"not an attribution brand message: {type(msg).__name__}")
        if self.round is AttrRound.TOKENS and self.ready_for_aggregates and not self._summing:
            self._summing = True
            self.spawn(self._sum)

    def _on_accepted(self, msg: AttrAccepted) -> None:
        if self.round is not AttrRound.HELLO:
            raise ProtocolError(f"Accepted arrived in round {self.round}")
        if msg.report_id:  # this submission already has a report: nothing to run
            self.report_id = msg.report_id
            self.round = AttrRound.RESULT  # AttrDone follows
            self._signal.notify()
            return
        if msg.max_lag < max(self.click_days, self.view_days):
            raise ProtocolError("the brand's tokens do not cover the requested windows")
        if not msg.id_types or not set(msg.id_types) <= set(self.id_types):
            raise ProtocolError(
                f"the brand named identifier types {list(msg.id_types)}; ours are "
                f"{list(self.id_types)}"
            )
        self.accepted = msg
        self.public_key = PaillierPublicKey(msg.public_key_n, min_bits=self.min_key_bits)
        self._event_ct = ColumnBuffer(
            msg.events * self.public_key.ciphertext_bytes,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        self._event_customer = ColumnBuffer(
            msg.events * CUSTOMER_LEN, spill_dir=self._spill_dir, memory_bytes=self._memory_bytes
        )
        self.round = AttrRound.CELLS
        self.progress.update(phase=Phase.HASHING, brand_total=msg.brand_tokens)
        self.spawn(self._prepare_cells)

    def _on_done(self, msg: AttrDone) -> None:
        if self.round is not AttrRound.RESULT:
            raise ProtocolError(f"AttrDone arrived in round {self.round}")
        if not msg.report_id or self.report_id not in ("", msg.report_id):
            raise ProtocolError(f"AttrDone names report {msg.report_id!r}")
        self.report_id = msg.report_id
        self.round = AttrRound.DONE
        self._signal.notify()

    # ----------------------------------------------------------- background

    async def _prepare_cells(self) -> None:
        """Hash the log for the types in common, cut it into cells, start blinding."""
        assert self.accepted is not None
        if self.exposures is None:
            raise ProtocolError("this partner has no exposure log to attribute")
        exposures, id_types = self.exposures, self.accepted.id_types
        cells = await asyncio.to_thread(lambda: self.on_exposures(exposures(id_types)))
        self._cells_out = cells
        self._signal.notify()
        _log.info(
            "attribution cells ready: %d cells, %d tokens, %d distinct points",
            len(cells.cells),
            sum(cells.cell_tokens),
            self.point_count,
        )
        assert self._log is not None
        self._blinded = await self._log.blind(
            self._jobs.call,
            self._secret,
            self._order_rng,
            ahead=self._ahead,
            memory_bytes=self._memory_bytes,
            spill_dir=self._spill_dir,
        )
        self._signal.notify()

    async def _sum(self) -> None:
        _log.info("attribution: everything arrived, computing the aggregates")
        self.progress.update(phase=Phase.SUMMING)
        await self._brand_tokens_in(0)
        aggregates = await asyncio.to_thread(self.aggregates)
        self._aggregates_out = aggregates
        self._signal.notify()

    # ------------------------------------------------------------- outgoing

    async def outgoing(self) -> AsyncIterator[AttrPartnerMessage]:
        """Everything after ``hello()``: cells, the tokens as they are blinded, the aggregates.

        Ends after the aggregates (the partner has nothing more to say), or at
        once when the brand answered with an existing report.
        """
        await self.until(lambda: self._cells_out is not None or self.report_id != "")
        if self._cells_out is None:  # the brand answered with the report it has
            return
        cells = self._cells_out
        yield cells
        self.progress.update(phase=Phase.SENDING, tokens_total=sum(cells.cell_tokens))
        await self.until(lambda: self._blinded is not None)
        assert self._blinded is not None
        chunks = self._blinded.chunks(self.chunk_size, self._order_rng)
        for seq, (cell, points) in enumerate(chunks):
            if self.error is not None:
                raise self.error
            yield CellTokens(seq=seq, cell=cell, points=points)
            sent = self.progress.tokens_sent + len(points) // POINT_LEN
            self.progress.update(tokens_sent=sent)
        self._blinded.close()
        _log.info("attribution: every partner token sent")
        await self.until(lambda: self._aggregates_out is not None)
        assert self._aggregates_out is not None
        yield self._aggregates_out
        self.progress.update(phase=Phase.REPORT)

    # --------------------------------------------------------------- rounds

    def on_exposures(self, log: PartnerExposures | ExposureParts) -> AttrCells:
        """Cells and tokens of the log (identifiers of the types in common only), read
        a part at a time; nothing is blinded yet (``_blind`` does, bucket by bucket)."""
        if self.round is not AttrRound.CELLS or self.accepted is None:
            raise ProtocolError(f"the exposure log came in round {self.round}")
        parts = log if isinstance(log, ExposureParts) else ExposureParts.whole(log)
        self._log = ExposureLog(
            self.accepted.id_types,
            expected_rows=parts.expected_rows,
            expected_tokens=parts.expected_tokens,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        for part in parts.parts:
            self._log.add(part)
        found = self._log.finish()
        self.cells, self.cell_tokens = found.cells, found.cell_tokens
        self.users = found.users
        self.point_count = found.point_count
        self._cell_received = [0] * len(self.cells)
        self.value_len = comparison_length(sum(self.cell_tokens), self.accepted.brand_tokens)
        self._join = TokenJoin(
            self.value_len,
            sum(self.cell_tokens),
            self.accepted.brand_tokens,
            spill_dir=self._spill_dir,
            memory_bytes=self._memory_bytes,
        )
        self.round = AttrRound.TOKENS
        return AttrCells(cells=self.cells, cell_tokens=self.cell_tokens)

    @property
    def ready_for_aggregates(self) -> bool:
        """Every cell, brand token and event value has arrived."""
        a = self.accepted
        return (
            a is not None
            and self._cells_complete == len(self.cells)
            and self._brand_count == a.brand_tokens
            and self._events_received == a.events
        )

    def _on_cell_values(self, msg: CellValues) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"cell values arrived in round {self.round}")
        assert self.accepted is not None
        if not 0 <= msg.cell < len(self.cells):
            raise ProtocolError(f"values for unknown cell {msg.cell}")
        if not msg.values or len(msg.values) % self.value_len:
            raise ProtocolError(f"values for cell {msg.cell} are not {self.value_len}-byte values")
        arr = np.frombuffer(msg.values, dtype=f"S{self.value_len}")
        received = self._cell_received[msg.cell] + len(arr)
        expected = self.cell_tokens[msg.cell]
        if received > expected:
            raise ProtocolError(f"cell {msg.cell} came back with more than its {expected} values")
        assert self._join is not None
        self._join.add_cell(msg.cell, msg.values)
        self._cell_received[msg.cell] = received
        self._cells_complete += received == expected

    async def _on_conversion_tokens(self, msg: ConversionTokens) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"conversion tokens arrived in round {self.round}")
        assert self.accepted is not None
        n = len(msg.points) // POINT_LEN
        events = np.frombuffer(msg.events, dtype="<u4")
        lags = np.frombuffer(msg.lags, dtype=np.uint8)
        if len(events) != n or len(lags) != n or n == 0 or len(msg.points) % POINT_LEN:
            raise ProtocolError(f"conversion chunk {msg.seq} is inconsistent")
        if events.max() >= self.accepted.events or lags.max() > self.accepted.max_lag:
            raise ProtocolError(f"conversion chunk {msg.seq} names unknown events or lags")
        if self._brand_count + n > self.accepted.brand_tokens:
            raise ProtocolError(
                f"more conversion tokens than the {self.accepted.brand_tokens} announced"
            )
        self._brand_count += n
        # Re-blinded as they arrive (in the pool, a few chunks in flight), then bucketed.
        job = self._jobs.call(blind_and_truncate, self._secret, msg.points, self.value_len)
        self._brand_running.append((asyncio.ensure_future(job), msg.events, msg.lags))
        await self._brand_tokens_in(BRAND_WINDOW)

    async def _brand_tokens_in(self, running: int) -> None:
        """Bucket the re-blinded brand chunks until at most ``running`` are in flight."""
        assert self._join is not None
        while len(self._brand_running) > running:
            # Taken before it is awaited: two callers never bucket the same chunk.
            job, events, lags = self._brand_running.popleft()
            self._join.add_brand(await job, events, lags)

    def _on_event_values(self, msg: EventValues) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"event values arrived in round {self.round}")
        assert self.accepted is not None and self._event_customer is not None
        pk = self._paillier()
        count, rest = divmod(len(msg.ciphertexts), pk.ciphertext_bytes)
        if (
            rest
            or len(msg.customers) != count * CUSTOMER_LEN
            or msg.start + count > self.accepted.events
        ):
            raise ProtocolError(f"event values chunk {msg.seq} is inconsistent")
        check_packed(pk.n, msg.ciphertexts, pk.ciphertext_bytes)  # once, as they arrive
        assert self._event_ct is not None
        self._event_ct.write_at(msg.start * pk.ciphertext_bytes, msg.ciphertexts)
        self._event_customer.write_at(msg.start * CUSTOMER_LEN, msg.customers)
        self._events_received += count

    def aggregates(self) -> AttrAggregates:
        """Intersect, apply windows and last touch, sum homomorphically, add noise."""
        assert self.accepted is not None and self._event_customer is not None
        if self._cells_complete != len(self.cells):
            raise ProtocolError("not every cell came back from the brand")
        if self._brand_count != self.accepted.brand_tokens or self._brand_running:
            raise ProtocolError("not every conversion token arrived")
        assert self._join is not None and self._event_ct is not None
        window = {"click": self.click_days, "view": self.view_days}
        cell_window = np.array([window[c.touch] for c in self.cells], dtype=np.int64)
        match_event, match_cell, match_lag = self._join.matches(cell_window)
        self._join.close()
        self._ciphertexts = self._event_ct.finish()
        self._event_ct = None
        # The customers of the matched events only, read once.
        matched = np.unique(match_event)
        customer_column = self._event_customer.finish()
        self._event_customer = None
        customer_of = fixed_rows(customer_column, matched, CUSTOMER_LEN).view("<u4").ravel()
        if isinstance(customer_column, FileBytes):
            customer_column.close()
        dp = family_dp(self.accepted.dp)
        noise = Noise(dp, self.rng)
        groups: list[GroupAggregate] = []
        cell_group: dict[tuple[str, str], list[int]] = {}
        for ci, c in enumerate(self.cells):
            cell_group.setdefault((c.campaign_id, c.group), []).append(ci)
        for (campaign, group), users in sorted(self.users.items()):
            in_group = np.isin(match_cell, cell_group.get((campaign, group), []))
            evs = np.unique(match_event[in_group])
            converters = len(np.unique(customer_of[np.searchsorted(matched, evs)]))
            groups.append(
                GroupAggregate(
                    campaign_id=campaign,
                    group=group,
                    users=users,
                    conversions=noise.count(len(evs)),
                    converters=noise.count(converters),
                    revenue=self._noisy_sum(evs, noise),
                )
            )
        attributed = self._last_touch(match_event, match_cell, match_lag)
        campaigns = sorted({c for c, g in self.users if g == "exposed"})
        attr_out = []
        for campaign in campaigns:
            evs = attributed.get(campaign, np.empty(0, np.int64))
            attr_out.append(
                AttributedAggregate(
                    campaign_id=campaign,
                    conversions=noise.count(len(evs)),
                    revenue=self._noisy_sum(evs, noise),
                )
            )
        if isinstance(self._ciphertexts, FileBytes):
            self._ciphertexts.close()
        self.round = AttrRound.RESULT
        return AttrAggregates(
            groups=tuple(groups),
            attributed=tuple(attr_out),
            spend=tuple(sorted(self.spend.items())),
        )

    def _noisy_sum(self, events: np.ndarray, noise: Noise) -> int:
        """Enc(sum of the events' values + noise).

        The noise is encrypted with full-size fresh randomness (the public key
        has no short-exponent base), so the product is re-randomized: B cannot
        link it to the ciphertexts it sent. The empty sum is Enc(0). The
        events' ciphertexts were validated when they arrived.
        """
        pk = self._paillier()
        column, width = self._ciphertexts, pk.ciphertext_bytes
        total = pk.raw_add_many(
            int.from_bytes(column[int(e) * width : (int(e) + 1) * width], "big") for e in events
        )
        return pk.add(total, pk.encrypt(noise.amount()))

    def _last_touch(
        self, event: np.ndarray, cell: np.ndarray, lag: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Exposed only: click beats view, then smallest lag, then smallest campaign id."""
        campaigns = sorted({c.campaign_id for c in self.cells})
        code = {c: i for i, c in enumerate(campaigns)}
        exposed = np.array([c.group == "exposed" for c in self.cells], dtype=bool)
        touch_rank = np.array([0 if c.touch == "click" else 1 for c in self.cells])
        campaign_rank = np.array([code[c.campaign_id] for c in self.cells])
        keep = exposed[cell] if len(cell) else np.zeros(0, dtype=bool)
        rows = pd.DataFrame(
            {
                "event": event[keep],
                "touch": touch_rank[cell[keep]],
                "lag": lag[keep],
                "campaign": campaign_rank[cell[keep]],
            }
        )
        best = rows.sort_values(["event", "touch", "lag", "campaign"]).drop_duplicates("event")
        return {
            campaigns[int(c)]: np.sort(part["event"].to_numpy(dtype=np.int64))
            for c, part in best.groupby("campaign")
        }
