"""Paired bootstrap: hand-computable resampling distributions, seeding, the normal limit, errors."""

import numpy as np
import pytest

from loracle.evaluation.bootstrap import paired_bootstrap_ci


def test_constant_difference_and_two_seeds_by_hand():
    assert paired_bootstrap_ci([0.8, 0.7, 0.9], [0.7, 0.6, 0.8]) == pytest.approx((0.1, 0.1, 0.1))
    # differences (0, 2): resample means are 0, 1, 2 with probability 1/4, 1/2, 1/4 -> 95% interval [0, 2]
    assert paired_bootstrap_ci([1.0, 3.0], [1.0, 1.0]) == pytest.approx((1.0, 0.0, 2.0))
    # 50% interval: quantiles 0.25 and 0.75 of that distribution (linear interpolation between order statistics)
    mean, low, high = paired_bootstrap_ci([1.0, 3.0], [1.0, 1.0], level=0.5)
    assert mean == 1.0 and 0.0 <= low <= 1.0 <= high <= 2.0


def test_seeded_and_normal_limit():
    g = np.random.default_rng(0)
    a, b = g.normal(1.0, 1.0, 400), g.normal(0.0, 1.0, 400)
    first = paired_bootstrap_ci(a, b, seed=3)
    assert first == paired_bootstrap_ci(a, b, seed=3) == paired_bootstrap_ci(a, b, seed=np.random.default_rng(3))
    mean, low, high = first
    half = 1.96 * (a - b).std(ddof=1) / np.sqrt(400)  # normal-theory half-width
    assert mean == pytest.approx((a - b).mean()) and (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level must be in \\(0, 1\\)"):
        paired_bootstrap_ci([1.0], [1.0], level=95)
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([np.nan], [1.0])
