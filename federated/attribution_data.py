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
from cleanroom.federated.attribution import BrandConversions, PartnerExposures


def hashed_identifiers(
    frame: pd.DataFrame,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    executor: Executor | None = None,
    slice_rows: int = 50_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, type, digest) for every valid identifier, column by column.

    Slices of the frame are hashed in ``executor``'s workers when given
    (phone parsing is ~50 µs a number, so large logs want every core).
    """
    starts = list(range(0, len(frame), slice_rows))
    slices = [frame.iloc[i : i + slice_rows] for i in starts]
    if executor is not None and len(slices) > 1:
        chunks = list(
            executor.map(hash_frame, slices, [id_columns] * len(slices), [options] * len(slices))
        )
    else:
        chunks = [hash_frame(part, id_columns, options) for part in slices]
    rows: list[np.ndarray] = []
    types: list[np.ndarray] = []
    digests: list[bytes] = []
    for index, col in enumerate(id_columns):
        for start, chunk in zip(starts, chunks, strict=True):
            hashed = chunk.columns[index]
            present_rows = start + np.flatnonzero(hashed.present)
            rows.append(present_rows.astype(np.int64))
            types.append(np.full(len(present_rows), str(col.id_type), dtype=object))
            digests.append(hashed.digests)
    if not rows:
        return np.empty(0, np.int64), np.empty(0, dtype=object), np.empty((0, 32), np.uint8)
    digest_arr = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32)
    return np.concatenate(rows), np.concatenate(types), digest_arr


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
    _, user_index = np.unique(parsed["user_id"].to_numpy(dtype=str), return_inverse=True)
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
