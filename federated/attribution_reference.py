"""Plaintext reference for closed-loop attribution: the numbers the private protocol must match.

For checking only. :func:`reference_report` joins the brand's conversions with the partner's
exposure log *in the clear*, which is exactly what the clean room exists to avoid; it is a test
oracle for synthetic data and must never run on real customer data. The pure pieces
(:func:`campaign_report`, :func:`lift_interval`, :func:`parse_exposures`,
:func:`parse_conversions`, :func:`parse_spend`) are shared with the private protocol's report, so
that both paths apply literally the same definitions, validation and arithmetic.

Definitions (see the attribution issue):

* A *day* is a UTC calendar date, represented as whole days since 1970-01-01 UTC.
* A conversion on day ``c`` is *in window* of an exposure row on day ``d`` with touch ``t`` when
  ``0 <= c - d <= W_t`` (``W_click`` = 7 and ``W_view`` = 1 by default, see :class:`Windows`).
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

Read CSV inputs with ``dtype=str, keep_default_na=False`` so that identifiers such as phone
numbers stay text and values like "n/a" are not turned into missing cells; the parsers also
accept frames pandas typed itself (numbers, datetimes, NaN).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pandas as pd

from cleanroom.audiences.identifiers import (
    IdColumn,
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "GROUPS",
    "TOUCHES",
    "Z_95",
    "Aggregate",
    "GroupStats",
    "Windows",
    "campaign_report",
    "lift_interval",
    "parse_conversions",
    "parse_exposures",
    "parse_spend",
    "parse_timestamps",
    "read_spend",
    "reference_report",
]

TOUCHES = ("click", "view")
GROUPS = ("exposed", "holdout")
DEFAULT_THRESHOLD = 50
Z_95 = 1.959963984540054  # standard normal 97.5% quantile

# Epoch-second values beyond this (about the year 5100) are rejected rather than guessed at:
# they are nearly always epoch *milliseconds*, which would otherwise land far in the future.
_MAX_EPOCH_SECONDS = 1e11
_MICROS_PER_DAY = 86_400 * 1_000_000
# ASCII digits only: Python's \d (and float()) would take other scripts' digits too.
_EPOCH_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

# (campaign, group) -> (users, conversions, converters, revenue)
Aggregate = tuple[int, int, int, float]


# --------------------------------------------------------------------------- value types


def _non_negative_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"{what} must not be negative, got {number}")
    return number


def _non_negative_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a finite non-negative number, got {value!r}")
    return number


@dataclass(frozen=True)
class Windows:
    """Attribution windows in whole UTC days, per touch type (a lag of ``0..days`` counts)."""

    click_days: int = 7
    view_days: int = 1

    def __post_init__(self) -> None:
        for name in ("click_days", "view_days"):
            object.__setattr__(self, name, _non_negative_int(getattr(self, name), name))

    def days(self, touch: str) -> int:
        """The window of a touch type ("click" or "view")."""
        if touch == "click":
            return self.click_days
        if touch == "view":
            return self.view_days
        raise ValueError(f"unknown touch {touch!r} (expected one of {', '.join(TOUCHES)})")

    def as_dict(self) -> dict[str, int]:
        return {"click_days": self.click_days, "view_days": self.view_days}


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
        object.__setattr__(self, "users", _non_negative_int(self.users, "users"))
        object.__setattr__(self, "conversions", _non_negative_int(self.conversions, "conversions"))
        object.__setattr__(self, "converters", _non_negative_int(self.converters, "converters"))
        object.__setattr__(self, "revenue", _non_negative_float(self.revenue, "revenue"))
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "conversions": self.conversions,
            "revenue": self.revenue,
            "converters": self.converters,
            "rate": self.rate,
        }


_SUPPRESSED_GROUP: dict[str, Any] = {
    "users": None,
    "conversions": None,
    "revenue": None,
    "converters": None,
    "rate": None,
}


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
    conv_e = _non_negative_int(conv_e, "exposed converters")
    users_e = _non_negative_int(users_e, "exposed users")
    conv_h = _non_negative_int(conv_h, "holdout converters")
    users_h = _non_negative_int(users_h, "holdout users")
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
) -> list[dict[str, Any]]:
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
    threshold = _non_negative_int(threshold, "threshold")
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
            _non_negative_int(count, f"attributed conversions of {campaign!r}"),
            _non_negative_float(revenue, f"attributed revenue of {campaign!r}"),
        )
    budgets = {
        str(campaign): _non_negative_float(amount, f"spend of {campaign!r}")
        for campaign, amount in (spend or {}).items()
    }

    empty = GroupStats(users=0, conversions=0, revenue=0.0, converters=0)
    report: list[dict[str, Any]] = []
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
            {
                "campaign_id": campaign,
                "attributed_conversions": attributed_conversions,
                "attributed_revenue": attributed_revenue,
                "exposed": dict(_SUPPRESSED_GROUP) if exposed_suppressed else exposed.as_dict(),
                "holdout": dict(_SUPPRESSED_GROUP) if holdout_suppressed else holdout.as_dict(),
                "lift": lift,
                "lift_ci95": None if ci is None else [ci[0], ci[1]],
                "incremental_converters": incremental,
                "spend": budget,
                "iroas": iroas,
                "suppressed": suppressed,
            }
        )
    return report


# --------------------------------------------------------------------------- input parsing


def _require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(have {', '.join(repr(str(c)) for c in frame.columns)})"
        )


class BadRowError(ValueError):
    """A file row that cannot be used; ``row`` counts from 1 (the header is not a row)."""

    def __init__(self, what: str, row: int, detail: str) -> None:
        self.what, self.row, self.detail = what, row, detail
        super().__init__(f"{what} row {row}: {detail}")

    def shifted(self, rows: int) -> BadRowError:
        return BadRowError(self.what, self.row + rows, self.detail)


def _raise_bad_rows(bad: np.ndarray, raw: pd.Series, what: str, problem: str) -> None:
    """Raise for the first flagged row (numbered within the frame, from 1)."""
    positions = np.flatnonzero(bad)
    if len(positions) == 0:
        return
    first = int(positions[0])
    more = f" (and {len(positions) - 1} more bad rows)" if len(positions) > 1 else ""
    value = raw.iloc[first]
    shown = "" if _is_missing(value) else value
    raise BadRowError(what, first + 1, f"{problem}: {shown!r}{more}")


_Parse = TypeVar("_Parse", bound=Callable[..., pd.DataFrame])


def _rows_of_the_file(parse: _Parse) -> _Parse:
    """Name rows of the file, not of the frame, when a chunk keeps the file's row
    numbers in its index (``audiences.reader.iter_frames`` does)."""

    @functools.wraps(parse)
    def wrapper(frame: pd.DataFrame, *args: Any, **kwargs: Any) -> pd.DataFrame:
        try:
            return parse(frame, *args, **kwargs)
        except BadRowError as exc:
            if isinstance(frame.index, pd.RangeIndex) and frame.index.start:
                raise exc.shifted(frame.index.start) from None
            raise

    return cast(_Parse, wrapper)


def _is_missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def _float_cell_text(value: float) -> str:
    if not math.isfinite(value):
        return "" if math.isnan(value) else str(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # an id column read as numbers: 2015550123.0 -> "2015550123"
    return repr(value)


def _as_text(series: pd.Series) -> pd.Series:
    """Cells as strings (pandas string dtype); missing cells become ""."""
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        return pd.Series([_float_cell_text(v) for v in values.tolist()], dtype=str)
    filled = series.where(series.notna().to_numpy(), "")
    return filled.astype(str).reset_index(drop=True)


def _required_text(series: pd.Series, what: str, column: str) -> pd.Series:
    text = _as_text(series).str.strip()
    _raise_bad_rows((text == "").to_numpy(), series, what, f"empty value in column {column!r}")
    return text


def _choice(series: pd.Series, choices: tuple[str, ...], what: str, column: str) -> pd.Series:
    text = _as_text(series).str.strip().str.lower()
    bad = ~text.isin(choices).to_numpy()
    problem = f"unknown value in column {column!r} (expected one of {', '.join(choices)})"
    _raise_bad_rows(bad, series, what, problem)
    return text


def parse_timestamps(values: pd.Series, *, what: str, column: str) -> pd.Series:
    """Parse a timestamp column into ``datetime64[us, UTC]``.

    Accepted: ISO 8601 strings (naive ones are UTC, offsets are converted), epoch seconds as
    numbers or digit strings (fractions allowed), and already parsed datetimes (naive = UTC).
    Digit-only strings are always epoch seconds, never compact dates. Raises ValueError naming
    the first bad row and value.
    """
    values = values.reset_index(drop=True)
    problem = f"unparsable timestamp in column {column!r} (expected ISO 8601 or epoch seconds)"
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
        values.dtype
    ):
        stamps = pd.to_datetime(values, utc=True)
        _raise_bad_rows(stamps.isna().to_numpy(), values, what, problem)
        return stamps.dt.as_unit("us")

    if pd.api.types.is_bool_dtype(values.dtype):
        _raise_bad_rows(np.ones(len(values), dtype=bool), values, what, problem)
    if pd.api.types.is_numeric_dtype(values.dtype):
        text = None
        is_epoch = np.ones(len(values), dtype=bool)
        seconds = values.to_numpy(dtype=float, na_value=np.nan)
    else:
        text = _as_text(values).str.strip()
        is_epoch = text.str.fullmatch(_EPOCH_NUMBER).to_numpy(dtype=bool)
        seconds = np.full(len(text), np.nan)
        # Python's float() on the matched strings (correctly rounded); ~3x
        # faster than pd.to_numeric over the masked column.
        seconds[is_epoch] = text.to_numpy(dtype=object)[is_epoch].astype(np.float64)

    with np.errstate(invalid="ignore"):
        epoch_ok = is_epoch & np.isfinite(seconds) & (np.abs(seconds) < _MAX_EPOCH_SECONDS)
    micros = np.where(epoch_ok, np.round(np.where(epoch_ok, seconds, 0.0) * 1e6), 0.0)
    stamps = pd.Series(pd.to_datetime(micros.astype(np.int64), unit="us", utc=True))
    stamps = stamps.dt.as_unit("us")
    bad = is_epoch & ~epoch_ok
    if text is not None:
        iso_rows = ~is_epoch
        if iso_rows.any():
            iso = pd.to_datetime(
                text.where(iso_rows, None), format="ISO8601", utc=True, errors="coerce"
            ).dt.as_unit("us")
            stamps = stamps.where(~iso_rows, iso)
            bad |= iso_rows & iso.isna().to_numpy()
    _raise_bad_rows(bad, values, what, problem)
    return stamps


def _utc_days(stamps: pd.Series) -> pd.Series:
    """Whole days since 1970-01-01 UTC (floor, so instants before 1970 are handled too)."""
    micros = stamps.dt.as_unit("us").astype("int64").to_numpy()
    return pd.Series(np.floor_divide(micros, _MICROS_PER_DAY), dtype="int64")


def _id_column_names(
    id_columns: Sequence[IdColumn], reserved: Mapping[str, str], what: str
) -> list[str]:
    """Identifier columns are kept under their own names; they must not shadow an output
    column unless they are the very source column of it (e.g. ``customer_id:custom``)."""
    names = []
    for col in id_columns:
        source = reserved.get(col.column)
        if col.column in reserved and source != col.column:
            raise ValueError(
                f"{what}: identifier column {col.column!r} clashes with an output column of the "
                "same name; rename it"
            )
        names.append(col.column)
    return names


@_rows_of_the_file
def parse_exposures(
    frame: pd.DataFrame,
    *,
    id_columns: Sequence[IdColumn] = (),
    user_column: str = "user_id",
    campaign_column: str = "campaign_id",
    time_column: str = "ts",
    touch_column: str = "touch",
    group_column: str = "group",
) -> pd.DataFrame:
    """Validate and normalize a partner exposure log.

    Returns a frame with a fresh 0-based index (row ``i`` is input row ``i``) and columns
    ``user_id``, ``campaign_id`` (trimmed strings), ``ts`` (``datetime64[us, UTC]``), ``day``
    (int64 days since 1970-01-01 UTC), ``touch`` ("click"/"view"), ``group``
    ("exposed"/"holdout") (both trimmed and lower-cased before checking), followed by the
    identifier columns as raw strings ("" when missing). Raises ValueError naming the row
    (1-based, header not counted) and the bad value.
    """
    what = "exposures"
    _require_columns(
        frame,
        [
            user_column,
            campaign_column,
            time_column,
            touch_column,
            group_column,
            *(c.column for c in id_columns),
        ],
        what,
    )
    reserved = {
        "user_id": user_column,
        "campaign_id": campaign_column,
        "ts": time_column,
        "day": "",
        "touch": touch_column,
        "group": group_column,
    }
    id_names = _id_column_names(id_columns, reserved, what)
    frame = frame.reset_index(drop=True)
    stamps = parse_timestamps(frame[time_column], what=what, column=time_column)
    out = pd.DataFrame(
        {
            "user_id": _required_text(frame[user_column], what, user_column),
            "campaign_id": _required_text(frame[campaign_column], what, campaign_column),
            "ts": stamps,
            "day": _utc_days(stamps),
            "touch": _choice(frame[touch_column], TOUCHES, what, touch_column),
            "group": _choice(frame[group_column], GROUPS, what, group_column),
        }
    )
    for name in id_names:
        if name not in out.columns:
            out[name] = _as_text(frame[name])
    return out


@_rows_of_the_file
def parse_conversions(
    frame: pd.DataFrame,
    *,
    customer_column: str,
    time_column: str,
    value_column: str,
    id_columns: Sequence[IdColumn] = (),
) -> pd.DataFrame:
    """Validate and normalize a brand conversions file.

    Returns a frame with a fresh 0-based index and columns ``customer_id`` (trimmed string),
    ``ts`` (``datetime64[us, UTC]``), ``day`` (int64 days since 1970-01-01 UTC), ``value``
    (float, finite and >= 0), followed by the identifier columns as raw strings ("" when
    missing). Raises ValueError naming the row (1-based, header not counted) and the bad value.
    """
    what = "conversions"
    _require_columns(
        frame,
        [customer_column, time_column, value_column, *(c.column for c in id_columns)],
        what,
    )
    reserved = {
        "customer_id": customer_column,
        "ts": time_column,
        "day": "",
        "value": value_column,
    }
    id_names = _id_column_names(id_columns, reserved, what)
    frame = frame.reset_index(drop=True)
    stamps = parse_timestamps(frame[time_column], what=what, column=time_column)
    out = pd.DataFrame(
        {
            "customer_id": _required_text(frame[customer_column], what, customer_column),
            "ts": stamps,
            "day": _utc_days(stamps),
            "value": _parse_amounts(frame[value_column], what, value_column, "conversion value"),
        }
    )
    for name in id_names:
        if name not in out.columns:
            out[name] = _as_text(frame[name])
    return out


def _parse_amounts(series: pd.Series, what: str, column: str, noun: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(series.dtype):
        amounts = np.full(len(series), np.nan)
    elif pd.api.types.is_numeric_dtype(series.dtype):
        amounts = series.to_numpy(dtype=float, na_value=np.nan)
    else:
        text = _as_text(series).str.strip()
        amounts = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(
            dtype=float, na_value=np.nan
        )
    finite = np.isfinite(amounts)
    _raise_bad_rows(~finite, series, what, f"non-numeric {noun} in column {column!r}")
    _raise_bad_rows(amounts < 0, series, what, f"negative {noun} in column {column!r}")
    return pd.Series(amounts, dtype="float64")


def parse_spend(
    frame: pd.DataFrame, *, campaign_column: str = "campaign_id", spend_column: str = "spend"
) -> dict[str, float]:
    """Validate a spend table (``campaign_id,spend``) into ``{campaign_id: spend}``.

    Spends must be finite and >= 0, each campaign listed once.
    """
    what = "spend"
    _require_columns(frame, [campaign_column, spend_column], what)
    frame = frame.reset_index(drop=True)
    campaigns = _required_text(frame[campaign_column], what, campaign_column)
    amounts = _parse_amounts(frame[spend_column], what, spend_column, "spend")
    duplicated = campaigns.duplicated().to_numpy()
    _raise_bad_rows(
        duplicated, campaigns, what, f"duplicate campaign in column {campaign_column!r}"
    )
    return dict(zip(campaigns.tolist(), amounts.tolist(), strict=True))


def read_spend(path: Path | str) -> dict[str, float]:
    """Read a ``campaign_id,spend`` CSV file (see :func:`parse_spend`)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return parse_spend(frame)


