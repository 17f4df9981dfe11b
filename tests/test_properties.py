"""Property-based tests (hypothesis): identifier normalization and the audience reader.

The known-answer tests (test_identifiers.py, test_phones.py, test_reader.py) pin what
specific inputs give; these state what must hold for *any* input, as the docstrings
promise it: a normalizer returns a value or raises ``InvalidIdentifier``, its output
normalizes to itself, the vectorized paths agree with the scalar reference, and a file,
whatever its bytes, gives a report or ``AudienceFileError``, never another exception.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cleanroom.audiences.identifiers import (
    ID_TYPES,
    MAX_EMAIL_LENGTH,
    NANP_PATTERN,
    NANP_REGIONS,
    IdColumn,
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
    is_prehashed,
    normalize,
    normalize_custom,
    normalize_email,
    normalize_maid,
    normalize_phone,
    parse_id_columns,
)
from cleanroom.audiences.phones import nanp_national_numbers, valid_national_numbers
from cleanroom.audiences.reader import (
    AudienceFileError,
    ReadReport,
    hash_frame,
    iter_frames,
    read_columns,
    read_frame,
    read_hashed_chunks,
)
from tests.test_reader import assert_read_frame_equals_frames

# Examples per test: enough to hit the interesting corners in CI, small enough that the
# whole file runs in well under a minute on two cores; CLEANROOM_FUZZ_SCALE=20 digs
# deeper. No deadline: a first call can pay for imports, regex compilation or a pandas
# warm-up, and timing is not what is tested.
SCALE = float(os.environ.get("CLEANROOM_FUZZ_SCALE", "1"))
QUICK = settings(max_examples=int(150 * SCALE), deadline=None)
FILES = settings(
    max_examples=int(60 * SCALE),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

US = NormalizeOptions(default_region="US")
REASONS = {
    "empty",
    "invalid_email",
    "invalid_phone",
    "phone_needs_region",
    "invalid_maid",
    "zero_maid",
    *(f"invalid_{t}" for t in ID_TYPES),  # identifier_digest: not encodable as UTF-8
    "invalid_cn_mobile",
    "zero_idfa",
    "zero_oaid",
    "md5_for_sha256_type",
}

# --------------------------------------------------------------------------- strategies

# Characters that make identifiers interesting: the ones the grammars use, full-width
# digits and plus (East Asian input methods), whitespace Python strips but Arrow's ASCII
# trim does not, control characters, NUL, and a combining mark.
_SPECIAL = (
    list("0123456789abcdefABCDEF@.+-_(){}:;'!#x ")
    + [chr(0xFF10 + d) for d in range(10)]
    + ["\uff0b", "\u00a0", "\u2028", "\u3000", "\u200b", "\ufeff", "\x1c", "\x85", "\t", "\n"]
    + ["\x00", "\x7f", "\u0301", "\u0130", "ß", "é", "\u0660", "\u0967"]
)
# codec="utf-8": what a decoded file can hold (no lone surrogates).
_CHARS = st.one_of(st.sampled_from(_SPECIAL), st.characters(codec="utf-8"))
texts = st.text(_CHARS, max_size=40)
long_texts = st.builds(
    lambda s, n: s * n, st.text(_CHARS, min_size=1, max_size=6), st.integers(40, 400)
)
any_text = st.one_of(texts, texts, long_texts)
# What code (not a decoded file) can pass: lone surrogates included.
code_text = st.one_of(any_text, st.text(st.characters(exclude_categories=()), max_size=20))
regions = st.sampled_from([None, "US", "CA", "GB", "CN", "DE", "IT", "JP", "BR", "IN", "FR"])
options = st.builds(NormalizeOptions, default_region=regions, fold_gmail=st.booleans())
# The types whose only hashed form is a SHA-256 of the normalized value (the Chinese
# platforms' types have their own forms: tests/test_platform_ids.py).
CLASSIC = [IdType.EMAIL, IdType.PHONE, IdType.MAID, IdType.CUSTOM]
id_types = st.sampled_from(CLASSIC)
hex_digits = "0123456789abcdefABCDEF"
pads = st.text(st.sampled_from(" \t\r\n\u00a0\u3000"), max_size=3)


@st.composite
def emails(draw: st.DrawFn) -> str:
    """Address-shaped text: mostly valid, sometimes one character away from valid."""
    atom = st.text(st.sampled_from("abcXYZ09.+-_'é\u00c9"), min_size=1, max_size=12)
    label = st.text(st.sampled_from("abcXYZ09-é"), min_size=1, max_size=10)
    local = draw(atom)
    domain = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
    tld = draw(st.sampled_from(["com", "COM", "io", "de", "xn--p1ai", "c", "1a", "рф"]))
    host = draw(st.sampled_from(["gmail.com", "GoogleMail.com", f"{domain}.{tld}"]))
    return draw(pads) + f"{local}@{host}" + draw(pads)


@st.composite
def phones(draw: st.DrawFn) -> tuple[str, str]:
    """A valid number of a random region, written the ways people write it, and the region."""
    region = draw(st.sampled_from(sorted(phonenumbers.SUPPORTED_REGIONS)))
    kind = draw(
        st.sampled_from(
            [
                phonenumbers.PhoneNumberType.FIXED_LINE,
                phonenumbers.PhoneNumberType.MOBILE,
                phonenumbers.PhoneNumberType.TOLL_FREE,
            ]
        )
    )
    number = phonenumbers.example_number_for_type(region, kind)
    if number is None:
        number = phonenumbers.example_number(region) or phonenumbers.parse("+12015550123")
    fmt = draw(
        st.sampled_from(
            [
                phonenumbers.PhoneNumberFormat.E164,
                phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                phonenumbers.PhoneNumberFormat.NATIONAL,
                phonenumbers.PhoneNumberFormat.RFC3966,
            ]
        )
    )
    text = phonenumbers.format_number(number, fmt)
    if draw(st.booleans()):  # full-width digits, as some input methods produce
        text = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in text)
    return draw(pads) + text + draw(pads), region


@st.composite
def nanp_like(draw: st.DrawFn) -> str:
    """Text close to the North American shortcut grammar (NANP_PATTERN), often inside it."""
    parts = st.sampled_from(["+1", "+", "1", "(", ")", " ", "-", ".", "  ", "+44"])
    digits = st.text(st.sampled_from("0123456789"), min_size=1, max_size=4)
    pieces = draw(st.lists(st.one_of(parts, digits, digits), min_size=1, max_size=9))
    return "".join(pieces)


def outcome(func: Callable[..., str], *args: Any, **kwargs: Any) -> str | None:
    """The normalized value, or None when the documented InvalidIdentifier was raised."""
    try:
        value = func(*args, **kwargs)
    except InvalidIdentifier as exc:
        assert exc.reason in REASONS, exc.reason
        assert str(exc) == exc.message and exc.message
        return None
    assert isinstance(value, str) and value
    return value


# --------------------------------------------------------------------------- normalizers


@QUICK
@given(any_text, st.booleans())
@example("\u0130@example.com", False)  # lower() makes it longer: İ -> i̇
@example(".+x@gmail.com", True)  # folds to an empty local part
def test_email_is_invalid_or_canonical_and_idempotent(text: str, fold_gmail: bool) -> None:
    email = outcome(normalize_email, text, fold_gmail=fold_gmail)
    if email is None:
        return
    assert email == email.strip() == email.lower()
    assert len(email) <= MAX_EMAIL_LENGTH and email.count("@") == 1
    assert normalize_email(email, fold_gmail=fold_gmail) == email
    if fold_gmail and email.endswith("@gmail.com"):
        assert not set(email.split("@")[0]) & {".", "+"}


@QUICK
@given(emails(), st.booleans())
def test_address_shaped_text_normalizes_like_the_ad_platforms(text: str, fold: bool) -> None:
    email = outcome(normalize_email, text, fold_gmail=fold)
    if email is None:
        return
    if not fold or email.rpartition("@")[2] not in {"gmail.com", "googlemail.com"}:
        assert email == text.strip().lower()  # trim + lowercase, nothing else
    assert normalize_email(email, fold_gmail=fold) == email


def _parsed_e164(text: str, region: str | None) -> str | None:
    """phonenumbers' own parse, validate and format: what normalize_phone documents."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@QUICK
