"""Synthetic brand conversions, partner exposure logs and campaign spend for attribution.

The data is shaped like the real thing, so that the private protocol, the plaintext reference
(:mod:`cleanroom.federated.attribution.reference`) and benchmarks see realistic input:

* People are known by several identifiers (email, phone, mobile ad id) and no row carries all of
  them: the brand's conversion rows have email and/or phone, the partner's exposure rows email,
  phone and/or maid, formatted inconsistently (case, phone styles, braces-free upper-case maids)
  with a little garbage. About 40% of partner users are also brand customers.
* The partner log has several campaigns, clicks (~15%) and views, and a holdout: each campaign
  holds out 10-20% of users, consistently per (user, campaign), and still logs their would-be
  exposures ("ghost ads"). Users have several rows on several days.
* Conversions are partly organic (any customer, any time) and partly caused by exposed rows of
  exposed users (clicks more than views), after a random delay that usually but not always falls
  inside the default attribution windows. Holdout users only convert organically, so there is a
  real lift. Organic conversions also land before exposures (negative lag) and outside windows.

Everything is vectorized (numpy for randomness, Arrow kernels for strings) and deterministic for
a seed. Exposure timestamps are written as epoch seconds, conversion timestamps as ISO 8601 UTC,
so both accepted formats are exercised. Files are written atomically.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from cleanroom.audiences.identifiers import NormalizeOptions
from cleanroom.audiences.synth import (
    PHONE_STYLE_PROBS,
    join_strings,
    phone_prefixes,
    phone_variants,
    pick_strings,
    select_variant,
)

__all__ = [
    "CONVERSION_COLUMNS",
    "EXPOSURE_COLUMNS",
    "SPEND_COLUMNS",
    "AttributionSynth",
    "synthesize_attribution",
]

CONVERSION_COLUMNS = ("customer_id", "email", "phone", "ts", "value")
EXPOSURE_COLUMNS = ("user_id", "email", "phone", "maid", "campaign_id", "ts", "touch", "group")
SPEND_COLUMNS = ("campaign_id", "spend")

_OVERLAP = 0.4  # share of partner users who are brand customers
_HOLDOUT_RATES = (0.10, 0.20)  # per campaign, drawn uniformly from this range
_CLICK_RATE = 0.15
_CAUSED_SHARE = 0.35  # share of conversions caused by an exposure (when any can be)
_CLICK_CAUSE_WEIGHT = 4.0  # a click is this many times likelier than a view to cause one
_CLICK_DELAY_DAYS = 2.5  # mean delay of caused conversions (exponential)
_VIEW_DELAY_DAYS = 0.6
_EMAIL_PRIMARY = 0.7  # people mainly known by email (else by phone)
_PRIMARY_PRESENT = 0.93
_SECONDARY_PRESENT = 0.5
_MAID_PRESENT = 0.6
_MAID_ONLY = 0.08  # partner rows from app traffic with only an ad id
_JUNK_RATE = 0.005
_ZERO_VALUE_RATE = 0.02
_SUFFIX_SPACE = 10_000

_FIRST_TEXT = """
    james mary john patricia robert jennifer michael linda william elizabeth david susan wei
    fang li min jing maria jose ana luis sofia noah emma liam olivia lucas mia"""
_LAST_TEXT = """
    smith johnson williams brown jones garcia miller davis rodriguez martinez lopez wilson
    anderson taylor moore wang li zhang liu chen nguyen kim park singh patel"""
_FIRST = tuple(_FIRST_TEXT.split())
_LAST = tuple(_LAST_TEXT.split())
_SEPARATORS = (".", "_", "")
_DOMAINS = ("gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "icloud.com", "proton.me")
_DOMAIN_WEIGHTS = (0.4, 0.15, 0.12, 0.12, 0.12, 0.09)
_JUNK = ("n/a", "unknown", "none")
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class AttributionSynth:
    """Where the files went."""

    conversions_path: Path
    exposures_path: Path
    spend_path: Path
    campaign_ids: tuple[str, ...] = ()


@dataclass
class People:
    emails: pa.Array  # normalized, per person
    nsn: pa.Array  # national significant number, per person
    maids: pa.Array  # canonical lower-case UUID, per person
    email_primary: BoolArray
    country_code: int


# --------------------------------------------------------------------------- people


def make_people(count: int, region: str, rng: np.random.Generator) -> People:
    needed = max(20, math.ceil(1.25 * count / _SUFFIX_SPACE))
    prefixes, country_code = phone_prefixes(region, needed, needed, rng)
    codes = rng.choice(len(prefixes) * _SUFFIX_SPACE, size=count, replace=False)
    nsn = join_strings(
        pa.array(prefixes, type=pa.string()).take(pa.array(codes // _SUFFIX_SPACE)),
        pc.utf8_lpad(pc.cast(pa.array(codes % _SUFFIX_SPACE), pa.string()), 4, "0"),
    )
    weights = np.array(_DOMAIN_WEIGHTS)
    emails = join_strings(
        pick_strings(_FIRST, rng.integers(0, len(_FIRST), size=count)),
        pick_strings(_SEPARATORS, rng.integers(0, len(_SEPARATORS), size=count)),
        pick_strings(_LAST, rng.integers(0, len(_LAST), size=count)),
        pc.cast(pa.array(np.arange(count)), pa.string()),  # keeps addresses unique
        "@",
        pick_strings(_DOMAINS, rng.choice(len(_DOMAINS), size=count, p=weights / weights.sum())),
    )
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4 UUIDs, like real IDFA/GAID
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((count, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    hex_chars = _HEX_DIGITS[nibbles]
    dashed = np.full((count, 36), ord("-"), dtype=np.uint8)
    for source, target, width in ((0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12)):
        dashed[:, target : target + width] = hex_chars[:, source : source + width]
    maids = pc.cast(pa.array(np.ascontiguousarray(dashed).view("S36").ravel()), pa.string())
    return People(
        emails=emails,
        nsn=nsn,
        maids=maids,
        email_primary=rng.random(count) < _EMAIL_PRIMARY,
        country_code=country_code,
    )


# --------------------------------------------------------------------------- identifier cells


def presence(
    persons: IntArray, people: People, rng: np.random.Generator, *, partner: bool
) -> tuple[BoolArray, BoolArray, BoolArray]:
    """Which of email, phone and maid each row carries; every brand row has email or phone."""
    rows = len(persons)
    email_primary = people.email_primary[persons]
    primary = rng.random(rows) < _PRIMARY_PRESENT
    secondary = rng.random(rows) < _SECONDARY_PRESENT
    email = np.where(email_primary, primary, secondary)
    phone = np.where(email_primary, secondary, primary)
    neither = ~email & ~phone
    email |= neither & email_primary
    phone |= neither & ~email_primary
    if not partner:
        return email, phone, np.zeros(rows, dtype=bool)
    maid = rng.random(rows) < _MAID_PRESENT
    maid_only = rng.random(rows) < _MAID_ONLY
    email &= ~maid_only
    phone &= ~maid_only
    return email, phone, maid | maid_only


def email_cells(
    persons: IntArray, present: BoolArray, people: People, rng: np.random.Generator
) -> pa.Array:
    rows = len(persons)
    normalized = people.emails.take(pa.array(persons))
    cased = select_variant(
        rng.choice(3, size=rows, p=(0.8, 0.1, 0.1)),
        [normalized, pc.utf8_upper(normalized), pc.utf8_capitalize(normalized)],
    )
    spaced = join_strings(
        pick_strings(("", " "), (rng.random(rows) < 0.03).astype(np.int64)), cased
    )
    junk = rng.random(rows) < _JUNK_RATE
    spoiled = pc.if_else(
        pa.array(junk), pick_strings(_JUNK, rng.integers(0, len(_JUNK), rows)), spaced
    )
    return pc.if_else(pa.array(present), spoiled, "")


def phone_cells(
    persons: IntArray, present: BoolArray, people: People, rng: np.random.Generator
) -> pa.Array:
    nsn = people.nsn.take(pa.array(persons))
    choice = rng.choice(5, size=len(persons), p=PHONE_STYLE_PROBS)
    styled = select_variant(choice, phone_variants(nsn, people.country_code))
    return pc.if_else(pa.array(present), styled, "")


def maid_cells(
    persons: IntArray, present: BoolArray, people: People, rng: np.random.Generator
) -> pa.Array:
    canonical = people.maids.take(pa.array(persons))
    styled = pc.if_else(
        pa.array(rng.random(len(persons)) < 0.3), pc.utf8_upper(canonical), canonical
    )
    return pc.if_else(pa.array(present), styled, "")


def serial_ids(prefix: str, numbers: IntArray) -> pa.Array:
    return join_strings(prefix, pc.utf8_lpad(pc.cast(pa.array(numbers + 1), pa.string()), 9, "0"))


# --------------------------------------------------------------------------- helpers


def _hash_uniform(salt: int, a: IntArray, b: IntArray) -> npt.NDArray[np.float64]:
    """A uniform [0, 1) number per (a, b) pair (splitmix64), so decisions such as holdout
    membership are consistent for a (user, campaign) wherever the pair occurs."""
    x = (
        a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        + b.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        + np.uint64(salt)
    )
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


def write_csv(path: Path, columns: tuple[str, ...], arrays: list[pa.Array]) -> None:
    """Write to a temporary file next to ``path`` and rename it into place."""
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp_path, "xb") as sink:
            sink.write((",".join(columns) + "\n").encode("utf-8"))
            if len(arrays[0]):
                table = pa.table(arrays, names=list(columns))
                # Values never contain commas, quotes or newlines: no quoting needed.
                options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
                pa_csv.write_csv(table, sink, write_options=options)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _money(cents: IntArray) -> pa.Array:
    return join_strings(
        pc.cast(pa.array(cents // 100), pa.string()),
        ".",
        pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), 2, "0"),
    )


def check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


# --------------------------------------------------------------------------- generator


def synthesize_attribution(
    out_dir: Path,
    *,
    customers: int,
    conversions: int,
    partner_users: int,
    exposure_rows: int,
    campaigns: int = 3,
    seed: int,
    start: str = "2026-01-01",
    days: int = 30,
    default_region: str = "US",
) -> AttributionSynth:
    """Write ``conversions.csv``, ``exposures.csv`` and ``spend.csv`` into ``out_dir``.

    ``customers`` brand customers make ``conversions`` conversion events; ``partner_users``
    users (about 40% of them brand customers) make ``exposure_rows`` exposure rows across
    ``campaigns`` campaigns (``camp_01``, ...) over ``days`` days from ``start`` (UTC). Phones
    are written in the formats of ``default_region``; read them with the same region.
    Deterministic for a seed.
    """
    for name, value in (
        ("customers", customers),
        ("conversions", conversions),
        ("partner_users", partner_users),
        ("exposure_rows", exposure_rows),
        ("campaigns", campaigns),
        ("days", days),
    ):
        check_count(name, value)
    if conversions and not customers:
        raise ValueError("conversions need at least one customer")
    if exposure_rows and not partner_users:
        raise ValueError("exposure rows need at least one partner user")
    if campaigns < 1 or days < 1:
        raise ValueError("campaigns and days must be at least 1")
    try:
        start_day = dt.date.fromisoformat(start)
    except ValueError:
        raise ValueError(f"start must be an ISO date such as '2026-01-01', got {start!r}") from None
    start_ts = int(
        dt.datetime(start_day.year, start_day.month, start_day.day, tzinfo=dt.UTC).timestamp()
    )
    period = days * 86_400
    region = NormalizeOptions(default_region=default_region).default_region
    assert region is not None  # NormalizeOptions canonicalizes a given region
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # People 0..customers-1 are brand customers; the partner's users are a sample of them plus
    # people of its own.
    overlap = min(round(_OVERLAP * partner_users), customers)
    population = customers + partner_users - overlap
    people = make_people(population, region, rng)
    user_person = rng.permutation(
        np.concatenate(
            [rng.choice(customers, size=overlap, replace=False), np.arange(customers, population)]
        )
    ).astype(np.int64)

    # ---- exposures: every user at least once (if rows allow), heavy users many times
    width = max(2, len(str(campaigns)))
    campaign_ids = tuple(f"camp_{i + 1:0{width}d}" for i in range(campaigns))
    activity = rng.gamma(0.8, size=partner_users) + 1e-9
    if exposure_rows >= partner_users:
        extra = rng.choice(
            partner_users, size=exposure_rows - partner_users, p=activity / activity.sum()
        )
        users = np.concatenate([np.arange(partner_users), extra]).astype(np.int64)
    else:
        users = rng.choice(partner_users, size=exposure_rows, replace=False).astype(np.int64)
    share = rng.dirichlet(np.full(campaigns, 4.0))
    campaign = rng.choice(campaigns, size=exposure_rows, p=share).astype(np.int64)
    holdout_rate = rng.uniform(*_HOLDOUT_RATES, size=campaigns)
    salt = int(rng.integers(0, 2**63))
    holdout = _hash_uniform(salt, users, campaign) < holdout_rate[campaign]
    click = rng.random(exposure_rows) < _CLICK_RATE
    exp_ts = start_ts + rng.integers(0, period, size=exposure_rows)
    order = np.argsort(exp_ts, kind="stable")
    users, campaign, holdout, click, exp_ts = (
        users[order],
        campaign[order],
        holdout[order],
        click[order],
        exp_ts[order],
    )

    # ---- conversions: organic ones plus ones caused by exposed rows of brand customers
    persons_of_rows = user_person[users]
    can_cause = ~holdout & (persons_of_rows < customers)
    caused = round(_CAUSED_SHARE * conversions) if can_cause.any() else 0
    cause_weight = np.where(click, _CLICK_CAUSE_WEIGHT, 1.0) * can_cause
    causes = (
        rng.choice(exposure_rows, size=caused, p=cause_weight / cause_weight.sum())
        if caused
        else np.zeros(0, dtype=np.int64)
    )
    mean_delay = np.where(click[causes], _CLICK_DELAY_DAYS, _VIEW_DELAY_DAYS) * 86_400
    caused_ts = (
        exp_ts[causes] + 60 + (rng.exponential(1.0, size=caused) * mean_delay).astype(np.int64)
    )
    organic = conversions - caused
    loyalty = rng.gamma(1.0, size=customers) + 1e-9
    organic_persons = (
        rng.choice(customers, size=organic, p=loyalty / loyalty.sum())
        if organic
        else np.zeros(0, dtype=np.int64)
    )
    organic_ts = start_ts + rng.integers(0, period, size=organic)
    conv_person = np.concatenate([persons_of_rows[causes], organic_persons]).astype(np.int64)
    conv_ts = np.concatenate([caused_ts, organic_ts]).astype(np.int64)
    cents = np.round(np.exp(rng.normal(3.6, 0.7, size=conversions)) * 100).astype(np.int64)
    cents[rng.random(conversions) < _ZERO_VALUE_RATE] = 0

    # Spend: what the campaign's caused revenue would justify at a return of 1.5-4x.
    caused_revenue = np.bincount(
        campaign[causes], weights=cents[:caused] / 100.0, minlength=campaigns
    )
    spend_cents = np.round(
        np.maximum(100.0, caused_revenue / rng.uniform(1.5, 4.0, size=campaigns)) * 100
    ).astype(np.int64)

    conv_order = np.argsort(conv_ts, kind="stable")
    conv_person, conv_ts, cents = conv_person[conv_order], conv_ts[conv_order], cents[conv_order]

    # ---- strings
    c_email, c_phone, _ = presence(conv_person, people, rng, partner=False)
    conv_stamps = pc.strftime(
        pa.array(conv_ts, type=pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ"
    )
    conversions_path = out / "conversions.csv"
    write_csv(
        conversions_path,
        CONVERSION_COLUMNS,
        [
            serial_ids("C", conv_person),
            email_cells(conv_person, c_email, people, rng),
            phone_cells(conv_person, c_phone, people, rng),
            conv_stamps,
            _money(cents),
        ],
    )

    e_email, e_phone, e_maid = presence(persons_of_rows, people, rng, partner=True)
    exposures_path = out / "exposures.csv"
    write_csv(
        exposures_path,
        EXPOSURE_COLUMNS,
        [
            serial_ids("U", users),
            email_cells(persons_of_rows, e_email, people, rng),
            phone_cells(persons_of_rows, e_phone, people, rng),
            maid_cells(persons_of_rows, e_maid, people, rng),
            pick_strings(campaign_ids, campaign),
            pc.cast(pa.array(exp_ts), pa.string()),
            pick_strings(("view", "click"), click.astype(np.int64)),
            pick_strings(("exposed", "holdout"), holdout.astype(np.int64)),
        ],
    )

    spend_path = out / "spend.csv"
    write_csv(
        spend_path,
        SPEND_COLUMNS,
        [pa.array(campaign_ids, type=pa.string()), _money(spend_cents)],
    )
    return AttributionSynth(
        conversions_path=conversions_path,
        exposures_path=exposures_path,
        spend_path=spend_path,
        campaign_ids=campaign_ids,
    )
