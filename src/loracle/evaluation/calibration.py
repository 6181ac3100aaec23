"""Temperature scaling (Guo et al., arXiv 1706.04599 §4.2): one scalar ``T`` that divides the logits.

``softmax(z / T)`` keeps every prediction's argmax (so accuracy is unchanged) and fixes the usual
over-confidence of fine-tuned models (``T > 1``) or under-confidence (``T < 1``). ``T`` is fitted by minimising the
negative log-likelihood on held-out labelled data; with few labels the loop fits it on cross-fitted logits (each
labelled item predicted by a model that did not train on it) and :func:`fit_temperature_from_folds` pools them.

The fit is exact up to ``1e-10`` in ``log T``: with ``β = 1/T`` the NLL ``mean_i [logsumexp(β z_i) − β z_{i,y_i}]``
is convex in ``β`` and its derivative ``mean_i [E_{softmax(β z_i)}[z] − z_{i,y_i}]`` is monotone, so bisection on
the derivative over ``T ∈ [0.05, 20]`` finds the minimiser (or the bound it lies beyond). No optimiser state, no
learning rate, no iteration cap to tune.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: Range of the fitted temperature: beyond it the data say "as sharp / as flat as possible", not a number.
T_MIN, T_MAX = 0.05, 20.0
# Stand-in for −inf log-probabilities, below the smallest finite logit (keeps 0 · (−inf) out of the gradient).
_NEG_MARGIN = 50.0


def _prepare(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """float64 ``[N, C]`` logits and ``[N]`` labels, or None when no temperature can be fitted."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if z.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {tuple(z.shape)} (average MC samples first, e.g. "
                         "pass log(probs.mean(1)))")
    if z.shape[0] != y.shape[0]:
        raise ValueError(f"logits has {z.shape[0]} rows but labels has {y.shape[0]}; expected equal")
    if z.shape[0] == 0 or z.shape[1] < 2:
        return None
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}, got range {int(y.min())}..{int(y.max())}")
    if torch.isnan(z).any() or (z == math.inf).any():
        return None
    finite = torch.isfinite(z)
    if not finite.any(1).all():
        return None
    if not finite.all():
        z = torch.where(finite, z, z[finite].min() - _NEG_MARGIN)
    z = z - z.max(1, keepdim=True).values  # softmax is shift-invariant; keeps exp() in range
    if (z.min(1).values == 0).all():  # every row constant: the NLL does not depend on T
        return None
    return z, y


