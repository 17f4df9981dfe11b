"""Differential-privacy noise for the attribution aggregates (added by the partner)."""

from __future__ import annotations

import math

import numpy as np

from cleanroom.federated.attribution.messages import VALUE_SCALE, DpParams


def noise_scale(dp: DpParams, sensitivity: float) -> float:
    """Laplace b or Gaussian sigma for a query family of the given sensitivity."""
    if dp.mechanism == "off" or dp.epsilon <= 0:
        return 0.0
    if dp.mechanism == "laplace":
        return sensitivity / dp.epsilon
    if dp.mechanism == "gaussian":
        if not 0 < dp.delta < 1:
            raise ValueError("the Gaussian mechanism needs 0 < delta < 1")
        return sensitivity * math.sqrt(2 * math.log(1.25 / dp.delta)) / dp.epsilon
    raise ValueError(f"unknown DP mechanism {dp.mechanism!r}")


# Query families share the budget equally: per-group conversions, converters,
# revenue, attributed conversions, attributed revenue.
QUERY_FAMILIES = 5


def family_dp(dp: DpParams) -> DpParams:
    if dp.mechanism == "off":
        return dp
    return DpParams(
        dp.mechanism, dp.epsilon / QUERY_FAMILIES, dp.delta / QUERY_FAMILIES, dp.value_cap
    )


class Noise:
    """Noise for counts (sensitivity 1) and scaled amounts (sensitivity = cap)."""

    def __init__(self, dp: DpParams, rng: np.random.Generator) -> None:
        self.dp = dp
        self.rng = rng
        self.count_scale = noise_scale(dp, 1.0)
        self.amount_scale = noise_scale(dp, dp.value_cap * VALUE_SCALE)

    def _draw(self, scale: float) -> float:
        if scale == 0:
            return 0.0
        if self.dp.mechanism == "laplace":
            return float(self.rng.laplace(0.0, scale))
        return float(self.rng.normal(0.0, scale))

    def count(self, value: int) -> int:
        return max(0, round(value + self._draw(self.count_scale)))

    def amount(self) -> int:
        return round(self._draw(self.amount_scale))
