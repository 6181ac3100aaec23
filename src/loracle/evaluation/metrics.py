"""Classification metrics on predicted probabilities: accuracy, macro-F1, per-class recall, ECE (and the floor a
calibrated model would show on the same number of items), NLL and Brier score.

Every function takes ``probs`` of shape ``[N, C]`` (rows sum to 1) or ``[N, S, C]`` (MC samples, averaged over
``S`` first) and integer ``labels`` of shape ``[N]``, and returns a Python float.
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(probs, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if probs.dim() == 3:
        probs = probs.mean(dim=1)  # (N, S, C) -> (N, C)
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape [N, C] or [N, S, C], got {tuple(probs.shape)}")
    if probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"probs has {probs.shape[0]} rows but labels has {labels.shape[0]}; expected equal, > 0")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be in 0..{probs.shape[1] - 1}, got range {int(labels.min())}.."
                         f"{int(labels.max())}")
    return probs, labels


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax is the label."""
    probs, labels = _check(probs, labels)
    return (probs.argmax(-1) == labels).double().mean().item()


def macro_f1(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean over classes of ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.

    Classes that occur neither in the labels nor in the predictions are left out of the mean (their F1 is 0/0).
    """
    probs, labels = _check(probs, labels)
    predicted = probs.argmax(-1)
    scores = []
    for c in range(probs.shape[1]):
        tp = ((predicted == c) & (labels == c)).sum().item()
        fp = ((predicted == c) & (labels != c)).sum().item()
        fn = ((predicted != c) & (labels == c)).sum().item()
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def per_class_recall(probs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """``recall_c = TP_c / (TP_c + FN_c)`` for every class ``c = 0..C-1``: the share of class ``c`` items predicted
    as ``c``. A class absent from the labels has recall NaN (0/0).

    Returns:
        ``C`` floats, position ``c`` for class ``c``.
    """
    probs, labels = _check(probs, labels)
    n_classes = probs.shape[1]
    hits = torch.bincount(labels[probs.argmax(-1) == labels], minlength=n_classes).double()
    support = torch.bincount(labels, minlength=n_classes).double()
    return (hits / support).tolist()  # 0/0 -> nan for absent classes


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean confidence, accuracy and count over equal-width bins of the max probability.

    Bin ``b`` (0-based) holds confidences in ``(b / n_bins, (b + 1) / n_bins]``; a confidence of exactly 0 goes
    to bin 0.

    Returns:
        ``(confidence [n_bins], accuracy [n_bins], count [n_bins])``; empty bins have confidence and accuracy 0.
    """
    probs, labels = _check(probs, labels)
    confidence, predicted = probs.max(-1)
    return confidence_bins(confidence, predicted == labels, n_bins)


def confidence_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`reliability_bins` for given confidences ``[N]`` in ``[0, 1]`` and correctness ``[N]`` (bool or 0/1),
    e.g. a generated answer's probability against exact match.

    Raises:
        ValueError: for ``n_bins < 1``, different lengths, no items or confidences outside ``[0, 1]``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = torch.as_tensor(confidence, dtype=torch.float64).reshape(-1)
    correct = torch.as_tensor(correct).reshape(-1).double()
    if confidence.shape != correct.shape or confidence.numel() == 0:
        raise ValueError(f"confidence ({confidence.numel()}) and correct ({correct.numel()}) must be equally many "
                         "(> 0)")
    if confidence.min() < 0 or confidence.max() > 1:
        raise ValueError(f"confidences must be in [0, 1], got range {confidence.min().item():.4g}.."
                         f"{confidence.max().item():.4g}")
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).index_add(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add(0, index, confidence)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add(0, index, correct)
    safe = count.clamp(min=1)
    return conf_sum / safe, acc_sum / safe, count


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """``ECE = Σ_b (n_b / n) |acc_b − conf_b|`` over ``n_bins`` equal-width bins of the max probability."""
    confidence, acc, count = reliability_bins(probs, labels, n_bins)
    return ((count / count.sum()) * (acc - confidence).abs()).sum().item()


def ece_floor(probs: torch.Tensor, n_bins: int = 15, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences would show on this many items, on average.

    ECE measured on a finite test set is biased upwards: even when every confidence is exactly the probability of
    being right, each bin's accuracy is a sample mean, and ``|acc_b − conf_b|`` is positive (Kumar, Liang & Ma,
    arXiv 1909.10155; Roelofs et al., arXiv 2012.08668). This floor is that bias for the predictions at hand: each
    of ``draws`` simulations marks item ``i`` right with probability equal to its top-class probability, and the
    mean of their ECEs (same ``n_bins`` equal-width bins as :func:`expected_calibration_error`) is returned. It
    shrinks about as ``1/sqrt(N)``; an ECE near it says the test set cannot tell the model from a calibrated one.

    Args:
        probs: ``[N, C]`` probabilities (or ``[N, S, C]`` samples, averaged over ``S`` first).
        n_bins: bins of the ECE it stands beside.
        draws: simulations (the Monte Carlo error of the mean is well under 0.001 at the default).
        seed: seeds the simulations (the same inputs give the same floor).

    Raises:
        ValueError: for probabilities of another shape, no items, ``n_bins < 1`` or ``draws < 1``.
    """
    probs = torch.as_tensor(probs, dtype=torch.float64)
    probs = probs.mean(dim=1) if probs.dim() == 3 else probs
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape [N, C] or [N, S, C] with N > 0, got {tuple(probs.shape)}")
    if n_bins < 1 or draws < 1:
        raise ValueError(f"n_bins and draws must be >= 1, got {n_bins} and {draws}")
    confidence = probs.max(-1).values.clamp(0.0, 1.0)
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add(0, index, confidence)
    generator = torch.Generator().manual_seed(seed)
    correct = (torch.rand(draws, len(confidence), generator=generator, dtype=torch.float64) < confidence).double()
    acc_sum = torch.zeros(draws, n_bins, dtype=torch.float64).index_add(1, index, correct)
    return ((acc_sum - conf_sum).abs().sum(-1) / len(confidence)).mean().item()


def confidence_calibration(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """Calibration of a confidence in being right (e.g. a generated answer's length-normalised probability
    ``exp(-NLL)`` against exact match).

    Returns:
        ``{"ece": Σ_b (n_b / n) |acc_b − conf_b|, "brier": mean (conf − correct)²}``.
    """
    conf, acc, count = confidence_bins(confidence, correct, n_bins)
    c = torch.as_tensor(confidence, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(correct).reshape(-1).double()
    return {"ece": ((count / count.sum()) * (acc - conf).abs()).sum().item(),
            "brier": (c - y).pow(2).mean().item()}


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``−log p(label)`` (natural log; probabilities clamped at 1e-12)."""
    probs, labels = _check(probs, labels)
    return -probs.gather(1, labels[:, None]).clamp(min=_EPS).log().mean().item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: ``mean_i Σ_c (p_ic − 1[c = y_i])²`` (sum over classes, mean over examples; 0 best,
    2 worst)."""
    probs, labels = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return ((probs - onehot) ** 2).sum(-1).mean().item()


def prior_corrected(probs: torch.Tensor, train_labels: torch.Tensor) -> torch.Tensor:
    """``p_c / π_c``, renormalised: the probabilities with the class shares ``π`` of the training labels divided
    out (the post-hoc logit adjustment of Menon et al., arXiv 2007.07314 §4, with τ = 1). Their argmax is the
    decision that maximises balanced accuracy when ``probs`` are calibrated for the training prior; it predicts a
    rare class far more often than the plain argmax, which serves macro-F1 on imbalanced data and costs accuracy.
    A class absent from ``train_labels`` counts half an item, so nothing is divided by 0.

    Args:
        probs: ``[N, C]`` probabilities (or ``[N, S, C]`` samples, averaged over ``S`` first).
        train_labels: the integer labels the model was trained on, in ``0..C-1``.
    """
    probs = probs.mean(1) if probs.dim() == 3 else probs
    labels = torch.as_tensor(train_labels, dtype=torch.long).reshape(-1)
    if probs.dim() != 2 or not len(labels) or int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
        raise ValueError(f"probs must be [N, C] and train_labels non-empty in 0..C-1; got probs "
                         f"{tuple(probs.shape)} and {len(labels)} labels")
    return divide_prior(probs, torch.bincount(labels, minlength=probs.shape[1]).double().clamp_min(0.5))


def divide_prior(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """``p_c / π_c``, renormalised over the last axis: ``probs`` that carry the class prior ``π`` with it divided
    out (:func:`prior_corrected` takes ``π`` from training labels). Their argmax maximises balanced accuracy (the
    mean of the per-class recalls) when ``probs`` are calibrated under ``π``.

    Args:
        probs: ``[..., C]`` probabilities.
        prior: ``[C]`` positive class shares (normalised here).

    Raises:
        ValueError: ``prior`` is not ``C`` positive numbers.
    """
    prior = torch.as_tensor(prior, dtype=torch.float64).reshape(-1)
    if len(prior) != probs.shape[-1] or not bool((prior > 0).all()):
        raise ValueError(f"prior must be {probs.shape[-1]} positive class shares, got {prior.tolist()}")
    corrected = probs.double() / (prior / prior.sum())
    return (corrected / corrected.sum(-1, keepdim=True)).to(probs.dtype)


def expected_macro_f1(probs: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """The macro-F1 that ``predicted`` classes would score if the true classes were drawn from ``probs``: per
    class ``2·E[TP] / (#predicted + E[#true])``, averaged over classes (the plug-in estimate of Nan Ye et al.,
    arXiv 1206.4625; a ratio of expectations, close to the expected ratio over hundreds of items).

    Args:
        probs: ``[N, C]`` calibrated probabilities of the items.
        predicted: ``[N]`` class indices, or ``[G, N]`` for ``G`` candidate decisions at once.

    Returns:
        A 0-dim tensor, or ``[G]``.
    """
    p = probs.double()
    picks = predicted.long()
    single = picks.dim() == 1
    picks = picks.reshape(-1, p.shape[0])
    hit = p.expand(picks.shape[0], *p.shape).gather(2, picks[..., None])[..., 0]  # [G, N]: p of the picked class
    tp = torch.zeros(picks.shape[0], p.shape[1], dtype=torch.float64).scatter_add_(1, picks, hit)
    count = torch.zeros_like(tp).scatter_add_(1, picks, torch.ones_like(hit))
    f1 = 2 * tp / (count + p.sum(0)).clamp_min(_EPS)
    return f1.mean(1)[0] if single else f1.mean(1)


def f1_log_weights(probs: torch.Tensor, sweeps: int = 3) -> torch.Tensor:
    """``[C]`` log class weights ``w`` for which ``argmax_c(log p_c + w_c)`` maximises :func:`expected_macro_f1`
    on these items: the decision-theoretic macro-F1 decision (arXiv 1206.4625) for calibrated ``probs``.

    With two classes this is the threshold on ``p`` that maximises the expected F1 of both classes together; for
    the rarer class of calibrated probabilities the best threshold sits near half its best F1 (Lipton et al.,
    arXiv 1402.1892), far below 0.5, so the decision names a rare class much more often than the argmax and less
    often than the balanced decision (:func:`divide_prior`). With more classes each weight is searched in turn over
    ``[-4, 4]`` in steps of 0.1, ``sweeps`` times (coordinate ascent from the argmax: the decision is never worse
    than the argmax by this estimate). The weights depend on the whole set of items predicted, so they need a few
    hundred of them from the distribution the probabilities are calibrated for.

    Args:
        probs: ``[N, C]`` calibrated probabilities.
        sweeps: passes over the classes.

    Raises:
        ValueError: ``probs`` is not ``[N, C]``.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs must have shape [N, C], got {tuple(probs.shape)}")
    p = probs.double()
    classes = p.shape[1]
    weights = torch.zeros(classes, dtype=torch.float64)
    if p.shape[0] == 0 or classes < 2:
        return weights
    log_p = p.clamp_min(_EPS).log()
    grid = torch.linspace(-4.0, 4.0, 81, dtype=torch.float64)
    best = float(expected_macro_f1(p, log_p.argmax(-1)))
    for _ in range(sweeps):
        moved = False
        for c in range(classes):
            candidates = weights.repeat(len(grid), 1)
            candidates[:, c] = grid
            scores = expected_macro_f1(p, (log_p[None] + candidates[:, None, :]).argmax(-1))
            g = int(scores.argmax())
            if float(scores[g]) > best + 1e-12:
                best, weights, moved = float(scores[g]), candidates[g], True
        if not moved:
            break
    return weights


def balanced_decision_metrics(probs: torch.Tensor, labels: torch.Tensor, train_labels: torch.Tensor
                              ) -> dict[str, float]:
    """``accuracy_balanced`` and ``macro_f1_balanced``: accuracy and macro-F1 of the argmax of
    :func:`prior_corrected` probabilities (the class prior of ``train_labels`` divided out)."""
    corrected = prior_corrected(probs, train_labels)
    return {"accuracy_balanced": accuracy(corrected, labels), "macro_f1_balanced": macro_f1(corrected, labels)}


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """All of the above as flat floats: ``accuracy``, ``macro_f1``, ``ece``, ``ece_floor`` (:func:`ece_floor`: the
    ECE a calibrated model with these confidences would show on this many items), ``nll``, ``brier``, and
    ``recall_<c>`` (:func:`per_class_recall`) for each class ``c`` that occurs in ``labels``."""
    recalls = per_class_recall(probs, labels)
    return {
        "accuracy": accuracy(probs, labels),
        "macro_f1": macro_f1(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "ece_floor": ece_floor(probs, n_bins),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
        **{f"recall_{c}": r for c, r in enumerate(recalls) if r == r},  # r != r only for NaN (absent class)
    }
