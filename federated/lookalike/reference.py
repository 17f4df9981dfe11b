"""The plaintext counterpart of a lookalike job, for checks and baselines only.

What a trusted third party holding both files would compute: each partner
user's seed label by a plain join of identifiers (``pooled_labels``), and
from it the very sums ``T = Xᵀy`` and ``Σy`` the private job releases to the
partner (``pooled_sums``). The demo, the tests and the benchmark compare the
private job with these; nothing in the protocol uses them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import read_hashed_chunks
from cleanroom.federated.lookalike.features import IntFeatures
from cleanroom.matching.bulk import whole_array
from cleanroom.matching.partner import PartnerSet


def brand_labels(
    crm_path: Path,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    label_column: str,
    positive: Sequence[str],
) -> dict[tuple[str, bytes], int]:
    """Per distinct (type, digest) of the brand's file: 1 if a seed record holds it."""
    wanted = {p.strip().lower() for p in positive}
    labels: dict[tuple[str, bytes], int] = {}
    for chunk in read_hashed_chunks(crm_path, id_columns, options, keep=[label_column]):
        seed = np.asarray([str(v).strip().lower() in wanted for v in chunk.kept[label_column]])
        for spec, col in zip(id_columns, chunk.columns, strict=True):
            rows = np.flatnonzero(col.present)
            for k, row in enumerate(rows.tolist()):
                key = (str(spec.id_type), col.digests[k * 32 : (k + 1) * 32])
                labels[key] = max(labels.get(key, 0), int(seed[row]))
    return labels


def pooled_labels(
    data: PartnerSet, labels: dict[tuple[str, bytes], int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per partner user: its seed label (any identifier of a seed), and matched at all."""
    y = np.zeros(data.row_count, dtype=np.uint8)
    matched = np.zeros(data.row_count, dtype=bool)
    for column in data.columns:
        for k, row in enumerate(whole_array(column.rows).tolist()):
            label = labels.get((column.id_type, column.digests[k * 32 : (k + 1) * 32]))
            if label is not None:
                matched[row] = True
                y[row] |= label
    return y, matched


def pooled_sums(features: IntFeatures, y: np.ndarray, rows: np.ndarray) -> tuple[int, ...]:
    """``T_int = Σ y_i x_int_i`` per feature and ``Σy`` over ``rows``: the integers the
    partner unmasks in a job without label-DP."""
    chosen = np.asarray(rows)
    labels = y[chosen].astype(np.int64)
    t = labels @ features.values[chosen].astype(np.int64)
    return (*(int(v) for v in t), int(labels.sum()))
