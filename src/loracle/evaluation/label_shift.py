"""Label shift: probabilities learnt under one class prior, moved to another (Saerens, Latinne & Decaestecker,
Neural Computation 2002, "Adjusting the Outputs of a Classifier to New a Priori Probabilities"; Alexandari et al.,
arXiv 1901.06852).

Active learning shifts the labels on purpose: a strategy that seeks a rare class trains the model on a labelled set
where that class is far more common than in the pool the model will be used on, and the model's probabilities
carry the labelled set's prior. If ``p(y|x)`` was learnt under prior ``π_s`` and the classes' own distributions
``p(x|y)`` are the same under ``π_t``, Bayes' rule gives ``p_t(y|x) ∝ p(y|x) · π_t(y) / π_s(y)``
(:func:`shift_prior`). The pool's prior is unknown, but the initial labelled set, when drawn at random, is a sample
of it; :func:`shares_differ` says whether the queried labels' class shares depart from that sample's beyond chance
(only then is a shift worth its estimation noise). An EM estimate from the model's predictions on unlabelled items
(Saerens et al. §2.3) was tried and rejected: with the round model's uncalibrated predictions it put a 10% class at
4% and an even task at 36/64 (README, "The default is now `auto`").
"""

from __future__ import annotations

import torch


def _prior(values: torch.Tensor, name: str, classes: int) -> torch.Tensor:
    prior = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if len(prior) != classes or not bool(torch.isfinite(prior).all()) or bool((prior < 0).any()) \
            or float(prior.sum()) <= 0:
        raise ValueError(f"{name} must be {classes} non-negative shares with a positive sum, got "
                         f"{prior.tolist()}")
    return prior / prior.sum()


def shift_prior(probs: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``p_c · target_c / source_c``, renormalised over the last axis: ``probs`` learnt under class prior
    ``source`` moved to class prior ``target`` (a share of 0 in ``source`` counts as 1e-6).

    Args:
        probs: ``[..., C]`` probabilities.
        source: ``[C]`` the class shares the model was trained on (normalised here).
        target: ``[C]`` the class shares of the data it is applied to (normalised here).

    Raises:
        ValueError: for priors that are not ``C`` non-negative numbers with a positive sum.
    """
    classes = probs.shape[-1]
    ratio = _prior(target, "target", classes) / _prior(source, "source", classes).clamp_min(1e-6)
    shifted = probs.double() * ratio
    return (shifted / shifted.sum(-1, keepdim=True).clamp_min(1e-300)).to(probs.dtype)


def shares_differ(first: torch.Tensor, second: torch.Tensor, alpha: float = 0.01) -> bool:
    """Whether two samples' class counts differ beyond chance: Pearson's chi-square test of homogeneity of the
    ``2 × C`` table (classes absent from both dropped), at level ``alpha``. False when either sample is empty or
    fewer than two classes occur.

    Args:
        first, second: ``[C]`` class counts.
        alpha: the test's level.
    """
    table = torch.stack([torch.as_tensor(first, dtype=torch.float64).reshape(-1),
                         torch.as_tensor(second, dtype=torch.float64).reshape(-1)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or bool((table.sum(1) == 0).any()):
        return False
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return _chi_square_p(statistic, table.shape[1] - 1) < alpha


def shares_uneven(counts: torch.Tensor, alpha: float = 0.01) -> bool:
    """Whether a sample's class counts depart from an even split beyond chance: Pearson's chi-square goodness of
    fit to ``1/C`` per class, at level ``alpha`` (``C - 1`` degrees of freedom; every class counts, absent ones
    too). False for an empty sample or a single class.

    A random sample of a balanced task with many classes often leaves some class far below its even share (100
    labels of 14 even classes: one under half its share in 2 samples of 3); this test says it is chance.

    Args:
        counts: ``[C]`` class counts.
        alpha: the test's level.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if len(counts) < 2 or float(counts.sum()) <= 0:
        return False
    expected = counts.sum() / len(counts)
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return _chi_square_p(statistic, len(counts) - 1) < alpha


def _chi_square_p(statistic: float, dof: int) -> float:
    """The chi-square distribution's survival function (the regularised upper incomplete gamma function)."""
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         torch.tensor(statistic / 2.0, dtype=torch.float64)))


def training_prior(counts: torch.Tensor, class_weight: str | None = None,
                   logit_adjustment: float = 0.0) -> torch.Tensor:
    """The class prior a model's probabilities carry after training on labels with these class ``counts``
    (smoothed by half an item, so an absent class keeps a small share): the labels' shares ``π`` under plain
    cross-entropy; ``π^(1−τ)`` with the logit-adjusted loss of ``τ = logit_adjustment`` (Menon et al., arXiv
    2007.07314: training adds ``τ log π`` to the logits, prediction leaves it out); divided by ``π`` once more
    with ``class_weight="balanced"`` (each class's loss weighted by ``1/π``), so uniform for the balanced loss
    alone.

    Args:
        counts: ``[C]`` labels per class.
        class_weight: ``None`` or ``"balanced"`` (:class:`~loracle.training.config.TrainConfig`).
        logit_adjustment: ``τ >= 0``.

    Returns:
        ``[C]`` float64 shares summing to 1.
    """
    smoothed = torch.as_tensor(counts, dtype=torch.float64).reshape(-1) + 0.5
    prior = smoothed / smoothed.sum()
    carried = prior ** (1.0 - float(logit_adjustment))
    if class_weight == "balanced":
        carried = carried / prior
    return carried / carried.sum()


def pool_prior_shift(initial: torch.Tensor, labelled: torch.Tensor, class_weight: str | None = None,
                     logit_adjustment: float = 0.0, alpha: float = 0.01
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(source, target)`` priors that move a model trained on the ``labelled`` class counts to the pool's
    prior, estimated by the ``initial`` counts (a random sample of the pool); None when the labels queried since
    (``labelled − initial``) do not differ from that sample in class shares at level ``alpha``
    (:func:`shares_differ`), so random sampling and a strategy that keeps the shares are left as they are and the
    estimate's noise is not added to them.

    ``source`` is :func:`training_prior` of the labelled counts under the round's loss; ``target`` the initial
    counts' shares, both smoothed by half an item. Apply with :func:`shift_prior`.

    Args:
        initial: ``[C]`` counts of the round-0 labels.
        labelled: ``[C]`` counts of every label the model trained on (the round-0 ones included).
        class_weight, logit_adjustment: the round's training loss (:func:`training_prior`).
        alpha: the test's level.

    Raises:
        ValueError: for counts of different lengths or an initial count above the labelled one.
    """
    initial = torch.as_tensor(initial, dtype=torch.float64).reshape(-1)
    labelled = torch.as_tensor(labelled, dtype=torch.float64).reshape(-1)
    if initial.shape != labelled.shape or bool((labelled < initial).any()):
        raise ValueError(f"labelled counts {labelled.tolist()} must include the initial counts {initial.tolist()}, "
                         "class by class")
    if not shares_differ(initial, labelled - initial, alpha):
        return None
    target = (initial + 0.5) / (initial + 0.5).sum()
    return training_prior(labelled, class_weight, logit_adjustment), target
