"""Label-free uncertainty scores: pure functions of predicted probabilities, no model and no labels.

Every classification score maps stochastic predictions ``probs`` of shape ``[N items, S samples, C classes]`` to
one score per item, shape ``[N]``, where **larger means more uncertain** (so strategies can always take the top-k).
Generation scores map per-token quantities of the model's own answer (never the gold answer) to ``[N]``.

Definitions (METHODS.md, "Shared definitions"), with ``p̄ = mean_s p_s``:

- predictive entropy ``H[p̄] = -Σ_c p̄_c log p̄_c``;
- BALD (mutual information) ``H[p̄] - mean_s H[p_s]``;
- least confidence ``1 - max_c p̄_c``;
- margin ``p̄(1st) - p̄(2nd)`` is returned **negated**, ``-(p̄(1st) - p̄(2nd))``, so larger is more uncertain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# Clamp before log so that p = 0 contributes 0 (0 · log 0 = 0) instead of NaN.
_EPS = 1e-12


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    if probs.dim() != 3:
        raise ValueError(
            f"probs must have shape [N items, S samples, C classes], got {tuple(probs.shape)}; "
            "add a sample axis with probs.unsqueeze(1) for a single deterministic prediction"
        )
    if probs.shape[-1] < 2:
        raise ValueError(f"probs needs at least 2 classes, got C={probs.shape[-1]}")
    return probs.double()


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy in nats along ``dim``: ``-Σ p log p`` (with ``0 log 0 = 0``)."""
    return -(probs * probs.clamp_min(_EPS).log()).sum(dim)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``H[mean_s p]``, the entropy of the averaged prediction.

    Args:
        probs: ``[N, S, C]`` class probabilities.

    Returns:
        ``[N]`` (float64), in nats, in ``[0, log C]``.
    """
    return entropy(_check_probs(probs).mean(1))


def bald(probs: torch.Tensor) -> torch.Tensor:
    """BALD / mutual information between the prediction and the model: ``H[mean_s p] - mean_s H[p_s]``.

    Zero when all samples agree (one sample, or deterministic passes); clamped at 0 against rounding.

    Args:
        probs: ``[N, S, C]``.

    Returns:
        ``[N]`` (float64), in nats.
    """
    p = _check_probs(probs)
    return (entropy(p.mean(1)) - entropy(p).mean(1)).clamp_min(0.0)


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """``1 - max_c mean_s p_c``.

    Args:
        probs: ``[N, S, C]``.

    Returns:
        ``[N]`` (float64) in ``[0, 1 - 1/C]``.
    """
    return 1.0 - _check_probs(probs).mean(1).max(-1).values


def margin(probs: torch.Tensor) -> torch.Tensor:
    """Negated margin ``-(p̄(1st) - p̄(2nd))``: the usual margin is smaller when more uncertain, so it is negated.

    Args:
        probs: ``[N, S, C]``.

    Returns:
        ``[N]`` (float64) in ``[-1, 0]``; 0 means a tie between the two most likely classes.
    """
    top2 = _check_probs(probs).mean(1).topk(2, dim=-1).values  # (N, 2)
    return -(top2[:, 0] - top2[:, 1])


def _ragged(values: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a list of 1-d tensors to ``[N, T]`` with a mask, or pass a padded tensor (and optional mask) through."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 2:
            raise ValueError(f"expected a padded [N, T] tensor, got shape {tuple(values.shape)}")
        m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
        return values.double(), m
    if mask is not None:
        raise ValueError("mask is only used with a padded [N, T] tensor, not a list of per-item tensors")
    n, longest = len(values), max((len(v) for v in values), default=0)
    out = torch.zeros(n, longest, dtype=torch.float64)
    m = torch.zeros(n, longest, dtype=torch.bool)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.as_tensor(v, dtype=torch.float64)
        m[i, : len(v)] = True
    return out, m


def sequence_nll(token_logprobs: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Length-normalised negative log-likelihood of the model's **own** answer: ``-(1/T) Σ_t log p(y_t | y_<t, x)``.

    Args:
        token_logprobs: per item, the log-probabilities of the generated tokens: a list of ``[T_i]`` tensors or a
            padded ``[N, T]`` tensor with ``mask`` (True on real tokens).
        mask: ``[N, T]`` boolean, only with a padded tensor.

    Returns:
        ``[N]`` (float64); an empty answer scores 0.
    """
    values, m = _ragged(token_logprobs, mask)
    return -(values * m).sum(1) / m.sum(1).clamp_min(1)


