"""The plaintext join the private protocols must reproduce.

For checking only: the demo and the tests compare PSI results with this
computation on synthetic data. It sees both parties' identifiers in the
clear, which is exactly what the clean room exists to avoid; never run it on
real customer data.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from cleanroom.audiences.identifiers import (
    IdColumn,
    InvalidIdentifier,
    NormalizeOptions,
    column_options,
    identifier_digest,
)


def row_digests(
    frame: pd.DataFrame, columns: Sequence[IdColumn], options: NormalizeOptions
) -> list[list[bytes | None]]:
    """Per row, per column: the identifier's digest, or None if empty/invalid."""
    rows: list[list[bytes | None]] = []
    for record in frame.to_dict("records"):
        cells: list[bytes | None] = []
        for col in columns:
            raw = str(record.get(col.column, "") or "")
            digest = None
            if raw.strip():
                try:
                    digest = identifier_digest(col.id_type, raw, column_options(options, col))
                except InvalidIdentifier:
                    digest = None
            cells.append(digest)
        rows.append(cells)
    return rows


def plaintext_match(
    brand: pd.DataFrame,
    partner: pd.DataFrame,
    columns: Sequence[IdColumn],
    options: NormalizeOptions,
) -> list[str]:
    """Per partner row, the type of the highest-priority column found in the
    brand's identifiers of the same type, or '' when none matches."""
    brand_set = {
        (str(col.id_type), digest)
        for cells in row_digests(brand, columns, options)
        for col, digest in zip(columns, cells, strict=True)
        if digest is not None
    }
    result = []
    for cells in row_digests(partner, columns, options):
        hit = ""
        for col, digest in zip(columns, cells, strict=True):
            if digest is not None and (str(col.id_type), digest) in brand_set:
                hit = str(col.id_type)
                break
        result.append(hit)
    return result
