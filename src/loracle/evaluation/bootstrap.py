"""Paired bootstrap confidence intervals for comparing two methods run on the same seeds.

Two strategies (or adapters) run with the same seeds share the seed's data split, initial set and initialisation,
so their per-seed results are paired: the interval is on the mean of the per-seed differences ``a_i − b_i``,
which removes the between-seed variance that unpaired intervals carry (Efron & Tibshirani 1993, ch. 13; the
percentile interval).

For the area under a learning curve per seed, use :func:`loracle.active.report.area_under_curve`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        n_resamples: int = 10_000, seed: int | np.random.Generator = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference ``mean(a − b)`` and its percentile bootstrap interval.

    Each resample draws ``n`` seed indices with replacement and takes the mean of ``a − b`` over them; the
    interval is the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of those means. With few seeds (3 to 5) the
    resampling distribution is coarse (``n = 3`` has 10 distinct resamples) and the percentile interval is
    narrower than its nominal level: read it as a check that the sign is stable, not as a calibrated 95%.

    Args:
        a: ``[n_seeds]`` results of method A (e.g. AULC per seed).
        b: ``[n_seeds]`` results of method B on the same seeds, in the same order.
        n_resamples: bootstrap resamples (>= 1).
        seed: int seed or ``numpy.random.Generator``.
        level: coverage in ``(0, 1)``.

    Returns:
        ``(mean_diff, low, high)`` as floats; ``low <= mean_diff <= high`` is typical but not guaranteed.

    Raises:
        ValueError: on different lengths, no seeds, NaN values or options out of range.
    """
    a, b = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    problems = []
    if a.shape != b.shape or len(a) == 0:
        problems.append(f"a and b must be non-empty and paired (same length), got {len(a)} and {len(b)}")
    elif not (np.isfinite(a).all() and np.isfinite(b).all()):
        problems.append("a and b must be finite (no NaN or inf)")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        problems.append(f"n_resamples must be an int >= 1, got {n_resamples!r}")
    if not 0.0 < level < 1.0:
        problems.append(f"level must be in (0, 1), got {level}")
    if problems:
        raise ValueError("paired_bootstrap_ci: " + "; ".join(problems))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    diff = a - b
    means = diff[rng.integers(0, len(diff), size=(n_resamples, len(diff)))].mean(1)  # (n_resamples,)
    low, high = np.quantile(means, [(1.0 - level) / 2, (1.0 + level) / 2])
    return float(diff.mean()), float(low), float(high)
