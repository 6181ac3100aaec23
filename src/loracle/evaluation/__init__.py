"""Evaluation: metrics (accuracy, macro-F1, ECE, NLL, Brier), ``evaluate`` and plots."""

from loracle.evaluation.evaluate import evaluate
from loracle.evaluation.metrics import (
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    reliability_bins,
)
from loracle.evaluation.plots import reliability_diagram

__all__ = [
    "accuracy",
    "brier_score",
    "classification_metrics",
    "evaluate",
    "expected_calibration_error",
    "macro_f1",
    "negative_log_likelihood",
    "reliability_bins",
    "reliability_diagram",
]
