"""The attribution report's arithmetic, shared by the private path and the reference.

The brand node turns the decrypted aggregates into a report with
:func:`campaign_report`; the plaintext reference (``reference.py``) calls the
same function on its own joins, so both apply literally the same definitions.

Definitions (see the attribution issue):

* A *day* is a UTC calendar date, represented as whole days since 1970-01-01 UTC.
* A conversion on day ``c`` is *in window* of an exposure row on day ``d`` with touch ``t`` when
  ``0 <= c - d <= W_t`` (``W_click`` = 7 and ``W_view`` = 1 by default, see
  :class:`~cleanroom.federated.attribution.inputs.Windows`).
* An exposure row and a conversion belong to the *same person* when they share at least one
  identifier: same :class:`~cleanroom.audiences.identifiers.IdType` and same SHA-256 digest
  after normalization (:func:`~cleanroom.audiences.identifiers.identifier_digest`). Empty and
  invalid identifier cells never match anything.
* Lift, per campaign and group ``g`` in {exposed, holdout}: ``users`` = distinct partner
  ``user_id`` with a row of (campaign, g); ``conversions`` = conversion events in window of at
  least one row of (campaign, g) of the same person, each event counted once; ``revenue`` = the
  sum of their values; ``converters`` = distinct brand customers among them; ``rate`` =
  converters / users; ``lift`` = rate_exposed / rate_holdout - 1 with a Katz log 95% interval
  (:func:`lift_interval`); ``incremental_converters`` = (rate_exposed - rate_holdout) *
  users_exposed; ``iroas`` = (revenue_exposed / users_exposed - revenue_holdout / users_holdout)
  * users_exposed / spend.
* Last touch, exposed rows only, across campaigns: a conversion is credited to at most one
  campaign. Among the exposed rows of the same person that have it in window, clicks beat views,
  then the smallest lag ``c - d`` wins, then the smallest campaign id (string comparison).
* Aggregation threshold: a group whose ``users`` is below the threshold is suppressed.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, model_validator

from cleanroom.federated.attribution.messages import GROUPS, Windows

DEFAULT_THRESHOLD = 50
Z_95 = 1.959963984540054  # standard normal 97.5% quantile

# (campaign, group) -> (users, conversions, converters, revenue)
Aggregate = tuple[int, int, int, float]


# --------------------------------------------------------------------------- value types


def non_negative_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"{what} must not be negative, got {number}")
    return number


def non_negative_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite non-negative number, got {value!r}")
    return number


@dataclass(frozen=True)
class GroupStats:
    """Aggregates of one (campaign, group); ``rate`` is derived (None when there are no users).

    Note the positional order (users, conversions, revenue, converters) follows the report's key
    order, whereas the :data:`Aggregate` tuple is (users, conversions, converters, revenue).
    """

    users: int
    conversions: int
    revenue: float
    converters: int
    rate: float | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", non_negative_int(self.users, "users"))
        object.__setattr__(self, "conversions", non_negative_int(self.conversions, "conversions"))
        object.__setattr__(self, "converters", non_negative_int(self.converters, "converters"))
        object.__setattr__(self, "revenue", non_negative_float(self.revenue, "revenue"))
        if self.converters > self.conversions:
            raise ValueError(
                f"converters ({self.converters}) cannot exceed conversions ({self.conversions})"
            )
        rate = self.converters / self.users if self.users else None
        object.__setattr__(self, "rate", rate)

    @classmethod
    def from_aggregate(cls, aggregate: Aggregate) -> GroupStats:
        """Build from an ``(users, conversions, converters, revenue)`` tuple."""
        users, conversions, converters, revenue = aggregate
        return cls(users=users, conversions=conversions, revenue=revenue, converters=converters)

    def as_aggregate(self) -> Aggregate:
        return (self.users, self.conversions, self.converters, self.revenue)

    def result(self) -> GroupResult:
        return GroupResult(
            users=self.users,
            conversions=self.conversions,
            revenue=self.revenue,
            converters=self.converters,
            rate=self.rate,
        )


# --------------------------------------------------------------------------- the report, typed

# One model for every reader of a report: the store writes and reads it, the
# REST API serves it (its schema is in the OpenAPI document), the CLI, the
# dashboard and the tests read it. Floats are finite: NaN is not JSON.
_REPORT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
REPORT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
REPORT_ID = re.compile(REPORT_ID_PATTERN[1:-1])


class GroupResult(BaseModel):
    """One (campaign, group): every number is null when the group is suppressed."""

    model_config = _REPORT

    users: int | None = Field(ge=0, description="distinct partner users with a row of the group")
    conversions: int | None = Field(ge=0, description="conversion events in window, each once")
    revenue: float | None = Field(ge=0, description="the sum of their values")
    converters: int | None = Field(ge=0, description="distinct brand customers among them")
    rate: float | None = Field(ge=0, description="converters / users")

    @classmethod
    def suppressed(cls) -> GroupResult:
        return cls(users=None, conversions=None, revenue=None, converters=None, rate=None)


class CampaignResult(BaseModel):
    """One campaign: both groups, lift with its 95% interval, last-touch attribution."""

    model_config = _REPORT

    campaign_id: str
    attributed_conversions: int | None = Field(ge=0)
    attributed_revenue: float | None = Field(ge=0)
    exposed: GroupResult
    holdout: GroupResult
    lift: float | None = Field(description="rate_exposed / rate_holdout - 1")
    lift_ci95: tuple[float, float] | None = Field(description="Katz log interval of the lift")
    incremental_converters: float | None
    spend: float | None = Field(ge=0)
    iroas: float | None = Field(description="incremental revenue / spend")
    suppressed: bool = Field(description="a group is below the aggregation threshold")


class ReportDp(BaseModel):
    """The differential privacy the partner applied (``off``: none)."""

    model_config = _REPORT

    mechanism: Literal["off", "laplace", "gaussian"] = "off"
    epsilon: float = Field(0.0, ge=0)
    delta: float = Field(0.0, ge=0, lt=1)
    value_cap: float | None = Field(
        None, gt=0, description="a conversion's value is clipped to this"
    )


class AttributionReport(BaseModel):
    """An attribution report as the brand node stores and serves it."""

    model_config = _REPORT

    report_id: str = Field(pattern=REPORT_ID_PATTERN)
    conversions_name: str = Field(max_length=200)
    created_at: AwareDatetime
    partner: str | None = Field(None, description="the media partner that ran it")
    windows: Windows
    dp: ReportDp = ReportDp()
    aggregation_threshold: int = Field(ge=0)
    campaigns: list[CampaignResult]

    @model_validator(mode="before")
    @classmethod
    def _stored_before_the_model(cls, data: Any) -> Any:
        # Bodies stored before this model named the conversion set "conversions".
        if isinstance(data, dict) and "conversions" in data:
            data = dict(data)
            legacy = data.pop("conversions")
            data.setdefault("conversions_name", legacy)
        return data

    @field_serializer("created_at")
    def _iso(self, value: datetime) -> str:
        return value.isoformat()


class ReportSummary(BaseModel):
    """A report in the list of a tenant's reports."""

    model_config = _REPORT

    report_id: str
    conversions_name: str
    created_at: AwareDatetime
    partner: str | None
    campaigns: int
    suppressed: int
    dp: ReportDp

    @classmethod
    def of(cls, report: AttributionReport) -> ReportSummary:
        return cls(
            report_id=report.report_id,
            conversions_name=report.conversions_name,
            created_at=report.created_at,
            partner=report.partner,
            campaigns=len(report.campaigns),
            suppressed=sum(1 for c in report.campaigns if c.suppressed),
            dp=report.dp,
        )

    @field_serializer("created_at")
    def _iso(self, value: datetime) -> str:
        return value.isoformat()


