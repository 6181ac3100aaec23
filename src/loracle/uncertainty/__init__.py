"""Uncertainty: the stochastic-inference switch, MC prediction, pure scores and STAR's dynamic mix."""

from loracle.uncertainty.dynamic import dynamic_uncertainty, linear_schedule, minmax
from loracle.uncertainty.sampling import adapters_disabled, mc_probs, stochastic
from loracle.uncertainty.scores import (
    ANSWER_SCORES,
    SCORES,
    answer_confidence,
    answer_scores_from_tokens,
    bald,
    get_score,
    get_answer_score,
    least_confidence,
    margin,
    mc_sequence_nll,
    mc_token_entropy,
    mean_token_entropy,
    predictive_entropy,
    sequence_nll,
    sequence_nll_variance,
)

__all__ = [
    "ANSWER_SCORES",
    "SCORES",
    "answer_confidence",
    "answer_scores_from_tokens",
    "get_answer_score",
    "mc_sequence_nll",
    "mc_token_entropy",
    "sequence_nll_variance",
    "adapters_disabled",
    "bald",
    "dynamic_uncertainty",
    "get_score",
    "least_confidence",
    "linear_schedule",
    "margin",
    "mc_probs",
    "mean_token_entropy",
    "minmax",
    "predictive_entropy",
    "sequence_nll",
    "stochastic",
]
