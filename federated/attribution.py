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

``HELLO``    P: conversions set name, windows, its identifier types,
             requested epsilon, submission key; sent once P has read and
             validated its log, before it hashes it. B: policy checks (the
             DP budget before any work), ``AttrAccepted`` with the Paillier
             public key, the DP parameters P must apply and the identifier
             types both hold (only those are tokenized: other types cannot
             match). B starts on its own tokens and encrypted values at once.
``CELLS``    P prepares its log (types in common only) and sends its cell
             labels with their token counts. Both sides derive the
             comparison length from the two token counts.
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

import functools
import json
import math
from collections.abc import Callable, Mapping
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
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.session import comparison_length
from cleanroom.matching.workers import blind_and_truncate, dst_for, hash_and_blind_mixed
from cleanroom.matching.x25519 import BlindingKey

TOUCHES = ("click", "view")
GROUPS = ("exposed", "holdout")
DIGEST_LEN = 32
TOKEN_MSG_LEN = DIGEST_LEN + 4  # digest || day (uint32, big-endian)
VALUE_SCALE = 10**6  # fixed point: micro-units of the currency
DAY_DST_SUFFIX = "-day"
POINT_CHUNK = 8192  # token points per worker job


class AttrRound(StrEnum):
    HELLO = "hello"
    CELLS = "cells"
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
    id_types: tuple[str, ...]  # P's identifier types
    epsilon: float = 0.0
    submission_key: str = ""


@dataclass(frozen=True, slots=True)
class AttrAccepted:
    session_id: str
    public_key_n: int
    max_lag: int
    events: int
    brand_tokens: int
    dp: DpParams
    report_id: str = ""  # set when this submission already has a report
    id_types: tuple[str, ...] = ()  # the types both hold: the only ones tokenized


@dataclass(frozen=True, slots=True)
class AttrCells:
    """P -> B after ``AttrAccepted``: cell labels and the tokens P will send per cell."""

    cells: tuple[Cell, ...]
    cell_tokens: tuple[int, ...]


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


def distinct_keys(
    type_codes: np.ndarray, digests: np.ndarray, days: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Number each distinct (type, digest, day) in order of first appearance.

    Returns the key of every element and, per key, the index of its first element.

    Both parties hash and blind every distinct token message once, however many
    cells, events or lags it serves: blinding is deterministic, so the values on
    the wire are the same, only the work is not repeated. Keys are grouped by a
    64-bit mix of their fields (one hash pass over millions of rows), then
    checked field by field; a collision falls back to grouping by the fields.
    """
    types = np.asarray(type_codes, dtype=np.int64)
    day = np.asarray(days, dtype=np.int64)
    digest = np.ascontiguousarray(digests, dtype=np.uint8)
    keys = pd.factorize(key_mix(types, digest, day))[0].astype(np.int64)
    first = first_of_each(keys)
    rep = first[keys]
    if (
        np.array_equal(digest, digest[rep])
        and np.array_equal(day, day[rep])
        and np.array_equal(types, types[rep])
    ):
        return keys, first
    keys = exact_distinct_keys(types, digest, day)
    return keys, first_of_each(keys)


_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


def key_mix(types: np.ndarray, digests: np.ndarray, days: np.ndarray) -> np.ndarray:
    """A 64-bit mix of (type, digest, day); digests are SHA-256 outputs, so already uniform."""
    words = digests.view("<u8")
    mixed = words[:, 0] ^ (words[:, 1] * _MIX[0]) ^ (words[:, 2] * _MIX[1])
    tag = (days.astype(np.uint64) << np.uint64(8)) | types.astype(np.uint64)
    return mixed ^ (words[:, 3] * _MIX[2]) ^ (tag * _MIX[3])  # products wrap mod 2^64


def exact_distinct_keys(types: np.ndarray, digests: np.ndarray, days: np.ndarray) -> np.ndarray:
    """``distinct_keys`` by grouping on every field (the collision fallback)."""
    words = digests.view("<u8")
    frame = pd.DataFrame({"type": types, "day": days})
    for i in range(words.shape[1]):
        frame[f"w{i}"] = words[:, i]
    return frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy(dtype=np.int64)


def first_of_each(keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each key (keys numbered 0..k-1)."""
    return np.unique(keys, return_index=True)[1]


PRECOMPUTED_LAGS = 8  # points stored at upload: lags 0..7 cover the default windows


@dataclass(frozen=True)
class LaggedPoints:
    """The distinct messages T(id, day - lag) of identifiers over lags ``0..lags-1``.

    ``keys[i, lag]`` numbers the distinct (type, digest, day) of identifier
    ``i`` at ``lag``; ``first_item`` gives, per key, the flat (i * lags + lag)
    position where it first appears.
    """

    keys: np.ndarray  # int64 (m, lags)
    first_item: np.ndarray  # int64 per key
    type_codes: np.ndarray  # uint8 per key
    messages: np.ndarray  # uint8 (k, TOKEN_MSG_LEN) per key
    dsts: tuple[bytes, ...]

    @classmethod
    def of(
        cls, id_types: np.ndarray, digests: np.ndarray, days: np.ndarray, lags: int
    ) -> LaggedPoints:
        """``id_types`` (str), ``digests`` and ``days`` are per identifier."""
        n = len(digests)
        item_id = np.repeat(np.arange(n), lags)
        item_days = days[item_id] - np.tile(np.arange(lags), n)
        names, codes = np.unique(np.asarray(id_types).astype(str), return_inverse=True)
        keys, first = distinct_keys(codes[item_id], digests[item_id], item_days)
        return cls(
            keys=keys.reshape(n, lags),
            first_item=first,
            type_codes=codes[item_id[first]].astype(np.uint8),
            messages=np.frombuffer(
                token_messages(digests[item_id[first]], item_days[first]), dtype=np.uint8
            ).reshape(-1, TOKEN_MSG_LEN),
            dsts=tuple(day_dst(str(t)) for t in names),
        )

    def per_identifier(self, hashed: bytes) -> np.ndarray:
        """uint8 (m, lags, 32): every key's point (``hashed``, in key order) per identifier."""
        return np.frombuffer(hashed, dtype=np.uint8).reshape(-1, POINT_LEN)[self.keys]

    def hash_jobs(
        self, select: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, tuple[Any, ...]]]:
        """Per ``POINT_CHUNK`` of the selected keys (default all): the keys, ``hash_mixed`` args."""
        keys = np.arange(len(self.first_item)) if select is None else select
        out: list[tuple[np.ndarray, tuple[Any, ...]]] = []
        for start in range(0, len(keys), POINT_CHUNK):
            part = keys[start : start + POINT_CHUNK]
            job = (
                self.messages[part].tobytes(),
                self.type_codes[part].tobytes(),
                self.dsts,
                TOKEN_MSG_LEN,
            )
            out.append((part, job))
        return out


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