def _nll_slope(z: torch.Tensor, y: torch.Tensor, beta: float, offset: torch.Tensor | None = None) -> float:
    """``d/dβ mean_i [logsumexp(β z_i + b) − β z_{i,y_i} − b_{y_i}]``, non-decreasing in ``β``."""
    p = torch.softmax(beta * z if offset is None else beta * z + offset, dim=1)  # (N, C)
    return float(((p * z).sum(1) - z.gather(1, y[:, None])[:, 0]).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, offset: torch.Tensor | None = None) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T + offset)`` on ``labels``, in
    ``[0.05, 20]``.

    Args:
        logits: ``[N, C]`` logits or log-probabilities (log-probabilities up to a per-row constant work the same;
            ``-inf`` entries are allowed).
        labels: ``[N]`` integer labels in ``0..C-1``.
        offset: ``[C]`` a fixed term added after the temperature, or None: ``log(π_t / π_s)`` fits the
            temperature of predictions that are then moved from class prior ``π_s`` to ``π_t``
            (:func:`loracle.evaluation.label_shift.shift_prior` of ``softmax(logits / T)``).

    Returns:
        ``T`` as a float; 1.0 (no change) on degenerate input: no rows, a single class, NaN or ``+inf`` logits, a
        row with no finite logit, or every row constant (the NLL does not depend on ``T`` then).

    Raises:
        ValueError: on a shape mismatch or labels out of range.
    """
    prepared = _prepare(logits, labels)
    if prepared is None:
        return 1.0
    z, y = prepared
    b = None
    if offset is not None:
        b = torch.as_tensor(offset, dtype=torch.float64).reshape(-1)
        if b.shape != (z.shape[1],) or not bool(torch.isfinite(b).all()):
            raise ValueError(f"offset must be {z.shape[1]} finite numbers, got {b.tolist()}")
    lo, hi = math.log(1.0 / T_MAX), math.log(1.0 / T_MIN)  # bisection on log β, β = 1/T
    if _nll_slope(z, y, math.exp(lo), b) >= 0:  # NLL increasing already at the flattest allowed β
        return T_MAX
    if _nll_slope(z, y, math.exp(hi), b) <= 0:  # still decreasing at the sharpest: perfectly separable data
        return T_MIN
    while hi - lo > 1e-10:
        mid = 0.5 * (lo + hi)
        if _nll_slope(z, y, math.exp(mid), b) < 0:
            lo = mid
        else:
            hi = mid
    return float(1.0 / math.exp(0.5 * (lo + hi)))


def fit_temperature_from_folds(folds: Sequence[tuple[torch.Tensor, torch.Tensor]],
                               offset: torch.Tensor | None = None) -> float:
    """Fit one temperature on the concatenation of ``(logits [N_k, C], labels [N_k])`` folds (``offset`` as
    :func:`fit_temperature`).

    With cross-fitting, fold ``k`` holds the predictions of the model trained without fold ``k`` on fold ``k``;
    pooling them uses every label once.

    Returns:
        ``T`` (1.0 for no folds or degenerate input, as :func:`fit_temperature`).

    Raises:
        ValueError: if the folds disagree on the number of classes, or as :func:`fit_temperature`.
    """
    if not folds:
        return 1.0
    widths = {torch.as_tensor(z).shape[-1] for z, _ in folds}
    if len(widths) != 1:
        raise ValueError(f"folds disagree on the number of classes: {sorted(widths)}")
    n_classes = widths.pop()
    logits = torch.cat([torch.as_tensor(z, dtype=torch.float64).reshape(-1, n_classes) for z, _ in folds])
    labels = torch.cat([torch.as_tensor(y, dtype=torch.long).reshape(-1) for _, y in folds])
    return fit_temperature(logits, labels, offset)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Calibrated probabilities ``softmax(logits / T)`` over the last axis (any leading shape, e.g. ``[N, C]`` or
    ``[N, S, C]``). For probabilities ``p`` use ``logits = p.log()``: ``p^(1/T)`` renormalised.

    Raises:
        ValueError: if ``temperature`` is not a positive finite number.
    """
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = torch.as_tensor(logits)
    return torch.softmax(z / temperature, dim=-1)


def calibration_choice(temperature: float | None) -> str:
    """``al run``'s ``calibration="auto"``: which calibrated prediction a round reports, given the temperature
    fitted on its fold models' out-of-fold predictions (:func:`fit_temperature_from_folds`).

    ``ensemble`` (the mean of the round model and its fold models, arXiv 1612.01474), unless that temperature is
    below 1, then ``temperature`` (the round model scaled by it). A temperature below 1 says the fold models were
    under-confident on items they had not seen; averaging them can only lower confidence further, while a
    temperature can raise it. That happens on tasks the model learns well, whose confidence a slowly trained head
    keeps below its accuracy (README, "Training recipe": MiniLM on sentence subjectivity, accuracy 0.87-0.93, test
    ECE from 200 labels 0.061-0.080 under this rule against the ensemble's 0.080-0.133 over five active-learning
    runs). A temperature above 1 does not tell an over-confident ensemble from a calibrated one, so the ensemble
    stays there. None (no temperature fitted): ``ensemble``.
    """
    return "temperature" if temperature is not None and temperature < 1.0 else "ensemble"


