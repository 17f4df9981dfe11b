"""Label differential privacy for the lookalike's label sums (added by the brand).

Neighbouring inputs differ in one person's label. Flipping ``y_i`` moves the
released vector ``(T, Σy) = (Xᵀy, Σy)`` by ``(x_i, 1)``, so its L2
sensitivity is ``sqrt(B² + 1)`` with ``B`` the largest row norm ``‖x_i‖₂`` of
the partner's features (which the partner declares; features are not what
label-DP protects). The brand cannot check the declaration: a partner that
understated its row norm would get less noise than the brand's ε promises
its labels, so the guarantee assumes an honest declaration, as every protocol
here assumes semi-honest parties. The brand adds Gaussian noise of scale ``sigma`` to every
coordinate after decrypting, before anything leaves it, and ``sigma`` is the
smallest scale for which the Gaussian mechanism is ``(ε, δ)``-DP — the
analytic calibration of Balle and Wang (ICML 2018, Theorem 8), which holds
for every ε, not only ε < 1 like the classic ``sqrt(2 ln(1.25/δ))/ε``.

The sums are integers on the partner's grid (``T_int = scale · T``), so the
brand adds ``round(scale · sigma · Z)``: rounding a noisy value is
post-processing and costs no privacy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cleanroom.proto.errors import InvalidInput

MAX_EPSILON = 100.0


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The smallest δ for which ``N(0, sigma²)`` noise on a query of this L2 sensitivity
    is (ε, δ)-DP (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2 * sigma)
    b = epsilon * sigma / sensitivity
    tail = _phi(-a - b)
    return _phi(a - b) - (math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0)


def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest sigma with ``gaussian_delta(sigma) <= δ``, to a relative 1e-12 (bisection)."""
    if not (math.isfinite(epsilon) and 0 < epsilon <= MAX_EPSILON):
        raise InvalidInput(f"epsilon must be in (0, {MAX_EPSILON:g}], not {epsilon}")
    if not 0 < delta < 1:
        raise InvalidInput(f"delta must be in (0, 1), not {delta}")
    if not (math.isfinite(sensitivity) and sensitivity > 0):
        raise InvalidInput(f"the sensitivity must be a finite number > 0, not {sensitivity}")
    low, high = 1e-12 * sensitivity, sensitivity
    while gaussian_delta(high, epsilon, sensitivity) > delta:
        high *= 2
    while high - low > 1e-12 * high:
        mid = (low + high) / 2
        if gaussian_delta(mid, epsilon, sensitivity) > delta:
            low = mid
        else:
            high = mid
    return high


def label_sensitivity(row_norm: float) -> float:
    """L2 sensitivity of ``(Xᵀy, Σy)`` to one label, rows of norm at most ``row_norm``."""
    return math.sqrt(row_norm * row_norm + 1.0)


def noisy_sums(
    values: Sequence[int], scales: Sequence[int], sigma: float, rng: np.random.Generator
) -> list[int]:
    """``values`` (``d`` integer sums ``T_int``, then ``Σy``) plus rounded Gaussian noise of
    scale ``sigma`` in the float domain: ``scale_j · sigma`` on ``T_int_j``, ``sigma`` on ``Σy``."""
    if len(values) != len(scales) + 1:
        raise ValueError(f"{len(values)} sums for {len(scales)} feature scales")
    factors = np.asarray([*scales, 1], dtype=np.float64) * sigma
    noise = np.rint(rng.normal(0.0, 1.0, len(values)) * factors).astype(np.int64)
    return [int(v) + int(z) for v, z in zip(values, noise.tolist(), strict=True)]
