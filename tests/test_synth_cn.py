"""The Chinese-profile generator: its planned match equals a join of the two files on the
platforms' canonical digests, and the files look like what CDPs and partners hold."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cleanroom.audiences.identifiers import (
    IdType,
    InvalidIdentifier,
    identifier_digest,
    parse_id_columns,
)
from cleanroom.audiences.synth_cn import BRAND_ID_COLUMNS, PARTNER_ID_COLUMNS, synthesize_cn


def test_the_planned_match_is_the_digest_join(tmp_path: Path) -> None:
    result = synthesize_cn(tmp_path, brand_rows=1500, partner_rows=1200, overlap=0.4, seed=3)
    brand = pd.read_csv(result.brand_path, dtype=str, keep_default_na=False)
    partner = pd.read_csv(result.partner_path, dtype=str, keep_default_na=False)
    assert len(brand) == 1500 and len(partner) == 1200 == len(result.expected)

    def digest(id_type: IdType, value: str) -> bytes | None:
        try:
            return identifier_digest(id_type, value) if value else None
        except InvalidIdentifier:
            return None

    held: dict[str, set[bytes]] = {}
    for c in parse_id_columns(BRAND_ID_COLUMNS):
        values = (digest(c.id_type, v) for v in brand[c.column])
        held.setdefault(c.id_type.value, set()).update(d for d in values if d)
    partner_columns = parse_id_columns(PARTNER_ID_COLUMNS)
    joined = []
    for _, row in partner.iterrows():
        on = ""
        for c in partner_columns:
            d = digest(c.id_type, row[c.column])
            if d is not None and d in held.get(c.id_type.value, set()):
                on = c.id_type.value
                break
        joined.append(on)
    assert joined == list(result.expected)
    assert result.matchable_rows > 300
    # What the files hold: hashed mobiles only on the brand side, many spellings on the other.
    hashed = brand["mobile_md5"][brand["mobile_md5"] != ""]
    assert hashed.str.fullmatch("[0-9a-fA-F]{32}").all()
    assert (hashed.str.upper() == hashed).any() and (hashed.str.lower() == hashed).any()
    spellings = partner["mobile"][partner["mobile"] != ""]
    assert spellings.str.startswith("+86").any() and spellings.str.startswith("0086").any()
    assert spellings.map(lambda s: bool(re.search("[\uff10-\uff19]", s))).any()


def test_the_generator_is_deterministic(tmp_path: Path) -> None:
    a = synthesize_cn(tmp_path / "a", brand_rows=200, partner_rows=200, seed=5)
    b = synthesize_cn(tmp_path / "b", brand_rows=200, partner_rows=200, seed=5)
    assert a.brand_path.read_bytes() == b.brand_path.read_bytes()
    assert a.expected == b.expected
