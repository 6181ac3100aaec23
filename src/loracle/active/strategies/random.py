"""Uniform random sampling: the baseline, and the default cold start."""

from __future__ import annotations

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy


class RandomStrategy(Strategy):
    """Uniform random sampling without replacement (the baseline STAR's paper, arXiv 2403.01165, finds hard to
    beat). Needs no signal, so it also picks the initial set."""

    name = "random"
    cold_start = True

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(rng.random(signals.n))


register_strategy("random", RandomStrategy)
