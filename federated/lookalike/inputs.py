"""The partner's inputs to a lookalike: its users (identifiers) and their features.

The users file names every user once (``--user-column``) with its
identifiers; the feature file has one row per user, keyed by the same user
column, in any order. Every user needs a feature row and every feature row a
user: a mismatch is an error that names a user, never a silent drop.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from cleanroom.audiences.identifiers import IdColumn, NormalizeOptions
from cleanroom.audiences.reader import ReadReport
from cleanroom.federated.lookalike.features import (
    FeaturePipeline,
    IntFeatures,
    parse_feature_columns,
)
from cleanroom.matching.partner import PartnerSet, read_partner_set
from cleanroom.proto.errors import InvalidInput


@dataclass(frozen=True)
class PartnerUsers:
    """Users in the users file's order, their identifiers, and their features."""

    user_ids: np.ndarray  # object (str), one per row of ``data``
    data: PartnerSet
    report: ReadReport
    pipeline: FeaturePipeline
    features: IntFeatures  # same rows as ``user_ids``


def unique_users(ids: np.ndarray, where: str) -> None:
    if len(ids) and (ids == "").any():
        row = int(np.flatnonzero(ids == "")[0])
        raise InvalidInput(f"{where}, row {row + 1}: the user id is empty")
    values, counts = np.unique(ids.astype(str), return_counts=True)
    if len(values) != len(ids):
        raise InvalidInput(f"{where}: user id {values[counts > 1][0]!r} appears more than once")


def read_features(path: Path, user_column: str, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The feature file as a frame: numbers typed by pyarrow's multi-threaded CSV reader,
    everything else (and the user column, and ``text_columns``: categoricals, whose
    codes such as ``007`` must stay as written) as text, empty cells as ``""``."""
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            keep_text = {user_column, *text_columns}
            table = pa_csv.read_csv(
                path,
                convert_options=pa_csv.ConvertOptions(
                    column_types={c: pa.string() for c in header if c in keep_text},
                    null_values=[],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            frame = table.to_pandas()
    except FileNotFoundError:
        raise InvalidInput(f"feature file {path} does not exist") from None
    except (ValueError, OSError, UnicodeDecodeError, pa.ArrowException) as exc:
        raise InvalidInput(f"feature file {path} cannot be read: {exc}") from exc
    if user_column not in frame.columns:
        raise InvalidInput(
            f"feature file {path} has no user column {user_column!r}; its columns are"
            f" {', '.join(map(str, frame.columns))}"
        )
    return frame


def load_partner_users(
    users_path: Path,
    features_path: Path,
    *,
    user_column: str,
    id_columns: Sequence[IdColumn],
    options: NormalizeOptions,
    feature_columns: str = "",
    bins: int = 0,
    on_rows: Callable[[int], None] | None = None,
    spill_dir: Path | None = None,
    memory_bytes: int | None = None,
) -> PartnerUsers:
    """Read both files, join them on the user column, fit the feature pipeline. The
    identifier columns go to files in ``spill_dir`` past ``memory_bytes``
    (``read_partner_set``)."""
    categorical = [
        item.strip().rpartition(":")[0]
        for item in feature_columns.split(",")
        if item.strip().endswith(":cat")
    ]
    frame = read_features(features_path, user_column, categorical)
    data, report, kept = read_partner_set(
        users_path,
        id_columns,
        options,
        keep=[user_column],
        on_rows=on_rows,
        spill_dir=spill_dir,
        memory_bytes=memory_bytes,
    )
    user_ids = np.asarray([str(u).strip() for u in kept[user_column]], dtype=object)
    unique_users(user_ids, f"users file {users_path}")
    keys = frame[user_column].astype(str).str.strip().to_numpy(dtype=object)
    unique_users(keys, f"feature file {features_path}")
    index = pd.Index(keys).get_indexer(pd.Index(user_ids))
    if (index < 0).any():
        missing = user_ids[int(np.flatnonzero(index < 0)[0])]
        raise InvalidInput(
            f"user {missing!r} of the users file has no row in feature file {features_path}"
            f" ({int((index < 0).sum())} such users)"
        )
    if len(keys) > len(user_ids):
        extra = np.setdiff1d(keys.astype(str), user_ids.astype(str))
        raise InvalidInput(
            f"feature file {features_path} has user {extra[0]!r}, who is not in the users"
            f" file {users_path} ({len(extra)} such users)"
        )
    available = [str(c) for c in frame.columns if c != user_column]
    columns = parse_feature_columns(feature_columns, available)
    # Fit and encode in the file's order, so an error names the file's row.
    pipeline = FeaturePipeline.fit(frame, columns, bins=bins)
    encoded = pipeline.encode(frame)
    return PartnerUsers(
        user_ids=user_ids,
        data=data,
        report=report,
        pipeline=pipeline,
        features=encoded.rows(index),
    )
