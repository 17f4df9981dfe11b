"""Synthetic brand/partner audience files with realistic, messy identifiers.

Real uploads are dirty: mixed case and stray spaces in emails, phones in half a dozen national
and international formats, upper-case or braced ad ids, some emails hashed by the marketer, a
little garbage. The generator reproduces that so matching, reporting and benchmarks see the same
kinds of input they will see in production. Everything is vectorized (numpy for randomness, Arrow
kernels for strings) so a million rows take seconds; only the few pre-hashed emails are hashed
one by one.

Ground truth is computed from the generator's own bookkeeping (which person each row is, which
cells were left out, spoiled or re-tagged), never from the normalization code it is meant to test.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from .identifiers import InvalidIdentifier, NormalizeOptions, normalize_phone

__all__ = ["SynthResult", "synthesize"]

BRAND_COLUMNS = ("customer_id", "email", "phone", "maid")
PARTNER_COLUMNS = ("user_id", "email", "phone", "maid")

_EMAIL, _PHONE, _MAID = 0, 1, 2
# Which identifier a person is mainly known by; every row of that person carries it, so the
# matchable overlap stays close to the requested overlap.
_PRIMARY_PROBS = (0.7, 0.2, 0.1)
# Probability that a row also carries each non-primary identifier.
_EXTRA_PROBS = np.array([0.6, 0.5, 0.35])
_NO_ID_RATE = 0.005  # rows with no identifier at all
_INVALID_RATE = 0.01  # cells replaced by garbage
_PREHASHED_RATE = 0.05  # brand emails uploaded as SHA-256 hex
_GMAIL_TAG_RATE = 0.03  # gmail rows using a "+tag" address (only fold_gmail matches them)
_CHUNK_ROWS = 100_000
_SUFFIX_SPACE = 10_000  # phone numbers per validated prefix (last four digits are free)

# Kept as text (split below) so the lists stay compact; includes some non-ASCII names because
# real address books have them and they exercise the reader's scalar fallback.
_FIRST_NAMES_TEXT = """
    james mary john patricia robert jennifer michael linda william elizabeth david barbara
    richard susan joseph jessica thomas sarah charles karen wei fang li min jing lei yan jun maria
    jose ana luis sofia noah emma liam olivia lucas mia ethan zoë josé chloé jürgen"""
_LAST_NAMES_TEXT = """
    smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
    gonzalez wilson anderson thomas taylor moore jackson martin wang li zhang liu chen yang huang
    zhao wu zhou nguyen kim park singh patel müller schmidt dubois"""
_FIRST_NAMES = tuple(_FIRST_NAMES_TEXT.split())
_LAST_NAMES = tuple(_LAST_NAMES_TEXT.split())
_SEPARATORS = (".", "_", "", ".")
_DOMAINS = (
    ("gmail.com", 0.33),
    ("yahoo.com", 0.12),
    ("hotmail.com", 0.10),
    ("outlook.com", 0.10),
    ("icloud.com", 0.08),
    ("aol.com", 0.03),
    ("googlemail.com", 0.02),
    ("qq.com", 0.05),
    ("163.com", 0.05),
    ("proton.me", 0.04),
    ("acme-corp.com", 0.05),
    ("mail.example.org", 0.03),
)
_GMAIL_TAGS = ("news", "promo", "shop", "ads")
_JUNK_EMAILS = (
    "nobody@",
    "@example.com",
    "john.smith",
    "jane@doe",
    "a@@b.com",
    "n/a",
    "unknown",
    "test@test",
    "first last@example.com",
)
_JUNK_PHONES = ("12345", "555-01", "000", "0", "n/a", "+1 555", "99", "123-45")
_JUNK_MAIDS = (
    "not-a-maid",
    "1234",
    "00000000-0000-0000-0000-000000000000",
    "unknown",
    "6d92078a-8246-4ba4-ae5b",
    "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
)
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SynthResult:
    """Where the files went and the ground truth needed to check a match result."""

    brand_path: Path
    partner_path: Path
    brand_rows: int
    partner_rows: int
    population: int  # distinct people across both files
    overlap_rows: int  # partner rows whose person is also a brand customer
    # Partner rows sharing at least one identical normalized identifier (with the default
    # NormalizeOptions for the region, fold_gmail off) with their brand row: what a perfect
    # matcher finds.
    matchable_rows: int


@dataclass
class _People:
    """Per-person attributes, stored as small integers; strings are built per output chunk."""

    first: IntArray
    last: IntArray
    sep: IntArray
    domain: IntArray
    primary: IntArray
    phone_block: IntArray
    phone_suffix: IntArray
    maid_bytes: npt.NDArray[np.uint8]  # (people, 16)
    phone_prefixes: pa.Array  # national significant number minus the last four digits
    country_code: int

    @property
    def is_gmail(self) -> BoolArray:
        gmail = [i for i, (name, _) in enumerate(_DOMAINS) if name == "gmail.com"]
        return np.isin(self.domain, gmail)


@dataclass
class _RowPlan:
    """Random choices for every row of one file, drawn up front so output is chunk-independent."""

    persons: IntArray
    present: BoolArray  # (rows, 3): email, phone, maid
    invalid: BoolArray  # (rows, 3): cell replaced by garbage
    junk: IntArray  # (rows, 3): which garbage value
    email_case: IntArray
    lead_space: IntArray
    trail_space: IntArray
    gmail_tag: IntArray  # 0 = none, else 1 + index into _GMAIL_TAGS
    prehashed: BoolArray
    prehashed_upper: BoolArray
    phone_style: IntArray
    maid_style: IntArray

    def match_keys(self) -> IntArray:
        """Per cell, an integer that is equal for two rows of one person iff the normalized
        identifiers are equal; -1 where there is no usable identifier."""
        usable = self.present & ~self.invalid
        keys = np.where(usable, 0, -1).astype(np.int64)
        keys[:, _EMAIL] = np.where(usable[:, _EMAIL], self.gmail_tag, -1)
        return keys


def phone_prefixes(
    region: str, wanted: int, needed: int, rng: np.random.Generator
) -> tuple[list[str], int]:
    """Find up to ``wanted`` (at least ``needed``) number prefixes that phonenumbers accepts for
    every four-digit suffix tried.

    Starting from the library's example mobile number keeps the number length and leading
    digits plausible for any region; candidates are then validated by phonenumbers itself,
    so there are no hand-written numbering-plan rules here.
    """
    example = phonenumbers.example_number_for_type(
        region, phonenumbers.PhoneNumberType.MOBILE
    ) or phonenumbers.example_number(region)
    if example is None or not example.country_code:
        raise ValueError(f"phonenumbers has no example number for region {region!r}")
    nsn = phonenumbers.national_significant_number(example)
    country_code = int(example.country_code)
    # North American numbers vary from the area code on; elsewhere the first digit (e.g. the
    # mobile range) is kept.
    keep = 0 if country_code == 1 else 1
    free = len(nsn) - 4 - keep
    if free < 1:
        raise ValueError(f"numbers of region {region!r} are too short to synthesize")
    prefixes: dict[str, None] = {}
    for _ in range(20 * wanted + 2000):
        if len(prefixes) >= wanted:
            break
        candidate = nsn[:keep] + "".join(map(str, rng.integers(0, 10, size=free)))
        if candidate in prefixes:
            continue
        suffixes = rng.integers(0, _SUFFIX_SPACE, size=5)
        if all(
            phonenumbers.is_valid_number(
                phonenumbers.parse(f"+{country_code}{candidate}{int(s):04d}", None)
            )
            for s in suffixes
        ):
            prefixes[candidate] = None
    if len(prefixes) < needed:
        raise ValueError(
            f"could not find enough valid phone number ranges for region {region!r} "
            f"({len(prefixes)} found, {needed} needed)"
        )
    return list(prefixes), country_code


def _make_people(count: int, region: str, rng: np.random.Generator) -> _People:
    # Enough ranges for unique numbers with room to spare; at least 200 so that even small
    # files show many different area codes.
    needed = max(1, math.ceil(1.25 * count / _SUFFIX_SPACE))
    prefixes, country_code = phone_prefixes(region, max(200, 2 * needed), needed, rng)
    # Sampling without replacement keeps every person's phone number unique.
    codes = rng.choice(len(prefixes) * _SUFFIX_SPACE, size=count, replace=False)
    weights = np.array([w for _, w in _DOMAINS])
    return _People(
        first=rng.integers(0, len(_FIRST_NAMES), size=count),
        last=rng.integers(0, len(_LAST_NAMES), size=count),
        sep=rng.integers(0, len(_SEPARATORS), size=count),
        domain=rng.choice(len(_DOMAINS), size=count, p=weights / weights.sum()),
        primary=rng.choice(3, size=count, p=_PRIMARY_PROBS),
        phone_block=codes // _SUFFIX_SPACE,
        phone_suffix=codes % _SUFFIX_SPACE,
        maid_bytes=rng.integers(0, 256, size=(count, 16), dtype=np.uint8),
        phone_prefixes=pa.array(prefixes, type=pa.string()),
        country_code=country_code,
    )


def _plan_rows(
    persons: IntArray, people: _People, rng: np.random.Generator, *, prehash_rate: float
) -> _RowPlan:
    rows = len(persons)
    present = rng.random((rows, 3)) < _EXTRA_PROBS
    present[np.arange(rows), people.primary[persons]] = True
    present[rng.random(rows) < _NO_ID_RATE] = False
    invalid = present & (rng.random((rows, 3)) < _INVALID_RATE)
    junk = np.stack(
        [rng.integers(0, len(j), size=rows) for j in (_JUNK_EMAILS, _JUNK_PHONES, _JUNK_MAIDS)],
        axis=1,
    )
    tagged = people.is_gmail[persons] & (rng.random(rows) < _GMAIL_TAG_RATE)
    gmail_tag = np.where(tagged, rng.integers(1, len(_GMAIL_TAGS) + 1, size=rows), 0)
    usable_email = present[:, _EMAIL] & ~invalid[:, _EMAIL]
    return _RowPlan(
        persons=persons,
        present=present,
        invalid=invalid,
        junk=junk,
        email_case=rng.choice(4, size=rows, p=(0.6, 0.1, 0.2, 0.1)),
        lead_space=rng.choice(3, size=rows, p=(0.9, 0.07, 0.03)),
        trail_space=rng.choice(3, size=rows, p=(0.9, 0.07, 0.03)),
        gmail_tag=gmail_tag,
        prehashed=usable_email & (rng.random(rows) < prehash_rate),
        prehashed_upper=rng.random(rows) < 0.5,
        phone_style=rng.choice(5, size=rows, p=PHONE_STYLE_PROBS),
        maid_style=rng.choice(4, size=rows, p=(0.6, 0.3, 0.05, 0.05)),
    )


# --------------------------------------------------------------------------- string building


def join_strings(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def pick_strings(options: tuple[str, ...], index: IntArray) -> pa.Array:
    return pa.array(options, type=pa.string()).take(pa.array(index))


def select_variant(choice: IntArray, variants: list[pa.Array]) -> pa.Array:
    out = variants[0]
    for value, variant in enumerate(variants[1:], start=1):
        out = pc.if_else(pa.array(choice == value), variant, out)
    return out


def _replace(values: pa.Array, mask: BoolArray, replacements: pa.Array) -> pa.Array:
    if not mask.any():
        return values
    return pc.replace_with_mask(values, pa.array(mask), replacements)


def _emails(plan: _RowPlan, people: _People, rows: slice) -> pa.Array:
    persons = plan.persons[rows]
    local = join_strings(
        pick_strings(_FIRST_NAMES, people.first[persons]),
        pick_strings(_SEPARATORS, people.sep[persons]),
        pick_strings(_LAST_NAMES, people.last[persons]),
        pc.cast(pa.array(persons), pa.string()),  # person number keeps addresses unique
    )
    tag = plan.gmail_tag[rows]
    local = pc.if_else(
        pa.array(tag > 0),
        join_strings(local, "+", pick_strings(("", *_GMAIL_TAGS), tag)),
        local,
    )
    normalized = join_strings(
        local, "@", pick_strings(tuple(d for d, _ in _DOMAINS), people.domain[persons])
    )
    cased = select_variant(
        plan.email_case[rows],
        [
            normalized,
            pc.utf8_upper(normalized),
            pc.utf8_capitalize(normalized),
            pc.utf8_title(normalized),
        ],
    )
    messy = join_strings(
        pick_strings(("", " ", "  "), plan.lead_space[rows]),
        cased,
        pick_strings(("", " ", "\t"), plan.trail_space[rows]),
    )
    prehashed = plan.prehashed[rows]
    if prehashed.any():
        upper = plan.prehashed_upper[rows][prehashed]
        hashed = [
            hashlib.sha256(email.encode("utf-8")).hexdigest()
            for email in normalized.filter(pa.array(prehashed)).to_pylist()
        ]
        messy = _replace(
            messy,
            prehashed,
            pa.array([h.upper() if u else h for h, u in zip(hashed, upper.tolist(), strict=True)]),
        )
    return messy


def _phones(plan: _RowPlan, people: _People, rows: slice) -> pa.Array:
    persons = plan.persons[rows]
    nsn = join_strings(
        people.phone_prefixes.take(pa.array(people.phone_block[persons])),
        pc.utf8_lpad(pc.cast(pa.array(people.phone_suffix[persons]), pa.string()), 4, "0"),
    )
    return select_variant(plan.phone_style[rows], phone_variants(nsn, people.country_code))


PHONE_STYLE_PROBS = (0.35, 0.3, 0.2, 0.1, 0.05)


def phone_variants(nsn: pa.Array, country_code: int) -> list[pa.Array]:
    """The ways people write a number, one array per style (see ``PHONE_STYLE_PROBS``)."""
    cc = f"+{country_code}"
    head = pc.utf8_slice_codeunits(nsn, 0, 3)
    middle = pc.utf8_slice_codeunits(nsn, 3, -4)
    tail = pc.utf8_slice_codeunits(nsn, -4)
    if country_code == 1:
        # North American habits: (201) 555-0123, 201-555-0123, +1 201 555 0123, ...
        return [
            join_strings("(", head, ") ", middle, "-", tail),
            join_strings(head, "-", middle, "-", tail),
            join_strings(cc, " ", head, " ", middle, " ", tail),
            nsn,
            join_strings(head, ".", middle, ".", tail),
        ]
    return [
        nsn,
        join_strings(head, " ", middle, " ", tail),
        join_strings(cc, " ", nsn),
        join_strings(cc, " ", head, " ", middle, " ", tail),
        join_strings(head, "-", middle, "-", tail),
    ]


def _maids(plan: _RowPlan, people: _People, rows: slice) -> pa.Array:
    raw = people.maid_bytes[plan.persons[rows]].copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # random (version 4) UUIDs, like real IDFA/GAID
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    nibbles = np.empty((len(raw), 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 0x0F
    hex_chars = _HEX_DIGITS[nibbles]
    dashed = np.full((len(raw), 36), ord("-"), dtype=np.uint8)
    for source, target, width in ((0, 0, 8), (8, 9, 4), (12, 14, 4), (16, 19, 4), (20, 24, 12)):
        dashed[:, target : target + width] = hex_chars[:, source : source + width]
    canonical = pc.cast(pa.array(np.ascontiguousarray(dashed).view("S36").ravel()), pa.string())
    upper = pc.utf8_upper(canonical)
    return select_variant(
        plan.maid_style[rows],
        [
            canonical,
            upper,
            join_strings("{", upper, "}"),
            pc.replace_substring(canonical, "-", ""),
        ],
    )


def _finish(
    values: pa.Array, plan: _RowPlan, rows: slice, column: int, junk: tuple[str, ...]
) -> pa.Array:
    """Spoil the cells chosen to be invalid and blank the absent ones."""
    invalid = plan.invalid[rows, column]
    values = _replace(values, invalid, pick_strings(junk, plan.junk[rows, column][invalid]))
    return pc.if_else(pa.array(plan.present[rows, column]), values, "")


def _chunks(
    plan: _RowPlan, people: _People, id_prefix: str, junk_phones: tuple[str, ...]
) -> Iterator[pa.RecordBatch]:
    total = len(plan.persons)
    for start in range(0, total, _CHUNK_ROWS):
        rows = slice(start, min(start + _CHUNK_ROWS, total))
        numbers = pa.array(np.arange(rows.start + 1, rows.stop + 1))
        ids = join_strings(id_prefix, pc.utf8_lpad(pc.cast(numbers, pa.string()), 9, "0"))
        yield pa.record_batch(
            [
                ids,
                _finish(_emails(plan, people, rows), plan, rows, _EMAIL, _JUNK_EMAILS),
                _finish(_phones(plan, people, rows), plan, rows, _PHONE, junk_phones),
                _finish(_maids(plan, people, rows), plan, rows, _MAID, _JUNK_MAIDS),
            ],
            names=["id", "email", "phone", "maid"],
        )


def _write_atomically(
    path: Path, columns: tuple[str, ...], batches: Callable[[], Iterator[pa.RecordBatch]]
) -> None:
    """Write to a temporary file in the same directory and rename it into place, so readers
    never see a half-written audience file."""
    # A random name opened with "x" (rather than mkstemp) so the file gets the usual
    # umask-derived permissions instead of 0600.
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp_path, "xb") as sink:
            sink.write((",".join(columns) + "\n").encode("utf-8"))
            schema = pa.schema([(name, pa.string()) for name in columns])
            # Values never contain commas, quotes or newlines, so minimal (no) quoting is safe
            # and looks like a typical spreadsheet export.
            options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
            with pa_csv.CSVWriter(sink, schema, write_options=options) as writer:
                for batch in batches():
                    writer.write_batch(pa.record_batch(batch.columns, schema=schema))
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _invalid_phone_junk(region: str) -> tuple[str, ...]:
    """Keep only garbage that phonenumbers really rejects for this region."""
    kept = []
    for value in _JUNK_PHONES:
        try:
            normalize_phone(value, region)
        except InvalidIdentifier:
            kept.append(value)
    return tuple(kept)


def synthesize(
    out_dir: Path,
    *,
    brand_rows: int,
    partner_rows: int,
    overlap: float,
    seed: int,
    default_region: str = "US",
) -> SynthResult:
    """Write ``brand.csv`` and ``partner.csv`` into ``out_dir``; deterministic for a seed.

    ``overlap`` is the fraction of partner rows whose person is also a brand customer. Phone
    numbers are written in national formats for ``default_region`` (or with its country code),
    so read them with the same default region.
    """
    if brand_rows < 0 or partner_rows < 0:
        raise ValueError("row counts must not be negative")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be between 0 and 1, got {overlap}")
    overlap_rows = round(overlap * partner_rows)
    if overlap_rows > brand_rows:
        raise ValueError(
            f"overlap {overlap} of {partner_rows} partner rows needs {overlap_rows} brand "
            f"customers but there are only {brand_rows} brand rows"
        )
    region = NormalizeOptions(default_region=default_region).default_region
    assert region is not None  # NormalizeOptions canonicalizes a given region
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    population = brand_rows + partner_rows - overlap_rows
    people = _make_people(population, region, rng)
    junk_phones = _invalid_phone_junk(region)

    # People 0..brand_rows-1 are the brand's customers; the partner sees a sample of them plus
    # people of its own. Rows are shuffled so file order says nothing about overlap.
    brand_persons = rng.permutation(brand_rows)
    shared = rng.choice(brand_rows, size=overlap_rows, replace=False)
    partner_persons = rng.permutation(np.concatenate([shared, np.arange(brand_rows, population)]))
    brand_plan = _plan_rows(brand_persons, people, rng, prehash_rate=_PREHASHED_RATE)
    partner_plan = _plan_rows(partner_persons, people, rng, prehash_rate=0.0)

    # Ground truth: compare each shared partner row with the brand row of the same person.
    brand_row_of = np.empty(brand_rows, dtype=np.int64)
    brand_row_of[brand_persons] = np.arange(brand_rows)
    is_shared = partner_persons < brand_rows
    partner_keys = partner_plan.match_keys()[is_shared]
    brand_keys = brand_plan.match_keys()[brand_row_of[partner_persons[is_shared]]]
    matches = (partner_keys >= 0) & (partner_keys == brand_keys)
    matchable_rows = int(matches.any(axis=1).sum())

    brand_path = out / "brand.csv"
    partner_path = out / "partner.csv"
    _write_atomically(
        brand_path, BRAND_COLUMNS, lambda: _chunks(brand_plan, people, "C", junk_phones)
    )
    _write_atomically(
        partner_path, PARTNER_COLUMNS, lambda: _chunks(partner_plan, people, "U", junk_phones)
    )
    return SynthResult(
        brand_path=brand_path,
        partner_path=partner_path,
        brand_rows=brand_rows,
        partner_rows=partner_rows,
        population=population,
        overlap_rows=overlap_rows,
        matchable_rows=matchable_rows,
    )
