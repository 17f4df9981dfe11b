"""The partner's package on disk: its own user ids per tier, every score, the model.

Files are written into a staging directory inside ``--out`` while the job
runs (``PackageWriter.write``, called by the state machine once the brand
sent its metrics) and moved into place only when the brand node confirms
the package (``commit``); a job that fails leaves nothing behind
(``abort``). ``--out`` then holds:

``top_<p>pct.csv`` / ``.parquet``  the users of each nested tier, best first
                                   (``user_id, rank, score``);
``scores.parquet``                 ``user_id, score`` for the whole scored base;
``model.json``                     the feature pipeline, the weights, the tiers
                                   and metrics: everything to score new users;
``manifest.json``                  what ``cleanroom partner lookalike --json``
                                   prints, so a repeated submission can too.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cleanroom.federated.lookalike.features import FeaturePipeline
from cleanroom.federated.lookalike.messages import LookalikeMetrics, LookalikeMode
from cleanroom.federated.lookalike.partner import LookalikePackage
from cleanroom.federated.lookalike.scoring import ScoredTiers
from cleanroom.proto.errors import InvalidInput

MANIFEST = "manifest.json"


def tier_name(percent: float) -> str:
    return f"top_{percent:g}pct"


def _percent_key(percent: float) -> str:
    return f"{percent:g}"


@dataclass(frozen=True)
class PackageFiles:
    tiers: tuple[tuple[float, int, Path, Path], ...]  # percent, size, csv, parquet
    scores: Path
    model: Path


class PackageWriter:
    """Writes one job's package under ``out_dir`` (see the module docstring)."""

    def __init__(
        self,
        out_dir: Path,
        user_ids: np.ndarray,
        pipeline: FeaturePipeline,
        mode: LookalikeMode,
        epsilon: float,
    ) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InvalidInput(f"--out {self.out_dir} exists and is not a directory")
        self.user_ids = user_ids
        self.pipeline = pipeline
        self.mode = mode
        self.epsilon = epsilon
        self._staging: Path | None = None
        self.package: LookalikePackage | None = None
        self.files: PackageFiles | None = None

    def write(self, package: LookalikePackage) -> PackageFiles:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        staging = self.out_dir / f".staging-{secrets.token_hex(6)}"
        staging.mkdir()
        self._staging = staging
        self.package = package
        ids = self.user_ids
        tiers = []
        for percent, size in zip(package.tiers, package.tier_sizes, strict=True):
            rows = package.ranked[:size]
            table = pa.table(
                {
                    "user_id": pa.array(ids[rows].astype(str), pa.string()),
                    "rank": pa.array(np.arange(1, size + 1, dtype=np.int64)),
                    "score": pa.array(package.scores[rows]),
                }
            )
            name = tier_name(percent)
            pa_csv.write_csv(table, staging / f"{name}.csv")
            pq.write_table(table, staging / f"{name}.parquet")
            tiers.append((percent, size, f"{name}.csv", f"{name}.parquet"))
        scored = package.ranked
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array(ids[scored].astype(str), pa.string()),
                    "score": pa.array(package.scores[scored]),
                }
            ),
            staging / "scores.parquet",
        )
        (staging / "model.json").write_text(json.dumps(self._model(package, ""), indent=2))
        self.files = PackageFiles(
            tiers=tuple(
                (p, n, self.out_dir / csv, self.out_dir / parquet) for p, n, csv, parquet in tiers
            ),
            scores=self.out_dir / "scores.parquet",
            model=self.out_dir / "model.json",
        )
        return self.files

    def _model(self, package: LookalikePackage, package_id: str) -> dict[str, Any]:
        return {
            "format": "cleanroom.lookalike.model/1",
            "package_id": package_id,
            "mode": self.mode.value,
            "pipeline": self.pipeline.to_json(),
            "model": package.model.to_json(),
            "features": list(self.pipeline.names),
            "tiers": list(package.tiers),
            "metrics": metrics_json(package.metrics, package.tiers),
            "epsilon": self.epsilon,
        }

    def commit(self, package_id: str, offered: int) -> dict[str, Any]:
        """Move the staged files into ``out_dir``; returns the manifest (the CLI's JSON)."""
        if self._staging is None or self.package is None or self.files is None:
            raise InvalidInput("no package was written")
        staging, package = self._staging, self.package
        (staging / "model.json").write_text(json.dumps(self._model(package, package_id), indent=2))
        _move_into(staging, self.out_dir)
        self._staging = None
        manifest = {
            "package_id": package_id,
            "mode": self.mode.value,
            "offered": offered,
            "tiers": [
                {"percent": p, "size": n, "path": str(csv), "parquet": str(parquet)}
                for p, n, csv, parquet in self.files.tiers
            ],
            "metrics": metrics_json(package.metrics, package.tiers),
            "epsilon": self.epsilon,
            "paths": {"scores": str(self.files.scores), "model": str(self.files.model)},
            "scored": len(package.ranked),
            "excluded": len(package.excluded),
            "train_rows": package.train_rows,
            "holdout_rows": package.holdout_rows,
        }
        _write_atomically(self.out_dir / MANIFEST, json.dumps(manifest, indent=2))
        return manifest

    def abort(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


class ScoredTiersWriter:
    """Writes an HE-scoring job's tiers under ``out_dir``, staged like ``PackageWriter``:
    ``top_<p>pct.csv`` / ``.parquet`` hold the tier's user ids (``user_id, tier``: the
    smallest tier holding the user, best tier first; the partner never sees a score, so
    there is no rank within a tier) and ``manifest.json`` what ``partner score --json``
    prints."""

    def __init__(self, out_dir: Path, user_ids: np.ndarray, model: str) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InvalidInput(f"--out {self.out_dir} exists and is not a directory")
        self.user_ids = user_ids
        self.model = model
        self._staging: Path | None = None
        self._tiers: list[dict[str, Any]] = []

    def write(self, result: ScoredTiers) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        staging = self.out_dir / f".staging-{secrets.token_hex(6)}"
        staging.mkdir()
        self._staging = staging
        percent_of = np.asarray([0.0, *result.tiers])
        self._tiers = []
        for t, (percent, size) in enumerate(zip(result.tiers, result.tier_sizes, strict=True)):
            inside = (result.tier_of_user >= 1) & (result.tier_of_user <= t + 1)
            rows = np.flatnonzero(inside)
            rows = rows[np.argsort(result.tier_of_user[rows], kind="stable")]
            table = pa.table(
                {
                    "user_id": pa.array(self.user_ids[rows].astype(str), pa.string()),
                    "tier": pa.array(percent_of[result.tier_of_user[rows]]),
                }
            )
            name = tier_name(percent)
            pa_csv.write_csv(table, staging / f"{name}.csv")
            pq.write_table(table, staging / f"{name}.parquet")
            self._tiers.append(
                {
                    "percent": percent,
                    "size": size,
                    "path": str(self.out_dir / f"{name}.csv"),
                    "parquet": str(self.out_dir / f"{name}.parquet"),
                }
            )

    def commit(self, package_id: str, users: int) -> dict[str, Any]:
        if self._staging is None:
            raise InvalidInput("no package was written")
        _move_into(self._staging, self.out_dir)
        self._staging = None
        manifest = {
            "package_id": package_id,
            "mode": "he-score",
            "model": self.model,
            "scored": users,
            "tiers": self._tiers,
        }
        _write_atomically(self.out_dir / MANIFEST, json.dumps(manifest, indent=2))
        return manifest

    def abort(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def _move_into(staging: Path, out_dir: Path) -> None:
    for item in sorted(staging.iterdir()):
        os.replace(item, out_dir / item.name)
    staging.rmdir()


def metrics_json(metrics: LookalikeMetrics | None, tiers: tuple[float, ...]) -> dict[str, Any]:
    """``{"auc", "recall_at": {"1": ..}, "lift_at": {"1": ..}}`` (None where unknown or
    withheld by the brand under label-DP)."""
    if metrics is None:
        blank = dict.fromkeys(_percent_key(t) for t in tiers)
        return {"auc": None, "recall_at": blank, "lift_at": dict(blank), "withheld": False}
    return {
        "auc": metrics.auc,
        "recall_at": {_percent_key(t): r for t, r in zip(tiers, metrics.recall, strict=True)},
        "lift_at": {_percent_key(t): v for t, v in zip(tiers, metrics.lift, strict=True)},
        "holdout_rows": metrics.holdout_rows,
        "holdout_seeds": metrics.holdout_seeds,
        "withheld": metrics.holdout_seeds is None,
    }


def read_manifest(out_dir: Path, package_id: str) -> dict[str, Any] | None:
    """The manifest ``out_dir`` holds for ``package_id``, if it is that package's."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("package_id") == package_id else None


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