def mean_token_entropy(token_entropies: Sequence[torch.Tensor] | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the answer's tokens of the entropy of the next-token distribution, ``(1/T) Σ_t H[p(· | y_<t, x)]``.

    Args:
        token_entropies: a list of ``[T_i]`` tensors or a padded ``[N, T]`` tensor with ``mask``.
        mask: ``[N, T]`` boolean, only with a padded tensor.

    Returns:
        ``[N]`` (float64); an empty answer scores 0.
    """
    values, m = _ragged(token_entropies, mask)
    return (values * m).sum(1) / m.sum(1).clamp_min(1)


#: Channels of the ``answer_scores`` tensor ``[N, S, 2]`` (see :func:`answer_scores_from_tokens`).
ANSWER_NLL, ANSWER_ENTROPY = 0, 1


def _check_answer_scores(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 3 or scores.shape[-1] != 2:
        raise ValueError(f"answer scores must have shape [N items, S samples, 2] (length-normalised NLL, mean "
                         f"token entropy), got {tuple(scores.shape)}")
    return scores.double()


def answer_scores_from_tokens(token_logprobs: torch.Tensor, token_entropies: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
    """Per-sample sequence scores of an answer from its per-token values.

    Args:
        token_logprobs: ``[N, S, T]`` log-probability of each answer token under each of ``S`` passes.
        token_entropies: ``[N, S, T]`` next-token entropy at each answer token.
        mask: ``[N, T]`` or ``[N, S, T]``, True on answer tokens.

    Returns:
        ``[N, S, 2]`` (float64): channel ``ANSWER_NLL`` the length-normalised NLL ``-(1/T) Σ_t log p(y_t)``,
        channel ``ANSWER_ENTROPY`` the mean token entropy; an empty answer scores 0.
    """
    m = mask.bool()
    if m.dim() == 2:
        m = m[:, None, :].expand_as(token_logprobs)
    m = m.double()
    length = m.sum(-1).clamp_min(1)
    nll = -(token_logprobs.double() * m).sum(-1) / length
    ent = (token_entropies.double() * m).sum(-1) / length
    return torch.stack([nll, ent], dim=-1)


def mc_sequence_nll(scores: torch.Tensor) -> torch.Tensor:
    """MC mean of the length-normalised NLL of the model's own answer, ``mean_s NLL_s``.

    Args:
        scores: ``[N, S, 2]`` answer scores.

    Returns:
        ``[N]`` (float64), in nats per token.
    """
    return _check_answer_scores(scores)[..., ANSWER_NLL].mean(1)


def mc_token_entropy(scores: torch.Tensor) -> torch.Tensor:
    """MC mean of the answer's mean token entropy.

    Args:
        scores: ``[N, S, 2]``.

    Returns:
        ``[N]`` (float64), in nats.
    """
    return _check_answer_scores(scores)[..., ANSWER_ENTROPY].mean(1)


def sequence_nll_variance(scores: torch.Tensor) -> torch.Tensor:
    """The generation analogue of BALD: the spread across stochastic passes of the answer's (length-normalised)
    log-likelihood, ``Var_s[NLL_s]`` (population variance, 0 for one sample). Large when the adapter's posterior
    samples (MC dropout, MonteCLoRA) disagree about the answer, i.e. epistemic uncertainty.

    Args:
        scores: ``[N, S, 2]``.

    Returns:
        ``[N]`` (float64), in nats².
    """
    nll = _check_answer_scores(scores)[..., ANSWER_NLL]
    return nll.var(1, unbiased=False)


def answer_confidence(scores: torch.Tensor) -> torch.Tensor:
    """The answer's length-normalised probability ``exp(-mean_s NLL_s)`` in ``(0, 1]`` (its confidence).

    Args:
        scores: ``[N, S, 2]``.

    Returns:
        ``[N]`` (float64).
    """
    return torch.exp(-mc_sequence_nll(scores))


#: Scores of the model's own generated answer by name (``answer_scores [N, S, 2] -> [N]``, larger = more
#: uncertain).
ANSWER_SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sequence_nll": mc_sequence_nll,
    "token_entropy": mc_token_entropy,
    "nll_variance": sequence_nll_variance,
}


def get_answer_score(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Look a generation (answer) score up by name.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in ANSWER_SCORES:
        raise ValueError(f"unknown answer score {name!r}; valid answer scores: {sorted(ANSWER_SCORES)}")
    return ANSWER_SCORES[name]


#: Classification scores by name (the names strategies and the CLI accept).
SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": predictive_entropy,
    "bald": bald,
    "least_confidence": least_confidence,
    "margin": margin,
}

#: Scores that are never negative (so ``score^β`` is defined, as power sampling needs); margin is ``<= 0``.
NONNEGATIVE_SCORES: frozenset[str] = frozenset({"entropy", "bald", "least_confidence"})


def get_score(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Look a classification score up by name.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if name not in SCORES:
        raise ValueError(f"unknown uncertainty score {name!r}; valid scores: {sorted(SCORES)}")
    return SCORES[name]
