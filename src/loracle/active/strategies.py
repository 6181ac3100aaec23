"""Query strategies: pure functions from pool signals to the indices to label next. They never see the model.

A strategy declares which signals it ``requires`` (``"probs"``: MC predictions of the current model ``[N, S, C]``;
``"base_probs"``: the base model's predictions, computed once per run; ``"embeddings"``: ``[N, D]`` pool and
``[M, D]`` labelled-set features). The loop computes what is required and calls :meth:`Strategy.select`; it never
asks which strategy it holds.

Ties are broken at random by the seeded ``rng``, so the same seed gives the same selection.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from loracle.uncertainty.dynamic import Schedule, dynamic_uncertainty, linear_schedule
from loracle.uncertainty.scores import get_score


@dataclass
class Signals:
    """What the loop measured on the candidate pool items (all row-aligned with the candidates).

    Attributes:
        round_index: the current round ``t`` (0 for the first query, after training on the initial set).
        n: number of candidates.
        probs: ``[N, S, C]`` predictions of the current fine-tuned model, or None.
        base_probs: ``[N, S, C]`` predictions of the adapter-free base model, or None.
        embeddings: ``[N, D]`` candidate features, or None.
        labelled_embeddings: ``[M, D]`` features of the labelled set, or None.
    """

    round_index: int
    n: int
    probs: torch.Tensor | None = None
    base_probs: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    labelled_embeddings: torch.Tensor | None = None


class Strategy(ABC):
    """Base class: rank candidates by :meth:`scores` (larger first) and take the top ``k``."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        """``[N]`` priorities, larger = query first."""

    def select(self, signals: Signals, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Pick ``k`` distinct candidates.

        Args:
            signals: the measured signals (see :class:`Signals`).
            k: number to select.
            rng: seeded generator (tie breaking and random choices).

        Returns:
            ``(indices [k], scores [k])``: candidate positions in selection order and their scores.

        Raises:
            ValueError: if ``k`` exceeds the number of candidates or a required signal is missing.
        """
        _check(self, signals, k)
        scores = self.scores(signals, rng).double().numpy()
        # Random permutation first, then a stable sort: ties fall in a seeded random order.
        perm = rng.permutation(signals.n)
        order = perm[np.argsort(-scores[perm], kind="stable")][:k]
        return order, scores[order]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check(strategy: Strategy, signals: Signals, k: int) -> None:
    missing = [name for name in sorted(strategy.requires) if getattr(signals, name) is None]
    if missing:
        raise ValueError(f"strategy {strategy.name!r} needs signals {missing} that the loop did not provide")
    if not 0 < k <= signals.n:
        raise ValueError(f"pool exhausted: {signals.n} candidates available / {k} requested")


class RandomStrategy(Strategy):
    """Uniform random sampling (the baseline STAR's paper finds hard to beat)."""

    name = "random"

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(rng.random(signals.n))


class UncertaintyStrategy(Strategy):
    """Top-k by an uncertainty score of the current model's predictions.

    Args:
        score: ``"entropy"`` (predictive entropy), ``"bald"``, ``"least_confidence"`` or ``"margin"``.
    """

    requires = frozenset({"probs"})

    def __init__(self, score: str = "entropy") -> None:
        self.score = score
        self.score_fn = get_score(score)
        self.name = score

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return self.score_fn(signals.probs)

    def __repr__(self) -> str:
        return f"UncertaintyStrategy(score={self.score!r})"


class StarStrategy(Strategy):
    """STAR's dynamic uncertainty (arXiv 2403.01165 §3.2):
    ``λ_t · minmax(U_full,t) + (1 − λ_t) · minmax(U_base)``, top-k.

    Args:
        score: the uncertainty measure used for both terms (default predictive entropy, as in the paper).
        schedule: ``t -> λ_t`` callable, or a slope for :func:`~loracle.uncertainty.dynamic.linear_schedule`.
    """

    name = "star"
    requires = frozenset({"probs", "base_probs"})

    def __init__(self, score: str = "entropy", schedule: Schedule | float = 0.1) -> None:
        self.score = score
        self.score_fn = get_score(score)
        self.schedule = linear_schedule(schedule) if isinstance(schedule, (int, float)) else schedule

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return dynamic_uncertainty(self.score_fn(signals.probs), self.score_fn(signals.base_probs),
                                   signals.round_index, self.schedule)

    def __repr__(self) -> str:
        return f"StarStrategy(score={self.score!r}, schedule={getattr(self.schedule, '__name__', self.schedule)})"


class KCenterGreedy(Strategy):
    """Diversity baseline: k-center greedy (core-set, Sener & Savarese 2018) on the model's features.

    Repeatedly picks the candidate farthest (Euclidean) from everything labelled or already picked. Scores are
    the distances at the time each item was picked (selection order, not a global ranking).
    """

    name = "kcenter"
    requires = frozenset({"embeddings"})

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        raise TypeError("KCenterGreedy selects greedily; use select()")

    def select(self, signals: Signals, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        _check(self, signals, k)
        x = signals.embeddings.double()
        centers = signals.labelled_embeddings
        chosen: list[int] = []
        picked: list[float] = []
        if centers is not None and len(centers):
            dist = torch.cdist(x, centers.double()).min(1).values  # (N,) distance to the nearest labelled item
        else:  # nothing labelled yet: start from a seeded random item
            first = int(rng.integers(signals.n))
            chosen, picked = [first], [0.0]
            dist = torch.cdist(x, x[first:first + 1]).squeeze(1)
            dist[first] = -1.0
        while len(chosen) < k:
            i = int(torch.argmax(dist))
            chosen.append(i)
            picked.append(float(dist[i]))
            dist = torch.minimum(dist, torch.cdist(x, x[i:i + 1]).squeeze(1))
            dist[i] = -1.0
        return np.asarray(chosen), np.asarray(picked)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "random": RandomStrategy,
    "entropy": lambda **kw: UncertaintyStrategy("entropy", **kw),
    "least_confidence": lambda **kw: UncertaintyStrategy("least_confidence", **kw),
    "margin": lambda **kw: UncertaintyStrategy("margin", **kw),
    "bald": lambda **kw: UncertaintyStrategy("bald", **kw),
    "star": StarStrategy,
    "kcenter": KCenterGreedy,
}


def build_strategy(name: str, **options: Any) -> Strategy:
    """Make a strategy by name (options go to its constructor; unknown options are an error).

    Raises:
        ValueError: for an unknown name (lists the valid ones) or options the strategy does not take.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {sorted(STRATEGIES)}")
    factory = STRATEGIES[name]
    try:
        return factory(**options)
    except TypeError as err:
        target = factory if inspect.isclass(factory) else UncertaintyStrategy
        raise ValueError(f"strategy {name!r} does not take options {sorted(options)}: "
                         f"signature {inspect.signature(target)}") from err
