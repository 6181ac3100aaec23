"""Evaluation: metrics (accuracy, macro-F1, ECE, NLL, Brier), ``evaluate`` and plots."""

from loracle.evaluation.evaluate import evaluate
from loracle.evaluation.metrics import (
    accuracy,
    balanced_decision_metrics,
    brier_score,
    classification_metrics,
    confidence_calibration,
    divide_prior,
    ece_floor,
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    prior_corrected,
    reliability_bins,
)
from loracle.evaluation.plots import answer_reliability_diagram, reliability_diagram

__all__ = [
    "accuracy",
    "answer_reliability_diagram",
    "balanced_decision_metrics",
    "brier_score",
    "classification_metrics",
    "confidence_calibration",
    "divide_prior",
    "ece_floor",
    "evaluate",
    "expected_calibration_error",
    "macro_f1",
    "negative_log_likelihood",
    "prior_corrected",
    "reliability_bins",
    "reliability_diagram",
]
