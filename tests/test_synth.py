"""Tests for the synthetic audience generator: determinism, overlap, messiness."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest

from cleanroom.audiences import synth
from cleanroom.audiences.identifiers import (
    IdType,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
    normalize_phone,
    parse_id_columns,
)
from cleanroom.audiences.reader import ReadReport, read_hashed_chunks
from cleanroom.audiences.synth import SynthResult, synthesize

BRAND_ROWS = 3000
PARTNER_ROWS = 2000
OVERLAP = 0.4
ID_COLUMNS = parse_id_columns("email,phone,maid")
TYPES = {"email": IdType.EMAIL, "phone": IdType.PHONE, "maid": IdType.MAID}


@pytest.fixture(scope="module")
def us(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(
        tmp_path_factory.mktemp("us"),
        brand_rows=BRAND_ROWS,
        partner_rows=PARTNER_ROWS,
        overlap=OVERLAP,
        seed=11,
    )


@pytest.fixture(scope="module")
def cn(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(
        tmp_path_factory.mktemp("cn"),
        brand_rows=1500,
        partner_rows=1000,
        overlap=0.25,
        seed=5,
        default_region="CN",
    )


def load(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def digest_or_none(id_type: IdType, value: str, options: NormalizeOptions) -> bytes | None:
    if not value.strip():
        return None
    try:
        return identifier_digest(id_type, value, options)
    except InvalidIdentifier:
        return None


def plaintext_join(result: SynthResult, options: NormalizeOptions) -> int:
    """Partner rows sharing a normalized identifier with any brand row (scalar reference code)."""
    brand = load(result.brand_path)
    partner = load(result.partner_path)
    brand_sets = {
        column: {digest_or_none(id_type, v, options) for v in brand[column]} - {None}
        for column, id_type in TYPES.items()
    }
    matched = 0
    for row in partner.itertuples(index=False):
        if any(
            digest_or_none(id_type, getattr(row, column), options) in brand_sets[column]
            for column, id_type in TYPES.items()
        ):
            matched += 1
    return matched


def test_files_and_counts(us: SynthResult) -> None:
    assert us.brand_path.name == "brand.csv"
    assert us.partner_path.name == "partner.csv"
    brand = load(us.brand_path)
    partner = load(us.partner_path)
    assert list(brand.columns) == ["customer_id", "email", "phone", "maid"]
    assert list(partner.columns) == ["user_id", "email", "phone", "maid"]
    assert (
        (len(brand), len(partner))
        == (BRAND_ROWS, PARTNER_ROWS)
        == (
            us.brand_rows,
            us.partner_rows,
        )
    )
    assert brand["customer_id"].is_unique
    assert partner["user_id"].is_unique
    assert us.overlap_rows == round(OVERLAP * PARTNER_ROWS)
    assert us.population == BRAND_ROWS + PARTNER_ROWS - us.overlap_rows
    # Written atomically: only the two finished files are left behind.
    assert sorted(p.name for p in us.brand_path.parent.iterdir()) == ["brand.csv", "partner.csv"]


def test_deterministic_per_seed(us: SynthResult, tmp_path: Path) -> None:
    again = synthesize(
        tmp_path / "again",
        brand_rows=BRAND_ROWS,
        partner_rows=PARTNER_ROWS,
        overlap=OVERLAP,
        seed=11,
    )
    assert again.brand_path.read_bytes() == us.brand_path.read_bytes()
    assert again.partner_path.read_bytes() == us.partner_path.read_bytes()
    assert again.matchable_rows == us.matchable_rows
    other = synthesize(
        tmp_path / "other",
        brand_rows=BRAND_ROWS,
        partner_rows=PARTNER_ROWS,
        overlap=OVERLAP,
        seed=12,
    )
    assert other.brand_path.read_bytes() != us.brand_path.read_bytes()


def test_overlap_matches_plaintext_join(us: SynthResult) -> None:
    joined = plaintext_join(us, NormalizeOptions(default_region="US"))
    # The generator's ground truth and an independent join with the reference normalization
    # agree exactly; a few shared people are unmatchable (garbage or missing identifiers).
    assert joined == us.matchable_rows
    assert 0.93 * us.overlap_rows <= joined <= us.overlap_rows
    assert joined / PARTNER_ROWS == pytest.approx(OVERLAP, abs=0.03)


def test_gmail_folding_finds_tagged_addresses(us: SynthResult) -> None:
    folded = plaintext_join(us, NormalizeOptions(default_region="US", fold_gmail=True))
    assert folded >= us.matchable_rows
    assert folded <= us.overlap_rows


def test_reader_agrees_with_plaintext_join(us: SynthResult) -> None:
    options = NormalizeOptions(default_region="US")
    brand: dict[str, set[bytes]] = {c.column: set() for c in ID_COLUMNS}
    for chunk in read_hashed_chunks(us.brand_path, ID_COLUMNS, options, chunk_rows=700):
        for hashed in chunk.columns:
            digests = hashed.digests
            brand[hashed.id_column.column].update(
                digests[i : i + 32] for i in range(0, len(digests), 32)
            )
    matched = 0
    for chunk in read_hashed_chunks(us.partner_path, ID_COLUMNS, options, chunk_rows=700):
        hit = [False] * chunk.row_count
        for hashed in chunk.columns:
            rows = [i for i, present in enumerate(hashed.present) if present]
            for n, row in enumerate(rows):
                if hashed.digests[32 * n : 32 * n + 32] in brand[hashed.id_column.column]:
                    hit[row] = True
        matched += sum(hit)
    assert matched == us.matchable_rows


def test_phone_numbers_are_valid_for_region(us: SynthResult, cn: SynthResult) -> None:
    for result, region in ((us, "US"), (cn, "CN")):
        phones = [
            p
            for path in (result.brand_path, result.partner_path)
            for p in load(path)["phone"]
            if p and p not in synth._JUNK_PHONES
        ]
        valid = 0
        for phone in phones:
            try:
                normalize_phone(phone, region)
                valid += 1
            except InvalidIdentifier:
                pass
        assert len(phones) > 500
        assert valid / len(phones) >= 0.99, region
        assert len(set(phones)) > 0.5 * len(phones)  # not a handful of repeated numbers


def test_cn_overlap(cn: SynthResult) -> None:
    assert plaintext_join(cn, NormalizeOptions(default_region="CN")) == cn.matchable_rows
    assert cn.matchable_rows / cn.partner_rows == pytest.approx(0.25, abs=0.03)
    phones = [p for p in load(cn.brand_path)["phone"] if p.startswith("+86 ")]
    assert phones  # international format present too


def share(values: list[str], pattern: str) -> float:
    """Fraction of values containing a match of ``pattern``."""
    return sum(bool(re.search(pattern, v)) for v in values) / len(values)


UUID_V4 = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def test_messiness_is_present(us: SynthResult) -> None:
    brand = load(us.brand_path)
    emails = [e for e in brand["email"] if e]
    phones = [p for p in brand["phone"] if p]
    maids = [m for m in brand["maid"] if m]

    assert share(emails, r"[A-Z]") > 0.2  # mixed case
    assert share(emails, r"^\s|\s$") > 0.05  # stray whitespace
    prehashed = share(emails, r"^[0-9a-fA-F]{64}$")
    assert 0.02 < prehashed < 0.08
    assert share(emails, r"^[0-9A-F]{64}$") > 0.005  # some upper-case hashes
    assert share(emails, r"[^\x00-\x7f]") > 0  # internationalized addresses

    assert share(phones, r"^\(\d{3}\) \d{3}-\d{4}$") > 0.2
    assert share(phones, r"^\d{3}-\d{3}-\d{4}$") > 0.2
    assert share(phones, r"^\+1 \d{3} \d{3} \d{4}$") > 0.1
    assert len({p[:3] for p in phones if p[0].isdigit()}) > 20  # many area codes

    assert (
        share(maids, r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$") > 0.4
    )
    assert share(maids, r"[A-F]") > 0.2
    assert share(maids, r"^\{.*\}$") > 0.01
    assert share(maids, r"^[0-9a-f]{32}$") > 0.01

    report = ReadReport()
    for _ in read_hashed_chunks(
        us.brand_path, ID_COLUMNS, NormalizeOptions(default_region="US"), report=report
    ):
        pass
    invalid = report.invalid_identifiers
    for reason in ("invalid_email", "invalid_phone", "invalid_maid"):
        assert invalid.get(reason, 0) > 0, reason
    assert sum(invalid.values()) < 0.03 * 3 * BRAND_ROWS  # ~1% of cells
    no_identifier = report.rows_rejected.get("no_identifier", 0)
    assert 0 < no_identifier < 0.02 * BRAND_ROWS
    assert report.rows_accepted > 0.97 * BRAND_ROWS


def test_rows_carry_varied_identifier_subsets(us: SynthResult) -> None:
    brand = load(us.brand_path)
    subsets = (brand[["email", "phone", "maid"]] != "").apply(tuple, axis=1).value_counts()
    assert (True, False, False) in subsets.index  # email only
    assert (False, True, False) in subsets.index  # phone only
    assert (False, False, True) in subsets.index  # maid only
    assert (True, True, True) in subsets.index
    assert subsets.get((False, False, False), 0) < 0.02 * BRAND_ROWS


def test_prehashed_emails_hash_the_normalized_address(us: SynthResult) -> None:
    brand = load(us.brand_path)
    hashes = {e.lower() for e in brand["email"] if re.fullmatch(r"[0-9a-fA-F]{64}", e)}
    partner_digests = {
        hashlib.sha256(e.strip().lower().encode()).hexdigest()
        for e in load(us.partner_path)["email"]
        if "@" in e
    }
    # Some pre-hashed brand customers also appear in the partner file with a plaintext email.
    assert hashes & partner_digests


def test_parameter_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overlap must be between 0 and 1"):
        synthesize(tmp_path, brand_rows=10, partner_rows=10, overlap=1.5, seed=1)
    with pytest.raises(ValueError, match="only 5 brand rows"):
        synthesize(tmp_path, brand_rows=5, partner_rows=100, overlap=0.5, seed=1)
    with pytest.raises(ValueError, match="unsupported phone region"):
        synthesize(tmp_path, brand_rows=5, partner_rows=5, overlap=0.5, seed=1, default_region="XX")
    with pytest.raises(ValueError, match="must not be negative"):
        synthesize(tmp_path, brand_rows=-1, partner_rows=5, overlap=0.0, seed=1)
    assert list(tmp_path.iterdir()) == []


def test_edge_sizes(tmp_path: Path) -> None:
    result = synthesize(tmp_path, brand_rows=50, partner_rows=20, overlap=1.0, seed=3)
    assert result.overlap_rows == 20
    assert result.population == 50
    empty = synthesize(tmp_path / "none", brand_rows=0, partner_rows=0, overlap=0.0, seed=3)
    assert empty.brand_path.read_text() == "customer_id,email,phone,maid\n"
    assert empty.matchable_rows == 0
