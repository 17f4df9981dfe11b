"""The partner's side of attribution as a state machine (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cleanroom.federated.attribution.inputs import PartnerExposures
from cleanroom.federated.attribution.messages import (
    AttrAccepted,
    AttrAggregates,
    AttrCells,
    AttrHello,
    AttributedAggregate,
    AttrRound,
    Cell,
    CellTokens,
    CellValues,
    ConversionTokens,
    EventValues,
    GroupAggregate,
)
from cleanroom.federated.attribution.noise import (
    Noise,
    family_dp,
)
from cleanroom.federated.attribution.tokens import (
    POINT_CHUNK,
    TOKEN_MSG_LEN,
    RunMany,
    day_dst,
    distinct_keys,
    equal_pairs,
    map_jobs,
    token_messages,
    types_kept,
)
from cleanroom.federated.paillier import MIN_KEY_BITS, PaillierPublicKey
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.session import comparison_length
from cleanroom.matching.workers import blind_and_truncate, hash_and_blind_mixed
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import ProtocolError


@dataclass
class PartnerAttribution:
    """P's state machine: ``hello``, ``on_accepted``, then ``on_exposures`` (the
    log, hashed) gives the cells; then tokens, values and the aggregates."""

    conversions: str
    click_days: int
    view_days: int
    id_types: tuple[str, ...]  # P's identifier types (those its log may carry)
    run: Callable[..., object]
    run_many: RunMany | None = None
    submit: Callable[..., Future[Any]] | None = None  # start one job, result later
    epsilon: float = 0.0
    submission_key: str = ""
    spend: Mapping[str, float] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    key: BlindingKey = field(default_factory=BlindingKey.generate)
    min_key_bits: int = MIN_KEY_BITS
    round: AttrRound = AttrRound.HELLO

    def __post_init__(self) -> None:
        self.id_types = tuple(self.id_types)
        self._secret = self.key.secret_bytes()
        self.accepted: AttrAccepted | None = None
        self.cells: tuple[Cell, ...] = ()
        self.users: dict[tuple[str, str], int] = {}
        self.point_count = 0
        self.value_len = 0
        self.cell_tokens: tuple[int, ...] = ()
        self._cell_values: dict[int, np.ndarray] = {}
        self._brand_values: list[Any] = []  # raw points, or futures of values
        self._brand_events: list[np.ndarray] = []
        self._brand_lags: list[np.ndarray] = []
        self._event_customer: np.ndarray | None = None
        self._event_ct: list[int] = []
        self._events_received = 0

    def hello(self) -> AttrHello:
        return AttrHello(
            conversions=self.conversions,
            click_days=self.click_days,
            view_days=self.view_days,
            id_types=self.id_types,
            epsilon=self.epsilon,
            submission_key=self.submission_key,
        )

    def on_accepted(self, msg: AttrAccepted) -> None:
        if self.round is not AttrRound.HELLO:
            raise ProtocolError(f"Accepted arrived in round {self.round}")
        if msg.max_lag < max(self.click_days, self.view_days):
            raise ProtocolError("the brand's tokens do not cover the requested windows")
        if not msg.id_types or not set(msg.id_types) <= set(self.id_types):
            raise ProtocolError(
                f"the brand named identifier types {list(msg.id_types)}; ours are "
                f"{list(self.id_types)}"
            )
        self.accepted = msg
        self.public_key = PaillierPublicKey(msg.public_key_n, min_bits=self.min_key_bits)
        self._event_ct = [0] * msg.events
        self._event_customer = np.full(msg.events, -1, dtype=np.int64)
        self.round = AttrRound.CELLS

    def on_exposures(self, d: PartnerExposures) -> AttrCells:
        """Cells and tokens of the log (identifiers of the types in common only)."""
        if self.round is not AttrRound.CELLS or self.accepted is None:
            raise ProtocolError(f"the exposure log came in round {self.round}")
        type_of, type_names, common = types_kept(d.id_type, self.accepted.id_types)
        id_row, id_type, id_digest = d.id_row[common], type_of[common], d.id_digest[common]
        if not len(id_row):
            raise ValueError(
                "the exposure log has no identifier of the types both sides hold "
                f"({', '.join(self.accepted.id_types)})"
            )
        # Cell numbers in sorted (campaign, group, touch) order, vectorized:
        # exposure logs have millions of rows. Labels are factorized (sorted)
        # once, and rows grouped by their codes.
        labels: dict[str, list[str]] = {}
        codes: dict[str, np.ndarray] = {}
        for name, values in (
            ("campaign", d.row_campaign),
            ("group", d.row_group),
            ("touch", d.row_touch),
        ):
            code, uniques = pd.factorize(np.asarray(values, dtype=object), sort=True)
            codes[name], labels[name] = code, [str(u) for u in uniques]
        rows = pd.DataFrame(codes)
        distinct = rows.assign(user=d.row_user).groupby(["campaign", "group"])["user"].nunique()
        self.users = {
            (labels["campaign"][c], labels["group"][g]): int(n) for (c, g), n in distinct.items()
        }
        by_cell = rows.groupby(["campaign", "group", "touch"], sort=True)
        row_cell = by_cell.ngroup().to_numpy(dtype=np.int64)
        all_cells = [
            Cell(labels["campaign"][c], labels["group"][g], labels["touch"][t])
            for c, g, t in by_cell.size().index
        ]
        # Tokens: one per (cell, type, digest, day) — per person, day and cell —
        # in cell order. Each distinct (type, digest, day) is a "point": hashed
        # and blinded once, however many cells it appears in.
        id_cell = row_cell[id_row]
        order = np.argsort(id_cell, kind="stable")
        id_cell = id_cell[order]
        type_code = id_type[order]
        digests = id_digest[order]
        days = d.row_day[id_row][order]
        point, first = distinct_keys(type_code, digests, days)
        keep = ~pd.DataFrame({"cell": id_cell, "point": point}).duplicated().to_numpy()
        # Cells without tokens (no identifier of a common type) are not sent:
        # their users still count, and nothing of theirs can match.
        counts = np.bincount(id_cell[keep], minlength=len(all_cells))
        renumber = np.cumsum(counts > 0) - 1
        self.cells = tuple(c for c, n in zip(all_cells, counts, strict=True) if n > 0)
        self._token_cell = renumber[id_cell[keep]]
        self._token_point = point[keep]
        self._point_type = type_code[first].astype(np.uint8)
        self._point_digest = digests[first]
        self._point_day = days[first]
        self._dsts = [day_dst(t) for t in type_names]
        self.point_count = len(first)
        self.cell_tokens = tuple(int(n) for n in counts[counts > 0])
        self.value_len = comparison_length(sum(self.cell_tokens), self.accepted.brand_tokens)
        self.round = AttrRound.TOKENS
        return AttrCells(cells=self.cells, cell_tokens=self.cell_tokens)

    @property
    def point_job_count(self) -> int:
        return -(-self.point_count // POINT_CHUNK)

    def point_job(self, index: int) -> tuple[Any, ...]:
        """``hash_and_blind_mixed`` arguments for points ``POINT_CHUNK * index`` onwards."""
        start, stop = index * POINT_CHUNK, (index + 1) * POINT_CHUNK
        msgs = token_messages(self._point_digest[start:stop], self._point_day[start:stop])
        codes = self._point_type[start:stop].tobytes()
        return (self._secret, msgs, codes, self._dsts, TOKEN_MSG_LEN)

    def cell_chunks(self, chunk: int = 8192) -> list[tuple[int, np.ndarray]]:
        """Per ``CellTokens`` message: its cell and the points it carries (by number).

        Points are numbered in order of first appearance along this list, so a
        chunk only needs the point jobs up to its largest number.
        """
        out: list[tuple[int, np.ndarray]] = []
        bounds = np.concatenate([[0], np.cumsum(self.cell_tokens)])
        for ci in range(len(self.cells)):
            for start in range(int(bounds[ci]), int(bounds[ci + 1]), chunk):
                stop = min(start + chunk, int(bounds[ci + 1]))
                out.append((ci, self._token_point[start:stop]))
        return out

    def cell_token_chunks(self, chunk: int = 8192) -> list[CellTokens]:
        """Every ``CellTokens`` message at once (in-process runs and tests)."""
        jobs = [self.point_job(i) for i in range(self.point_job_count)]
        blinded = map_jobs(self.run, self.run_many, hash_and_blind_mixed, jobs)
        points = np.frombuffer(b"".join(blinded), dtype=np.uint8).reshape(-1, POINT_LEN)
        return [
            CellTokens(seq=i, cell=ci, points=points[idx].tobytes())
            for i, (ci, idx) in enumerate(self.cell_chunks(chunk))
        ]

    @property
    def ready_for_aggregates(self) -> bool:
        """Every cell, brand token and event value has arrived."""
        a = self.accepted
        return (
            a is not None
            and len(self._cell_values) == len(self.cells)
            and sum(len(e) for e in self._brand_events) == a.brand_tokens
            and self._events_received == a.events
        )

    def on_cell_values(self, msg: CellValues) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"cell values arrived in round {self.round}")
        assert self.accepted is not None
        if msg.cell in self._cell_values or not 0 <= msg.cell < len(self.cells):
            raise ProtocolError(f"unexpected values for cell {msg.cell}")
        arr = np.frombuffer(msg.values, dtype=f"S{self.value_len}")
        if len(arr) != self.cell_tokens[msg.cell]:
            raise ProtocolError(f"cell {msg.cell} came back with {len(arr)} values")
        self._cell_values[msg.cell] = arr

    def on_conversion_tokens(self, msg: ConversionTokens) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"conversion tokens arrived in round {self.round}")
        assert self.accepted is not None
        n = len(msg.points) // POINT_LEN
        events = np.frombuffer(msg.events, dtype="<u4").astype(np.int64)
        lags = np.frombuffer(msg.lags, dtype=np.uint8).astype(np.int64)
        if len(events) != n or len(lags) != n or n == 0:
            raise ProtocolError(f"conversion chunk {msg.seq} is inconsistent")
        if events.max() >= self.accepted.events or lags.max() > self.accepted.max_lag:
            raise ProtocolError(f"conversion chunk {msg.seq} names unknown events or lags")
        # Re-blinded as they arrive when a pool is at hand, else all together
        # in ``aggregates``.
        if self.submit is not None:
            self._brand_values.append(
                self.submit(blind_and_truncate, self._secret, msg.points, self.value_len)
            )
        else:
            self._brand_values.append(msg.points)
        self._brand_events.append(events)
        self._brand_lags.append(lags)

    def on_event_values(self, msg: EventValues) -> None:
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"event values arrived in round {self.round}")
        assert self.accepted is not None and self._event_customer is not None
        customers = np.frombuffer(msg.customers, dtype="<u4").astype(np.int64)
        if (
            len(customers) != len(msg.ciphertexts)
            or msg.start + len(customers) > self.accepted.events
        ):
            raise ProtocolError(f"event values chunk {msg.seq} is inconsistent")
        cts = self.public_key.validate_many(msg.ciphertexts)
        self._event_customer[msg.start : msg.start + len(customers)] = customers
        self._event_ct[msg.start : msg.start + len(cts)] = cts
        self._events_received += len(cts)

    def aggregates(self) -> AttrAggregates:
        """Intersect, apply windows and last touch, sum homomorphically, add noise."""
        assert self.accepted is not None and self._event_customer is not None
        if len(self._cell_values) != len(self.cells):
            raise ProtocolError("not every cell came back from the brand")
        length = self.value_len
        if self.submit is not None:
            reblinded = [f.result() for f in self._brand_values]  # type: ignore[union-attr]
        else:
            jobs = [(self._secret, pts, length) for pts in self._brand_values]
            reblinded = map_jobs(self.run, self.run_many, blind_and_truncate, jobs)
        brand = np.frombuffer(b"".join(reblinded), dtype=f"S{length}")
        events = np.concatenate(self._brand_events) if self._brand_events else np.empty(0, np.int64)
        lags = np.concatenate(self._brand_lags) if self._brand_lags else np.empty(0, np.int64)
        if len(brand) != self.accepted.brand_tokens:
            raise ProtocolError("not every conversion token arrived")
        match_event, match_cell, match_lag = self._matches(brand, events, lags)
        dp = family_dp(self.accepted.dp)
        noise = Noise(dp, self.rng)
        groups: list[GroupAggregate] = []
        cell_group: dict[tuple[str, str], list[int]] = {}
        for ci, c in enumerate(self.cells):
            cell_group.setdefault((c.campaign_id, c.group), []).append(ci)
        for (campaign, group), users in sorted(self.users.items()):
            in_group = np.isin(match_cell, cell_group.get((campaign, group), []))
            evs = np.unique(match_event[in_group])
            converters = len(np.unique(self._event_customer[evs]))
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
        pk = self.public_key
        total = pk.raw_add_many([self._event_ct[int(e)] for e in events])
        return pk.add(total, pk.encrypt(noise.amount()))

    def _matches(
        self, brand: np.ndarray, events: np.ndarray, lags: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(event, cell, lag) of every brand token found in a cell, within that cell's window.

        One join of the brand's values against every cell's (see
        :func:`equal_pairs`).
        """
        sizes = [len(self._cell_values[ci]) for ci in range(len(self.cells))]
        values = np.concatenate([self._cell_values[ci] for ci in range(len(self.cells))])
        value_cell = np.repeat(np.arange(len(self.cells), dtype=np.int64), sizes)
        found, token = equal_pairs(values, brand)
        cell = value_cell[found]
        window = {"click": self.click_days, "view": self.view_days}
        cell_window = np.array([window[c.touch] for c in self.cells], dtype=np.int64)
        ok = lags[token] <= cell_window[cell]
        return events[token[ok]], cell[ok], lags[token[ok]]

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