def fold_agreement(member_probs: torch.Tensor) -> float:
    """Mean pairwise agreement of ``K`` models' predicted classes on the same unlabelled items.

    Args:
        member_probs: ``[K, N, C]`` probabilities (or logits) of ``K >= 2`` models on ``N`` items.

    Returns:
        The share of items on which two of the models pick the same class, averaged over the ``K(K-1)/2`` pairs.
        Models that disagree on a share ``d`` of items cannot both be right there, so for independently trained,
        calibrated models ``1 - d`` estimates their accuracy (Jiang et al., arXiv 2106.13799); models trained on
        overlapping labels agree more than that, so it errs high.

    Raises:
        ValueError: fewer than 2 models, or no items.
    """
    p = torch.as_tensor(member_probs)
    if p.dim() != 3 or p.shape[0] < 2 or p.shape[1] == 0:
        raise ValueError(f"member_probs must have shape [K >= 2, N >= 1, C], got {tuple(p.shape)}")
    picks = p.argmax(-1)
    k = picks.shape[0]
    pairs = [(picks[i] == picks[j]).double().mean() for i in range(k) for j in range(i + 1, k)]
    return float(torch.stack(pairs).mean())


def matched_accuracy(agreement: float, out_of_fold_accuracy: float) -> float:
    """``calibration="matched"``'s estimate of a round's accuracy: the mean of two estimates that err on opposite
    sides.

    ``agreement`` (:func:`fold_agreement` of the fold models on unlabelled pool items) tends to err high: the fold
    models share labels and inductive bias, so they agree more often than they are right. ``out_of_fold_accuracy``
    (the fold models on the labelled items each did not train on) tends to err low: each fold model saw only
    ``(K-1)/K`` of the labels, and 100 round-0 items give it a standard error of about 0.04. Measured on the
    recorded predictions of 126 active-learning rounds at 200-600 labels on six task sets (MiniLM; README,
    "Training recipe"), the mean error per task against the cross-fitted ensemble's test accuracy is −0.006 to
    +0.101 for the agreement, −0.052 to +0.003 for the out-of-fold accuracy and −0.028 to +0.038 for their mean,
    where the ensemble's own mean confidence is off by −0.097 to +0.118.
    """
    return 0.5 * (float(agreement) + float(out_of_fold_accuracy))


def match_confidence(log_probs: torch.Tensor, target: float, offset: torch.Tensor | None = None) -> float:
    """The temperature ``T`` at which the mean top-class probability of ``softmax(log_probs / T + offset)`` is
    ``target``, in ``[0.05, 20]``.

    Raising ``T`` flattens every row, so the mean top-class probability falls monotonically from (nearly) 1 to
    (nearly) ``1/C``; bisection on ``log T`` finds the crossing, or the bound it lies beyond.

    Args:
        log_probs: ``[N, C]`` log-probabilities (or logits) of unlabelled items.
        target: the mean confidence wanted, e.g. an accuracy estimate (:func:`matched_accuracy`).
        offset: ``[C]`` added after the temperature, as :func:`fit_temperature` (a class-prior move).

    Returns:
        ``T`` as a float; 1.0 for no rows or fewer than two classes.

    Raises:
        ValueError: ``target`` is not a number in (0, 1], or ``log_probs`` is not ``[N, C]``.
    """
    if not (isinstance(target, (int, float)) and 0.0 < target <= 1.0):
        raise ValueError(f"target must be a mean confidence in (0, 1], got {target!r}")
    z = torch.as_tensor(log_probs, dtype=torch.float64)
    if z.dim() != 2:
        raise ValueError(f"log_probs must have shape [N, C], got {tuple(z.shape)}")
    if z.shape[0] == 0 or z.shape[1] < 2:
        return 1.0
    z = torch.where(torch.isfinite(z), z, torch.full_like(z, -1e4))
    b = None if offset is None else torch.as_tensor(offset, dtype=torch.float64).reshape(1, -1)

    def confidence(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        return float(torch.softmax(scaled if b is None else scaled + b, dim=1).max(1).values.mean())

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    if confidence(lo) <= target:  # not even the sharpest allowed temperature reaches it
        return T_MIN
    if confidence(hi) >= target:  # still above it at the flattest
        return T_MAX
    while hi - lo > 1e-10:
        mid = 0.5 * (lo + hi)
        if confidence(mid) > target:
            lo = mid
        else:
            hi = mid
    return float(math.exp(0.5 * (lo + hi)))
