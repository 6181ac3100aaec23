"""Stochastic batch acquisition (Kirsch et al., arXiv 2106.12059): sample the batch instead of taking the top-k.

Top-k of a per-item score picks many near-duplicates once the batch is large; drawing the ``k`` items without
replacement with probability ``∝ score^β`` keeps most of the score's benefit at the cost of a single pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, check_request, register_strategy, top_k
from loracle.uncertainty.scores import NONNEGATIVE_SCORES, SCORES, get_score

#: How scores become sampling weights (Kirsch et al. §3): ``score^β``, ``exp(β·score)`` or ``rank^(−β)``.
DISTRIBUTIONS = ("power", "softmax", "softrank")


class PowerStrategy(Strategy):
    """Stochastic batch acquisition by the Gumbel-top-k trick (Kirsch et al., arXiv 2106.12059 §3).

    With log-weights ``w_i`` (``β · log s_i`` for power sampling, ``β · s_i`` for softmax, ``−β · log r_i`` for
    soft-rank, where ``r_i`` is the 1-based rank of ``s_i``), the ``k`` largest of ``w_i + G_i`` with ``G_i`` i.i.d.
    standard Gumbel are a sample of ``k`` items without replacement with probability ``∝ exp(w_i)``
    (Kool et al., arXiv 1903.06059). ``β = 0`` is uniform random sampling; ``β = inf`` is top-k.

    Items of score 0 have power weight 0: they come only after every positive-score item, in random order. Scores
    returned are the items' uncertainty scores ``s`` (not the perturbed keys).

    Args:
        score: a name in :data:`loracle.uncertainty.scores.SCORES`; power sampling needs a non-negative one
            (``entropy``, ``bald``, ``least_confidence``), the other distributions take any.
        beta: the inverse temperature ``β >= 0`` (``float("inf")`` for top-k). Kirsch et al. use 1.
        distribution: ``"power"`` (default), ``"softmax"`` or ``"softrank"``.

    Raises:
        ValueError: for an unknown score or distribution, a negative ``beta``, or power sampling of a score that
            can be negative.
    """

    requires = frozenset({"probs"})
    mc_samples = 8

    def __init__(self, score: str = "entropy", beta: float = 1.0, distribution: str = "power") -> None:
        problems = []
        if score not in SCORES:
            problems.append(f"unknown uncertainty score {score!r}; valid scores: {sorted(SCORES)}")
        if distribution not in DISTRIBUTIONS:
            problems.append(f"unknown distribution {distribution!r}; valid: {list(DISTRIBUTIONS)}")
        elif distribution == "power" and score in SCORES and score not in NONNEGATIVE_SCORES:
            problems.append(f"power sampling needs a non-negative score; {score!r} is not (use one of "
                            f"{sorted(NONNEGATIVE_SCORES)}, or distribution 'softmax' or 'softrank')")
        if not (isinstance(beta, (int, float)) and not isinstance(beta, bool)) or math.isnan(beta) or beta < 0:
            problems.append(f"beta must be a number >= 0 (inf for top-k), got {beta!r}")
        if problems:
            raise ValueError("PowerStrategy: " + "; ".join(problems))
        self.score, self.beta, self.distribution = score, float(beta), distribution
        self.score_fn = get_score(score)
        self.name = f"power_{score}" if distribution == "power" else f"{distribution}_{score}"

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        """The per-item uncertainty scores ``s`` ``[N]`` (the sampling happens in :meth:`select`)."""
        return self.score_fn(signals.probs)

    def log_weights(self, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``[N]`` log sampling weights of the scores (up to a constant)."""
        if self.distribution == "power":
            if (s < 0).any():
                raise ValueError(f"power sampling got {int((s < 0).sum())} negative {self.score!r} scores")
            with np.errstate(divide="ignore"):
                return self.beta * np.log(s) if self.beta > 0 else np.zeros_like(s)
        if self.distribution == "softmax":
            return self.beta * s
        ranks = np.empty(len(s))
        ranks[top_k(s, len(s), rng)] = np.arange(1, len(s) + 1)  # ties ranked in a seeded random order
        return -self.beta * np.log(ranks)

    def select(self, signals: Signals, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_request(self, signals, k)
        s = self.scores(signals, rng).double().numpy()
        if math.isinf(self.beta):
            order = top_k(s, k, rng)
        else:
            keys = self.log_weights(s, rng) + rng.gumbel(size=len(s))
            order = top_k(keys, k, rng)
        return order, s[order]

    def __repr__(self) -> str:
        return f"PowerStrategy(score={self.score!r}, beta={self.beta}, distribution={self.distribution!r})"


register_strategy("power_entropy", PowerStrategy, score="entropy")
register_strategy("power_bald", PowerStrategy, score="bald")
