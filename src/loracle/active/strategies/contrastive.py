"""Contrastive active learning: candidates the model predicts unlike their labelled neighbours (CAL, Margatina et
al., EMNLP 2021, "Active Learning by Acquiring Contrastive Examples", arXiv 2109.03764)."""

from __future__ import annotations

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy


def neighbour_divergence(probs: torch.Tensor, features: torch.Tensor, labelled_probs: torch.Tensor,
                         labelled_features: torch.Tensor, neighbours: int, chunk: int = 2048) -> torch.Tensor:
    """``[N]`` mean ``KL(q_l ‖ p_i)`` over the ``neighbours`` labelled items ``l`` nearest candidate ``i``.

    ``p_i`` is the candidate's predicted distribution, ``q_l`` the model's prediction on the labelled item (not
    its label), and nearness is Euclidean distance between the model's features. With fewer labelled items than
    ``neighbours`` every one of them is a neighbour.

    Args:
        probs: ``[N, C]`` candidate predictions.
        features: ``[N, D]`` candidate features.
        labelled_probs: ``[M, C]`` predictions on the labelled items (``M >= 1``).
        labelled_features: ``[M, D]`` their features.
        neighbours: ``k >= 1``.
        chunk: candidates compared at once (memory ``chunk × M``).
    """
    p = probs.double().clamp_min(1e-12)
    q = labelled_probs.double().clamp_min(1e-12)
    x, y = features.double(), labelled_features.double()
    k = min(neighbours, len(y))
    q_entropy = (q * q.log()).sum(1)  # [M] Σ_c q log q
    out = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), chunk):
        nearest = torch.cdist(x[start:start + chunk], y).topk(k, dim=1, largest=False).indices  # (rows, k)
        cross = torch.einsum("rkc,rc->rk", q[nearest], p[start:start + chunk].log())  # Σ_c q_l log p_i
        out[start:start + chunk] = (q_entropy[nearest] - cross).mean(1)
    return out


class ContrastiveStrategy(Strategy):
    """Top-k by the mean KL divergence between a candidate's prediction and those of its nearest labelled items.

    CAL (arXiv 2109.03764): an item that looks like labelled ones in the model's own feature space
    (``signals.embeddings``, what enters the output head) but is predicted differently lies where the decision
    boundary bends between similar inputs, which is what a label there teaches. Scores are
    :func:`neighbour_divergence` of the round model's mean prediction (``signals.probs`` averaged over samples)
    against its predictions on the labelled set (``signals.labelled_probs``), as in the paper's code: the
    neighbours' predicted distributions, not their labels, and Euclidean neighbours in the fine-tuned model's
    features.

    Args:
        neighbours: ``k``, the labelled neighbours compared (>= 1; the paper's 10).

    Raises:
        ValueError: for ``neighbours < 1``.
    """

    name = "cal"
    requires = frozenset({"probs", "embeddings", "labelled_embeddings", "labelled_probs"})

    def __init__(self, neighbours: int = 10) -> None:
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
            raise ValueError(f"ContrastiveStrategy: neighbours must be an int >= 1, got {neighbours!r}")
        self.neighbours = neighbours

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        probs, features = signals.probs, signals.embeddings
        labelled_probs, labelled_features = signals.labelled_probs, signals.labelled_embeddings
        if (probs.dim() != 3 or features.dim() != 2 or labelled_probs.dim() != 2 or labelled_features.dim() != 2
                or len(features) != len(probs) or len(labelled_features) != len(labelled_probs)
                or features.shape[1] != labelled_features.shape[1] or probs.shape[2] != labelled_probs.shape[1]):
            raise ValueError(f"cal needs probs [N, S, C], embeddings [N, D], labelled_probs [M, C] and "
                             f"labelled_embeddings [M, D], got {tuple(probs.shape)}, {tuple(features.shape)}, "
                             f"{tuple(labelled_probs.shape)} and {tuple(labelled_features.shape)}")
        if not len(labelled_probs):
            raise ValueError("cal needs at least one labelled item (it is not a cold-start strategy)")
        return neighbour_divergence(probs.mean(1), features, labelled_probs, labelled_features,
                                    self.neighbours).float()

    def __repr__(self) -> str:
        return f"ContrastiveStrategy(neighbours={self.neighbours})"


register_strategy("cal", ContrastiveStrategy)
