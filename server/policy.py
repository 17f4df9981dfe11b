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

LookalikeModeName = Literal["hidden-seed", "matched"]
LOOKALIKE_MODES: tuple[str, ...] = ("hidden-seed", "matched")
LookalikeDp = Literal["off", "gaussian"]
LOOKALIKE_DP: tuple[str, ...] = ("off", "gaussian")
LookalikeModes = Annotated[
    tuple[LookalikeModeName, ...],
    Field(max_length=2, description="lookalike modes partners may run (none: lookalikes off)"),
]
MinLookalikeSeed = Annotated[
    int,
    Field(ge=100, le=1_000_000_000, description="fewest matched seeds a lookalike trains on"),
]
LookalikeEpsilon = Annotated[
    float,
    Field(
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="largest label-DP epsilon one lookalike job may use",
    ),
]

MatchMethodName = Literal["ecdh", "kkrt"]
MATCH_METHODS: tuple[str, ...] = ("ecdh", "kkrt")
MatchMethods = Annotated[
    tuple[MatchMethodName, ...],
    Field(
        min_length=1,
        max_length=2,
        description="how partners may compute a match: ecdh (blinding), kkrt (OT extension)",
    ),
]

RetentionDays = Annotated[
    int,
    Field(
        ge=0,
        le=36_500,
        description="days audiences, conversion sets, reports and session records are kept"
        " (0: no limit)",
    ),
]

# Fields a partner may override (None on the partner: the tenant's value).
PARTNER_OVERRIDES = ("sessions_per_day", "min_partner_records")


@validated_dataclass(frozen=True)
class Policy:
    """A tenant's policy for matching, attribution and lookalikes.

    Attribution groups with fewer users than ``aggregation_threshold`` are
    suppressed; ``dp`` is the noise mechanism, charged against
    ``epsilon_budget`` per partnership (``delta`` for the Gaussian one).
    Lookalikes run in ``lookalike_modes`` only, on at least
    ``min_lookalike_seed`` matched seeds; with ``lookalike_dp = "gaussian"``
    every job adds label-DP noise of at most ``lookalike_epsilon`` (a
    partner may also ask for it), charged to ``lookalike_epsilon_budget``,
    a ledger of its own per partnership. Data older than ``retention_days``
    (0: no limit) is purged (``server/lifecycle.py``). A ``match`` runs with one of
    ``match_methods`` (``overlap`` and attribution are always ECDH).
    """

    min_partner_records: MinPartnerRecords = 100
    sessions_per_day: SessionsPerDay = 100
    aggregation_threshold: AggregationThreshold = 50
    dp: DpMechanism = "off"
    epsilon_budget: EpsilonBudget = 10.0
    delta: Delta = 1e-6
    lookalike_modes: LookalikeModes = ("hidden-seed", "matched")
    min_lookalike_seed: MinLookalikeSeed = 500
    lookalike_dp: LookalikeDp = "off"
    lookalike_epsilon: LookalikeEpsilon = 1.0
    lookalike_epsilon_budget: EpsilonBudget = 10.0
    retention_days: RetentionDays = 0
    match_methods: MatchMethods = ("ecdh", "kkrt")

    def __post_init__(self) -> None:
        # One spelling per set: no repeats, in the canonical order.
        modes = tuple(m for m in LOOKALIKE_MODES if m in self.lookalike_modes)
        object.__setattr__(self, "lookalike_modes", modes)
        methods = tuple(m for m in MATCH_METHODS if m in self.match_methods)
        object.__setattr__(self, "match_methods", methods)

    def for_partner(self, partner: Partner) -> Policy:
        """The policy one partnership runs under: the partner's overrides applied."""
        overrides = {
            name: value
            for name in PARTNER_OVERRIDES
            if (value := getattr(partner, name)) is not None
        }
        return dataclasses.replace(self, **overrides) if overrides else self

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (lists, not tuples): as the REST API and the audit log show it."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


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
    lookalike_modes: LookalikeModes | None = None
    min_lookalike_seed: MinLookalikeSeed | None = None
    lookalike_dp: LookalikeDp | None = None
    lookalike_epsilon: LookalikeEpsilon | None = None
    lookalike_epsilon_budget: EpsilonBudget | None = None
    retention_days: RetentionDays | None = None
    match_methods: MatchMethods | None = None

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
        choices = {"dp": DP_MECHANISMS, "lookalike_dp": LOOKALIKE_DP}
        if error.get("type") == "literal_error" and where.split(".")[0] == "lookalike_modes":
            message = (
                f"lookalike modes are {', '.join(LOOKALIKE_MODES)}, not {error.get('input')!r}"
            )
            where = "lookalike_modes"
        elif error.get("type") == "literal_error" and where.split(".")[0] == "match_methods":
            message = f"match methods are {', '.join(MATCH_METHODS)}, not {error.get('input')!r}"
            where = "match_methods"
        elif error.get("type") == "literal_error" and where in choices:
            message = (
                f"{where} must be one of {', '.join(choices[where])}, not {error.get('input')!r}"
            )
        elif error.get("type") == "extra_forbidden":
            message = "not a policy field"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


__all__ = [
    "DP_MECHANISMS",
    "LOOKALIKE_DP",
    "LOOKALIKE_MODES",
    "MATCH_METHODS",
    "PARTNER_OVERRIDES",
    "Policy",
    "PolicyChanges",
    "describe",
]
