"""Uncertainty sampling: top-k by a label-free score of the current model's MC predictions."""

from __future__ import annotations

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy
from loracle.uncertainty.scores import get_score


def divide_out_pool_prior(probs: torch.Tensor) -> torch.Tensor:
    """``[N, S, C]`` predictions with the model's own class prior replaced by a uniform one.

    The prior is the pool-average prediction ``π = mean_{i,s} probs[i, s]``; each prediction becomes
    ``q ∝ p / π``, renormalised (Bayes' rule for a shift of the class prior, Saerens et al. 2002; the same
    correction as logit adjustment, arXiv 2007.07314, applied after training). A model that learnt a 9:1 prior
    has its boundary at ``p(minority) ≈ 0.5``; after the correction an item is most uncertain where the evidence
    alone is balanced, near ``p(minority) ≈ π(minority)``, which is where the minority items the model does not
    yet claim lie. With balanced classes ``π`` is near uniform and nothing changes.
    """
    prior = probs.double().mean((0, 1)).clamp_min(1e-12)  # (C,)
    q = probs.double() / prior
    return (q / q.sum(-1, keepdim=True)).to(probs.dtype)


class UncertaintyStrategy(Strategy):
    """Top-k by an uncertainty score of the current model's predictions ``probs [N, S, C]``.

    The scores are those of :mod:`loracle.uncertainty.scores`: predictive entropy, BALD (Houlsby et al.,
    arXiv 1112.5745), least confidence and (negated) margin.

    Args:
        score: ``"entropy"``, ``"bald"``, ``"least_confidence"`` or ``"margin"``.
        uniform_prior: score the predictions with the model's pool-average class prior divided out
            (:func:`divide_out_pool_prior`), so that on imbalanced data the rare classes' candidates count as
            uncertain; no change with balanced classes.

    Raises:
        ValueError: for an unknown score (lists the valid ones).
    """

    requires = frozenset({"probs"})
    mc_samples = 8

    def __init__(self, score: str = "entropy", uniform_prior: bool = False) -> None:
        if not isinstance(uniform_prior, bool):
            raise ValueError(f"UncertaintyStrategy: uniform_prior must be True or False, got {uniform_prior!r}")
        self.score, self.uniform_prior = score, uniform_prior
        self.score_fn = get_score(score)
        self.name = f"balanced_{score}" if uniform_prior else score

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        probs = divide_out_pool_prior(signals.probs) if self.uniform_prior else signals.probs
        return self.score_fn(probs)

    def __repr__(self) -> str:
        return f"UncertaintyStrategy(score={self.score!r}, uniform_prior={self.uniform_prior})"


register_strategy("entropy", UncertaintyStrategy, score="entropy")
register_strategy("least_confidence", UncertaintyStrategy, score="least_confidence")
register_strategy("margin", UncertaintyStrategy, score="margin")
register_strategy("balanced_margin", UncertaintyStrategy, score="margin", uniform_prior=True)
register_strategy("bald", UncertaintyStrategy, score="bald")