@given(st.one_of(any_text, nanp_like()), regions)
@example("+1 (201)555-0123", None)
@example("\uff0b\uff11 201 555 0123", None)  # full-width +1: no shortcut, the same answer
@example("20100000000000", "DE")  # 16 digits in E.164
def test_phone_agrees_with_phonenumbers_and_is_idempotent(text: str, region: str | None) -> None:
    e164 = outcome(normalize_phone, text, region)
    stripped = text.strip()
    assert e164 == (_parsed_e164(stripped, region) if stripped else None), text
    if e164 is None:
        return
    # phonenumbers' E.164 form: "+" and digits; not capped at 15 (German numbers run to 17).
    assert re.fullmatch(r"\+[1-9][0-9]{1,17}", e164), e164
    # E.164 carries its country code: any default region reads it back unchanged.
    assert normalize_phone(e164, region) == normalize_phone(e164, None) == e164


@QUICK
@given(phones())
def test_written_numbers_come_back_as_their_e164(spelled: tuple[str, str]) -> None:
    text, region = spelled
    e164 = outcome(normalize_phone, text, region)
    assert e164 == _parsed_e164(text.strip(), region)
    if e164 is not None:
        assert normalize_phone(e164) == e164


@st.composite
def maid_like(draw: st.DrawFn) -> str:
    """A UUID in one of the spellings normalize_maid accepts, in either case."""
    groups = [
        draw(st.text(st.sampled_from(hex_digits), min_size=n, max_size=n)) for n in (8, 4, 4, 4, 12)
    ]
    text = draw(st.sampled_from(["-", ""])).join(groups)
    if draw(st.booleans()):
        text = "{" + text + "}"
    return text.upper() if draw(st.booleans()) else text


