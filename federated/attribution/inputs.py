"""From the parties' files to the attribution protocol's inputs.

Parsing validates a file (naming the first bad row and value); hashing then
normalizes and SHA-256-hashes the identifiers on their owner's machine, so the
state machines see digests and day numbers only. Invalid identifiers are
skipped (a row keeps its other keys), as for audiences.

Read CSV inputs with ``dtype=str, keep_default_na=False`` so that identifiers such as phone
numbers stay text and values like "n/a" are not turned into missing cells; the parsers also
accept frames pandas typed itself (numbers, datetimes, NaN).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import pandas as pd

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import hash_frame
from cleanroom.audiences.upload import DIGEST_LEN
from cleanroom.federated.attribution.messages import GROUPS, TOUCHES
from cleanroom.federated.attribution.tokens import types_kept

# Epoch-second values beyond this (about the year 5100) are rejected rather than guessed at:
# they are nearly always epoch *milliseconds*, which would otherwise land far in the future.
_MAX_EPOCH_SECONDS = 1e11
_MICROS_PER_DAY = 86_400 * 1_000_000
# ASCII digits only: Python's \d (and float()) would take other scripts' digits too.
_EPOCH_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"


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


# --------------------------------------------------------------------------- protocol inputs


@dataclass(frozen=True)
class ConversionIds:
    """Some of a conversion set's identifiers: per identifier its event, the event's day,
    its type, digest and the points stored at upload (uint8 (k, lags, 32), or None:
    every point is hashed)."""

    event: np.ndarray  # int64 per identifier: which event
    day: np.ndarray  # int64 per identifier: its event's day (days since 1970-01-01 UTC)
    id_type: np.ndarray  # object/str per identifier
    digest: np.ndarray  # uint8 (k, 32)
    points: np.ndarray | None = None


@dataclass(frozen=True)
class EventGroup:
    """Some of a conversion set's events, every event of their customers among them: per
    event its number in the set, its customer (numbered ``0 .. customers - 1`` within
    the group) and its value."""

    event: np.ndarray  # int64 per event
    customer: np.ndarray  # int64 per event, < customers
    customers: int  # distinct customers of the group
    value: np.ndarray  # float64 per event


class ConversionSource(Protocol):
    """What a run reads of a conversion set, a part at a time, so that a run never holds
    it whole: its identifiers (``identifier_parts``) and its events (``event_groups``).

    An identifier part holds every identifier of some digests (the stored set's
    partitions), so each distinct token is blinded once; the parts together hold every
    identifier once. The event groups together hold every event once, and no customer
    in two groups."""

    @property
    def events(self) -> int: ...

    def held_types(self) -> tuple[str, ...]:
        """The identifier types the set holds, sorted."""
        ...

    def identifier_count(self, id_types: tuple[str, ...]) -> int:
        """How many identifiers of ``id_types`` the set holds."""
        ...

    def identifier_parts(self, id_types: tuple[str, ...]) -> Iterator[ConversionIds]:
        """The identifiers of ``id_types``, a part at a time."""
        ...

    def event_groups(self) -> Iterator[EventGroup]:
        """Every event, a group of customers at a time."""
        ...


@dataclass
class BrandConversions:
    """A conversion set in memory (parsed here, or in tests): per event and per (event,
    identifier); its identifiers are one part, its events one group."""

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

    def identifier_count(self, id_types: tuple[str, ...]) -> int:
        return int(types_kept(self.id_type, id_types)[2].sum())

    def identifier_parts(self, id_types: tuple[str, ...]) -> Iterator[ConversionIds]:
        keep = types_kept(self.id_type, id_types)[2]
        event = self.id_event[keep]
        yield ConversionIds(
            event=event,
            day=self.day[event].astype(np.int64),
            id_type=self.id_type[keep],
            digest=self.id_digest[keep],
            points=None if self.id_points is None else self.id_points[keep],
        )

    def event_groups(self) -> Iterator[EventGroup]:
        if self.events:
            yield EventGroup(
                event=np.arange(self.events, dtype=np.int64),
                customer=self.customer.astype(np.int64),
                customers=int(self.customer.max()) + 1,
                value=self.value,
            )


USER_KEY_LEN = 16


def user_keys(users: pd.Series | np.ndarray) -> np.ndarray:
    """uint8 (n, 16) per row: BLAKE2b-128 of the user id, the same for a user in every
    part of a log (so distinct users are counted without a table of them all)."""
    codes, uniques = pd.factorize(np.asarray(users, dtype=object))
    keys = b"".join(
        hashlib.blake2b(str(u).encode("utf-8"), digest_size=USER_KEY_LEN).digest() for u in uniques
    )
    table = np.frombuffer(keys, dtype=np.uint8).reshape(-1, USER_KEY_LEN)
    return table[codes] if len(codes) else np.empty((0, USER_KEY_LEN), np.uint8)


@dataclass
class PartnerExposures:
    """P's exposure log, or a part of it, identifiers already hashed (one row per
    identifier)."""

    row_user: np.ndarray  # uint8 (n, 16) per exposure row: the user's key (``user_keys``)
    row_campaign: np.ndarray  # object/str per row
    row_day: np.ndarray  # int64 per row
    row_touch: np.ndarray  # object/str per row
    row_group: np.ndarray  # object/str per row
    id_row: np.ndarray  # int64 per identifier: which row
    id_type: np.ndarray  # object/str per identifier
    id_digest: np.ndarray  # uint8 (m, 32)


def hashed_identifiers(
    frame: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    executor: Executor | None = None,
    slice_rows: int = 50_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, type, digest) for every valid identifier, column by column.

    Each column's distinct values are normalized and hashed once: logs repeat
    their users (a million exposure rows carry ~200k distinct emails), and a
    phone outside the North American spellings costs a phonenumbers parse
    (~30 µs). Slices of distinct values are hashed in ``executor``'s workers
    when given.
    """
    factorized = [
        pd.factorize(frame[col.column].fillna("").astype(str), use_na_sentinel=False)
        for col in id_columns
    ]
    jobs = [
        (pd.DataFrame({col.column: uniques[start : start + slice_rows]}), [col])
        for col, (_, uniques) in zip(id_columns, factorized, strict=True)
        for start in range(0, len(uniques), slice_rows)
    ]
    if executor is not None and len(jobs) > 1:
        futures = [executor.submit(hash_frame, part, cols, options) for part, cols in jobs]
        chunks = [f.result() for f in futures]
    else:
        chunks = [hash_frame(part, cols, options) for part, cols in jobs]
    rows: list[np.ndarray] = []
    types: list[np.ndarray] = []
    digests: list[np.ndarray] = []
    done = 0
    for col, (codes, uniques) in zip(id_columns, factorized, strict=True):
        parts = chunks[done : done + -(-len(uniques) // slice_rows)]
        done += len(parts)
        valid = np.concatenate([c.columns[0].present for c in parts] or [np.zeros(0, bool)])
        unique_digests = np.zeros((len(uniques), DIGEST_LEN), dtype=np.uint8)
        unique_digests[valid] = np.frombuffer(
            b"".join(c.columns[0].digests for c in parts), dtype=np.uint8
        ).reshape(-1, DIGEST_LEN)
        present_rows = np.flatnonzero(valid[codes])
        rows.append(present_rows.astype(np.int64))
        types.append(np.full(len(present_rows), str(col.id_type), dtype=object))
        digests.append(unique_digests[codes[present_rows]])
    if not rows:
        return np.empty(0, np.int64), np.empty(0, dtype=object), np.empty((0, 32), np.uint8)
    return np.concatenate(rows), np.concatenate(types), np.concatenate(digests)


def brand_conversions(
    parsed: pd.DataFrame, id_columns: Sequence[IdColumn], options: NormalizeOptions
) -> BrandConversions:
    """``parsed`` comes from :func:`parse_conversions`."""
    _, customer_index = np.unique(parsed["customer_id"].to_numpy(dtype=str), return_inverse=True)
    id_row, id_type, id_digest = hashed_identifiers(parsed, id_columns, options)
    return BrandConversions(
        customer=customer_index.astype(np.int64),
        day=parsed["day"].to_numpy(dtype=np.int64),
        value=parsed["value"].to_numpy(dtype=np.float64),
        id_event=id_row,
        id_type=id_type,
        id_digest=id_digest,
    )


def partner_exposures(
    parsed: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    executor: Executor | None = None,
) -> PartnerExposures:
    """``parsed`` comes from :func:`parse_exposures`."""
    id_row, id_type, id_digest = hashed_identifiers(parsed, id_columns, options, executor)
    return PartnerExposures(
        row_user=user_keys(parsed["user_id"]),
        row_campaign=parsed["campaign_id"].to_numpy(dtype=object),
        row_day=parsed["day"].to_numpy(dtype=np.int64),
        row_touch=parsed["touch"].to_numpy(dtype=object),
        row_group=parsed["group"].to_numpy(dtype=object),
        id_row=id_row,
        id_type=id_type,
        id_digest=id_digest,
    )


@dataclass(frozen=True)
class ExposureParts:
    """A log to be read a part at a time (each part hashed as it is read). The
    estimates are upper bounds that size the run's buckets: a low one only makes
    buckets larger."""

    parts: Iterable[PartnerExposures]
    expected_rows: int
    expected_tokens: int

    @classmethod
    def whole(cls, log: PartnerExposures) -> ExposureParts:
        return cls((log,), len(log.row_day), len(log.id_row))