# --------------------------------------------------------------------------- report arithmetic


def lift_interval(
    conv_e: int, users_e: int, conv_h: int, users_h: int, z: float = Z_95
) -> tuple[float | None, tuple[float, float] | None]:
    """Relative lift ``rate_e / rate_h - 1`` and its confidence interval (95% by default).

    ``conv_*`` are converter counts, ``users_*`` the group sizes. The interval is the Katz
    (delta-method, log scale) interval for the ratio of two independent binomial proportions
    ``RR = p_e / p_h``::

        log RR  +-  z * sqrt((1 - p_e) / conv_e + (1 - p_h) / conv_h)

    exponentiated and shifted by -1 to the lift scale.

    Undefined cases: the lift is None when either group has no users or the holdout has no
    converters (its rate is 0). The interval is None whenever the lift is, and also when the
    exposed group has no converters (the lift is then exactly -1 but log RR is -inf) or when
    converters exceed users in a group (possible when one partner user matches several brand
    customers; the binomial model does not apply).
    """
    conv_e = non_negative_int(conv_e, "exposed converters")
    users_e = non_negative_int(users_e, "exposed users")
    conv_h = non_negative_int(conv_h, "holdout converters")
    users_h = non_negative_int(users_h, "holdout users")
    if isinstance(z, bool) or not isinstance(z, numbers.Real) or not 0 < z < math.inf:
        raise ValueError(f"z must be a positive finite number, got {z!r}")
    if users_e == 0 or users_h == 0 or conv_h == 0:
        return None, None
    # One correctly rounded division of exact integers instead of a ratio of rounded rates.
    lift = (conv_e * users_h) / (users_e * conv_h) - 1.0
    if conv_e == 0 or conv_e > users_e or conv_h > users_h:
        return lift, None
    log_rr = math.log(conv_e) - math.log(users_e) - math.log(conv_h) + math.log(users_h)
    se = math.sqrt((1.0 - conv_e / users_e) / conv_e + (1.0 - conv_h / users_h) / conv_h)
    return lift, (math.expm1(log_rr - z * se), math.expm1(log_rr + z * se))