# --------------------------------------------------------------------------- the reference


def _row_keys(
    frame: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    cache: dict[tuple[IdType, str], bytes | None],
) -> list[set[tuple[IdType, bytes]]]:
    """Per row, the set of (identifier type, digest) it carries; empty/invalid cells skipped."""
    rows: list[set[tuple[IdType, bytes]]] = [set() for _ in range(len(frame))]
    for col in id_columns:
        for position, raw in enumerate(frame[col.column].tolist()):
            if not raw.strip():
                continue
            cache_key = (col.id_type, raw)
            if cache_key not in cache:
                try:
                    cache[cache_key] = identifier_digest(col.id_type, raw, options)
                except InvalidIdentifier:
                    cache[cache_key] = None
            digest = cache[cache_key]
            if digest is not None:
                rows[position].add((col.id_type, digest))
    return rows


def reference_report(
    conversions: pd.DataFrame,
    exposures: pd.DataFrame,
    *,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    customer_column: str,
    time_column: str,
    value_column: str,
    user_column: str = "user_id",
    windows: Windows = Windows(),  # frozen, so sharing the default is safe
    spend: Mapping[str, float] | None = None,
    threshold: int = 0,
) -> dict[str, Any]:
    """Compute the attribution report in the clear (test oracle; see the module docstring).

    ``id_columns`` applies to both files; a column present in only one of them (e.g. ``maid``
    in the exposure log) is simply absent on the other side, but a column present in neither is
    an error. ``time_column`` is the brand's time column; the exposure log uses ``ts``.
    Returns ``{"windows": {"click_days", "view_days"}, "campaigns": [...]}`` with the campaign
    entries of :func:`campaign_report`.
    """
    if not id_columns:
        raise ValueError("at least one identifier column is needed to match people")
    absent = [
        c.column
        for c in id_columns
        if c.column not in conversions.columns and c.column not in exposures.columns
    ]
    if absent:
        raise ValueError(
            f"identifier column(s) {', '.join(repr(c) for c in absent)} are in neither file"
        )
    conv = parse_conversions(
        conversions,
        customer_column=customer_column,
        time_column=time_column,
        value_column=value_column,
        id_columns=[c for c in id_columns if c.column in conversions.columns],
    )
    expo = parse_exposures(
        exposures,
        id_columns=[c for c in id_columns if c.column in exposures.columns],
        user_column=user_column,
    )
    cache: dict[tuple[IdType, str], bytes | None] = {}
    conv_keys = _row_keys(
        conv, [c for c in id_columns if c.column in conversions.columns], options, cache
    )
    expo_keys = _row_keys(
        expo, [c for c in id_columns if c.column in exposures.columns], options, cache
    )

    # identifier -> conversion events carrying it
    events_by_key: dict[tuple[IdType, bytes], list[int]] = defaultdict(list)
    for event, keys in enumerate(conv_keys):
        for key in keys:
            events_by_key[key].append(event)

    conv_day = conv["day"].tolist()
    customer = conv["customer_id"].tolist()
    value = conv["value"].tolist()

    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    hits: dict[tuple[str, str], set[int]] = defaultdict(set)
    # conversion event -> best (touch rank, lag, campaign) among exposed rows in window
    best: dict[int, tuple[int, int, str]] = {}
    for row, keys in zip(expo.itertuples(index=False), expo_keys, strict=True):
        group_key = (row.campaign_id, row.group)
        users[group_key].add(row.user_id)
        window = windows.days(row.touch)
        same_person = {event for key in keys for event in events_by_key.get(key, ())}
        for event in same_person:
            lag = conv_day[event] - row.day
            if not 0 <= lag <= window:
                continue
            hits[group_key].add(event)
            if row.group == "exposed":
                candidate = (0 if row.touch == "click" else 1, lag, row.campaign_id)
                if event not in best or candidate < best[event]:
                    best[event] = candidate

    aggregates: dict[tuple[str, str], Aggregate] = {}
    for group_key, members in users.items():
        events = sorted(hits.get(group_key, ()))
        aggregates[group_key] = (
            len(members),
            len(events),
            len({customer[e] for e in events}),
            math.fsum(value[e] for e in events),  # exact sum: independent of order
        )
    credited: dict[str, list[int]] = defaultdict(list)
    for event, (_, _, campaign) in best.items():
        credited[campaign].append(event)
    attributed = {
        campaign: (len(events), math.fsum(value[e] for e in events))
        for campaign, events in credited.items()
    }
    return {
        "windows": windows.as_dict(),
        "campaigns": campaign_report(aggregates, attributed, spend, threshold),
    }