def types_kept(
    id_type: np.ndarray, wanted: tuple[str, ...]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Per identifier: its type's code into the sorted type names, and whether
    the type is one of ``wanted``. One factorize: comparing millions of strings
    costs more."""
    codes, uniques = pd.factorize(np.asarray(id_type, dtype=object), sort=True)
    names = [str(t) for t in uniques]
    keep = np.isin(codes, [i for i, t in enumerate(names) if t in wanted])
    return codes, names, keep


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


@dataclass
class BrandConversions:
    """The brand's conversion set: per event and per (event, identifier)."""

    customer: np.ndarray  # int64 per event (dense customer number)
    day: np.ndarray  # int64 per event (days since 1970-01-01 UTC)
    value: np.ndarray  # float64 per event
    id_event: np.ndarray  # int64 per identifier: which event
    id_type: np.ndarray  # object/str per identifier
    id_digest: np.ndarray  # uint8 (m, 32)
    # Hash-to-curve points of T(id, day - lag) for lags 0..k-1, computed at
    # upload: uint8 (m, k, 32), or None (then every point is hashed per run).
    id_points: np.ndarray | None = None

    @property
    def events(self) -> int:
        return len(self.day)

    def held_types(self) -> tuple[str, ...]:
        return tuple(types_kept(self.id_type, ())[1])

    def with_types(self, id_types: tuple[str, ...]) -> BrandConversions:
        """The same events with only the identifiers of ``id_types``."""
        keep = types_kept(self.id_type, id_types)[2]
        return BrandConversions(
            customer=self.customer,
            day=self.day,
            value=self.value,
            id_event=self.id_event[keep],
            id_type=self.id_type[keep],
            id_digest=self.id_digest[keep],
            id_points=None if self.id_points is None else self.id_points[keep],
        )


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
        if h.click_days < 0 or h.view_days < 0 or max(h.click_days, h.view_days) > 90:
            raise ProtocolError("attribution windows are 0..90 days")
        self.max_lag = max(h.click_days, h.view_days)
        self._secret = self.key.secret_bytes()
        # Only types both sides hold are tokenized: tokens are domain-separated
        # by type, so any other token could never match.
        held = self.data.held_types()
        self.id_types = common_id_types(held, h.id_types)
        if len(self.id_types) < len(held):
            self.data = self.data.with_types(self.id_types)
        self.brand_tokens = int(len(self.data.id_event) * (self.max_lag + 1))
        self.cells: tuple[Cell, ...] = ()
        self.cell_tokens: tuple[int, ...] = ()
        self.value_len = 0  # known once P's cells are
        self._received: dict[int, list[bytes]] = {}
        self._received_count: list[int] = []
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

    @functools.cached_property
    def _lagged(self) -> LaggedPoints:
        # Built on first use, off the hello's path: the partner waits for the answer.
        d = self.data
        return LaggedPoints.of(d.id_type, d.id_digest, d.day[d.id_event], self.max_lag + 1)

    @property
    def point_count(self) -> int:
        """Distinct tokens: each is blinded once."""
        return len(self._lagged.first_item)

    def accepted(self) -> AttrAccepted:
        self.round = AttrRound.CELLS
        return AttrAccepted(
            session_id=self.session_id,
            public_key_n=self.public_key.n,
            max_lag=self.max_lag,
            events=self.data.events,
            brand_tokens=self.brand_tokens,
            dp=self.dp,
            id_types=self.id_types,
        )

    def on_cells(self, msg: AttrCells) -> None:
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

    def on_cell_tokens(self, msg: CellTokens) -> CellValues | None:
        """Re-blind a chunk; a complete cell comes back shuffled."""
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
            return None
        # A whole cell at once, re-blinded over all workers, then shuffled.
        jobs = [(self._secret, pts, self.value_len) for pts in self._received.pop(msg.cell)]
        values = map_jobs(self.run, self.run_many, blind_and_truncate, jobs)
        arr = np.frombuffer(b"".join(values), dtype=np.uint8)
        arr = arr.reshape(-1, self.value_len)[self._cell_rng.permutation(expected)]
        return CellValues(cell=msg.cell, values=arr.tobytes())

    def conversion_tokens(self, chunk: int = 8192) -> list[ConversionTokens]:
        """T(y)^b for every (identifier, lag), shuffled, with event and lag labels.

        Each distinct token is blinded once, from its point stored at upload
        when there is one (lags below ``PRECOMPUTED_LAGS``), else hashed here.
        """
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
        for sel, out in zip(
            targets, map_jobs(self.run, self.run_many, hash_and_blind_mixed, jobs), strict=True
        ):
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
        if any(self._received_count[i] != n for i, n in enumerate(self.cell_tokens)):
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
        noise = _Noise(dp, self.rng)
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

    def _noisy_sum(self, events: np.ndarray, noise: _Noise) -> int:
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


def equal_pairs(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``left[i] == right[j]``: equal-width byte strings, 8+ bytes.

    Sorts ``left`` by its first 8 bytes as an integer, looks every ``right``
    value up by binary search, then checks the remaining bytes of each
    candidate pair. Vectorized throughout: a pandas merge of millions of
    values takes seconds, this a fraction of one. Both sides may repeat values.
    """
    width = left.dtype.itemsize
    if right.dtype.itemsize != width or width < 8:
        raise ValueError("equal_pairs needs byte strings of one width, at least 8 bytes")
    lbytes = np.ascontiguousarray(left).view(np.uint8).reshape(-1, width)
    rbytes = np.ascontiguousarray(right).view(np.uint8).reshape(-1, width)
    lkey = np.ascontiguousarray(lbytes[:, :8]).view("<u8").ravel()
    rkey = np.ascontiguousarray(rbytes[:, :8]).view("<u8").ravel()
    order = np.argsort(lkey, kind="stable")
    sorted_keys = lkey[order]
    lo = np.searchsorted(sorted_keys, rkey, side="left")
    counts = np.searchsorted(sorted_keys, rkey, side="right") - lo
    j = np.repeat(np.arange(len(rkey), dtype=np.int64), counts)
    # Position k of right value r's run of equal keys is lo[r] + k.
    run_start = np.repeat(np.cumsum(counts) - counts, counts)
    i = order[np.repeat(lo, counts) + np.arange(len(j), dtype=np.int64) - run_start]
    same = np.all(lbytes[i, 8:] == rbytes[j, 8:], axis=1)
    return i[same].astype(np.int64), j[same]


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
    "AttrCells",
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
