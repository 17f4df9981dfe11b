"""Typed attribution messages: the domain side of the wire protocol.

Plain dataclasses; ``cleanroom.proto.serde`` is the only place that converts
them to and from protobuf, so the state machines never see a transport type.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from enum import StrEnum

from cleanroom.proto.errors import InvalidInput

TOUCHES = ("click", "view")
GROUPS = ("exposed", "holdout")
VALUE_SCALE = 10**6  # fixed point: micro-units of the currency
CUSTOMER_LEN = 4  # an anonymous customer in EventValues: uint32, little-endian


@dataclass(frozen=True)
class Windows:
    """Attribution windows in whole UTC days, per touch type (a lag of ``0..days`` counts)."""

    click_days: int = 7
    view_days: int = 1

    def __post_init__(self) -> None:
        for name in ("click_days", "view_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise InvalidInput(f"{name} must be an integer, got {value!r}")
            if value < 0:
                raise InvalidInput(f"{name} must not be negative, got {value}")
            object.__setattr__(self, name, int(value))

    def days(self, touch: str) -> int:
        """The window of a touch type ("click" or "view")."""
        if touch == "click":
            return self.click_days
        if touch == "view":
            return self.view_days
        raise ValueError(f"unknown touch {touch!r} (expected one of {', '.join(TOUCHES)})")

    def as_dict(self) -> dict[str, int]:
        return {"click_days": self.click_days, "view_days": self.view_days}


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
            raise InvalidInput(f"unknown group {self.group!r}; expected one of {GROUPS}")
        if self.touch not in TOUCHES:
            raise InvalidInput(f"unknown touch {self.touch!r}; expected one of {TOUCHES}")


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
    points: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CellValues:
    """B -> P: values of one cell, re-blinded, truncated; sent once the whole cell is in,
    shuffled, in as many chunks as it takes (they add up to the cell's declared tokens)."""

    cell: int
    values: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConversionTokens:
    """B -> P: T(y)^b, with per token the anonymous event index and lag."""

    seq: int
    points: bytes = field(repr=False)
    events: bytes = field(repr=False)  # uint32 little-endian per token
    lags: bytes = field(repr=False)  # uint8 per token


@dataclass(frozen=True, slots=True)
class EventValues:
    """B -> P: per anonymous event from ``start``: customer index, Enc(value)."""

    seq: int
    start: int
    customers: bytes = field(repr=False)  # uint32 little-endian per event
    ciphertexts: bytes = field(repr=False)  # packed, ``ciphertext_bytes`` each, big-endian


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


AttrPartnerMessage = AttrHello | AttrCells | CellTokens | AttrAggregates
AttrBrandMessage = AttrAccepted | CellValues | ConversionTokens | EventValues | AttrDone
