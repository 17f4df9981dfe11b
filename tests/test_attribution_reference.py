"""Plaintext attribution reference: hand-computed tiny cases, validation, synthetic data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.federated.attribution.inputs import (
    parse_conversions,
    parse_exposures,
    parse_spend,
    parse_timestamps,
    read_spend,
)
from cleanroom.federated.attribution.messages import Windows
from cleanroom.federated.attribution.reference import reference_report
from cleanroom.federated.attribution.report import GroupStats, campaign_report, lift_interval
from cleanroom.federated.attribution.synth import synthesize_attribution

OPTIONS = NormalizeOptions(default_region="US")
IDS = parse_id_columns("email,phone,maid")
CONV_COLUMNS = ["customer_id", "email", "phone", "ts", "value"]
EXPO_COLUMNS = ["user_id", "email", "phone", "maid", "campaign_id", "ts", "touch", "group"]
Z = 1.959963984540054
MAID = "6d92078a-8246-4ba4-ae5b-76104861e7dc"
PHONE = "(201) 555-0123"
GROUP_KEYS = ["users", "conversions", "revenue", "converters", "rate"]
REPORT_KEYS = [
    "campaign_id",
    "attributed_conversions",
    "attributed_revenue",
    "exposed",
    "holdout",
    "lift",
    "lift_ci95",
    "incremental_converters",
    "spend",
    "iroas",
    "suppressed",
]


def conv(*rows: tuple[str, str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=CONV_COLUMNS)


def expo(*rows: tuple[str, str, str, str, str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=EXPO_COLUMNS)


def report(
    conversions: pd.DataFrame, exposures: pd.DataFrame, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    kwargs.setdefault("id_columns", IDS)
    result = reference_report(
        conversions,
        exposures,
        options=OPTIONS,
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
        **kwargs,
    ).model_dump(mode="json")
    campaigns = result["campaigns"]
    assert [c["campaign_id"] for c in campaigns] == sorted(c["campaign_id"] for c in campaigns)
    for entry in campaigns:
        assert list(entry) == REPORT_KEYS
        assert list(entry["exposed"]) == GROUP_KEYS
        assert list(entry["holdout"]) == GROUP_KEYS
    return {c["campaign_id"]: c for c in campaigns}


def counts(entry: dict[str, Any], group: str) -> tuple[Any, Any, Any, Any]:
    g = entry[group]
    return (g["users"], g["conversions"], g["converters"], g["revenue"])


# --------------------------------------------------------------------------- windows


def test_click_window_edges_use_utc_calendar_days() -> None:
    # Click late on Jan 10: same day before the click (lag 0) counts, Jan 17 23:59 (lag 7 = W)
    # counts, Jan 18 00:00 (lag 8) and Jan 9 (lag -1) do not. Values are powers of two, so the
    # revenue says exactly which events were counted.
    exposures = expo(("u1", "a@x.com", "", "", "A", "2026-01-10T23:00:00Z", "click", "exposed"))
    conversions = conv(
        ("c1", "A@X.com ", "", "2026-01-09T12:00:00Z", "1"),
        ("c1", "a@x.com", "", "2026-01-10T00:00:00Z", "2"),
        ("c1", "a@x.com", "", "2026-01-17T23:59:59Z", "4"),
        ("c1", "a@x.com", "", "2026-01-18T00:00:00Z", "8"),
    )
    result = report(conversions, exposures)
    assert counts(result["A"], "exposed") == (1, 2, 1, 6.0)
    assert result["A"]["exposed"]["rate"] == 1.0
    assert (result["A"]["attributed_conversions"], result["A"]["attributed_revenue"]) == (2, 6.0)
    assert counts(result["A"], "holdout") == (0, 0, 0, 0.0)
    assert result["A"]["holdout"]["rate"] is None
    assert result["A"]["lift"] is None

    wider = report(conversions, exposures, windows=Windows(click_days=8))
    assert counts(wider["A"], "exposed") == (1, 3, 1, 14.0)
    same_day = report(conversions, exposures, windows=Windows(click_days=0))
    assert counts(same_day["A"], "exposed") == (1, 1, 1, 2.0)


def test_view_window_edges() -> None:
    exposures = expo(("u1", "a@x.com", "", "", "V", "2026-01-10T23:00:00Z", "view", "exposed"))
    conversions = conv(
        ("c1", "a@x.com", "", "2026-01-10T22:00:00Z", "64"),  # lag 0, an hour before
        ("c1", "a@x.com", "", "2026-01-11T00:30:00Z", "16"),  # lag 1 = W
        ("c1", "a@x.com", "", "2026-01-12T00:10:00Z", "32"),  # lag 2, only 25 hours later
    )
    result = report(conversions, exposures)
    assert counts(result["V"], "exposed") == (1, 2, 1, 80.0)
    assert (
        report(conversions, exposures, windows=Windows(view_days=2))["V"]["exposed"]["revenue"]
        == 112.0
    )
    assert (
        report(conversions, exposures, windows=Windows(view_days=0))["V"]["exposed"]["revenue"]
        == 64.0
    )


def test_timestamps_offsets_epoch_and_naive_are_utc_days() -> None:
    # 01:00+02:00 on Jan 11 is Jan 10 23:00 UTC; epoch 1768089600 is 2026-01-11T00:00:00Z.
    exposures = expo(
        ("u1", "a@x.com", "", "", "A", "2026-01-11T01:00:00+02:00", "view", "exposed"),
    )
    conversions = conv(
        ("c1", "a@x.com", "", "1768089600", "1"),  # Jan 11, lag 1: in
        ("c1", "a@x.com", "", "2026-01-12 00:00:00", "2"),  # naive = UTC, lag 2: out
    )
    assert counts(report(conversions, exposures)["A"], "exposed") == (1, 1, 1, 1.0)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("+5", 5_000_000),
        ("5.", 5_000_000),
        (".5", 500_000),
        ("-0.000001", -1),
        (" 1767225602.25 ", 1_767_225_602_250_000),
        ("1767225602.0000004", 1_767_225_602_000_000),  # rounded to the microsecond
    ],
)
def test_epoch_second_spellings(text: str, micros: int) -> None:
    stamps = parse_timestamps(pd.Series([text, "2026-01-01T00:00:00Z"]), what="x", column="ts")
    assert stamps.dt.as_unit("us").astype("int64").tolist() == [micros, 1_767_225_600_000_000]


@pytest.mark.parametrize("text", ["\uff11\uff17\uff16\uff17", "\u0661\u0667\u0666\u0667"])
def test_epoch_seconds_are_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError, match="unparsable timestamp"):
        parse_timestamps(pd.Series([text]), what="x", column="ts")


# --------------------------------------------------------------------------- last touch


P = "p@x.com"
CONVERSION_ON_JAN_10 = conv(("c1", P, "", "2026-01-10T12:00:00Z", "10"))


@pytest.mark.parametrize(
    ("rows", "winner"),
    [
        pytest.param(
            [
                ("A", "2026-01-10T08:00:00Z", "view", "exposed"),
                ("B", "2026-01-05", "click", "exposed"),
            ],
            "B",
            id="click-beats-view-despite-lag-and-id",
        ),
        pytest.param(
            [("A", "2026-01-07", "click", "exposed"), ("B", "2026-01-09", "click", "exposed")],
            "B",
            id="smaller-lag",
        ),
        pytest.param(
            [("A", "2026-01-09", "view", "exposed"), ("B", "2026-01-10", "view", "exposed")],
            "B",
            id="smaller-lag-views",
        ),
        pytest.param(
            [
                ("camp_9", "2026-01-08", "click", "exposed"),
                ("camp_10", "2026-01-08", "click", "exposed"),
            ],
            "camp_10",
            id="campaign-id-string-order",
        ),
        pytest.param(
            [("A", "2026-01-10", "click", "holdout"), ("B", "2026-01-10", "view", "exposed")],
            "B",
            id="holdout-rows-never-credited",
        ),
        pytest.param(
            [("A", "2026-01-08", "view", "exposed"), ("B", "2026-01-02", "click", "exposed")],
            None,
            id="nothing-in-window",
        ),
        pytest.param(
            [("A", "2026-01-11", "click", "exposed"), ("B", "2026-01-08", "view", "exposed")],
            None,
            id="exposure-after-conversion",
        ),
    ],
)
def test_last_touch(rows: list[tuple[str, str, str, str]], winner: str | None) -> None:
    exposures = expo(
        *[("u1", P, "", "", campaign, ts, touch, group) for campaign, ts, touch, group in rows]
    )
    result = report(CONVERSION_ON_JAN_10, exposures)
    for campaign, entry in result.items():
        credited = (1, 10.0) if campaign == winner else (0, 0.0)
        assert (entry["attributed_conversions"], entry["attributed_revenue"]) == credited
    # Lift counting is per campaign: every row with the conversion in window counts it.
    for campaign, ts, touch, group in rows:
        days = (pd.Timestamp("2026-01-10") - pd.Timestamp(ts[:10])).days
        in_window = 0 <= days <= (7 if touch == "click" else 1)
        assert result[campaign][group]["conversions"] == int(in_window)


# --------------------------------------------------------------------------- same person


def test_any_shared_identifier_of_the_same_type_is_the_same_person() -> None:
    exposures = expo(
        ("u1", "", "+1 201 555 0123", "", "A", "2026-01-10", "click", "exposed"),
        ("u1", "ANN@x.com", "", MAID, "B", "2026-01-10", "click", "exposed"),
        ("u9", "", "", MAID.upper(), "C", "2026-01-10", "click", "exposed"),  # maid only
    )
    conversions = conv(
        ("c1", "ann@x.com", "", "2026-01-10", "1"),  # email only: B
        ("c1", "", PHONE, "2026-01-11", "2"),  # phone only: A
        ("c1", "ann@x.com", "201.555.0123", "2026-01-12", "4"),  # both: A and B
    )
    result = report(conversions, exposures)
    assert counts(result["A"], "exposed") == (1, 2, 1, 6.0)
    assert counts(result["B"], "exposed") == (1, 2, 1, 5.0)
    assert counts(result["C"], "exposed") == (1, 0, 0, 0.0)
    # Conversion 4 ties (both clicks, lag 2): campaign A wins on id.
    assert (result["A"]["attributed_conversions"], result["A"]["attributed_revenue"]) == (2, 6.0)
    assert (result["B"]["attributed_conversions"], result["B"]["attributed_revenue"]) == (1, 1.0)


def test_identifiers_of_different_types_never_match() -> None:
    # The brand's CRM column holds an email-looking value; its digest equals the partner's email
    # digest, but a custom key is not an email, so it is not the same person.
    ids = parse_id_columns("email,phone,maid,crm:custom")
    conversions = conv(
        ("c1", "", "", "2026-01-10", "1"),
        ("c2", "ann@x.com", "", "2026-01-10", "2"),
    )
    conversions["crm"] = ["ann@x.com", ""]
    exposures = expo(("u1", "ann@x.com", "", "", "A", "2026-01-10", "view", "exposed"))
    assert counts(report(conversions, exposures, id_columns=ids)["A"], "exposed") == (1, 1, 1, 2.0)


def test_invalid_and_empty_identifiers_never_match() -> None:
    exposures = expo(
        (
            "u1",
            "n/a",
            "12345",
            "00000000-0000-0000-0000-000000000000",
            "A",
            "2026-01-10",
            "click",
            "exposed",
        ),
        ("u2", "", "", "", "A", "2026-01-10", "click", "exposed"),
    )
    conversions = conv(
        ("c1", "n/a", "12345", "2026-01-10", "1"),
        ("c2", "", "", "2026-01-10", "2"),
    )
    assert counts(report(conversions, exposures)["A"], "exposed") == (2, 0, 0, 0.0)


def test_conversion_counted_once_per_campaign_and_group_converters_distinct() -> None:
    exposures = expo(
        ("u1", "a@x.com", PHONE, "", "A", "2026-01-10", "click", "exposed"),
        ("u1", "a@x.com", PHONE, "", "A", "2026-01-10", "view", "exposed"),
        ("u1", "a@x.com", "", "", "A", "2026-01-09", "click", "exposed"),
        ("u2", "b@x.com", PHONE, "", "A", "2026-01-08", "click", "exposed"),  # same household
        ("u3", "c@x.com", "", "", "A", "2026-01-08", "click", "exposed"),
        ("u1", "a@x.com", "", "", "A", "2026-01-10", "view", "holdout"),  # inconsistent log
        ("u1", "a@x.com", "", "", "B", "2026-01-10", "view", "holdout"),
    )
    conversions = conv(
        ("c1", "a@x.com", PHONE, "2026-01-10", "1"),  # matches five exposed rows of A
        ("c1", "a@x.com", "", "2026-01-11", "2"),
        ("c1", "", PHONE, "2026-01-12", "3"),
        ("c3", "c@x.com", "", "2026-01-09", "4"),
    )
    result = report(conversions, exposures)
    assert counts(result["A"], "exposed") == (3, 4, 2, 10.0)
    assert result["A"]["exposed"]["rate"] == pytest.approx(2 / 3)
    # Holdout view of Jan 10 (window 1): the Jan 10 and Jan 11 conversions.
    assert counts(result["A"], "holdout") == (1, 2, 1, 3.0)
    assert counts(result["B"], "holdout") == (1, 2, 1, 3.0)
    assert (result["A"]["attributed_conversions"], result["A"]["attributed_revenue"]) == (4, 10.0)
    assert (result["B"]["attributed_conversions"], result["B"]["attributed_revenue"]) == (0, 0.0)


# --------------------------------------------------------------------------- lift, iroas, threshold


def lift_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Campaign A: exposed u1..u4 (clicks), holdout u5..u9 (views), all on Jan 10.

    exposed: users 4, conversions 3 (10 + 20 + 30), converters 2 (c1, c2), rate 0.5
    holdout: users 5, conversions 1 (8), converters 1 (c5), rate 0.2
    """
    exposures = expo(
        *[
            (f"u{i}", f"e{i}@x.com", "", "", "A", "2026-01-10T10:00:00Z", "click", "exposed")
            for i in range(1, 5)
        ],
        *[
            (f"u{i}", f"e{i}@x.com", "", "", "A", "2026-01-10T10:00:00Z", "view", "holdout")
            for i in range(5, 10)
        ],
    )
    conversions = conv(
        ("c1", "e1@x.com", "", "2026-01-10T11:00:00Z", "10"),
        ("c2", "e2@x.com", "", "2026-01-11T11:00:00Z", "20"),
        ("c2", "e2@x.com", "", "2026-01-12T11:00:00Z", "30.0"),
        ("c3", "e3@x.com", "", "2026-01-09T11:00:00Z", "100"),  # before the exposure
        ("c5", "e5@x.com", "", "2026-01-10T11:00:00Z", "8"),
        ("c6", "e6@x.com", "", "2026-01-13T11:00:00Z", "50"),  # view lag 3: out
        ("c99", "nobody@x.com", "", "2026-01-10T11:00:00Z", "70"),  # not a partner user
    )
    return conversions, exposures


