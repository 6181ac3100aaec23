"""Plots written to PNG files; matplotlib is imported inside each function (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from loracle.evaluation.metrics import (
    confidence_bins,
    confidence_calibration,
    expected_calibration_error,
    reliability_bins,
)


def reliability_diagram(probs: torch.Tensor, labels: torch.Tensor, path: str | Path, n_bins: int = 15,
                        title: str | None = None) -> Path:
    """Accuracy against confidence per equal-width bin, with the diagonal of perfect calibration and the ECE.

    Args:
        probs: ``[N, C]`` or ``[N, S, C]`` probabilities.
        labels: ``[N]``.
        path: PNG file to write (parent folders are created).
        n_bins: number of bins.
        title: figure title (default: "Reliability").

    Returns:
        The path written.
    """
    confidence, acc, count = reliability_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    return _draw_reliability(confidence, acc, count, ece, path, n_bins, title, "confidence (max probability)")


def answer_reliability_diagram(confidence: torch.Tensor, correct: torch.Tensor, path: str | Path, n_bins: int = 15,
                               title: str | None = None) -> Path:
    """:func:`reliability_diagram` of a generated answer's confidence (``exp(-NLL)``) against exact match.

    Args:
        confidence: ``[N]`` in ``[0, 1]``.
        correct: ``[N]`` bool or 0/1.
        path, n_bins, title: as in :func:`reliability_diagram`.
    """
    conf, acc, count = confidence_bins(confidence, correct, n_bins)
    ece = confidence_calibration(confidence, correct, n_bins)["ece"]
    return _draw_reliability(conf, acc, count, ece, path, n_bins, title or "Answer confidence",
                             "answer confidence exp(-NLL)")


def _draw_reliability(confidence: torch.Tensor, acc: torch.Tensor, count: torch.Tensor, ece: float,
                      path: str | Path, n_bins: int, title: str | None, xlabel: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = torch.linspace(0, 1, n_bins + 1)
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    filled = count > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar([c for c, f in zip(centres, filled) if f], acc[filled].tolist(), width=1 / n_bins, edgecolor="black",
            alpha=0.8, label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.plot(confidence[filled].tolist(), acc[filled].tolist(), "o", color="tab:red", ms=3, label="bin mean conf.")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(f"{title or 'Reliability'}\n(ECE {ece:.3f}, n={int(count.sum())})", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, count.tolist(), width=1 / n_bins, edgecolor="black", color="tab:grey")
    bottom.set_xlabel(xlabel)
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    return save_figure(fig, path, dpi=100)


def save_figure(fig: object, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write (creating parent folders) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
