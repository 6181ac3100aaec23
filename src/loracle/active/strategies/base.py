"""The strategy protocol, the signals it reads, and the registry of strategies by name.

A strategy is a pure function from pool signals to the indices to label next; it never sees the model. It declares
which signals it ``requires`` (``"probs"``: MC predictions of the current model ``[N, S, C]``; ``"base_probs"``: the
base model's predictions; ``"embeddings"``: ``[N, D]`` candidate and ``[M, D]`` labelled-set features;
``"base_embeddings"`` / ``"labelled_base_embeddings"``: the frozen base model's features of the candidates and of
the labelled set; ``"labelled_labels"`` / ``"initial_labels"``: the class indices of the labelled set and of the
round-0 labels; for generation ``"answer_scores"`` / ``"base_answer_scores"``: scores of the model's own greedy
answer). A strategy that composes others (``auto``) sets ``requires`` on the instance. The loop
computes what is required and calls :meth:`Strategy.select`; it never asks which strategy it holds.

A strategy with ``cold_start = True`` can pick the initial set before any label exists and without a trained model:
the loop calls ``strategy.select(Signals(round_index=-1, n=N, embeddings=base_embeddings), k, rng)``.

Every random choice (tie breaking, sampling, k-means seeding) goes through the seeded ``rng``, so the same seed gives
the same selection.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

#: Signals a strategy may require (the attribute names of :class:`Signals`).
SIGNAL_NAMES = frozenset({"probs", "committee_probs", "base_probs", "embeddings", "labelled_embeddings",
                          "labelled_probs", "base_embeddings", "labelled_base_embeddings", "initial_labels",
                          "answer_scores", "base_answer_scores", "labelled_labels"})
#: The signals of generation tasks (the model's own greedy answer scored; no class distribution exists).
ANSWER_SIGNALS = frozenset({"answer_scores", "base_answer_scores"})


@dataclass
class Signals:
    """What the loop measured on the candidate pool items (all row-aligned with the candidates).

    Attributes:
        round_index: the current round ``t`` (0 for the first query, after training on the initial set; -1 for the
            cold-start choice of the initial set, before any label).
        n: number of candidates.
        probs: ``[N, S, C]`` predictions of the current fine-tuned model, or None.
        committee_probs: ``[N, M, C]`` one deterministic prediction per member of the round's committee: the round
            model (its mean over ``probs``' samples) first, then each cross-fitted fold model the round kept
            (``calibration`` ``matched``, ``ensemble`` or ``auto``; a query ensemble, Beluch et al., CVPR 2018),
            or None. ``M = 1`` where the round kept no fold models.
        base_probs: ``[N, S, C]`` predictions that play STAR's ``U_base`` (the adapter-free base model, or a linear
            probe on frozen features; see :class:`~loracle.active.strategies.star.StarStrategy`), or None.
        embeddings: ``[N, D]`` candidate features, or None.
        labelled_embeddings: ``[M, D]`` features of the labelled set (rows in the order of ``labelled_labels``),
            or None.
        labelled_probs: ``[M, C]`` the current model's deterministic predictions on the labelled set (same rows),
            or None.
        base_embeddings: ``[N, D']`` features of the frozen, adapter-free base model (its last hidden states
            mean-pooled; :func:`loracle.active.pool.base_features`), the same every round, or None.
        labelled_base_embeddings: ``[M, D']`` the same base-model features of the labelled set (rows in the order
            of ``labelled_labels``), or None.
        answer_scores: generation: ``[N, S, 2]`` scores of the current model's greedy answer under ``S``
            stochastic passes (length-normalised NLL, mean token entropy; see
            :mod:`loracle.uncertainty.generation`), or None.
        base_answer_scores: generation: ``[N, 1, 2]`` the same for the base LM with adapters off (STAR's
            ``U_base``), or None.
        labelled_labels: classification: ``[M]`` the class indices of the labelled set (what the model was
            trained on; never a pool item's hidden label), or None.
        initial_labels: classification: ``[M0]`` the class indices of the round-0 labels (with ``initial_mode``
            ``random`` a sample of the pool, so their shares say whether the task is imbalanced, which no strategy's
            picks change), or None.
    """

    round_index: int
    n: int
    probs: torch.Tensor | None = None
    committee_probs: torch.Tensor | None = None
    base_probs: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    labelled_embeddings: torch.Tensor | None = None
    labelled_probs: torch.Tensor | None = None
    base_embeddings: torch.Tensor | None = None
    labelled_base_embeddings: torch.Tensor | None = None
    answer_scores: torch.Tensor | None = None
    base_answer_scores: torch.Tensor | None = None
    labelled_labels: torch.Tensor | None = None
    initial_labels: torch.Tensor | None = None


class Strategy(ABC):
    """Base class: rank candidates by :meth:`scores` (larger first) and take the top ``k``.

    Strategies that choose a batch jointly (diversity, sampling) override :meth:`select` instead; their
    :meth:`scores` raises a ``TypeError`` that says so.

    Class attributes:
        name: registry name (instances of parametrised classes set their own).
        requires: the :class:`Signals` fields that must not be None.
        cold_start: True if the strategy can choose the initial set: no labels, no trained model, at most
            ``embeddings`` of the base model.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    cold_start: ClassVar[bool] = False
    #: MC samples the strategy's ``probs`` should have when the run does not say (0: one deterministic pass).
    mc_samples: ClassVar[int] = 0
    #: Training-recipe fields the strategy brings when the run leaves them unset (e.g. STAR's constraint).
    train_overrides: ClassVar[dict[str, Any]] = {}

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
        check_request(self, signals, k)
        scores = self.scores(signals, rng).double().numpy()
        order = top_k(scores, k, rng)
        return order, scores[order]

    def acting(self, signals: Signals) -> str:
        """The registered name of the strategy that makes this query's choice: its own, or for a strategy that
        delegates (``auto``) the part that acts on these signals (recorded per query; ``al status`` shows it)."""
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` largest ``scores``, largest first, ties in a seeded random order.

    Args:
        scores: ``[N]`` float array (``-inf`` allowed; NaN is not).
        k: how many, ``<= N``.
        rng: seeded generator.

    Returns:
        ``[k]`` int64 indices.
    """
    # Random permutation first, then a stable sort: ties fall in a seeded random order.
    perm = rng.permutation(len(scores))
    return perm[np.argsort(-scores[perm], kind="stable")][:k]


def check_request(strategy: Strategy, signals: Signals, k: int) -> None:
    """Raise a ``ValueError`` if a required signal is missing or ``k`` is not in ``1..N``."""
    missing = [name for name in sorted(strategy.requires) if getattr(signals, name) is None]
    if missing:
        raise ValueError(f"strategy {strategy.name!r} needs signals {missing} that the loop did not provide")
    if not 0 < k <= signals.n:
        raise ValueError(f"pool exhausted: {signals.n} candidates available / {k} requested")


#: Strategy factories by name: a class, or a ``functools.partial`` of one with some options fixed.
STRATEGIES: dict[str, Callable[..., Strategy]] = {}


def register_strategy(name: str, cls: type[Strategy], **fixed: Any) -> None:
    """Register ``cls`` under ``name``, with constructor options ``fixed`` bound (one line per registration).

    Example: ``register_strategy("bald", UncertaintyStrategy, score="bald")``.

    Raises:
        ValueError: if ``name`` is taken or ``cls`` does not declare known signals.
    """
    if name in STRATEGIES:
        raise ValueError(f"strategy name {name!r} is already registered ({STRATEGIES[name]!r})")
    unknown = sorted(set(cls.requires) - SIGNAL_NAMES)
    if unknown:
        raise ValueError(f"{cls.__name__}.requires names unknown signals {unknown}; valid: {sorted(SIGNAL_NAMES)}")
    STRATEGIES[name] = functools.partial(cls, **fixed) if fixed else cls


def strategy_class(name: str) -> type[Strategy]:
    """The class behind a registered name (to read ``requires`` or ``cold_start`` without building one).

    Raises:
        ValueError: for an unknown name (lists the valid ones).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {sorted(STRATEGIES)}")
    factory = STRATEGIES[name]
    return factory.func if isinstance(factory, functools.partial) else factory  # type: ignore[return-value]


def cold_start_strategies() -> list[str]:
    """Registered names usable for the initial set (``cold_start = True``), sorted."""
    return sorted(name for name in STRATEGIES if strategy_class(name).cold_start)


def build_strategy(name: str, **options: Any) -> Strategy:
    """Make a strategy by name (options go to its constructor; unknown options are an error).

    Raises:
        ValueError: for an unknown name (lists the valid ones), options the strategy does not take (shows its
            signature), or option values its constructor rejects.
    """
    cls = strategy_class(name)
    factory = STRATEGIES[name]
    fixed = factory.keywords if isinstance(factory, functools.partial) else {}
    signature = inspect.signature(cls)
    clash = sorted(set(options) & set(fixed))
    try:
        if clash:
            raise TypeError
        signature.bind(**fixed, **options)
    except TypeError as err:
        free = ", ".join(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name
                         for p in signature.parameters.values() if p.name not in fixed)
        raise ValueError(f"strategy {name!r} does not take options {sorted(options)}; it takes ({free})"
                         + (f" ({cls.__name__} with {fixed} fixed)" if fixed else "")) from err
    return factory(**options)