def test_lift_incremental_and_iroas_by_hand() -> None:
    conversions, exposures = lift_data()
    entry = report(conversions, exposures, spend={"A": 10.0, "Z": 99.0})["A"]
    assert entry["exposed"] == {
        "users": 4,
        "conversions": 3,
        "revenue": 60.0,
        "converters": 2,
        "rate": 0.5,
    }
    assert entry["holdout"] == {
        "users": 5,
        "conversions": 1,
        "revenue": 8.0,
        "converters": 1,
        "rate": 0.2,
    }
    assert entry["lift"] == pytest.approx(1.5)  # 0.5 / 0.2 - 1
    # Katz: se = sqrt((1 - 0.5) / 2 + (1 - 0.2) / 1) = sqrt(1.05) = 1.0246951
    # exp(1.959964 * 1.0246951) = exp(2.0083640) = 7.4507...; RR CI = 2.5 / 7.4507, 2.5 * 7.4507
    lo, hi = entry["lift_ci95"]
    assert lo == pytest.approx(2.5 / 7.45077 - 1, abs=1e-4)
    assert hi == pytest.approx(2.5 * 7.45077 - 1, abs=1e-3)
    assert entry["incremental_converters"] == pytest.approx(1.2)  # (0.5 - 0.2) * 4
    assert entry["spend"] == 10.0
    assert entry["iroas"] == pytest.approx(5.36)  # (60/4 - 8/5) * 4 / 10
    assert (entry["attributed_conversions"], entry["attributed_revenue"]) == (3, 60.0)
    assert entry["suppressed"] is False

    no_spend = report(conversions, exposures)["A"]
    assert no_spend["spend"] is None and no_spend["iroas"] is None
    assert no_spend["lift"] == entry["lift"]
    zero_spend = report(conversions, exposures, spend={"A": 0.0})["A"]
    assert zero_spend["spend"] == 0.0 and zero_spend["iroas"] is None