def _group_stats(value: Aggregate | GroupStats) -> GroupStats:
    if isinstance(value, GroupStats):
        return value
    if not isinstance(value, tuple) or len(value) != 4:
        raise ValueError(
            f"expected a (users, conversions, converters, revenue) tuple, got {value!r}"
        )
    return GroupStats.from_aggregate(value)


def campaign_report(
    aggregates: Mapping[tuple[str, str], Aggregate | GroupStats],
    attributed: Mapping[str, tuple[int, float]],
    spend: Mapping[str, float] | None,
    threshold: int,
) -> list[CampaignResult]:
    """Turn per-(campaign, group) aggregates into the report's ``campaigns`` list.

    ``aggregates`` maps ``(campaign_id, group)`` to ``(users, conversions, converters,
    revenue)`` (or a :class:`GroupStats`); a missing group counts as all zeros. ``attributed``
    maps a campaign to its last-touch ``(conversions, revenue)`` (missing = zeros); ``spend``
    maps a campaign to its spend (campaigns without exposures are not reported). Campaigns are
    those of ``aggregates`` and ``attributed``, sorted by id.

    Suppression: a group with ``users < threshold`` has all its numbers set to None and the
    campaign's ``suppressed`` flag set; if either group is suppressed, lift, its interval,
    incremental converters and iROAS are None as well. Attributed conversions and revenue come
    from exposed rows only, so they are suppressed (None) together with the exposed group. The
    spend is the brand's own input and is always echoed.

    ``incremental_converters`` is computed as ``converters_e - converters_h * users_e /
    users_h`` and ``iroas`` as ``(revenue_e - revenue_h * users_e / users_h) / spend``, which
    are algebraically the definitions with fewer roundings; iROAS is None without a positive
    spend.
    """
    threshold = non_negative_int(threshold, "threshold")
    stats: dict[tuple[str, str], GroupStats] = {}
    for key, value in aggregates.items():
        if not isinstance(key, tuple) or len(key) != 2:
            raise ValueError(f"aggregate keys must be (campaign_id, group), got {key!r}")
        campaign, group = key
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r} (expected one of {', '.join(GROUPS)})")
        stats[(str(campaign), group)] = _group_stats(value)
    credited: dict[str, tuple[int, float]] = {}
    for campaign, (count, revenue) in attributed.items():
        credited[str(campaign)] = (
            non_negative_int(count, f"attributed conversions of {campaign!r}"),
            non_negative_float(revenue, f"attributed revenue of {campaign!r}"),
        )
    budgets = {
        str(campaign): non_negative_float(amount, f"spend of {campaign!r}")
        for campaign, amount in (spend or {}).items()
    }

    empty = GroupStats(users=0, conversions=0, revenue=0.0, converters=0)
    report: list[CampaignResult] = []
    for campaign in sorted({c for c, _ in stats} | set(credited)):
        exposed = stats.get((campaign, "exposed"), empty)
        holdout = stats.get((campaign, "holdout"), empty)
        exposed_suppressed = exposed.users < threshold
        holdout_suppressed = holdout.users < threshold
        suppressed = exposed_suppressed or holdout_suppressed
        attributed_conversions: int | None
        attributed_revenue: float | None
        if exposed_suppressed:
            attributed_conversions, attributed_revenue = None, None
        else:
            attributed_conversions, attributed_revenue = credited.get(campaign, (0, 0.0))

        lift: float | None = None
        ci: tuple[float, float] | None = None
        incremental: float | None = None
        iroas: float | None = None
        budget = budgets.get(campaign)
        if not suppressed and exposed.users > 0 and holdout.users > 0:
            lift, ci = lift_interval(
                exposed.converters, exposed.users, holdout.converters, holdout.users
            )
            scale = exposed.users / holdout.users
            incremental = exposed.converters - holdout.converters * scale
            if budget is not None and budget > 0:
                iroas = (exposed.revenue - holdout.revenue * scale) / budget

        report.append(
            CampaignResult(
                campaign_id=campaign,
                attributed_conversions=attributed_conversions,
                attributed_revenue=attributed_revenue,
                exposed=GroupResult.suppressed() if exposed_suppressed else exposed.result(),
                holdout=GroupResult.suppressed() if holdout_suppressed else holdout.result(),
                lift=lift,
                lift_ci95=ci,
                incremental_converters=incremental,
                spend=budget,
                iroas=iroas,
                suppressed=suppressed,
            )
        )
    return report


@dataclass(frozen=True)
class DecryptedAggregates:
    """What the brand decrypts at the end of a run: the report's inputs, nothing per person.

    ``groups``: per ``(campaign_id, group)`` its users, conversions, converters
    and revenue; ``attributed``: per campaign its last-touch ``(conversions,
    revenue)``; ``spend``: the partner's campaign spend, echoed.
    """

    groups: Mapping[tuple[str, str], GroupStats]
    attributed: Mapping[str, tuple[int, float]]
    spend: Mapping[str, float]

    def campaigns(self, threshold: int) -> list[CampaignResult]:
        """The report's campaigns (:func:`campaign_report`) under ``threshold``."""
        return campaign_report(self.groups, self.attributed, self.spend, threshold)
