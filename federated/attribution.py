"""Closed-loop attribution: private intersection-sum with windows and lift.

After Private Join and Compute (Ion et al. 2020), two-party, semi-honest
(DESIGN.md §6). B = brand node (conversions, Paillier key), P = partner
(exposure log). Tokens bind an identifier and a UTC day: ``T(id, day) =
H_type(digest || day)``. P expands nothing: each exposure row of day ``d``
gives the token ``T(id, d)`` in its cell (campaign, group, touch). B expands
each conversion of day ``c`` into ``T(id, c - lag)`` for ``lag`` in
``0..max_lag`` and labels the token with the lag, so a match of a brand token
with lag ``L`` against a partner cell means "a conversion ``L`` days after an
exposure of that cell, same person". Windows are then P's check ``L <= W_touch``.

Rounds (``AttrRound``):

``HELLO``    P: conversions set name, windows, cell labels and their token
             counts, requested epsilon, submission key. B: policy checks
             (the DP budget before any work), ``AttrAccepted`` with the
             Paillier public key and the DP parameters P must apply.
``TOKENS``   P streams T(x)^p per cell. B re-blinds, shuffles within the
             cell (P can no longer link a value to a user) and returns it.
             B streams its conversion tokens T(y)^b shuffled, each with an
             anonymous event index and its lag, and per event an anonymous
             customer index and Enc_B(value).
``RESULT``   P re-blinds B's tokens, intersects per cell, applies windows and
             last touch, multiplies the matched ciphertexts (homomorphic
             sums), adds the policy's noise, re-randomizes and sends per-cell
             counts and Enc(sums). B decrypts only these aggregates.

Values travel only as Paillier ciphertexts under B's key, fixed-point with
``VALUE_SCALE``. What each side learns is DESIGN.md §13's attribution row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
from cleanroom.federated.paillier import (
    MIN_KEY_BITS,
    PaillierPrivateKey,
    PaillierPublicKey,
    private_key_from_json,
    private_key_to_json,
)
from cleanroom.matching.errors import PolicyViolation, ProtocolError
from cleanroom.matching.hash_to_curve import hash_to_curve_batch
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.session import comparison_length
from cleanroom.matching.workers import dst_for, truncate
from cleanroom.matching.x25519 import BlindingKey, blind_batch

TOUCHES = ("click", "view")
GROUPS = ("exposed", "holdout")
DIGEST_LEN = 32
TOKEN_MSG_LEN = DIGEST_LEN + 4  # digest || day (uint32, big-endian)
VALUE_SCALE = 10**6  # fixed point: micro-units of the currency
DAY_DST_SUFFIX = "-day"


class AttrRound(StrEnum):
    HELLO = "hello"
    TOKENS = "tokens"
    RESULT = "result"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Cell:
    campaign_id: str
    group: str  # exposed | holdout
    touch: str  # click | view

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"unknown group {self.group!r}; expected one of {GROUPS}")
        if self.touch not in TOUCHES:
            raise ValueError(f"unknown touch {self.touch!r}; expected one of {TOUCHES}")


@dataclass(frozen=True, slots=True)
class DpParams:
    """The noise P must add, fixed by B's policy (``mechanism`` off|laplace|gaussian)."""

    mechanism: str = "off"
    epsilon: float = 0.0
    delta: float = 0.0
    value_cap: float = 1_000.0  # with DP on, a conversion's value is clipped to this


@dataclass(frozen=True, slots=True)
class AttrHello:
    conversions: str
    click_days: int
    view_days: int
    cells: tuple[Cell, ...]
    cell_tokens: tuple[int, ...]  # tokens P will send per cell
    epsilon: float = 0.0
    submission_key: str = ""


@dataclass(frozen=True, slots=True)
class AttrAccepted:
    session_id: str
    public_key_n: int
    max_lag: int
    value_len: int
    events: int
    brand_tokens: int
    dp: DpParams
    report_id: str = ""  # set when this submission already has a report


@dataclass(frozen=True, slots=True)
class CellTokens:
    """P -> B: T(x)^p for one cell (a cell may span several chunks)."""

    seq: int
    cell: int
    points: bytes


@dataclass(frozen=True, slots=True)
class CellValues:
    """B -> P: one whole cell, re-blinded and shuffled, truncated."""

    cell: int
    values: bytes


@dataclass(frozen=True, slots=True)
class ConversionTokens:
    """B -> P: T(y)^b, with per token the anonymous event index and lag."""

    seq: int
    points: bytes
    events: bytes  # uint32 little-endian per token
    lags: bytes  # uint8 per token


