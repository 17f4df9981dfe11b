"""Plaintext reference for closed-loop attribution: the numbers the private protocol must match.

For checking only. :func:`reference_report` joins the brand's conversions with the partner's
exposure log *in the clear*, which is exactly what the clean room exists to avoid; it is a test
oracle for synthetic data and must never run on real customer data. It parses its inputs with
``inputs.py`` and computes the report with ``report.py``, the very code the private path runs,
so the two apply the same validation and arithmetic (definitions: ``report.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict

from cleanroom.audiences.identifiers import (
    IdColumn,
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    column_options,
    identifier_digest,
)
from cleanroom.federated.attribution.inputs import parse_conversions, parse_exposures
from cleanroom.federated.attribution.messages import Windows
from cleanroom.federated.attribution.report import Aggregate, CampaignResult, campaign_report


class ReferenceReport(BaseModel):
    """What the reference computes: the windows and the campaigns, as the private report has."""

    model_config = ConfigDict(frozen=True)

    windows: Windows
    campaigns: list[CampaignResult]


# --------------------------------------------------------------------------- the reference


def _row_keys(
    frame: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    cache: dict[tuple[IdType, str, str], bytes | None],
) -> list[set[tuple[IdType, bytes]]]:
    """Per row, the set of (identifier type, digest) it carries; empty/invalid cells skipped."""
    rows: list[set[tuple[IdType, bytes]]] = [set() for _ in range(len(frame))]
    for col in id_columns:
        for position, raw in enumerate(frame[col.column].tolist()):
            if not raw.strip():
                continue
            cache_key = (col.id_type, col.app_id, raw)
            if cache_key not in cache:
                try:
                    cache[cache_key] = identifier_digest(
                        col.id_type, raw, column_options(options, col)
                    )
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
    windows: Windows = Windows(),  # noqa: B008 - frozen, so sharing the default is safe
    spend: Mapping[str, float] | None = None,
    threshold: int = 0,
) -> ReferenceReport:
    """Compute the attribution report in the clear (test oracle; see the module docstring).

    ``id_columns`` applies to both files; a column present in only one of them (e.g. ``maid``
    in the exposure log) is simply absent on the other side, but a column present in neither is
    an error. ``time_column`` is the brand's time column; the exposure log uses ``ts``.
    Returns the windows and the campaigns of :func:`campaign_report`.
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
    cache: dict[tuple[IdType, str, str], bytes | None] = {}
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
    return ReferenceReport(
        windows=windows, campaigns=campaign_report(aggregates, attributed, spend, threshold)
    )
