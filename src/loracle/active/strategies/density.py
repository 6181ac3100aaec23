"""Density-weighted uncertainty: informative and representative at once (information density, Settles & Craven,
EMNLP 2008, "An Analysis of Active Learning Strategies for Sequence Labeling Tasks", §3.3)."""

from __future__ import annotations

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy
from loracle.active.strategies.diversity import is_imbalanced


def knn_density(features: torch.Tensor, neighbours: int, chunk: int = 2048) -> torch.Tensor:
    """``[N]`` mean cosine similarity of each row of ``features`` to its ``neighbours`` most similar other rows.

    Negative means are clamped to 0 (a point with no similar neighbour has no density). With fewer than
    ``neighbours + 1`` rows every other row is a neighbour.

    Args:
        features: ``[N, D]``.
        neighbours: ``k >= 1``.
        chunk: rows compared at once (memory ``chunk × N``).
    """
    x = torch.nn.functional.normalize(features.double(), dim=1)
    n = len(x)
    k = min(neighbours, n - 1)
    if k < 1:
        return torch.ones(n, dtype=torch.float64)
    out = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, chunk):
        sims = x[start:start + chunk] @ x.T  # (rows, N)
        rows = torch.arange(len(sims))
        sims[rows, rows + start] = -torch.inf  # not its own neighbour
        out[start:start + chunk] = sims.topk(k, dim=1).values.mean(1)
    return out.clamp_min(0.0)


class DensityMarginStrategy(Strategy):
    """Top-k by ``(1 − margin_i) · density_i^β``: uncertain candidates that sit where much of the pool sits.

    ``margin_i`` is the gap between the two largest classes of the current model's mean prediction ``p̄_i``
    (``signals.probs`` averaged over samples; breaking ties, Scheffer et al. 2001); ``density_i`` is the mean cosine
    similarity of candidate ``i`` to its ``neighbours`` nearest candidates in the frozen base model's feature space
    (``signals.base_embeddings``; :func:`knn_density`). Plain uncertainty sampling favours outliers and
    near-duplicates at the decision boundary, which teach the model about few other items; the density factor
    prefers the uncertain items that stand for many. The features are the base model's, not the fine-tuned
    model's, so the neighbourhoods do not move with the few labels of the round.

    Args:
        neighbours: ``k`` of the k-nearest-neighbour density (>= 1).
        beta: weight of the density term (``β = 0`` is margin sampling).
        prior_correction: compute ``p̄_i`` with the labelled set's class prior divided out
            (:func:`loracle.evaluation.metrics.prior_corrected`, arXiv 2007.07314) before the margin: ``True``,
            ``False``, or ``"auto"`` (the default: when the labelled set's rarest class holds less than half of an
            even share, the rule of :class:`~loracle.active.strategies.diversity.BadgeStrategy`).
        committee: take ``p̄_i`` as the mean prediction of the round's committee (``signals.committee_probs``: the
            round model and the cross-fitted fold models that calibration trained, a query ensemble as in Beluch
            et al., CVPR 2018) instead of the round model's alone. The fold models cost no training (the
            calibration trains them anyway), one pass over the pool each.

    Raises:
        ValueError: for ``neighbours < 1``, ``beta < 0``, a ``prior_correction`` that is not true, false or
            ``"auto"``, or a ``committee`` that is not true or false.
    """

    name = "density_margin"
    requires = frozenset({"probs", "base_embeddings"})

    def __init__(self, neighbours: int = 20, beta: float = 1.0, prior_correction: bool | str = "auto",
                 committee: bool = False) -> None:
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
            raise ValueError(f"DensityMarginStrategy: neighbours must be an integer >= 1, got {neighbours!r}")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"DensityMarginStrategy: beta must be a number >= 0, got {beta!r}")
        if not (isinstance(prior_correction, bool) or prior_correction == "auto"):
            raise ValueError(f"DensityMarginStrategy: prior_correction must be true, false or 'auto', got "
                             f"{prior_correction!r}")
        if not isinstance(committee, bool):
            raise ValueError(f"DensityMarginStrategy: committee must be true or false, got {committee!r}")
        self.neighbours, self.beta, self.prior_correction = neighbours, float(beta), prior_correction
        self.committee = committee
        self.requires = (type(self).requires | ({"labelled_labels"} if prior_correction is not False else set())
                         | ({"committee_probs"} if committee else set()))

    def corrects(self, labelled_labels: torch.Tensor | None, num_classes: int) -> bool:
        """Whether this selection divides the prior out (for ``"auto"``: the labelled set is imbalanced)."""
        if self.prior_correction != "auto":
            return bool(self.prior_correction)
        return is_imbalanced(labelled_labels, num_classes)

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        probs, features = signals.probs, signals.base_embeddings
        if probs.dim() != 3 or features.dim() != 2 or len(probs) != len(features):
            raise ValueError(f"density_margin needs probs [N, S, C] and base_embeddings [N, D] with the same N, "
                             f"got {tuple(probs.shape)} and {tuple(features.shape)}")
        if self.committee:
            committee = signals.committee_probs
            if committee.dim() != 3 or committee.shape[0] != len(probs) or committee.shape[2] != probs.shape[2]:
                raise ValueError(f"density_margin needs committee_probs [N, M, C] matching probs [N, S, C], got "
                                 f"{tuple(committee.shape)} and {tuple(probs.shape)}")
            probs = committee
        mean = probs.double().mean(1)
        if self.corrects(signals.labelled_labels, mean.shape[-1]):
            from loracle.evaluation.metrics import prior_corrected

            mean = prior_corrected(mean, signals.labelled_labels)
        top2 = mean.topk(2, dim=-1).values
        informativeness = 1.0 - (top2[:, 0] - top2[:, 1])
        if self.beta == 0:
            return informativeness
        return informativeness * knn_density(features, self.neighbours) ** self.beta

    def __repr__(self) -> str:
        return (f"DensityMarginStrategy(neighbours={self.neighbours}, beta={self.beta}, "
                f"prior_correction={self.prior_correction!r}, committee={self.committee})")


register_strategy("density_margin", DensityMarginStrategy)
