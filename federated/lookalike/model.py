"""The exact L2-regularized logistic regression from the partner's features and
the label sums alone (DESIGN.md §7).

The loss ``L(w, b) = Σ_i log(1 + exp(x_i·w + b)) - (w·T + b·Σy) + λ/2 ‖w‖²``
needs the labels only through ``T = Xᵀy`` and ``Σy``, so whoever holds ``X``
and those ``d + 1`` numbers minimizes the very loss a centralized fit on the
pooled data minimizes. Newton's method with a backtracking line search, to a
gradient of ``tol``: no Taylor approximation of the logistic, no batches.
``λ = 1/C`` in scikit-learn's terms; the intercept is not penalized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from cleanroom.proto.errors import InvalidInput


@dataclass(frozen=True)
class LogisticModel:
    weights: np.ndarray  # float64 (d,)
    intercept: float
    l2: float
    iterations: int

    def scores(self, x: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """``x·w + b`` per row (the log-odds; ranking needs no sigmoid)."""
        out = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), chunk):
            out[start : start + chunk] = x[start : start + chunk] @ self.weights + self.intercept
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "weights": [float(v) for v in self.weights],
            "intercept": self.intercept,
            "l2": self.l2,
            "iterations": self.iterations,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogisticModel:
        return cls(
            weights=np.asarray(data["weights"], dtype=np.float64),
            intercept=float(data["intercept"]),
            l2=float(data["l2"]),
            iterations=int(data["iterations"]),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def _log1pexp(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def fit_logistic(
    x: np.ndarray,
    xty: np.ndarray,
    sum_y: float,
    *,
    l2: float = 1.0,
    tol: float = 1e-9,
    max_iter: int = 100,
) -> LogisticModel:
    """Minimize the loss above over ``(w, b)`` given ``X``, ``T = Xᵀy`` and ``Σy``."""
    n, d = x.shape
    if xty.shape != (d,):
        raise InvalidInput(f"T has {xty.shape} entries for {d} features")
    if not l2 > 0:
        raise InvalidInput(f"the L2 penalty must be positive, not {l2}")
    if not 0 < sum_y < n:
        raise InvalidInput(
            f"{sum_y:g} seeds among {n} training rows: a model needs seeds and non-seeds"
        )
    # One column of ones for the intercept; the penalty skips it.
    theta = np.zeros(d + 1)
    theta[d] = np.log(sum_y / (n - sum_y))
    target = np.concatenate([xty, [sum_y]])
    penalty = np.full(d + 1, l2)
    penalty[d] = 0.0

    def design(v: np.ndarray) -> np.ndarray:
        return x @ v[:d] + v[d]

    def loss(v: np.ndarray) -> float:
        return float(_log1pexp(design(v)).sum() - v @ target + 0.5 * (penalty * v * v).sum())

    current = loss(theta)
    for iteration in range(1, max_iter + 1):
        p = _sigmoid(design(theta))
        grad = np.concatenate([x.T @ p, [p.sum()]]) - target + penalty * theta
        if float(np.abs(grad).max()) <= tol * max(1.0, float(np.abs(target).max())):
            return LogisticModel(theta[:d].copy(), float(theta[d]), l2, iteration - 1)
        weight = p * (1 - p)
        xw = x * weight[:, None]
        hessian = np.empty((d + 1, d + 1))
        hessian[:d, :d] = x.T @ xw
        hessian[:d, d] = hessian[d, :d] = xw.sum(axis=0)
        hessian[d, d] = weight.sum()
        hessian[np.diag_indices(d + 1)] += penalty
        step = np.linalg.solve(hessian, grad)
        scale = 1.0
        while True:
            candidate = theta - scale * step
            value = loss(candidate)
            if value <= current - 1e-4 * scale * float(grad @ step) or scale < 1e-10:
                break
            scale /= 2
        theta, current = candidate, value
    return LogisticModel(theta[:d].copy(), float(theta[d]), l2, max_iter)
