"""Reference (plaintext) computations and small test utilities."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import pandas as pd
from cleanroom.audiences.identifiers import (
    IdColumn,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
)


def plaintext_digests(
    frame: pd.DataFrame, columns: list[IdColumn], options: NormalizeOptions
) -> list[dict[str, bytes]]:
    """Per row: id type -> digest, for the valid identifiers (reference path)."""
    rows: list[dict[str, bytes]] = []
    for record in frame.to_dict("records"):
        found: dict[str, bytes] = {}
        for col in columns:
            raw = str(record.get(col.column, "") or "")
            if not raw.strip():
                continue
            try:
                found.setdefault(str(col.id_type), identifier_digest(col.id_type, raw, options))
            except InvalidIdentifier:
                continue
        rows.append(found)
    return rows


def plaintext_match(
    brand: pd.DataFrame, partner: pd.DataFrame, columns: list[IdColumn], options: NormalizeOptions
) -> list[str]:
    """Per partner row, the highest-priority id type found in the brand set, or ''."""
    brand_set = {
        (t, d) for row in plaintext_digests(brand, columns, options) for t, d in row.items()
    }
    result = []
    for row in plaintext_digests(partner, columns, options):
        hit = ""
        for col in columns:
            d = row.get(str(col.id_type))
            if d is not None and (str(col.id_type), d) in brand_set:
                hit = str(col.id_type)
                break
        result.append(hit)
    return result


def eventually(
    predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Wait until ``predicate`` holds (a bounded poll on observable state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def sha(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()
