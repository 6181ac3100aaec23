"""Uncertainty: the stochastic-inference switch, MC prediction, pure scores and STAR's dynamic mix."""

from loracle.uncertainty.dynamic import dynamic_uncertainty, linear_schedule, minmax
from loracle.uncertainty.sampling import adapters_disabled, mc_probs, stochastic
from loracle.uncertainty.scores import (
    SCORES,
    bald,
    get_score,
    least_confidence,
    margin,
    mean_token_entropy,
    predictive_entropy,
    sequence_nll,
)

__all__ = [
    "SCORES",
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
