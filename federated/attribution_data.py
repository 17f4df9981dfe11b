"""From validated files to the attribution protocol's inputs.

Identifiers are normalized and SHA-256-hashed here (on the owner's machine);
the protocol objects then see digests and day numbers only. Invalid
identifiers are skipped (a row keeps its other keys), as for audiences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from cleanroom.audiences.identifiers import (
    IdColumn,
    InvalidIdentifier,
    NormalizeOptions,
    identifier_digest,
)
from cleanroom.federated.attribution import BrandConversions, PartnerExposures


def hashed_identifiers(
    frame: pd.DataFrame, id_columns: Sequence[IdColumn], options: NormalizeOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, type, digest) for every valid identifier, in row order per column."""
    rows: list[int] = []
    types: list[str] = []
    digests: list[bytes] = []
    cache: dict[tuple[str, str], bytes | None] = {}
    for col in id_columns:
        id_type = str(col.id_type)
        for row, raw in enumerate(frame[col.column].tolist()):
            text = "" if raw is None else str(raw)
            if not text.strip():
                continue
            key = (id_type, text)
            if key not in cache:
                try:
                    cache[key] = identifier_digest(col.id_type, text, options)
                except InvalidIdentifier:
                    cache[key] = None
            digest = cache[key]
            if digest is not None:
                rows.append(row)
                types.append(id_type)
                digests.append(digest)
    digest_arr = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32)
    return np.array(rows, dtype=np.int64), np.array(types, dtype=object), digest_arr


def brand_conversions(
    parsed: pd.DataFrame, id_columns: Sequence[IdColumn], options: NormalizeOptions
) -> BrandConversions:
    """``parsed`` comes from ``attribution_reference.parse_conversions``."""
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
    parsed: pd.DataFrame, id_columns: Sequence[IdColumn], options: NormalizeOptions
) -> PartnerExposures:
    """``parsed`` comes from ``attribution_reference.parse_exposures``."""
    _, user_index = np.unique(parsed["user_id"].to_numpy(dtype=str), return_inverse=True)
    id_row, id_type, id_digest = hashed_identifiers(parsed, id_columns, options)
    return PartnerExposures(
        row_user=user_index.astype(np.int64),
        row_campaign=parsed["campaign_id"].to_numpy(dtype=object),
        row_day=parsed["day"].to_numpy(dtype=np.int64),
        row_touch=parsed["touch"].to_numpy(dtype=object),
        row_group=parsed["group"].to_numpy(dtype=object),
        id_row=id_row,
        id_type=id_type,
        id_digest=id_digest,
    )
