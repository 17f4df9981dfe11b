"""Label-DP for the lookalike sums: the calibration, the noise's scale, and a private run."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest

from cleanroom.federated.lookalike.messages import DecryptedSums, LookalikeMetrics
from cleanroom.federated.lookalike.privacy import (
    analytic_gaussian_sigma,
    gaussian_delta,
    label_sensitivity,
    noisy_sums,
)
from cleanroom.proto.errors import InvalidInput
from tests.helpers import converse
from tests.test_lookalike_protocol import brand_identifiers, make_pair
from tests.test_lookalike_protocol import keys as keys
from tests.test_lookalike_protocol import users as users
from tests.test_lookalike_protocol import world as world


def hockey_stick_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """delta(epsilon) of the Gaussian mechanism from its privacy-loss distribution,
    integrated numerically: an independent check of the closed form. The loss of
    N(0, s²) against N(D, s²) is N(mu, 2 mu) with mu = D²/(2 s²), and
    delta = E[max(0, 1 - exp(epsilon - L))]."""
    mu = sensitivity**2 / (2 * sigma**2)
    sd = math.sqrt(2 * mu)
    grid = np.linspace(mu - 40 * sd, mu + 40 * sd, 2_000_001)
    density = np.exp(-((grid - mu) ** 2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi))
    integrand = np.maximum(0.0, 1.0 - np.exp(epsilon - grid)) * density
    return float(np.trapezoid(integrand, grid))


@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-6), (1.0, 1e-6), (4.0, 1e-5)])
def test_the_analytic_sigma_is_the_smallest_that_holds(epsilon: float, delta: float) -> None:
    sigma = analytic_gaussian_sigma(epsilon, delta, 1.0)
    assert gaussian_delta(sigma, epsilon, 1.0) <= delta
    assert gaussian_delta(sigma * 0.999, epsilon, 1.0) > delta
    assert hockey_stick_delta(sigma, epsilon, 1.0) == pytest.approx(delta, rel=1e-3)
    # Tighter than the classic bound, and scales linearly with the sensitivity.
    assert sigma < math.sqrt(2 * math.log(1.25 / delta)) / epsilon
    assert analytic_gaussian_sigma(epsilon, delta, 7.5) == pytest.approx(7.5 * sigma, rel=1e-9)


def test_bad_privacy_parameters_are_refused() -> None:
    with pytest.raises(InvalidInput, match="epsilon"):
        analytic_gaussian_sigma(0.0, 1e-6, 1.0)
    with pytest.raises(InvalidInput, match="delta"):
        analytic_gaussian_sigma(1.0, 0.0, 1.0)
    with pytest.raises(InvalidInput, match="sensitivity"):
        analytic_gaussian_sigma(1.0, 1e-6, math.inf)


def test_the_noise_has_the_stated_scale() -> None:
    sigma = analytic_gaussian_sigma(1.0, 1e-6, label_sensitivity(3.0))
    scales = [1, 64, 64]
    rng = np.random.default_rng(20261201)
    draws = np.array([noisy_sums([0, 0, 0, 0], scales, sigma, rng) for _ in range(20_000)])
    for column, scale in enumerate([*scales, 1]):
        z = draws[:, column] / (scale * sigma)
        # 20,000 draws: the standard error of the sd is 0.5 %, of the mean 0.7 % of sigma.
        assert z.std() == pytest.approx(1.0, abs=0.025), column
        assert abs(z.mean()) < 0.03, column


def test_a_private_run_adds_the_noise_and_withholds_the_metrics(
    world: Any,
    users: Any,
    keys: tuple[Any, Any],
) -> None:
    _labels, points, flags = brand_identifiers(world.crm_path)
    exact_brand, exact_partner = make_pair(users, points, flags, keys, seed=21)
    asyncio.run(converse(exact_brand, exact_partner))
    brand, partner = make_pair(users, points, flags, keys, seed=21, epsilon=1.0)
    transcript = asyncio.run(converse(brand, partner))
    assert brand.sigma == pytest.approx(
        analytic_gaussian_sigma(1.0, 1e-6, label_sensitivity(partner.hello().row_norm))
    )
    # Same seed, same split: the exact sums of the first run, plus noise on the scale stated.
    assert exact_partner.train_users.tolist() == partner.train_users.tolist()
    noise = np.asarray(partner.label_sums) - np.asarray(exact_partner.label_sums)
    factors = np.asarray([*users.features.scale, 1]) * brand.sigma
    z = noise / factors
    assert np.abs(z).max() < 6 and 0.5 < z.std() < 1.6  # d + 1 = 26 standard normals
    # The brand keeps its metrics; the partner gets none of them.
    sent = [m for side, m in transcript if side == "brand" and isinstance(m, LookalikeMetrics)]
    assert sent == [brand.metrics.withheld()] if brand.metrics else False
    assert sent[0].auc is None and sent[0].holdout_seeds is None
    assert brand.metrics is not None and exact_brand.metrics is not None
    assert brand.metrics.auc is not None and exact_brand.metrics.auc is not None
    # About 360 training seeds: at epsilon 1 the noise drowns most of the signal (the
    # loss is reported; bench/lookalike.py reports it at scale). With little noise the
    # model is the exact one's again: the noise is the only difference.
    print(f"label-DP eps=1: AUC {brand.metrics.auc:.4f}, exact {exact_brand.metrics.auc:.4f}")
    weak_brand, weak_partner = make_pair(users, points, flags, keys, seed=21, epsilon=50.0)
    asyncio.run(converse(weak_brand, weak_partner))
    assert weak_brand.metrics is not None and weak_brand.metrics.auc is not None
    assert weak_brand.metrics.auc == pytest.approx(exact_brand.metrics.auc, abs=0.03)
    decrypted = [m for side, m in transcript if isinstance(m, DecryptedSums)]
    assert len(decrypted) == 1
