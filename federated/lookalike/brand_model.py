"""A brand-owned logistic model that the partner scores without seeing it (HE scoring).

The model file (``cleanroom model upload --file model.json``)::

    {
      "features": [
        {"name": "visits_30d", "min": 0, "max": 30, "levels": 16},
        {"name": "app_user"}
      ],
      "weights": [0.08, 1.2],
      "intercept": -3.0
    }

Each feature names a column both sides share and how the partner quantizes
it: ``levels`` values evenly spaced over ``[min, max]`` (defaults: 2 levels
over ``[0, 1]``, a 0/1 feature), values outside clipped. The score of a user
is ``intercept + Σ_j w_j · x̂_j`` over the quantized values ``x̂`` — the
plaintext reference (:meth:`BrandModel.score`) that the private scoring must
rank the same way. The feature list and quantization are shown to the
partner (it quantizes its own columns); the weights and the intercept never
leave the brand node in the clear.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from cleanroom.proto.errors import InvalidInput

SCORE_BITS = 32  # |fixed-point score| < 2^SCORE_BITS (the scale only fixes the ranking's grain)
MAX_LEVELS = 64
MAX_MODEL_FEATURES = 1024
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class ModelFeature:
    """One input of a brand model: a shared column name and its quantization."""

    name: str
    min: float = 0.0
    max: float = 1.0
    levels: int = 2

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > MAX_NAME:
            raise InvalidInput(f"a feature name has 1..{MAX_NAME} characters, not {self.name!r}")
        if not (math.isfinite(self.min) and math.isfinite(self.max) and self.min < self.max):
            raise InvalidInput(
                f"feature {self.name!r}: min and max are finite with min < max,"
                f" not {self.min}, {self.max}"
            )
        if not 2 <= self.levels <= MAX_LEVELS:
            raise InvalidInput(
                f"feature {self.name!r}: levels is 2..{MAX_LEVELS}, not {self.levels}"
            )

    @property
    def step(self) -> float:
        return (self.max - self.min) / (self.levels - 1)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Level codes ``0..levels-1`` of ``values`` (clipped into ``[min, max]``)."""
        clipped = np.clip(np.asarray(values, dtype=np.float64), self.min, self.max)
        return np.rint((clipped - self.min) / self.step).astype(np.uint16)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "min": self.min, "max": self.max, "levels": self.levels}


@dataclass(frozen=True, slots=True)
class BrandModel:
    features: tuple[ModelFeature, ...]
    weights: tuple[float, ...]
    intercept: float

    def __post_init__(self) -> None:
        if not 1 <= len(self.features) <= MAX_MODEL_FEATURES:
            raise InvalidInput(f"a model has 1..{MAX_MODEL_FEATURES} features")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise InvalidInput(f"the model names feature {twice!r} twice")
        if len(self.weights) != len(self.features):
            raise InvalidInput(
                f"the model has {len(self.features)} features and {len(self.weights)} weights"
            )
        if not all(math.isfinite(w) for w in (*self.weights, self.intercept)):
            raise InvalidInput("the model's weights and intercept are finite numbers")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @classmethod
    def parse(cls, text: str | bytes, source: str = "the model file") -> BrandModel:
        """A model from its JSON (see the module docstring); InvalidInput says what is wrong."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidInput(f"{source} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput(f"{source} is a JSON object with features, weights, intercept")
        unknown = set(data) - {"features", "weights", "intercept", "format", "name"}
        if unknown:
            raise InvalidInput(f"{source} has unknown fields: {', '.join(sorted(unknown))}")
        try:
            features = tuple(
                ModelFeature(name=f)
                if isinstance(f, str)
                else ModelFeature(
                    name=str(f["name"]),
                    min=float(f.get("min", 0.0)),
                    max=float(f.get("max", 1.0)),
                    levels=_int(f.get("levels", 2), f"feature {f.get('name')!r} levels"),
                )
                for f in data["features"]
            )
            weights = tuple(float(w) for w in data["weights"])
            intercept = float(data.get("intercept", 0.0))
        except KeyError as exc:
            raise InvalidInput(f"{source} lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"{source} is malformed: {exc}") from exc
        return cls(features, weights, intercept)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": [f.to_json() for f in self.features],
            "weights": list(self.weights),
            "intercept": self.intercept,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    # ----------------------------------------------------------- scoring

    def quantize(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """``(users, d)`` level codes from the partner's columns (by feature name)."""
        return np.stack([f.quantize(columns[f.name]) for f in self.features], axis=1)

    def score(self, codes: np.ndarray) -> np.ndarray:
        """The plaintext reference: ``intercept + Σ w_j x̂_j`` per row of level codes."""
        w = np.asarray(self.weights)
        lo = np.asarray([f.min for f in self.features])
        step = np.asarray([f.step for f in self.features])
        return self.intercept + (lo + codes * step) @ w

    def fixed_point(self) -> tuple[list[int], int]:
        """Integer per-level weights ``W_j`` and constant ``C``: ``C + Σ W_j q_j`` ranks the
        users as :meth:`score` does, and its magnitude stays below ``2^SCORE_BITS``.

        ``score = (intercept + Σ w_j min_j) + Σ (w_j step_j) q_j``: one positive scale
        maps the largest possible magnitude to ``2^(SCORE_BITS - 1)``, leaving room for
        rounding. A positive scale keeps the order, which is all the tiers need."""
        per_level = [w * f.step for w, f in zip(self.weights, self.features, strict=True)]
        constant = self.intercept + sum(
            w * f.min for w, f in zip(self.weights, self.features, strict=True)
        )
        bound = abs(constant) + sum(
            abs(v) * (f.levels - 1) for v, f in zip(per_level, self.features, strict=True)
        )
        unit = 2.0 ** (SCORE_BITS - 1) / bound if bound > 0 else 1.0
        return [round(v * unit) for v in per_level], round(constant * unit)


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidInput(f"{what} is a whole number, not {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A model as the brand node stores it, under a name unique within the tenant."""

    model_id: str
    tenant_id: str
    name: str
    model: BrandModel
    created_at: datetime

    def public_json(self, *, replaced: bool = False) -> dict[str, Any]:
        """What anyone but the brand node sees of the model: no weight, no intercept."""
        return {
            "model_id": self.model_id,
            "name": self.name,
            "features": [f.to_json() for f in self.model.features],
            "created_at": self.created_at.isoformat(),
            "replaced": replaced,
        }
