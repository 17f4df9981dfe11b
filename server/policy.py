"""The privacy policy of a tenant and the overrides of its partners (DESIGN.md §9).

Every field is declared once, with its bounds, as an ``Annotated`` type: the
stored ``Policy``, the change request ``PolicyChanges`` (the REST body, and
what gRPC ``SetPolicy`` and ``tenant create`` are turned into) and the
partner overrides all validate through these types, so the three transports
accept exactly the same values. ``server/tenants.py`` is the one service
function that applies a change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass as validated_dataclass

from cleanroom.proto.errors import InvalidInput

if TYPE_CHECKING:
    from cleanroom.server.store import Partner

DpMechanism = Literal["off", "laplace", "gaussian"]
DP_MECHANISMS: tuple[str, ...] = ("off", "laplace", "gaussian")

MinPartnerRecords = Annotated[
    int, Field(ge=1, le=1_000_000_000, description="smallest partner set a PSI session accepts")
]
SessionsPerDay = Annotated[
    int, Field(ge=1, le=1_000_000_000, description="sessions one partner may open per UTC day")
]
AggregationThreshold = Annotated[
    int,
    Field(
        ge=0,
        le=1_000_000,
        description="attribution groups with fewer users are suppressed (0: none)",
    ),
]
EpsilonBudget = Annotated[
    float,
    Field(ge=0, le=1000, allow_inf_nan=False, description="epsilon per partnership, in total"),
]
Delta = Annotated[
    float,
    Field(gt=0, lt=1, allow_inf_nan=False, description="delta of the Gaussian mechanism"),
]

# Fields a partner may override (None on the partner: the tenant's value).
PARTNER_OVERRIDES = ("sessions_per_day", "min_partner_records")


@validated_dataclass(frozen=True)
class Policy:
    """A tenant's policy for matching and attribution.

    Attribution groups with fewer users than ``aggregation_threshold`` are
    suppressed; ``dp`` is the noise mechanism, charged against
    ``epsilon_budget`` per partnership (``delta`` for the Gaussian one).
    """

    min_partner_records: MinPartnerRecords = 100
    sessions_per_day: SessionsPerDay = 100
    aggregation_threshold: AggregationThreshold = 50
    dp: DpMechanism = "off"
    epsilon_budget: EpsilonBudget = 10.0
    delta: Delta = 1e-6

    def for_partner(self, partner: Partner) -> Policy:
        """The policy one partnership runs under: the partner's overrides applied."""
        overrides = {
            name: value
            for name in PARTNER_OVERRIDES
            if (value := getattr(partner, name)) is not None
        }
        return dataclasses.replace(self, **overrides) if overrides else self

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PolicyChanges(BaseModel):
    """Policy fields to change; fields left out keep their value.

    For a tenant, any field; for a partner (its overrides), only
    ``sessions_per_day`` and ``min_partner_records``. Only admins change a
    policy, and every change is audited with the policy before and after.
    """

    model_config = ConfigDict(extra="forbid")

    min_partner_records: MinPartnerRecords | None = None
    sessions_per_day: SessionsPerDay | None = None
    aggregation_threshold: AggregationThreshold | None = None
    dp: DpMechanism | None = None
    epsilon_budget: EpsilonBudget | None = None
    delta: Delta | None = None

    @classmethod
    def parse(cls, changes: dict[str, Any]) -> PolicyChanges:
        """Validated changes, or InvalidInput naming each bad field and why."""
        try:
            return cls.model_validate(changes)
        except ValidationError as exc:
            raise InvalidInput(describe(exc)) from None

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def describe(exc: ValidationError | Sequence[Any]) -> str:
    """``field: what is wrong`` per problem (pydantic's wording, trimmed), for a
    ValidationError or the error list of a request body FastAPI validated (whose
    locations start with "body"), so every transport says it the same way."""
    errors = exc.errors() if isinstance(exc, ValidationError) else exc
    parts = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ("body",) else loc)) or "value"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "literal_error" and where == "dp":
            message = f"dp must be one of {', '.join(DP_MECHANISMS)}, not {error.get('input')!r}"
        elif error.get("type") == "extra_forbidden":
            message = "not a policy field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


__all__ = [
    "DP_MECHANISMS",
    "PARTNER_OVERRIDES",
    "Policy",
    "PolicyChanges",
    "describe",
]
