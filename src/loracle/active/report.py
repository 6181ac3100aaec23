"""Reports of active-learning runs: a JSON summary and the learning curve (accuracy and ECE vs labels).

``learning_curve`` lives here rather than in ``evaluation/plots.py`` because it reads active-learning runs.
matplotlib is imported lazily.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loracle.active.state import RunState
from loracle.evaluation.plots import save_figure

REPORT_FILE = "report.json"
CURVE_FILE = "learning_curve.png"


def area_under_curve(n_labels: Sequence[float], values: Sequence[float]) -> float | None:
    """Normalised area under a learning curve: trapezoid rule divided by the label range (a mean accuracy).

    A single point returns its value; no points return None.
    """
    points = sorted(zip(n_labels, values))
    if not points:
        return None
    if len(points) == 1 or points[-1][0] == points[0][0]:
        return float(points[0][1])
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    return float(area / (points[-1][0] - points[0][0]))


def run_summary(state: RunState) -> dict[str, Any]:
    """Config, per-round metrics, label counts by source, the area under the accuracy curve, and status."""
    from loracle.active.config import ALConfig

    config = ALConfig.from_dict(state.config)
    rounds = state.rounds()
    sources: dict[str, int] = {}
    for _, _, _, source in state.label_rows():
        sources[source] = sources.get(source, 0) + 1
    curve = {
        "n_labels": [r["n_labels"] for r in rounds],
        **{key: [r["metrics"].get(key) for r in rounds] for key in ("accuracy", "ece", "nll", "brier", "macro_f1")
           if any(key in r["metrics"] for r in rounds)},
    }
    done = len(rounds) == config.n_rounds + 1
    waiting = config.oracle == "human" and state.pending_queries()
    status = "done" if done else ("waiting_for_labels" if waiting else "in_progress")
    return {
        "run_dir": str(state.run_dir),
        "strategy": config.strategy,
        "status": status,
        "rounds_completed": len(rounds),
        "rounds_planned": config.n_rounds + 1,
        "labels": len(state.labels()),
        "labels_by_source": sources,
        "pending_queries": len(state.pending_queries()),
        "curve": curve,
        "aulc_accuracy": area_under_curve(curve["n_labels"], curve.get("accuracy", [])) if rounds else None,
        "aulc_ece": area_under_curve(curve["n_labels"], curve.get("ece", [])) if "ece" in curve else None,
        "rounds": rounds,
        "config": config.to_dict(),
    }


def learning_curve(runs: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path,
                   title: str = "Active learning") -> Path:
    """Plot accuracy and ECE against the number of labels, one line per run (or per strategy).

    Args:
        runs: ``{name: {"n_labels": [...], "accuracy": [...], "ece": [...]}}``; optional ``"accuracy_std"`` and
            ``"ece_std"`` draw bands (across seeds).
        path: PNG to write.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in runs.items():
        x = list(curve["n_labels"])
        for ax, key in zip(axes, ("accuracy", "ece")):
            if key not in curve:
                continue
            y = [float("nan") if v is None else v for v in curve[key]]
            (line,) = ax.plot(x, y, marker="o", label=name)
            std = curve.get(f"{key}_std")
            if std is not None:
                ax.fill_between(x, [a - s for a, s in zip(y, std)], [a + s for a, s in zip(y, std)], alpha=0.15,
                                color=line.get_color())
    for ax, label in zip(axes, ("test accuracy", "test ECE (15 bins)")):
        ax.set_xlabel("number of labels")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=120)


def write_report(state: RunState) -> dict[str, Any]:
    """Write ``report.json`` and ``learning_curve.png`` into the run folder; returns the summary."""
    summary = run_summary(state)
    (state.run_dir / REPORT_FILE).write_text(json.dumps(summary, indent=2))
    if summary["rounds"]:
        learning_curve({summary["strategy"]: summary["curve"]}, state.run_dir / CURVE_FILE,
                       title=f"{summary['strategy']} ({state.run_dir.name})")
    return summary


def compare_runs(run_dirs: Sequence[str | Path], output: str | Path) -> dict[str, Any]:
    """One learning curve and one JSON over several runs (labelled by strategy, or folder name on a clash).

    Writes ``<output>/compare.json`` and ``<output>/learning_curve.png``.
    """
    summaries = []
    for run_dir in run_dirs:
        state = RunState.open(run_dir)
        try:
            summaries.append(run_summary(state))
        finally:
            state.close()
    names = [s["strategy"] for s in summaries]
    labels = [n if names.count(n) == 1 else f"{n} ({Path(s['run_dir']).name})" for n, s in zip(names, summaries)]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    result = {label: {k: s[k] for k in ("run_dir", "status", "labels", "curve", "aulc_accuracy", "aulc_ece")}
              for label, s in zip(labels, summaries)}
    (output / "compare.json").write_text(json.dumps(result, indent=2))
    learning_curve({label: s["curve"] for label, s in zip(labels, summaries)}, output / CURVE_FILE,
                   title="Active learning: strategies compared")
    return result