def test_threshold_suppression() -> None:
    conversions, exposures = lift_data()
    at_four = report(conversions, exposures, threshold=4, spend={"A": 10.0})["A"]
    assert at_four["suppressed"] is False and at_four["lift"] == pytest.approx(1.5)

    # 4 exposed users < 5: the exposed group (and what derives from it) is withheld.
    at_five = report(conversions, exposures, threshold=5, spend={"A": 10.0})["A"]
    assert at_five["suppressed"] is True
    assert at_five["exposed"] == dict.fromkeys(GROUP_KEYS)
    assert counts(at_five, "holdout") == (5, 1, 1, 8.0)
    for key in (
        "attributed_conversions",
        "attributed_revenue",
        "lift",
        "lift_ci95",
        "incremental_converters",
        "iroas",
    ):
        assert at_five[key] is None, key
    assert at_five["spend"] == 10.0

    at_six = report(conversions, exposures, threshold=6)["A"]
    assert at_six["exposed"] == at_six["holdout"] == dict.fromkeys(GROUP_KEYS)
    assert at_six["suppressed"] is True

    # Only the holdout is small: exposed numbers and attribution stay, lift goes.
    wide = pd.concat(
        [
            exposures,
            expo(("u0", "", "", "", "A", "2026-01-10", "view", "exposed")),
        ],
        ignore_index=True,
    )
    small_holdout = report(conversions, wide, threshold=5)["A"]
    assert small_holdout["suppressed"] is False  # 5 exposed and 5 holdout users
    small_holdout = report(conversions, wide, threshold=6)["A"]
    assert small_holdout["suppressed"] is True
    assert small_holdout["exposed"] == dict.fromkeys(GROUP_KEYS)