@QUICK
@given(st.one_of(any_text, maid_like()))
def test_maid_is_invalid_or_a_canonical_uuid(text: str) -> None:
    maid = outcome(normalize_maid, text)
    if maid is None:
        return
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", maid)
    assert maid != "00000000-0000-0000-0000-000000000000"
    assert normalize_maid(maid) == maid
    assert maid.replace("-", "") == re.sub(r"[{}\-]", "", text.strip().lower())


@QUICK
@given(any_text)
def test_custom_keys_are_only_trimmed(text: str) -> None:
    key = outcome(normalize_custom, text)
    assert key == (text.strip() or None)
    if key is not None:
        assert normalize_custom(key) == key


@QUICK
@given(id_types, code_text, options)
def test_digest_is_32_bytes_or_invalid_identifier(
    id_type: IdType, text: str, opts: NormalizeOptions
) -> None:
    try:
        digest = identifier_digest(id_type, text, opts)
    except InvalidIdentifier as exc:
        assert exc.reason in REASONS
        return
    assert isinstance(digest, bytes) and len(digest) == 32
    if not is_prehashed(text):
        normalized = normalize(id_type, text, opts)
        assert digest == hashlib.sha256(normalized.encode("utf-8")).digest()
        # The canonical form is a fixed point: hashing it again gives the same digest.
        assert identifier_digest(id_type, normalized, opts) == digest


@QUICK
@given(st.text(st.sampled_from(hex_digits), min_size=64, max_size=64), pads, pads, id_types)
def test_a_sha256_hex_digest_passes_through_every_type_unchanged(
    hexes: str, before: str, after: str, id_type: IdType
) -> None:
    raw = before + hexes + after
    assert is_prehashed(raw)
    # Decoded as given, never lower-cased and re-hashed, never read as a MAID or a phone.
    assert identifier_digest(id_type, raw, US) == bytes.fromhex(hexes)


