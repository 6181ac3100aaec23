"""STAR's dynamic uncertainty (arXiv 2403.01165, §3.2): move from the base model's to the fine-tuned model's score.

    score_t(x) = λ_t · norm(U_full,t(x)) + (1 − λ_t) · norm(U_base(x)),     λ_t = min(1, slope · (t + 1))

``norm`` is a min-max normalisation over the pool. Both terms are normalised here; the authors' code normalised only
``U_base`` and mixed in the raw ``U_full``, which makes the weight ``λ_t`` depend on the scale of the score.
``U_base`` is computed once per run with the adapter-free base model (see :mod:`loracle.active.loop` for what that
means for an encoder classifier).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Schedule = Callable[[int], float]


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise to ``[0, 1]`` over all entries: ``(x - min) / (max - min)``.

    A constant vector (``max == min``, including a single entry) carries no ranking information and maps to all
    zeros, so it neither helps nor hurts the other term of a mix. NaNs are not allowed.

    Args:
        x: ``[N]`` scores.

    Returns:
        ``[N]`` float64 in ``[0, 1]``.

    Raises:
        ValueError: if ``x`` contains NaN.
    """
    x = torch.as_tensor(x).double()
    if torch.isnan(x).any():
        raise ValueError(f"minmax: scores contain {int(torch.isnan(x).sum())} NaN value(s)")
    if x.numel() == 0:
        return x
    lo, hi = x.min(), x.max()
    if hi - lo <= 0:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def linear_schedule(slope: float = 0.1, offset: float = 1.0) -> Schedule:
    """``λ_t = clip(slope · (t + offset), 0, 1)``; the default is STAR's ``min(1, 0.1 (t + 1))``.

    Args:
        slope: increase of ``λ`` per round (> 0).
        offset: added to the round index before scaling.

    Raises:
        ValueError: if ``slope <= 0``.
    """
    if slope <= 0:
        raise ValueError(f"linear_schedule: slope must be > 0, got {slope}")

    def schedule(round_index: int) -> float:
        return float(min(1.0, max(0.0, slope * (round_index + offset))))

    schedule.__name__ = f"linear_schedule(slope={slope}, offset={offset})"
    return schedule


def dynamic_uncertainty(
    u_full: torch.Tensor,
    u_base: torch.Tensor,
    round_index: int,
    schedule: Schedule | float | None = None,
) -> torch.Tensor:
    """STAR's mix ``λ_t · minmax(u_full) + (1 − λ_t) · minmax(u_base)``.

    Args:
        u_full: ``[N]`` uncertainty of the current fine-tuned model on the pool.
        u_base: ``[N]`` uncertainty of the base model on the same items (same order).
        round_index: ``t`` (0 for the first query).
        schedule: a callable ``t -> λ_t``, a slope for :func:`linear_schedule`, or None for STAR's default (0.1).

    Returns:
        ``[N]`` float64 in ``[0, 1]``; larger = more uncertain.

    Raises:
        ValueError: on shape mismatch or a schedule value outside ``[0, 1]``.
    """
    u_full, u_base = torch.as_tensor(u_full), torch.as_tensor(u_base)
    if u_full.shape != u_base.shape or u_full.dim() != 1:
        raise ValueError(
            f"u_full and u_base must be [N] vectors of the same length, got {tuple(u_full.shape)} and "
            f"{tuple(u_base.shape)}"
        )
    if schedule is None:
        schedule = linear_schedule()
    elif isinstance(schedule, (int, float)):
        schedule = linear_schedule(float(schedule))
    lam = float(schedule(round_index))
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"schedule returned λ={lam} for round {round_index}; it must be in [0, 1]")
    return lam * minmax(u_full) + (1.0 - lam) * minmax(u_base)
