"""One strategy for a task whose classes are balanced, another for one whose are not."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, build_strategy, check_request, register_strategy
from loracle.active.strategies.diversity import is_imbalanced


class ImbalanceSwitchStrategy(Strategy):
    """Select with ``balanced`` on a task whose classes are balanced and with ``imbalanced`` on one whose are not.

    The two regimes want different things from a batch. With balanced classes the errors that labels fix are at the
    decision boundary where much of the pool lies, which a density-weighted margin finds
    (:class:`~loracle.active.strategies.density.DensityMarginStrategy`); density weighting there favours the common
    class when one class is rare, and so does uncertainty of a model that has seen few rare items, so on an
    imbalanced task the batch should instead seek the rare class
    (:class:`~loracle.active.strategies.balance.ClassBalanceStrategy`). Which regime holds is decided from the
    round-0 labels (``initial_labels``; :func:`~loracle.active.strategies.diversity.is_imbalanced`): a random
    sample of the pool with ``initial_mode="random"``, which no strategy's picks change, so the choice holds for
    the whole run (the labelled set's own shares would flip it once the rare class has been sought). Never a pool
    item's hidden label. After a ``kmeans`` or ``typiclust`` cold start the round-0 labels are a diverse sample,
    not a random one, and the regime is read from that sample's shares. On a multiple-choice task the "classes"
    are answer positions.

    ``requires`` is the union of both strategies' signals plus ``initial_labels``; ``mc_samples`` is the larger of
    theirs. The scores returned are the chosen strategy's.

    Args:
        balanced: registered name of the strategy for balanced tasks.
        imbalanced: registered name of the strategy for imbalanced tasks (``"badge"`` without options: with the
            prior correction on, the branch loracle 0.2's ``auto`` took; 0.2 decided the regime from the labelled
            set at each query, this class from the round-0 labels).
        balanced_options / imbalanced_options: constructor options of each.

    Raises:
        ValueError: for an unknown name or options (as :func:`build_strategy`), or a strategy that brings a
            training recipe of its own (the run trains one recipe whichever strategy picks).
    """

    name = "auto"

    def __init__(self, balanced: str = "density_margin", imbalanced: str = "class_balance",
                 balanced_options: dict[str, Any] | None = None,
                 imbalanced_options: dict[str, Any] | None = None) -> None:
        imbalanced_options = {"prior_correction": True} if imbalanced_options is None and imbalanced == "badge" \
            else dict(imbalanced_options or {})
        self.balanced = build_strategy(balanced, **dict(balanced_options or {}))
        self.imbalanced = build_strategy(imbalanced, **imbalanced_options)
        for part in (self.balanced, self.imbalanced):
            if part.train_overrides:
                raise ValueError(f"ImbalanceSwitchStrategy: {part!r} brings training overrides "
                                 f"{part.train_overrides}; choose strategies that train on the run's recipe")
        self.requires = self.balanced.requires | self.imbalanced.requires | {"initial_labels"}
        self.mc_samples = max(self.balanced.mc_samples, self.imbalanced.mc_samples)

    def chosen(self, signals: Signals) -> Strategy:
        """The strategy this query uses (by the round-0 labels' class shares)."""
        known = [torch.as_tensor(x) for x in (signals.initial_labels, signals.labelled_labels) if x is not None]
        num_classes = signals.probs.shape[-1] if signals.probs is not None else \
            int(max(int(x.max()) for x in known if len(x))) + 1
        return self.imbalanced if is_imbalanced(signals.initial_labels, num_classes) else self.balanced

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return self.chosen(signals).scores(signals, rng)

    def acting(self, signals: Signals) -> str:
        return self.chosen(signals).acting(signals)

    def select(self, signals: Signals, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_request(self, signals, k)
        return self.chosen(signals).select(signals, k, rng)

    def __repr__(self) -> str:
        return f"ImbalanceSwitchStrategy(balanced={self.balanced!r}, imbalanced={self.imbalanced!r})"


register_strategy("auto", ImbalanceSwitchStrategy)