@QUICK
@given(
    st.text(st.sampled_from(hex_digits), min_size=1, max_size=130).filter(lambda h: len(h) != 64),
    id_types,
)
@example("6d92078a82464ba4ae5b76104861e7dc", IdType.MAID)  # 32 hex: a MAID, not a digest
@example("a" * 63, IdType.CUSTOM)
@example("a" * 65, IdType.CUSTOM)
def test_hex_of_another_length_is_not_taken_for_a_digest(hexes: str, id_type: IdType) -> None:
    assert not is_prehashed(hexes)
    got = outcome(lambda: identifier_digest(id_type, hexes, US).hex())
    normalized = outcome(normalize, id_type, hexes, US)
    want = None if normalized is None else hashlib.sha256(normalized.encode()).hexdigest()
    assert got == want
    if id_type is IdType.CUSTOM:
        assert got == hashlib.sha256(hexes.encode()).hexdigest()


@QUICK
@given(st.text(st.sampled_from(hex_digits + "g -:\u00a0x"), min_size=60, max_size=70))
def test_almost_digests_are_not_digests(text: str) -> None:
    """64 hex digits exactly, after trimming: separators or a stray letter disqualify."""
    expected = re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()) is not None
    assert is_prehashed(text) is expected


@QUICK
@given(st.one_of(regions, any_text))
def test_normalize_options_accepts_only_known_regions(region: str | None) -> None:
    try:
        opts = NormalizeOptions(default_region=region)
    except ValueError as exc:
        # A bad region is the options' error, not a bad value to count in a report.
        assert not isinstance(exc, InvalidIdentifier)
        assert "unsupported phone region" in str(exc)
        return
    assert opts.default_region is None or opts.default_region in phonenumbers.SUPPORTED_REGIONS
    assert NormalizeOptions(default_region=opts.default_region) == opts


@QUICK
@given(any_text)
@example("a:b:email, c ,d:PHONE")
def test_id_column_specs_parse_or_refuse_and_round_trip(spec: str) -> None:
    try:
        columns = parse_id_columns(spec)
    except ValueError as exc:
        assert not isinstance(exc, InvalidIdentifier)
        assert "id column spec" in str(exc)
        return
    assert columns and all(c.column == c.column.strip() and c.column for c in columns)
    assert len({c.column for c in columns}) == len(columns)
    explicit = ",".join(f"{c.column}:{c.id_type.value}" for c in columns)
    assert parse_id_columns(explicit) == columns


# --------------------------------------------------------------------------- phones.py


_NANP = re.compile(NANP_PATTERN)


@QUICK
@given(
    st.lists(st.one_of(nanp_like(), st.text(st.characters(max_codepoint=127))), max_size=12),
    st.sampled_from([None, "US", "CA", "GB"]),
)
def test_nanp_shapes_agree_with_the_python_pattern(values: list[str], region: str | None) -> None:
    shaped, digits = nanp_national_numbers(pa.array(values, pa.string()), region)
    assert len(shaped) == len(values)
    for value, got_shaped, got_digits in zip(values, shaped, digits.to_pylist(), strict=True):
        match = _NANP.fullmatch(value)
        want = match is not None and bool(match["plus"] or region in NANP_REGIONS)
        assert bool(got_shaped) is want, value
        if want:
            assert match is not None
            parts = (match["area"] or match["area_plain"], match["exchange"], match["line"])
            assert got_digits == "".join(parts)


_CALLING_CODES = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