def test_threshold_one_group_only() -> None:
    conversions, exposures = lift_data()
    more_exposed = pd.concat(
        [
            exposures,
            expo(*[(f"x{i}", "", "", "", "A", "2026-01-10", "view", "exposed") for i in range(3)]),
        ],
        ignore_index=True,
    )
    entry = report(conversions, more_exposed, threshold=6, spend={"A": 10.0})["A"]
    assert counts(entry, "exposed") == (7, 3, 2, 60.0)
    assert entry["holdout"] == dict.fromkeys(GROUP_KEYS)
    assert (entry["attributed_conversions"], entry["attributed_revenue"]) == (3, 60.0)
    assert entry["suppressed"] is True
    assert entry["lift"] is None and entry["lift_ci95"] is None
    assert entry["incremental_converters"] is None and entry["iroas"] is None


def test_lift_interval_katz_textbook_values() -> None:
    # 30/100 vs 20/100: RR = 1.5, se = sqrt(0.7/30 + 0.8/20) = 0.2516611,
    # RR CI = exp(0.4054651 -+ 0.4932473) = (0.91596, 2.45644).
    lift, ci = lift_interval(30, 100, 20, 100)
    assert lift == pytest.approx(0.5)
    assert ci is not None
    assert ci[0] == pytest.approx(0.91597 - 1, abs=1e-5)
    assert ci[1] == pytest.approx(2.45644 - 1, abs=1e-5)
    # 2/4 vs 1/4: se = sqrt(0.5/2 + 0.75/1) = 1, so RR CI = 2 * exp(-+z).
    lift, ci = lift_interval(2, 4, 1, 4)
    assert lift == 1.0
    assert ci == pytest.approx((2 * 0.1408634940932175 - 1, 2 * 7.099071384231335 - 1))
    # A narrower level with a smaller z.
    _, narrow = lift_interval(2, 4, 1, 4, z=1.0)
    assert narrow == pytest.approx((2 / math.e - 1, 2 * math.e - 1))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0, 10, 0, 10), (None, None)),  # no holdout converters: ratio undefined
        ((3, 10, 0, 10), (None, None)),
        ((0, 10, 2, 10), (-1.0, None)),  # lift is -100%, log interval undefined
        ((1, 0, 1, 10), (None, None)),  # no users
        ((1, 10, 1, 0), (None, None)),
        ((12, 10, 1, 10), (11.0, None)),  # more converters than users: no binomial interval
    ],
)
def test_lift_interval_undefined(
    args: tuple[int, int, int, int], expected: tuple[float | None, None]
) -> None:
    assert lift_interval(*args) == expected