@dataclass(frozen=True, slots=True)
class EventValues:
    """B -> P: per anonymous event from ``start``: customer index, Enc(value)."""

    seq: int
    start: int
    customers: bytes  # uint32 little-endian per event
    ciphertexts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GroupAggregate:
    campaign_id: str
    group: str
    users: int
    conversions: int
    converters: int
    revenue: int  # Enc_B(sum of scaled values + noise)


@dataclass(frozen=True, slots=True)
class AttributedAggregate:
    campaign_id: str
    conversions: int
    revenue: int  # ciphertext


@dataclass(frozen=True, slots=True)
class AttrAggregates:
    groups: tuple[GroupAggregate, ...]
    attributed: tuple[AttributedAggregate, ...]
    spend: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class AttrDone:
    report_id: str


# ------------------------------------------------------------------ shared helpers


def day_dst(id_type: str) -> bytes:
    return dst_for(id_type + DAY_DST_SUFFIX)


def token_messages(digests: np.ndarray, days: np.ndarray) -> bytes:
    """Pack ``digest || day`` messages (digests: uint8 (n, 32); days: int)."""
    out = np.empty((len(digests), TOKEN_MSG_LEN), dtype=np.uint8)
    out[:, :DIGEST_LEN] = digests
    out[:, DIGEST_LEN:] = days.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out.tobytes()


def hash_days_and_blind(secret: bytes, packed_messages: bytes, dst: bytes) -> bytes:
    """T(x)^k for packed ``digest || day`` messages (worker-process function)."""
    points = hash_to_curve_batch(packed_messages, TOKEN_MSG_LEN, dst)
    return blind_batch(secret, points, validate=False)


def blind_truncate(secret: bytes, packed_points: bytes, value_len: int) -> bytes:
    return truncate(blind_batch(secret, packed_points, validate=True), value_len)


RunMany = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]


def map_jobs(
    run: Callable[..., object],
    run_many: RunMany | None,
    fn: Callable[..., Any],
    jobs: list[tuple[Any, ...]],
) -> list[Any]:
    """Run ``fn`` over ``jobs`` through the worker pool (all at once when it can)."""
    if run_many is not None:
        return run_many(fn, jobs)
    return [run(fn, *args) for args in jobs]


def encrypt_scaled(private_key_json: str, min_bits: int, values: list[int]) -> list[int]:
    """Key-owner Paillier encryption in a worker process (the key stays in the party)."""
    key = private_key_from_json(private_key_json, min_bits=min_bits)
    return key.encrypt_many(values)


def noise_scale(dp: DpParams, sensitivity: float) -> float:
    """Laplace b or Gaussian sigma for a query family of the given sensitivity."""
    if dp.mechanism == "off" or dp.epsilon <= 0:
        return 0.0
    if dp.mechanism == "laplace":
        return sensitivity / dp.epsilon
    if dp.mechanism == "gaussian":
        if not 0 < dp.delta < 1:
            raise ValueError("the Gaussian mechanism needs 0 < delta < 1")
        return sensitivity * math.sqrt(2 * math.log(1.25 / dp.delta)) / dp.epsilon
    raise ValueError(f"unknown DP mechanism {dp.mechanism!r}")


# Query families share the budget equally: per-group conversions, converters,
# revenue, attributed conversions, attributed revenue.
QUERY_FAMILIES = 5


def family_dp(dp: DpParams) -> DpParams:
    if dp.mechanism == "off":
        return dp
    return DpParams(
        dp.mechanism, dp.epsilon / QUERY_FAMILIES, dp.delta / QUERY_FAMILIES, dp.value_cap
    )


# ------------------------------------------------------------------ brand side


@dataclass
class BrandConversions:
    """The brand's conversion set: per event and per (event, identifier)."""

    customer: np.ndarray  # int64 per event (dense customer number)
    day: np.ndarray  # int64 per event (days since 1970-01-01 UTC)
    value: np.ndarray  # float64 per event
    id_event: np.ndarray  # int64 per identifier: which event
    id_type: np.ndarray  # object/str per identifier
    id_digest: np.ndarray  # uint8 (m, 32)

    @property
    def events(self) -> int:
        return len(self.day)