@settings(max_examples=int(80 * SCALE), deadline=None)
@given(
    st.sampled_from([1, 1, 1, *_CALLING_CODES]),
    st.lists(
        st.builds(
            lambda first, rest: first + rest,
            st.sampled_from("123456789"),
            st.text(st.sampled_from("0123456789"), max_size=14),
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_column_validity_equals_is_valid_number(country_code: int, numbers: list[str]) -> None:
    try:
        got = valid_national_numbers(country_code, pa.array(numbers, pa.string()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Patterns RE2 cannot compile: documented, the reader then takes the scalar path.
        assert country_code != 1, "the North American patterns must compile"
        return
    want = [
        phonenumbers.is_valid_number(
            phonenumbers.PhoneNumber(country_code=country_code, national_number=int(n))
        )
        for n in numbers
    ]
    assert got.tolist() == want, numbers


# --------------------------------------------------------------------------- the reader

ALL_COLUMNS = [IdColumn(f"c_{t.value}", t) for t in CLASSIC]


@QUICK
@given(st.lists(st.tuples(*(any_text for _ in ALL_COLUMNS)), min_size=1, max_size=12), options)
@example([("\u00a0a@b.com", "\u3000201 555 0123", "{" + "A" * 32 + "}", "\x00")], US)
@example([(" " + "F" * 64 + "\t", "+1 201 555 0123\x1c", "0" * 32, "\x1f x \x1f")], US)
def test_vectorized_hashing_equals_the_scalar_reference(
    rows: list[tuple[str, ...]], opts: NormalizeOptions
) -> None:
    frame = pd.DataFrame(rows, columns=[c.column for c in ALL_COLUMNS])
    chunk = hash_frame(frame, ALL_COLUMNS, opts)
    assert chunk.row_count == len(rows)
    for i, hashed in enumerate(chunk.columns):
        want: list[bytes | None] = []
        for row in rows:
            try:
                want.append(identifier_digest(hashed.id_column.id_type, row[i], opts))
            except InvalidIdentifier:
                want.append(None)
        assert hashed.present.tolist() == [d is not None for d in want], [r[i] for r in rows]
        assert hashed.digests == b"".join(d for d in want if d is not None)


def _write(directory: Path, suffix: str, data: bytes) -> Path:
    path = directory / f"input{suffix}"
    path.write_bytes(data)
    return path


def _read_everything(path: Path, id_columns: list[IdColumn]) -> ReadReport | None:
    """Every reader entry point on ``path``: the report, or None for AudienceFileError.

    Any other exception escapes and fails the test: that is the property.
    """
    try:
        columns = read_columns(path)
    except AudienceFileError as exc:
        assert str(exc)
        return None
    assert isinstance(columns, list) and all(isinstance(c, str) for c in columns)
    report = ReadReport()
    try:
        frames = list(iter_frames(path, chunk_rows=3))
        whole = read_frame(path)
        present = [c for c in id_columns if c.column in columns] or [
            IdColumn(columns[0], IdType.CUSTOM)
        ]
        chunks = list(read_hashed_chunks(path, present, US, chunk_rows=3, report=report))
    except AudienceFileError as exc:
        assert str(exc)
        return None
    rows = sum(len(f) for f in frames)
    assert rows > 0 and len(whole) == rows
    assert sum(c.row_count for c in chunks) == rows == report.rows_read
    assert report.rows_accepted + report.rows_rejected_total == report.rows_read
    for chunk in chunks:
        for hashed in chunk.columns:
            assert len(hashed.present) == chunk.row_count
            assert len(hashed.digests) == 32 * int(hashed.present.sum())
    return report


FUZZ_COLUMNS = parse_id_columns("email,phone,maid,id:custom")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


@FILES
@given(st.binary(max_size=600), st.sampled_from([".csv", ".csv.gz", ".parquet", ".pq"]))
@example(b"\xef\xbb\xbf", ".csv")  # a BOM and nothing else
@example(b"email\n\x00\n", ".csv")
@example(b"email,email\na@b.com,c@d.com\n", ".csv")
@example(b"PAR1\x00\x00\x00\x00PAR1", ".parquet")
# A gzip header over a damaged deflate stream: zlib.error, which the reader leaked.
@example(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage!", ".csv.gz")
def test_random_bytes_give_a_report_or_audience_file_error(
    scratch: Path, data: bytes, suffix: str
) -> None:
    _read_everything(_write(scratch, suffix, data), FUZZ_COLUMNS)


_NAMES = st.one_of(
    st.sampled_from(["email", "phone", "maid", "id", "", " ", "email ", "Unnamed: 0", "a,b"]),
    st.text(_CHARS, max_size=8),
)
_CELLS = st.one_of(
    any_text,
    emails(),
    st.sampled_from(["", "NA", "null", '"', '""', "a,b", "\r", "\r\n", "1e3", "-0"]),
    st.just("x" * 70_000),  # a huge field
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """CSV text of random shape: quoted properly or joined raw, ragged, in some encoding."""
    header = draw(st.lists(_NAMES, min_size=1, max_size=5))
    rows = draw(
        st.lists(st.lists(_CELLS, min_size=0, max_size=len(header) + 1), min_size=0, max_size=6)
    )
    if draw(st.booleans()):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
        writer.writerows([header, *rows])
        text = buffer.getvalue()
    else:
        text = "\n".join(",".join(row) for row in [header, *rows])
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.booleans()):  # damage: a cut, or a byte that is never UTF-8
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from([b"", b"\xff", b"\x00", b'"']))
    return data


@FILES
@given(csv_files(), st.booleans())
def test_random_csv_shapes_give_a_report_or_audience_file_error(
    scratch: Path, data: bytes, gzipped: bool
) -> None:
    path = _write(
        scratch, ".csv.gz" if gzipped else ".csv", gzip.compress(data) if gzipped else data
    )
    _read_everything(path, FUZZ_COLUMNS)


# pandas' C tokenizer drops the delimiter that follows a blank (or whitespace-only) line
# ended by a lone CR, so the row's cells move one column left; Arrow reads it right.
# Upstream, and not fixable here without replacing the parser: pinned by the xfail
# example below, and kept out of the random files so they keep guarding the rest.
_PANDAS_LONE_CR_BLANK_LINE = re.compile(rb"(?:^|[\r\n])[ \t]*\r,")


@FILES
@given(csv_files().filter(lambda data: not _PANDAS_LONE_CR_BLANK_LINE.search(data)))
@example(b"email,phone\n\r,201-555-0123\n").xfail(
    raises=AssertionError, reason="pandas: a delimiter after a CR-ended blank line is lost"
)
def test_read_frame_equals_the_concatenated_frames(scratch: Path, data: bytes) -> None:
    """read_frame's Arrow path reads what pandas reads, or leaves the file to it."""
    assert_read_frame_equals_frames(_write(scratch, ".csv", data), chunk_rows=2)


@FILES
@given(csv_files())
def test_csv_digests_are_those_of_the_cells_read(scratch: Path, data: bytes) -> None:
    """Whatever pandas makes of the file, each digest is the scalar digest of its cell."""
    path = _write(scratch, ".csv", data)
    try:
        columns = read_columns(path)
        frames = list(iter_frames(path, chunk_rows=4))
        id_columns = [
            IdColumn(name, t) for name, t in zip(dict.fromkeys(columns), IdType, strict=False)
        ]
        chunks = list(read_hashed_chunks(path, id_columns, US, chunk_rows=4))
    except AudienceFileError:
        return
    frame = pd.concat(frames, ignore_index=True)
    for hashed_columns in zip(*(c.columns for c in chunks), strict=True):
        id_column = hashed_columns[0].id_column
        want: list[bytes | None] = []
        for cell in frame[id_column.column].tolist():
            try:
                want.append(identifier_digest(id_column.id_type, cell, US))
            except InvalidIdentifier:
                want.append(None)
        present = np.concatenate([h.present for h in hashed_columns])
        assert present.tolist() == [d is not None for d in want]
        assert b"".join(h.digests for h in hashed_columns) == b"".join(
            d for d in want if d is not None
        )


_ARROW_TYPES = st.sampled_from(
    [
        "string",
        "large_string",
        "int64",
        "float64",
        "bool",
        "binary",
        "null",
        "list",
        "dict",
        "timestamp",
        "struct",
    ]
)


def _column(kind: str, cells: list[str | None]) -> pa.Array:
    if kind in {"string", "large_string"}:
        return pa.array(cells, getattr(pa, kind)())
    if kind == "dict":
        return pa.array(cells, pa.string()).dictionary_encode()
    if kind == "binary":  # bytes that need not be UTF-8
        return pa.array([None if c is None else c.encode()[::-1] for c in cells], pa.binary())
    if kind == "null":
        return pa.nulls(len(cells))
    if kind == "list":
        return pa.array([None if c is None else [c] for c in cells])
    if kind == "struct":
        return pa.array([{"v": c} for c in cells])
    numbers = [None if c is None else len(c) for c in cells]
    if kind == "bool":
        return pa.array([None if n is None else n % 2 == 0 for n in numbers])
    if kind == "timestamp":
        return pa.array(numbers, pa.timestamp("s"))
    return pa.array(numbers, getattr(pa, kind)())


def _parquet_bytes(table: pa.Table, row_group_size: int = 2) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


@st.composite
def parquet_files(draw: st.DrawFn) -> bytes:
    names = draw(st.lists(_NAMES, min_size=1, max_size=4))
    rows = draw(st.integers(0, 7))
    cells = st.lists(st.none() | any_text, min_size=rows, max_size=rows)
    arrays = [_column(draw(_ARROW_TYPES), draw(cells)) for _ in names]
    table = pa.Table.from_arrays(arrays, names=names)  # duplicate names allowed, as in files
    data = _parquet_bytes(table, draw(st.integers(1, 4)))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    return data


@FILES
@given(parquet_files())
# Two columns of one name: Arrow selects both under it, and the reader leaked a KeyError.
@example(_parquet_bytes(pa.Table.from_arrays([pa.array(["a@b.com"])] * 2, ["email", "email"])))
# A column name that is not UTF-8 (0xC0 0x80): Arrow's own decoding leaked UnicodeDecodeError.
@example(
    _parquet_bytes(pa.table({"email": ["a@b.com"], "\x80": ["x"]})).replace(
        b"\xc2\x80", b"\xc0\x80"
    )
)
def test_random_parquet_gives_a_report_or_audience_file_error(scratch: Path, data: bytes) -> None:
    _read_everything(_write(scratch, ".parquet", data), FUZZ_COLUMNS)


@FILES
@given(
    st.lists(st.tuples(st.none() | any_text, st.none() | any_text), min_size=1, max_size=9),
    st.integers(1, 4),
)
def test_parquet_text_is_hashed_exactly_as_written(
    scratch: Path, rows: list[tuple[str | None, str | None]], chunk_rows: int
) -> None:
    """Parquet keeps text as it is (NUL, line breaks, blank cells): digests are the reference's."""
    table = pa.table({"email": [r[0] for r in rows], "crm": [r[1] for r in rows]})
    path = scratch / "exact.parquet"
    pq.write_table(table, path, row_group_size=2)
    id_columns = parse_id_columns("email,crm:custom")
    chunks = list(read_hashed_chunks(path, id_columns, US, chunk_rows=chunk_rows))
    assert [c.row_count for c in chunks] == [
        min(chunk_rows, len(rows) - s) for s in range(0, len(rows), chunk_rows)
    ]
    for i, id_column in enumerate(id_columns):
        want = []
        for row in rows:
            cell = row[i] or ""
            try:
                want.append(
                    identifier_digest(id_column.id_type, cell, US) if cell.strip() else None
                )
            except InvalidIdentifier:
                want.append(None)
        present = np.concatenate([c.columns[i].present for c in chunks])
        assert present.tolist() == [d is not None for d in want]
        assert b"".join(c.columns[i].digests for c in chunks) == b"".join(
            d for d in want if d is not None
        )
