"""Uncertainty sampling: top-k by a label-free score of the current model's MC predictions."""

from __future__ import annotations

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy
from loracle.uncertainty.scores import get_score


class UncertaintyStrategy(Strategy):
    """Top-k by an uncertainty score of the current model's predictions ``probs [N, S, C]``.

    The scores are those of :mod:`loracle.uncertainty.scores`: predictive entropy, BALD (Houlsby et al.,
    arXiv 1112.5745), least confidence and (negated) margin.

    Args:
        score: ``"entropy"``, ``"bald"``, ``"least_confidence"`` or ``"margin"``.

    Raises:
        ValueError: for an unknown score (lists the valid ones).
    """

    requires = frozenset({"probs"})
    mc_samples = 8

    def __init__(self, score: str = "entropy") -> None:
        self.score = score
        self.score_fn = get_score(score)
        self.name = score

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return self.score_fn(signals.probs)

    def __repr__(self) -> str:
        return f"UncertaintyStrategy(score={self.score!r})"


register_strategy("entropy", UncertaintyStrategy, score="entropy")
register_strategy("least_confidence", UncertaintyStrategy, score="least_confidence")
register_strategy("margin", UncertaintyStrategy, score="margin")
register_strategy("bald", UncertaintyStrategy, score="bald")
