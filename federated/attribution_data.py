"""From validated files to the attribution protocol's inputs.

Identifiers are normalized and SHA-256-hashed here (on the owner's machine);
the protocol objects then see digests and day numbers only. Invalid
identifiers are skipped (a row keeps its other keys), as for audiences.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import pandas as pd

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import hash_frame
from cleanroom.federated.attribution import DIGEST_LEN, BrandConversions, PartnerExposures


def hashed_identifiers(
    frame: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    executor: Executor | None = None,
    slice_rows: int = 50_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, type, digest) for every valid identifier, column by column.

    Each column's distinct values are normalized and hashed once: logs repeat
    their users (a million exposure rows carry ~200k distinct emails), and a
    phone outside the North American spellings costs a phonenumbers parse
    (~30 µs). Slices of distinct values are hashed in ``executor``'s workers
    when given.
    """
    factorized = [
        pd.factorize(frame[col.column].fillna("").astype(str), use_na_sentinel=False)
        for col in id_columns
    ]
    jobs = [
        (pd.DataFrame({col.column: uniques[start : start + slice_rows]}), [col])
        for col, (_, uniques) in zip(id_columns, factorized, strict=True)
        for start in range(0, len(uniques), slice_rows)
    ]
    if executor is not None and len(jobs) > 1:
        futures = [executor.submit(hash_frame, part, cols, options) for part, cols in jobs]
        chunks = [f.result() for f in futures]
    else:
        chunks = [hash_frame(part, cols, options) for part, cols in jobs]
    rows: list[np.ndarray] = []
    types: list[np.ndarray] = []
    digests: list[np.ndarray] = []
    done = 0
    for col, (codes, uniques) in zip(id_columns, factorized, strict=True):
        parts = chunks[done : done + -(-len(uniques) // slice_rows)]
        done += len(parts)
        valid = np.concatenate([c.columns[0].present for c in parts] or [np.zeros(0, bool)])
        unique_digests = np.zeros((len(uniques), DIGEST_LEN), dtype=np.uint8)
        unique_digests[valid] = np.frombuffer(
            b"".join(c.columns[0].digests for c in parts), dtype=np.uint8
        ).reshape(-1, DIGEST_LEN)
        present_rows = np.flatnonzero(valid[codes])
        rows.append(present_rows.astype(np.int64))
        types.append(np.full(len(present_rows), str(col.id_type), dtype=object))
        digests.append(unique_digests[codes[present_rows]])
    if not rows:
        return np.empty(0, np.int64), np.empty(0, dtype=object), np.empty((0, 32), np.uint8)
    return np.concatenate(rows), np.concatenate(types), np.concatenate(digests)


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
    parsed: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    executor: Executor | None = None,
) -> PartnerExposures:
    """``parsed`` comes from ``attribution_reference.parse_exposures``."""
    user_index, _ = pd.factorize(parsed["user_id"])  # dense user numbers (hashing, not sorting)
    id_row, id_type, id_digest = hashed_identifiers(parsed, id_columns, options, executor)
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
