"""The brand node's side of attribution as a state machine (see the package docstring)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cleanroom.federated.attribution.inputs import BrandConversions
from cleanroom.federated.attribution.messages import (
    GROUPS,
    VALUE_SCALE,
    AttrAccepted,
    AttrAggregates,
    AttrCells,
    AttrHello,
    AttrRound,
    Cell,
    CellTokens,
    CellValues,
    ConversionTokens,
    DpParams,
    EventValues,
)
from cleanroom.federated.attribution.tokens import (
    POINT_CHUNK,
    LaggedPoints,
    RunMany,
    map_jobs,
)
from cleanroom.federated.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    private_key_from_json,
    private_key_to_json,
)
from cleanroom.matching.messages import POINT_LEN
from cleanroom.matching.session import comparison_length
from cleanroom.matching.workers import blind_and_truncate, hash_and_blind_mixed
from cleanroom.matching.x25519 import BlindingKey
from cleanroom.proto.errors import PolicyViolation, ProtocolError


def encrypt_scaled(private_key_json: str, min_bits: int, values: list[int]) -> list[int]:
    """Key-owner Paillier encryption in a worker process (the key stays in the party)."""
    key = private_key_from_json(private_key_json, min_bits=min_bits)
    return key.encrypt_many(values)


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
