"""Query strategies: pure functions from pool signals to the indices to label next. They never see the model.

One module per family; importing the package registers every strategy in :data:`STRATEGIES`:

- :mod:`.base`: :class:`Signals`, the :class:`Strategy` protocol, the registry and :func:`build_strategy`;
- :mod:`.random`: ``random``;
- :mod:`.uncertainty`: ``entropy``, ``least_confidence``, ``margin``, ``bald``;
- :mod:`.star`: ``star``, ``star_published`` (STAR's dynamic uncertainty);
- :mod:`.diversity`: ``kcenter`` (core-set), ``badge``, ``diverse_margin`` (uncertain, then clustered);
- :mod:`.density`: ``density_margin`` (margin weighted by k-NN density in the base model's feature space);
- :mod:`.contrastive`: ``cal`` (predicted unlike the nearest labelled items in the model's feature space);
- :mod:`.balance`: ``class_balance`` (fill the rare classes' deficit with a base-feature probe's likeliest members);
- :mod:`.switch`: ``auto`` (density_margin on a balanced task, class_balance on an imbalanced one);
- :mod:`.stochastic`: ``power_entropy``, ``power_bald`` (stochastic batch acquisition);
- :mod:`.cold_start`: ``typiclust``, ``kmeans`` (feature-only, usable for the initial set);
- :mod:`.answers`: ``sequence_nll``, ``token_entropy``, ``nll_variance``, ``star_generation`` (generation tasks).

A new strategy is a class behind :class:`Strategy` plus one :func:`register_strategy` line in its family's module.
"""

from loracle.active.strategies.answers import AnswerStarStrategy, AnswerUncertaintyStrategy
from loracle.active.strategies.balance import ClassBalanceStrategy
from loracle.active.strategies.base import (
    ANSWER_SIGNALS,
    STRATEGIES,
    Signals,
    Strategy,
    build_strategy,
    check_request,
    cold_start_strategies,
    register_strategy,
    strategy_class,
    top_k,
)
from loracle.active.strategies.cold_start import ClusterStrategy, KMeansCentroidStrategy, TypiClustStrategy
from loracle.active.strategies.contrastive import ContrastiveStrategy
from loracle.active.strategies.density import DensityMarginStrategy
from loracle.active.strategies.diversity import BadgeStrategy, DiverseUncertaintyStrategy, KCenterGreedy
from loracle.active.strategies.random import RandomStrategy
from loracle.active.strategies.star import PublishedStarStrategy, StarStrategy
from loracle.active.strategies.stochastic import PowerStrategy
from loracle.active.strategies.switch import ImbalanceSwitchStrategy
from loracle.active.strategies.uncertainty import UncertaintyStrategy

__all__ = [
    "ANSWER_SIGNALS",
    "STRATEGIES",
    "AnswerStarStrategy",
    "AnswerUncertaintyStrategy",
    "BadgeStrategy",
    "ClassBalanceStrategy",
    "ClusterStrategy",
    "ContrastiveStrategy",
    "DensityMarginStrategy",
    "DiverseUncertaintyStrategy",
    "ImbalanceSwitchStrategy",
    "KCenterGreedy",
    "KMeansCentroidStrategy",
    "PowerStrategy",
    "PublishedStarStrategy",
    "RandomStrategy",
    "Signals",
    "StarStrategy",
    "Strategy",
    "TypiClustStrategy",
    "UncertaintyStrategy",
    "build_strategy",
    "check_request",
    "cold_start_strategies",
    "register_strategy",
    "strategy_class",
    "top_k",
]
