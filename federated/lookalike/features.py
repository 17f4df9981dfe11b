"""The partner's feature pipeline: its feature file as the integers the encrypted
aggregation uses and the floats the model is fit on.

Numeric columns are standardized over the partner's base (mean 0, standard
deviation 1), clipped to ``±clip`` and put on a grid of ``1/grid``; with
``bins > 0`` they are cut at their quantiles into one-hot bins instead, so a
numeric can act non-linearly. Categorical columns (``name:cat``) become one-hot
columns of their most frequent values plus an "other" column. Every output
feature therefore takes few values, and its integer form ``x_int = (x - offset)
* scale`` is a small non-negative integer (one-hot: 0 or 1; numeric: 0 ..
``2 * clip * grid``). The model is fit on ``x = offset + x_int / scale``: the
very values whose label-weighted sums ``T = Xᵀy`` the brand decrypts, so the
private fit is exact (DESIGN.md §7).

The pipeline is fit on the partner's whole feature file (no label is involved)
and saved with the package, so the same transform scores later data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from cleanroom.proto.errors import InvalidInput

ColumnKind = Literal["numeric", "categorical"]
MAX_CATEGORIES = 50  # one-hot columns per categorical, besides "other"
OTHER = "__other__"


def parse_feature_columns(spec: str, available: Sequence[str]) -> list[tuple[str, ColumnKind]]:
    """``"age,income,device:cat"``: the feature columns and their kinds (numeric unless
    ``:cat``). An empty spec means every column in ``available``, numeric."""
    if not spec.strip():
        return [(name, "numeric") for name in available]
    out: list[tuple[str, ColumnKind]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            raise InvalidInput(f"empty item in feature column spec {spec!r}")
        name, _, kind = item.rpartition(":") if item.endswith((":cat", ":num")) else (item, "", "")
        if name not in available:
            raise InvalidInput(
                f"the feature file has no column {name!r}; it has {', '.join(available)}"
            )
        out.append((name, "categorical" if kind == "cat" else "numeric"))
    if len({n for n, _ in out}) != len(out):
        raise InvalidInput(f"a feature column is named twice in {spec!r}")
    return out


@dataclass(frozen=True)
class FeatureColumn:
    """One input column and how it becomes output features."""

    name: str
    kind: ColumnKind
    mean: float = 0.0
    std: float = 1.0
    edges: tuple[float, ...] = ()  # binned numeric: the interior cut points
    categories: tuple[str, ...] = ()  # categorical: its one-hot values (then "other")

    def output_names(self) -> list[str]:
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in (*self.categories, OTHER)]
        if self.edges:
            return [f"{self.name}#bin{k}" for k in range(len(self.edges) + 1)]
        return [self.name]


@dataclass(frozen=True)
class IntFeatures:
    """Features as non-negative integers, and how to read them back as floats."""

    values: np.ndarray  # int32 (n, d), >= 0
    offset: np.ndarray  # float64 (d,)
    scale: np.ndarray  # int64 (d,), >= 1

    def floats(self) -> np.ndarray:
        """``offset + values / scale``: the matrix the model is fit on and scores."""
        return self.offset + self.values / self.scale

    def rows(self, index: np.ndarray) -> IntFeatures:
        return IntFeatures(self.values[index], self.offset, self.scale)


@dataclass(frozen=True)
class FeaturePipeline:
    """Fitted on the partner's base; the same transform for training and scoring."""

    columns: tuple[FeatureColumn, ...]
    grid: int = 64  # numeric steps per standard deviation
    clip: float = 8.0  # numeric values are clipped to this many standard deviations
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.names:
            names = tuple(n for c in self.columns for n in c.output_names())
            object.__setattr__(self, "names", names)

    @property
    def width(self) -> int:
        return len(self.names)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        columns: Sequence[tuple[str, ColumnKind]],
        *,
        bins: int = 0,
        grid: int = 64,
        clip: float = 8.0,
    ) -> FeaturePipeline:
        if not columns:
            raise InvalidInput("at least one feature column is needed")
        if bins < 0 or bins == 1 or bins > 100:
            raise InvalidInput(f"--bins is 0 (no binning) or 2 to 100, not {bins}")
        fitted: list[FeatureColumn] = []
        for name, kind in columns:
            if kind == "categorical":
                counts = _text(frame[name]).value_counts(sort=True)
                top = tuple(str(v) for v in counts.index[:MAX_CATEGORIES])
                fitted.append(FeatureColumn(name, "categorical", categories=top))
                continue
            values = numeric_column(frame[name], name)
            mean, std = float(values.mean()), float(values.std())
            if not std > 0:
                std = 1.0  # a constant column: every row is 0 after centring
            edges: tuple[float, ...] = ()
            if bins:
                cuts = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
                edges = tuple(float(e) for e in np.unique(cuts))
            fitted.append(FeatureColumn(name, "numeric", mean=mean, std=std, edges=edges))
        return cls(tuple(fitted), grid=grid, clip=clip)

    def encode(self, frame: pd.DataFrame) -> IntFeatures:
        """The integer features of every row of ``frame`` (bad values name their column)."""
        n = len(frame)
        blocks: list[np.ndarray] = []
        offsets: list[float] = []
        scales: list[int] = []
        for col in self.columns:
            if col.name not in frame.columns:
                raise InvalidInput(f"the feature file has no column {col.name!r}")
            if col.kind == "categorical":
                text = _text(frame[col.name]).to_numpy(dtype=object)
                which = np.full(n, len(col.categories), dtype=np.int64)  # "other"
                for k, category in enumerate(col.categories):
                    which[text == category] = k
                blocks.append(_one_hot(which, len(col.categories) + 1))
                offsets += [0.0] * (len(col.categories) + 1)
                scales += [1] * (len(col.categories) + 1)
                continue
            values = numeric_column(frame[col.name], col.name)
            if col.edges:
                which = np.searchsorted(np.asarray(col.edges), values, side="right")
                blocks.append(_one_hot(which, len(col.edges) + 1))
                offsets += [0.0] * (len(col.edges) + 1)
                scales += [1] * (len(col.edges) + 1)
                continue
            z = np.clip((values - col.mean) / col.std, -self.clip, self.clip)
            blocks.append(np.rint((z + self.clip) * self.grid).astype(np.int32)[:, None])
            offsets.append(-self.clip)
            scales.append(self.grid)
        return IntFeatures(
            values=np.hstack(blocks).astype(np.int32) if blocks else np.zeros((n, 0), np.int32),
            offset=np.asarray(offsets, dtype=np.float64),
            scale=np.asarray(scales, dtype=np.int64),
        )

    def max_value(self) -> int:
        """The largest integer any feature takes."""
        numeric = any(c.kind == "numeric" and not c.edges for c in self.columns)
        return math.ceil(2 * self.clip * self.grid) if numeric else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": self.grid,
            "clip": self.clip,
            "names": list(self.names),
            "columns": [asdict(c) for c in self.columns],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeaturePipeline:
        columns = tuple(
            FeatureColumn(
                name=c["name"],
                kind=c["kind"],
                mean=float(c["mean"]),
                std=float(c["std"]),
                edges=tuple(float(e) for e in c["edges"]),
                categories=tuple(str(v) for v in c["categories"]),
            )
            for c in data["columns"]
        )
        return cls(columns, grid=int(data["grid"]), clip=float(data["clip"]))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def numeric_column(series: pd.Series, name: str) -> np.ndarray:
    """A feature column as float64, or InvalidInput naming the column, row and value."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        text = None
    else:
        text = series.astype(str).str.strip()
        try:  # numpy parses well-formed numbers (and nan, inf) much faster than pandas
            values = np.asarray(text.to_numpy(dtype=object), dtype=np.float64)
        except ValueError:
            values = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        shown = str(series.iloc[row]) if text is None else text.iloc[row]
        raise InvalidInput(
            f"feature column {name!r}, row {row + 1}: {shown!r} is not a finite number"
            f" ({int(bad.sum())} such rows); mark a non-numeric column categorical as"
            f" {name}:cat"
        )
    return values


def _text(series: pd.Series) -> pd.Series:
    return series.fillna("").astype(str).str.strip()


def _one_hot(which: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(which), width), dtype=np.int32)
    out[np.arange(len(which)), which] = 1
    return out