def test_lift_interval_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        lift_interval(-1, 10, 1, 10)
    with pytest.raises(ValueError, match="integer"):
        lift_interval(1.5, 10, 1, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="z"):
        lift_interval(1, 10, 1, 10, z=0.0)


def test_campaign_report_from_plain_aggregates() -> None:
    rows = [
        r.model_dump(mode="json")
        for r in campaign_report(
            {
                ("b", "exposed"): (4, 3, 2, 60.0),
                ("b", "holdout"): GroupStats(users=5, conversions=1, revenue=8.0, converters=1),
                ("a", "holdout"): (2, 0, 0, 0.0),
            },
            {"b": (3, 60.0)},
            {"b": 10.0},
            0,
        )
    ]
    assert [r["campaign_id"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["exposed"] == {
        "users": 0,
        "conversions": 0,
        "revenue": 0.0,
        "converters": 0,
        "rate": None,
    }
    assert a["attributed_conversions"] == 0 and a["lift"] is None
    assert b["lift"] == pytest.approx(1.5) and b["iroas"] == pytest.approx(5.36)
    assert b["lift_ci95"] == pytest.approx(list(lift_interval(2, 4, 1, 5)[1] or ()))
    with pytest.raises(ValueError, match="unknown group"):
        campaign_report({("a", "control"): (1, 0, 0, 0.0)}, {}, None, 0)
    with pytest.raises(ValueError, match="converters"):
        campaign_report({("a", "exposed"): (5, 1, 2, 1.0)}, {}, None, 0)
    with pytest.raises(ValueError, match="spend"):
        campaign_report({("a", "exposed"): (5, 1, 1, 1.0)}, {}, {"a": -1.0}, 0)


# --------------------------------------------------------------------------- validation


def test_windows_validation() -> None:
    assert Windows().as_dict() == {"click_days": 7, "view_days": 1}
    with pytest.raises(ValueError, match="click_days"):
        Windows(click_days=-1)
    with pytest.raises(ValueError, match="view_days"):
        Windows(view_days=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="view_days"):
        Windows(view_days=True)


GOOD_EXPOSURE = ("u1", "a@x.com", "", "", "A", "2026-01-10", "click", "exposed")


@pytest.mark.parametrize(
    ("column", "bad", "message"),
    [
        ("touch", "impression", "unknown value in column 'touch'"),
        ("group", "control", "unknown value in column 'group'"),
        ("ts", "yesterday", "unparsable timestamp"),
        ("ts", "1767225600000", "unparsable timestamp"),  # epoch milliseconds
        ("ts", "", "unparsable timestamp"),
        ("user_id", " ", "empty value in column 'user_id'"),
        ("campaign_id", "", "empty value in column 'campaign_id'"),
    ],
)
def test_exposure_validation_names_row_and_value(column: str, bad: str, message: str) -> None:
    frame = expo(GOOD_EXPOSURE, GOOD_EXPOSURE, GOOD_EXPOSURE)
    frame.loc[1, column] = bad
    frame.loc[2, column] = bad
    with pytest.raises(ValueError, match=message) as info:
        parse_exposures(frame, id_columns=IDS)
    assert "exposures row 2:" in str(info.value)
    assert repr(bad) in str(info.value)
    assert "1 more" in str(info.value)


@pytest.mark.parametrize(
    ("column", "bad", "message"),
    [
        ("value", "-5", "negative conversion value"),
        ("value", "abc", "non-numeric conversion value"),
        ("value", "", "non-numeric conversion value"),
        ("value", "inf", "non-numeric conversion value"),
        ("ts", "2026-13-45", "unparsable timestamp"),
        ("customer_id", "", "empty value in column 'customer_id'"),
    ],
)
def test_conversion_validation_names_row_and_value(column: str, bad: str, message: str) -> None:
    frame = conv(("c1", "a@x.com", "", "2026-01-10", "1"), ("c2", "", "", "2026-01-10", "2"))
    frame.loc[1, column] = bad
    with pytest.raises(ValueError, match=message) as info:
        parse_conversions(
            frame, customer_column="customer_id", time_column="ts", value_column="value"
        )
    assert "conversions row 2:" in str(info.value)
    assert repr(bad) in str(info.value)


def test_rows_are_numbered_in_the_file_for_a_chunk() -> None:
    """A chunk from ``iter_frames`` keeps the file's row numbers in its index."""
    frame = conv(("c1", "a@x.com", "", "2026-01-10", "1"), ("c2", "", "", "soon", "2"))
    frame.index = pd.RangeIndex(50_000, 50_002)
    with pytest.raises(ValueError, match="conversions row 50002: unparsable timestamp"):
        parse_conversions(
            frame, customer_column="customer_id", time_column="ts", value_column="value"
        )
    exposures = expo(GOOD_EXPOSURE, GOOD_EXPOSURE)
    exposures.loc[1, "touch"] = "swipe"
    exposures.index = pd.RangeIndex(10, 12)
    with pytest.raises(ValueError, match=r"exposures row 12: .*'swipe'"):
        parse_exposures(exposures, id_columns=IDS)


def test_reference_report_validates_inputs() -> None:
    conversions, exposures = lift_data()
    bad = exposures.copy()
    bad.loc[3, "touch"] = "swipe"
    with pytest.raises(ValueError, match=r"exposures row 4: .*'swipe'"):
        report(conversions, bad)
    with pytest.raises(ValueError, match="missing column"):
        report(conversions.drop(columns=["value"]), exposures)
    with pytest.raises(ValueError, match="neither file"):
        report(conversions, exposures, id_columns=parse_id_columns("email,crm"))


def test_parsers_normalize() -> None:
    frame = pd.DataFrame(
        {
            "user_id": [" u1 ", "u2", "u3", "u4"],
            "email": ["a@x.com", None, "", "b@x.com"],
            "phone": [2015550123, None, None, None],
            "campaign_id": ["A", "A", "B", "B"],
            "ts": ["1767225600", "2026-01-02T01:00:00+02:00", "-1", "2026-01-01 23:59:59.5"],
            "touch": ["Click", " view", "VIEW", "click"],
            "group": ["exposed", "HOLDOUT", "exposed", "holdout"],
        }
    )
    parsed = parse_exposures(frame, id_columns=parse_id_columns("email,phone"))
    assert list(parsed.columns) == [
        "user_id",
        "campaign_id",
        "ts",
        "day",
        "touch",
        "group",
        "email",
        "phone",
    ]
    assert parsed["user_id"].tolist() == ["u1", "u2", "u3", "u4"]
    assert parsed["day"].tolist() == [20454, 20454, -1, 20454]  # 2026-01-01 is day 20454
    assert parsed["touch"].tolist() == ["click", "view", "view", "click"]
    assert parsed["group"].tolist() == ["exposed", "holdout", "exposed", "holdout"]
    assert parsed["email"].tolist() == ["a@x.com", "", "", "b@x.com"]
    assert parsed["phone"].tolist() == ["2015550123", "", "", ""]  # float column, no ".0"

    numeric = pd.DataFrame(
        {
            "cid": ["c1", "c2"],
            "when": pd.to_datetime(["2026-01-01 23:00", "2026-01-02 00:00"]),
            "amount": [1.5, 0],
        }
    )
    parsed = parse_conversions(
        numeric, customer_column="cid", time_column="when", value_column="amount"
    )
    assert parsed["day"].tolist() == [20454, 20455]
    assert parsed["value"].tolist() == [1.5, 0.0]
    epoch = parse_conversions(
        pd.DataFrame({"cid": ["c1"], "when": [1767311999], "amount": ["2"]}),
        customer_column="cid",
        time_column="when",
        value_column="amount",
    )
    assert epoch["day"].tolist() == [20454]


def test_spend_parsing(tmp_path: Path) -> None:
    path = tmp_path / "spend.csv"
    path.write_text("campaign_id,spend\nA,10.5\nB,0\n")
    assert read_spend(path) == {"A": 10.5, "B": 0.0}
    with pytest.raises(ValueError, match=r"spend row 2: negative spend.*'-3'"):
        parse_spend(pd.DataFrame({"campaign_id": ["A", "B"], "spend": ["1", "-3"]}))
    with pytest.raises(ValueError, match=r"spend row 2: duplicate campaign.*'A'"):
        parse_spend(pd.DataFrame({"campaign_id": ["A", "A"], "spend": ["1", "3"]}))


# --------------------------------------------------------------------------- synthetic data


def test_synthetic_attribution_data(tmp_path: Path) -> None:
    sizes: dict[str, Any] = {
        "customers": 1500,
        "conversions": 2500,
        "partner_users": 1200,
        "exposure_rows": 5000,
        "campaigns": 3,
    }
    first = synthesize_attribution(tmp_path / "a", seed=7, **sizes)
    again = synthesize_attribution(tmp_path / "b", seed=7, **sizes)
    other = synthesize_attribution(tmp_path / "c", seed=8, **sizes)
    for name in ("conversions_path", "exposures_path", "spend_path"):
        assert getattr(first, name).read_bytes() == getattr(again, name).read_bytes()
    assert first.exposures_path.read_bytes() != other.exposures_path.read_bytes()
    assert not list(tmp_path.glob("*/.*.tmp"))

    conversions = pd.read_csv(first.conversions_path, dtype=str, keep_default_na=False)
    exposures = pd.read_csv(first.exposures_path, dtype=str, keep_default_na=False)
    assert list(conversions.columns) == ["customer_id", "email", "phone", "ts", "value"]
    assert list(exposures.columns) == EXPO_COLUMNS
    assert (len(conversions), len(exposures)) == (2500, 5000)
    assert set(exposures["touch"]) == {"click", "view"}
    assert set(exposures["group"]) == {"exposed", "holdout"}
    assert (
        set(exposures["campaign_id"])
        == set(first.campaign_ids)
        == {
            "camp_01",
            "camp_02",
            "camp_03",
        }
    )
    assert exposures["user_id"].nunique() == 1200
    assert exposures.duplicated(["user_id"]).any()  # repeated users
    assert (exposures.groupby(["user_id", "campaign_id"])["group"].nunique() == 1).all()
    holdout_share = (
        exposures.drop_duplicates(["user_id", "campaign_id"])
        .groupby("campaign_id")["group"]
        .apply(lambda g: (g == "holdout").mean())
    )
    assert ((holdout_share > 0.05) & (holdout_share < 0.3)).all()
    for column in ("email", "phone", "maid"):
        assert (exposures[column] == "").any() and (exposures[column] != "").any()
    for column in ("email", "phone"):
        assert (conversions[column] == "").any() and (conversions[column] != "").any()

    spend = read_spend(first.spend_path)
    result = reference_report(
        conversions,
        exposures,
        id_columns=IDS,
        options=OPTIONS,
        customer_column="customer_id",
        time_column="ts",
        value_column="value",
        spend=spend,
        threshold=50,
    ).model_dump(mode="json")
    campaigns = result["campaigns"]
    assert [c["campaign_id"] for c in campaigns] == list(first.campaign_ids)
    for entry in campaigns:
        assert entry["suppressed"] is False
        assert entry["exposed"]["conversions"] > 0 and entry["holdout"]["conversions"] > 0
        assert entry["attributed_conversions"] > 0 and entry["attributed_revenue"] > 0
        assert entry["iroas"] is not None and entry["lift_ci95"] is not None
    attributed = sum(c["attributed_conversions"] for c in campaigns)
    assert 0 < attributed < len(conversions)  # some conversions are outside every window

    def pooled(group: str) -> float:
        return sum(c[group]["converters"] for c in campaigns) / sum(
            c[group]["users"] for c in campaigns
        )

    assert pooled("exposed") > 1.2 * pooled("holdout")  # a real lift