@dataclass
class BrandAttribution:
    """B's state machine. Crypto runs through ``run`` (a worker pool)."""

    session_id: str
    hello: AttrHello
    data: BrandConversions
    public_key: PaillierPublicKey
    private_key: PaillierPrivateKey
    dp: DpParams
    run: Callable[..., object]  # sync callable(fn, *args) -> result
    run_many: RunMany | None = None  # parallel map over the worker pool
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    key: BlindingKey = field(default_factory=BlindingKey.generate)
    round: AttrRound = AttrRound.HELLO

    def __post_init__(self) -> None:
        h = self.hello
        if len(h.cells) != len(h.cell_tokens) or not h.cells:
            raise ProtocolError("one token count per cell, and at least one cell")
        if len(set(h.cells)) != len(h.cells):
            raise ProtocolError("cells must be distinct")
        if h.click_days < 0 or h.view_days < 0 or max(h.click_days, h.view_days) > 90:
            raise ProtocolError("attribution windows are 0..90 days")
        self.max_lag = max(h.click_days, h.view_days)
        self._secret = self.key.secret_bytes()
        tokens_total = sum(h.cell_tokens)
        self.brand_tokens = int(len(self.data.id_event) * (self.max_lag + 1))
        self.value_len = comparison_length(tokens_total, self.brand_tokens)
        self._received: dict[int, list[bytes]] = {i: [] for i in range(len(h.cells))}
        self._received_count = [0] * len(h.cells)
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

    def accepted(self) -> AttrAccepted:
        self.round = AttrRound.TOKENS
        return AttrAccepted(
            session_id=self.session_id,
            public_key_n=self.public_key.n,
            max_lag=self.max_lag,
            value_len=self.value_len,
            events=self.data.events,
            brand_tokens=self.brand_tokens,
            dp=self.dp,
        )

    def on_cell_tokens(self, msg: CellTokens) -> CellValues | None:
        """Re-blind a chunk; a complete cell comes back shuffled."""
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"cell tokens arrived in round {self.round}")
        if msg.seq != self._next_seq:
            kind = "duplicate" if msg.seq < self._next_seq else "out-of-order"
            raise ProtocolError(f"{kind} cell chunk {msg.seq}: chunk {self._next_seq} is next")
        if not 0 <= msg.cell < len(self.hello.cells):
            raise ProtocolError(f"cell chunk {msg.seq} names unknown cell {msg.cell}")
        if not msg.points or len(msg.points) % POINT_LEN:
            raise ProtocolError(f"cell chunk {msg.seq} is not a whole number of points")
        count = len(msg.points) // POINT_LEN
        expected = self.hello.cell_tokens[msg.cell]
        if self._received_count[msg.cell] + count > expected:
            raise ProtocolError(f"cell {msg.cell} exceeds its declared {expected} tokens")
        self._next_seq += 1
        self._received[msg.cell].append(msg.points)
        self._received_count[msg.cell] += count
        if self._received_count[msg.cell] < expected:
            return None
        # A whole cell at once, re-blinded over all workers, then shuffled.
        jobs = [(self._secret, pts, self.value_len) for pts in self._received.pop(msg.cell)]
        values = map_jobs(self.run, self.run_many, blind_truncate, jobs)
        arr = np.frombuffer(b"".join(values), dtype=np.uint8)
        arr = arr.reshape(-1, self.value_len)[self._cell_rng.permutation(expected)]
        return CellValues(cell=msg.cell, values=arr.tobytes())

    def conversion_tokens(self, chunk: int = 8192) -> list[ConversionTokens]:
        """T(y)^b for every (identifier, lag), shuffled, with event and lag labels."""
        d = self.data
        lags = np.arange(self.max_lag + 1, dtype=np.int64)
        n_ids = len(d.id_event)
        tok_id = np.repeat(np.arange(n_ids), len(lags))
        tok_lag = np.tile(lags, n_ids)
        order = self.rng.permutation(len(tok_id))
        tok_id, tok_lag = tok_id[order], tok_lag[order]
        days = d.day[d.id_event[tok_id]] - tok_lag
        types = d.id_type[tok_id]
        points = np.empty((len(tok_id), POINT_LEN), dtype=np.uint8)
        parts: list[np.ndarray] = []
        jobs: list[tuple[Any, ...]] = []
        for id_type in np.unique(types):
            idx = np.flatnonzero(types == id_type)
            for start in range(0, len(idx), chunk):
                part = idx[start : start + chunk]
                msgs = token_messages(d.id_digest[tok_id[part]], days[part])
                parts.append(part)
                jobs.append((self._secret, msgs, day_dst(str(id_type))))
        for part, out in zip(
            parts, map_jobs(self.run, self.run_many, hash_days_and_blind, jobs), strict=True
        ):
            points[part] = np.frombuffer(out, dtype=np.uint8).reshape(-1, POINT_LEN)
        anon = self._event_anon[d.id_event[tok_id]].astype("<u4")
        lag8 = tok_lag.astype(np.uint8)
        return [
            ConversionTokens(
                seq=i,
                points=points[s : s + chunk].tobytes(),
                events=anon[s : s + chunk].tobytes(),
                lags=lag8[s : s + chunk].tobytes(),
            )
            for i, s in enumerate(range(0, len(tok_id), chunk))
        ]

    def event_values(self, chunk: int = 4096) -> list[EventValues]:
        """Per anonymous event: anonymous customer and Enc(clipped scaled value)."""
        d = self.data
        order = self._event_order
        customers = self._customer_anon[d.customer[order]].astype("<u4")
        clipped = np.minimum(
            d.value[order], self.dp.value_cap if self.dp.mechanism != "off" else np.inf
        )
        scaled = [round(float(v) * VALUE_SCALE) for v in clipped]
        if self.run_many is not None and len(scaled) > 4 * chunk:
            # Spread the encryptions over the workers in a few large parts (each
            # worker builds its fixed-base table once per part).
            key = json.dumps(private_key_to_json(self.private_key))
            step = -(-len(scaled) // 4)
            bits = self.public_key.n.bit_length()
            jobs: list[tuple[Any, ...]] = [
                (key, bits, scaled[i : i + step]) for i in range(0, len(scaled), step)
            ]
            encrypted = [c for part in self.run_many(encrypt_scaled, jobs) for c in part]
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

    def on_aggregates(self, msg: AttrAggregates) -> dict[str, object]:
        """Decrypt the aggregates (and only them) into report inputs."""
        if self.round is not AttrRound.TOKENS:
            raise ProtocolError(f"aggregates arrived in round {self.round}")
        if any(self._received_count[i] != n for i, n in enumerate(self.hello.cell_tokens)):
            raise ProtocolError("aggregates arrived before every cell's tokens")
        pk = self.public_key
        groups: dict[tuple[str, str], tuple[int, int, int, float]] = {}
        for g in msg.groups:
            if g.group not in GROUPS:
                raise ProtocolError(f"unknown group {g.group!r}")
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
            groups[(g.campaign_id, g.group)] = (g.users, g.conversions, converters, revenue)
        attributed = {
            a.campaign_id: (
                a.conversions,
                max(0.0, self.private_key.decrypt(pk.validate(a.revenue)) / VALUE_SCALE),
            )
            for a in msg.attributed
        }
        self.round = AttrRound.DONE
        return {"groups": groups, "attributed": attributed, "spend": dict(msg.spend)}


# ------------------------------------------------------------------ partner side


@dataclass
class PartnerExposures:
    """P's exposure log, identifiers already hashed (one row per identifier)."""

    row_user: np.ndarray  # int64 per exposure row (dense user number)
    row_campaign: np.ndarray  # object/str per row
    row_day: np.ndarray  # int64 per row
    row_touch: np.ndarray  # object/str per row
    row_group: np.ndarray  # object/str per row
    id_row: np.ndarray  # int64 per identifier: which row
    id_type: np.ndarray  # object/str per identifier
    id_digest: np.ndarray  # uint8 (m, 32)


@dataclass
class PartnerAttribution:
    """P's state machine."""

    conversions: str
    data: PartnerExposures
    click_days: int
    view_days: int
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
        self._secret = self.key.secret_bytes()
        d = self.data
        rows = pd.DataFrame(
            {
                "campaign": pd.Series(d.row_campaign, dtype=str),
                "group": pd.Series(d.row_group, dtype=str),
                "touch": pd.Series(d.row_touch, dtype=str),
            }
        )
        # Cell numbers in sorted (campaign, group, touch) order, vectorized:
        # exposure logs have millions of rows.
        by_cell = rows.groupby(["campaign", "group", "touch"], sort=True)
        row_cell = by_cell.ngroup().to_numpy(dtype=np.int64)
        cells = [Cell(c, g, t) for c, g, t in by_cell.size().index]
        self.cells = tuple(cells)
        # Tokens: distinct (cell, type, digest, day) — one per person, day and cell.
        self._cell_tokens: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
        id_cell = row_cell[d.id_row]
        id_day = d.row_day[d.id_row]
        for ci in range(len(cells)):
            per_type: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            mask = id_cell == ci
            for id_type in np.unique(d.id_type[mask]):
                sel = np.flatnonzero(mask & (d.id_type == id_type))
                key = np.ascontiguousarray(
                    np.concatenate(
                        [d.id_digest[sel], id_day[sel].astype(">i8").view(np.uint8).reshape(-1, 8)],
                        axis=1,
                    )
                ).view(np.dtype((np.void, DIGEST_LEN + 8)))[:, 0]
                _, first = np.unique(key, return_index=True)
                keep = sel[np.sort(first)]
                per_type[str(id_type)] = (d.id_digest[keep], id_day[keep])
            self._cell_tokens.append(per_type)
        self._counts = tuple(sum(len(v[1]) for v in t.values()) for t in self._cell_tokens)
        self._cell_values: dict[int, np.ndarray] = {}
        self._brand_values: list[Any] = []  # raw points, or futures of values
        self._brand_events: list[np.ndarray] = []
        self._brand_lags: list[np.ndarray] = []
        self._event_customer: np.ndarray | None = None
        self._event_ct: list[int] = []
        self._events_received = 0
        self.accepted: AttrAccepted | None = None
        distinct = rows.assign(user=d.row_user).groupby(["campaign", "group"])["user"].nunique()
        self.users = {(str(c), str(g)): int(n) for (c, g), n in distinct.items()}

    def hello(self) -> AttrHello:
        return AttrHello(
            conversions=self.conversions,
            click_days=self.click_days,
            view_days=self.view_days,
            cells=self.cells,
            cell_tokens=self._counts,
            epsilon=self.epsilon,
            submission_key=self.submission_key,
        )

    def on_accepted(self, msg: AttrAccepted) -> None:
        if self.round is not AttrRound.HELLO:
            raise ProtocolError(f"Accepted arrived in round {self.round}")
        if msg.max_lag < max(self.click_days, self.view_days):
            raise ProtocolError("the brand's tokens do not cover the requested windows")
        self.accepted = msg
        self.public_key = PaillierPublicKey(msg.public_key_n, min_bits=self.min_key_bits)
        self._event_ct = [0] * msg.events
        self._event_customer = np.full(msg.events, -1, dtype=np.int64)
        self.round = AttrRound.TOKENS

    def cell_token_jobs(self, chunk: int = 8192) -> tuple[list[int], list[tuple[Any, ...]]]:
        """Per chunk: its cell, and the ``hash_days_and_blind`` arguments."""
        cells: list[int] = []
        jobs: list[tuple[Any, ...]] = []
        for ci, per_type in enumerate(self._cell_tokens):
            for id_type, (digests, days) in per_type.items():
                for start in range(0, len(days), chunk):
                    msgs = token_messages(
                        digests[start : start + chunk], days[start : start + chunk]
                    )
                    cells.append(ci)
                    jobs.append((self._secret, msgs, day_dst(id_type)))
        return cells, jobs

    def cell_token_chunks(self, chunk: int = 8192) -> list[CellTokens]:
        cells: list[int] = []
        jobs: list[tuple[Any, ...]] = []
        for ci, per_type in enumerate(self._cell_tokens):
            for id_type, (digests, days) in per_type.items():
                for start in range(0, len(days), chunk):
                    msgs = token_messages(
                        digests[start : start + chunk], days[start : start + chunk]
                    )
                    cells.append(ci)
                    jobs.append((self._secret, msgs, day_dst(id_type)))
        points = map_jobs(self.run, self.run_many, hash_days_and_blind, jobs)
        return [
            CellTokens(seq=i, cell=ci, points=pts)
            for i, (ci, pts) in enumerate(zip(cells, points, strict=True))
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
        assert self.accepted is not None
        if msg.cell in self._cell_values or not 0 <= msg.cell < len(self.cells):
            raise ProtocolError(f"unexpected values for cell {msg.cell}")
        arr = np.frombuffer(msg.values, dtype=f"S{self.accepted.value_len}")
        if len(arr) != self._counts[msg.cell]:
            raise ProtocolError(f"cell {msg.cell} came back with {len(arr)} values")
        self._cell_values[msg.cell] = arr

    def on_conversion_tokens(self, msg: ConversionTokens) -> None:
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
                self.submit(blind_truncate, self._secret, msg.points, self.accepted.value_len)
            )
        else:
            self._brand_values.append(msg.points)
        self._brand_events.append(events)
        self._brand_lags.append(lags)

    def on_event_values(self, msg: EventValues) -> None:
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
        length = self.accepted.value_len
        if self.submit is not None:
            reblinded = [f.result() for f in self._brand_values]  # type: ignore[union-attr]
        else:
            jobs = [(self._secret, pts, length) for pts in self._brand_values]
            reblinded = map_jobs(self.run, self.run_many, blind_truncate, jobs)
        brand = np.frombuffer(b"".join(reblinded), dtype=f"S{length}")
        events = np.concatenate(self._brand_events) if self._brand_events else np.empty(0, np.int64)
        lags = np.concatenate(self._brand_lags) if self._brand_lags else np.empty(0, np.int64)
        if len(brand) != self.accepted.brand_tokens:
            raise ProtocolError("not every conversion token arrived")
        window = {"click": self.click_days, "view": self.view_days}
        # (event, cell, lag) for every brand token found in a partner cell.
        matches: list[tuple[np.ndarray, int, np.ndarray]] = []
        for ci, cell in enumerate(self.cells):
            hit = np.isin(brand, self._cell_values[ci])
            ok = hit & (lags <= window[cell.touch])
            if ok.any():
                matches.append((events[ok], ci, lags[ok]))
        dp = family_dp(self.accepted.dp)
        noise = _Noise(dp, self.rng)
        groups: list[GroupAggregate] = []
        for (campaign, group), users in sorted(self.users.items()):
            evs = np.unique(
                np.concatenate(
                    [
                        m[0]
                        for m in matches
                        if self.cells[m[1]].campaign_id == campaign
                        and self.cells[m[1]].group == group
                    ]
                    or [np.empty(0, np.int64)]
                )
            )
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
        attributed = self._last_touch(matches)
        campaigns = sorted({c.campaign_id for c in self.cells if c.group == "exposed"})
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

    def _noisy_sum(self, events: np.ndarray, noise: _Noise) -> int:
        """Enc(sum of the events' values + noise).

        The noise is encrypted with full-size fresh randomness (the public key
        has no short-exponent base), so the product is re-randomized: B cannot
        link it to the ciphertexts it sent. ``add_many([])`` is Enc(0).
        """
        pk = self.public_key
        total = pk.add_many([self._event_ct[int(e)] for e in events])
        return pk.add(total, pk.encrypt(noise.amount()))

    def _last_touch(
        self, matches: Sequence[tuple[np.ndarray, int, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Exposed only: click beats view, then smallest lag, then smallest campaign id."""
        rows = [
            (ev, self.cells[ci], lag)
            for evs, ci, lags in matches
            if self.cells[ci].group == "exposed"
            for ev, lag in zip(evs.tolist(), lags.tolist(), strict=True)
        ]
        best: dict[int, tuple[int, int, str]] = {}
        for ev, cell, lag in rows:
            rank = (0 if cell.touch == "click" else 1, lag, cell.campaign_id)
            if ev not in best or rank < best[ev]:
                best[ev] = rank
        out: dict[str, list[int]] = {}
        for ev, (_, _, campaign) in best.items():
            out.setdefault(campaign, []).append(ev)
        return {c: np.array(sorted(v), dtype=np.int64) for c, v in out.items()}


class _Noise:
    """Noise for counts (sensitivity 1) and scaled amounts (sensitivity = cap)."""

    def __init__(self, dp: DpParams, rng: np.random.Generator) -> None:
        self.dp = dp
        self.rng = rng
        self.count_scale = noise_scale(dp, 1.0)
        self.amount_scale = noise_scale(dp, dp.value_cap * VALUE_SCALE)

    def _draw(self, scale: float) -> float:
        if scale == 0:
            return 0.0
        if self.dp.mechanism == "laplace":
            return float(self.rng.laplace(0.0, scale))
        return float(self.rng.normal(0.0, scale))

    def count(self, value: int) -> int:
        return max(0, round(value + self._draw(self.count_scale)))

    def amount(self) -> int:
        return round(self._draw(self.amount_scale))


__all__ = [
    "AttrAccepted",
    "AttrAggregates",
    "AttrDone",
    "AttrHello",
    "AttributedAggregate",
    "BrandAttribution",
    "BrandConversions",
    "Cell",
    "CellTokens",
    "CellValues",
    "ConversionTokens",
    "DpParams",
    "EventValues",
    "GroupAggregate",
    "PartnerAttribution",
    "PartnerExposures",
    "PolicyViolation",
]
