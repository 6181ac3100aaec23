"""Reports of active-learning runs: the per-round log line, a JSON summary and the learning curve.

The learning curve plots test accuracy, macro-F1 and ECE against the number of labels, with the majority-class
baseline dashed. It lives here rather than in ``evaluation/plots.py`` because it reads active-learning runs;
matplotlib is imported lazily. Every number meant for people is shown with :data:`DECIMALS` decimals.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from loracle.active.state import RunState
from loracle.evaluation.plots import save_figure

REPORT_FILE = "report.json"
CURVE_FILE = "learning_curve.png"
COMPARE_FILE = "compare.json"
ANSWER_RELIABILITY_FILE = "answer_reliability.png"
RELIABILITY_FILE = "reliability.png"
#: decimals of every metric shown to people (log lines, ``al status``, ``al compare``, plot legends)
DECIMALS = 3
#: the metrics of the per-round line, the status table and the plot panels: key, label
METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("ece", "ECE"))
#: the timed phases of a round, in order
PHASES = ("train", "evaluate", "score")


def format_value(value: float | None, decimals: int = DECIMALS) -> str:
    """``value`` with ``decimals`` decimals, or ``n/a`` for a missing (None or NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{decimals}f}"


def format_round_line(round_index: int, n_labels: int, metrics: Mapping[str, float | None],
                      phase_seconds: Mapping[str, float | None], temperature_items: str = "initial") -> str:
    """The one log line written after each round of a run.

    Example: ``round 2 (14 labels): accuracy 0.850, macro-F1 0.843, ECE 0.071 (noise floor 0.052); train 3.2 s,
    evaluate 0.4 s, score n/a``. The noise floor (``ece_floor``, of the calibrated predictions where the round has
    them) is the ECE a perfectly calibrated model with the same confidences would show on this test set
    (:func:`~loracle.evaluation.metrics.ece_floor`): an ECE near it is as good as this test set can tell.

    Args:
        round_index: the round ``t`` (0: trained on the initial set).
        n_labels: labels the round's model was trained on.
        metrics: test metrics; ``accuracy``, ``macro_f1`` and ``ece`` are shown, a missing one as ``n/a``, and
            ``ece_calibrated`` and the noise floor where present; for an ensemble round, also the test ECE
            the cross-fitted temperature (fitted on ``temperature_items``, the run's ``calibration_items``) gave,
            and for every cross-fitted round the ensemble at its matched temperature (``ece_matched``) and the
            round model at its own (``ece_export``, what ``al export`` writes); the
            accuracy and macro-F1 of the classes ``al predict`` names by default from the calibrated predictions
            (``accuracy_calibrated``, ``macro_f1_calibrated``, ``decision_balanced``) where present.
        phase_seconds: seconds of the phases ``train``, ``evaluate`` and ``score``; a missing one is ``n/a``
            (the last round scores nothing). A round whose model stopped before its planned steps
            (``train_steps`` below ``train_steps_planned``: ``al run --train-steps folds``) says where.

    Returns:
        The line, without a newline.
    """
    shown = ", ".join(f"{label} {format_value(metrics.get(key))}" for key, label in METRICS)
    notes = []
    if metrics.get("ece_calibrated") is not None:
        matched = "ensemble_members" in metrics and "temperature_matched" in metrics and "ece_matched" not in metrics
        how = (f"for the ensemble of {int(metrics['ensemble_members'])}" if "ensemble_members" in metrics
               else "after temperature scaling")
        if matched:  # calibration "matched": the ensemble at the temperature that matches its confidence
            how += f" at the matched temperature {format_value(metrics['temperature_matched'], 2)}"
        notes.append(f"{format_value(metrics.get('ece_calibrated'))} {how}")
        if matched and metrics.get("ece_ensemble") is not None:
            notes.append(f"{format_value(metrics['ece_ensemble'])} for the plain ensemble")
        if metrics.get("calibration_temperature") and metrics.get("ece_ensemble") is not None:
            # calibration "auto" chose the temperature (below 1): the ensemble it passed over
            notes.append(f"{format_value(metrics['ece_ensemble'])} for the ensemble, passed over as the "
                         f"temperature {format_value(metrics.get('temperature'), 2)} is below 1")
        if "ensemble_members" in metrics and metrics.get(f"ece_calibrated_{temperature_items}") is not None:
            # the alternative the run scored beside it (`al predict --calibration temperature` applies it)
            notes.append(f"{format_value(metrics[f'ece_calibrated_{temperature_items}'])} with the cross-fitted "
                         f"temperature {format_value(metrics.get(f'temperature_{temperature_items}'), 2)}")
        if metrics.get("ece_matched") is not None:  # scored beside every cross-fitted calibration
            notes.append(f"{format_value(metrics['ece_matched'])} for the ensemble at the matched temperature "
                         f"{format_value(metrics.get('temperature_matched'), 2)}")
        if metrics.get("ece_export") is not None:  # the round model alone, as `al export` writes it
            notes.append(f"{format_value(metrics['ece_export'])} for the round model at its matched temperature "
                         f"{format_value(metrics.get('temperature_export'), 2)} (`al export`)")
    if metrics.get("macro_f1_calibrated") is not None:  # the classes `al predict` names by default
        decision = "balanced decision" if metrics.get("decision_balanced") else "argmax"
        notes.append(f"calibrated output ({decision}): accuracy {format_value(metrics.get('accuracy_calibrated'))}, "
                     f"macro-F1 {format_value(metrics['macro_f1_calibrated'])}")
    floor = metrics.get("ece_floor_calibrated", metrics.get("ece_floor"))
    if floor is not None and floor == floor:
        notes.append(f"noise floor {format_value(floor)}")
    if notes:
        shown += f" ({'; '.join(notes)})"
    times = ", ".join(f"{phase} {_seconds(phase_seconds.get(phase))}" for phase in PHASES)
    steps, planned = metrics.get("train_steps"), metrics.get("train_steps_planned")
    if steps is not None and planned is not None and steps < planned:  # train_steps="folds" stopped it early
        times += f"; stopped at step {int(steps)} of {int(planned)} by the folds' held-out loss"
    return f"round {round_index} ({n_labels} labels): {shown}; {times}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def area_under_curve(n_labels: Sequence[float], values: Sequence[float | None]) -> float | None:
    """Normalised area under a learning curve: trapezoid rule divided by the label range (a mean accuracy).

    A single point returns its value; no points (or a missing value) return None.
    """
    points = sorted(zip(n_labels, values))
    if not points or any(v is None for _, v in points):
        return None
    if len(points) == 1 or points[-1][0] == points[0][0]:
        return float(points[0][1])
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    return float(area / (points[-1][0] - points[0][0]))


def majority_baseline(labels: Sequence[int | None]) -> dict[str, float] | None:
    """Test scores of always predicting the most frequent label: the floor a model must beat.

    With ``p`` the most frequent label's share and ``K`` the number of distinct labels, accuracy is ``p`` and
    macro-F1 is ``(2p / (1 + p)) / K``: the majority class has precision ``p`` and recall 1, every other class F1 0
    (the mean runs over the classes present, as :func:`loracle.evaluation.metrics.macro_f1` does).

    Returns:
        ``{"accuracy": p, "macro_f1": ...}``, or None without labels.
    """
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return None
    share = max(counts.values()) / sum(counts.values())
    return {"accuracy": share, "macro_f1": 2 * share / (1 + share) / len(counts)}


def display_name(name_or_path: str | None) -> str:
    """A short name for a model or dataset: a path's last component, anything else (``minilm``) as given."""
    if not name_or_path:
        return "?"
    text = str(name_or_path).rstrip("/\\")
    if text.startswith((".", "/", "~")) or "\\" in text or Path(text).exists():
        return Path(text).name or text
    return text


def run_summary(state: RunState) -> dict[str, Any]:
    """Config, per-round metrics, label counts by source, areas under the curves, the baseline, and status."""
    from loracle.active.config import ALConfig

    config = ALConfig.from_dict(state.config)
    rounds = state.rounds()
    sources: dict[str, int] = {}
    for _, _, _, source in state.label_rows():
        sources[source] = sources.get(source, 0) + 1
    curve = {
        "n_labels": [r["n_labels"] for r in rounds],
        **{key: [r["metrics"].get(key) for r in rounds]
           for key in ("accuracy", "macro_f1", "ece", "ece_floor", "nll", "brier", "ece_calibrated",
                       "ece_floor_calibrated", "nll_calibrated",
                       "brier_calibrated", "temperature", "accuracy_ensemble", "ece_ensemble", "macro_f1_balanced",
                       "accuracy_balanced", "accuracy_calibrated", "macro_f1_calibrated")
           if any(key in r["metrics"] for r in rounds)},
    }
    stopping = None
    if config.stopping and rounds:
        from loracle.active.loop import stop_decision

        decision = stop_decision(state, config.stopping)
        if decision is not None:
            stopping = {"stop": bool(decision.stop), "reason": decision.reason, "values": decision.values}
    done = len(rounds) == config.n_rounds + 1
    waiting = config.oracle == "human" and state.pending_queries()
    status = "done" if done else ("waiting_for_labels" if waiting else "in_progress")
    test_labels = [e.label for e in state.test_examples()]
    return {
        "run_dir": str(state.run_dir),
        "strategy": config.strategy,
        # who chose each round's queries (``auto``: the branch the round-0 labels picked); rounds 1, 2, ...
        "query_strategies": sorted({state.get_meta(f"query_strategy/{t}") for t in state.query_rounds()
                                    if state.get_meta(f"query_strategy/{t}")}),
        "dataset": display_name(config.data),
        "model": config.model,
        "status": status,
        "rounds_completed": len(rounds),
        "rounds_planned": config.n_rounds + 1,
        "labels": len(state.labels()),
        "labels_by_source": sources,
        "pending_queries": len(state.pending_queries()),
        "pool_size": state.pool_size(),
        "test_size": len(test_labels),
        "majority_baseline": majority_baseline(test_labels),
        "stopping": stopping,
        "training_recipe": _recipe(state, config),
        "curve": curve,
        **{f"aulc_{key}": area_under_curve(curve["n_labels"], curve[key]) if rounds and key in curve else None
           for key in ("accuracy", "macro_f1", "ece", "ece_calibrated")},
        "rounds": rounds,
        "config": config.to_dict(),
    }


def _recipe(state: RunState, config: Any) -> dict[str, Any]:
    """The adapter and training recipe the run used (the strategy's overrides included)."""
    from loracle.active.strategies import build_strategy

    try:
        overrides = dict(getattr(build_strategy(config.strategy, **config.strategy_options), "train_overrides", {}))
    except (ValueError, TypeError):
        overrides = {}
    train = config.train.to_dict()
    train.update({k: v for k, v in overrides.items() if train.get(k) is None})
    return {"adapter": config.adapter.to_dict(), "train": train, "calibration": config.calibration,
            "precision": config.precision}


def learning_curve(runs: Mapping[str, Mapping[str, Sequence[float | None]]], path: str | Path,
                   title: str = "Active learning", baseline: Mapping[str, float] | None = None,
                   subtitle: str | None = None) -> Path:
    """Plot test accuracy, macro-F1 and ECE against the number of labels, one line per run (or per strategy).

    Args:
        runs: ``{name: {"n_labels": [...], "accuracy": [...], "macro_f1": [...], "ece": [...]}}``; a metric a
            run lacks is left out of its panel; optional ``"<metric>_std"`` lists draw bands (across seeds). A run
            with ``"ece_calibrated"`` draws it solid in the ECE panel, beside the round model's ``"ece"`` dashed.
        path: PNG to write.
        title: the figure's title (say strategy, dataset and model).
        baseline: majority-class scores (:func:`majority_baseline`), drawn dashed on the accuracy and macro-F1
            panels.
        subtitle: a smaller second title line (pool and test sizes, seed).

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("accuracy", "test accuracy", "accuracy: higher is better"),
              ("macro_f1", "test macro-F1", "macro-F1: higher is better"),
              ("ece", "test ECE (15 bins)", "calibration error (ECE): lower is better"))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.4))
    ticks = sorted({x for curve in runs.values() for x in curve["n_labels"]})
    for ax, (key, label, heading) in zip(axes, panels):
        drawn = False
        for name, curve in runs.items():
            if key not in curve:
                continue
            x = list(curve["n_labels"])
            # the ECE panel: the calibrated output's (what `al predict` gives) solid, the round model's dashed
            calibrated = key == "ece" and any(v is not None for v in curve.get("ece_calibrated") or [])
            color = None
            for series, suffix, style in ((("ece_calibrated", ", calibrated", "-"), (key, ", round model", "--"))
                                          if calibrated else ((key, "", "-"),)):
                y = [float("nan") if v is None else v for v in curve[series]]
                last = next((v for v in reversed(y) if not math.isnan(v)), None)
                (line,) = ax.plot(x, y, marker="o", linestyle=style, color=color,
                                  label=f"{name}{suffix} (last {format_value(last)})")
                color = line.get_color()
                std = curve.get(f"{series}_std")
                if std is not None:
                    ax.fill_between(x, [a - s for a, s in zip(y, std)], [a + s for a, s in zip(y, std)],
                                    alpha=0.15, color=color)
            drawn = True
        if baseline is not None and key in baseline:
            ax.axhline(baseline[key], color="grey", linestyle="--", linewidth=1.2,
                       label=f"majority class ({format_value(baseline[key])})")
        if key == "ece" and drawn:
            ax.set_ylim(bottom=0)  # an error: its distance from 0 is what matters
        if not drawn:
            ax.text(0.5, 0.5, f"{key} not recorded", ha="center", va="center", transform=ax.transAxes,
                    color="grey")
        ax.set_xlabel("number of labels")
        ax.set_ylabel(label)
        ax.set_title(heading, fontsize=10)
        if 1 < len(ticks) <= 12:
            ax.set_xticks(ticks)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title if subtitle is None else f"{title}\n{subtitle}", fontsize=11)
    return save_figure(fig, path, dpi=120)


def _plot_title(summaries: Sequence[Mapping[str, Any]], strategies: str) -> str:
    datasets = sorted({s["dataset"] for s in summaries})
    models = sorted({display_name(s["model"]) for s in summaries})
    return f"{strategies} on {', '.join(datasets)} with {', '.join(models)}"


def write_report(state: RunState) -> dict[str, Any]:
    """Write ``report.json`` and ``learning_curve.png`` into the run folder; returns the summary."""
    summary = run_summary(state)
    (state.run_dir / REPORT_FILE).write_text(json.dumps(summary, indent=2))
    if summary["rounds"]:
        learning_curve({summary["strategy"]: summary["curve"]}, state.run_dir / CURVE_FILE,
                       title=_plot_title([summary], summary["strategy"]), baseline=summary["majority_baseline"],
                       subtitle=f"run {state.run_dir.name}: pool {summary['pool_size']}, test "
                       f"{summary['test_size']} items, seed {summary['config']['seed']}")
    if summary["rounds"]:
        last = summary["rounds"][-1]
        if state.is_generation():
            _answer_reliability(state, last["round"])
        else:
            _reliability(state, last)
    return summary


def calibrated_test_probs(state: RunState, row: Mapping[str, Any]) -> tuple[Any, str] | None:
    """``(probs, description)``: round ``row``'s calibrated test predictions as the run reported them
    (``ece_calibrated``), rebuilt from its stored test predictions (the round model's and its fold models') by the
    rule its checkpoint records (:class:`~loracle.active.predict.RoundCalibration`: the members' mean, the
    temperature, the move to the pool's prior); the round model's own where the round calibrated nothing. None
    where the round stored no test predictions."""
    import torch

    from loracle.active.predict import RoundCalibration

    t = row["round"]
    probs = state.get_signal(f"test_probs/{t}")
    if probs is None or not len(probs):
        return None
    metrics = row["metrics"] or {}
    folder = state.run_dir / (row["checkpoint"] or "")
    if "ece_calibrated" not in metrics or not row["checkpoint"] or not folder.is_dir():
        return probs, "round model"
    calibration = RoundCalibration.read(folder)
    members = [probs]
    if len(calibration.members) > 1:
        folds = state.get_signal(f"calibration_oof/{t}/test_probs")
        if folds is None or len(folds) != len(calibration.members) - 1:
            return probs, "round model"
        members += list(folds)
    out = calibration.apply([torch.as_tensor(m) for m in members]).float()
    what = {"ensemble": f"ensemble of {len(members)}",
            "matched": f"ensemble of {len(members)} at T {calibration.temperature or 1.0:.2f}",
            "temperature": f"temperature {calibration.temperature or 1.0:.2f}", "none": "round model"}
    return out, what[calibration.method] + (", in the pool's prior" if calibration.pool_prior is not None else "")


def _reliability(state: RunState, row: Mapping[str, Any]) -> None:
    """Classification: the reliability diagram of the last round's calibrated test predictions
    (``reliability.png``, :func:`calibrated_test_probs`: what ``ece_calibrated`` and ``al predict`` give). Runs
    from before these were stored draw none."""
    from loracle.evaluation.plots import reliability_diagram

    labels = state.get_signal("test_labels")
    calibrated = calibrated_test_probs(state, row)
    if calibrated is None or labels is None:
        return
    probs, what = calibrated
    reliability_diagram(probs, labels, state.run_dir / RELIABILITY_FILE, title=f"round {row['round']}, {what}")


def _answer_reliability(state: RunState, round_index: int) -> None:
    """Generation: the reliability diagram of the last round's answer confidence ``exp(-NLL)`` against exact
    match on the test set (``answer_reliability.png``)."""
    from loracle.evaluation.plots import answer_reliability_diagram

    stored = state.get_signal(f"test_confidence/{round_index}")  # (N, 2): confidence, correct
    if stored is not None and len(stored):
        answer_reliability_diagram(stored[:, 0], stored[:, 1] > 0.5, state.run_dir / ANSWER_RELIABILITY_FILE,
                                   title=f"round {round_index} answer confidence")


def default_compare_dir(run_dirs: Sequence[str | Path]) -> Path:
    """Where :func:`compare_runs` writes without an explicit output: ``compare`` beside the first run's folder."""
    return Path(run_dirs[0]).resolve().parent / "compare"


def compare_runs(run_dirs: Sequence[str | Path], output: str | Path | None = None) -> dict[str, Any]:
    """One learning curve and one JSON over several runs (labelled by strategy, or folder name on a clash).

    Args:
        run_dirs: run folders.
        output: folder for ``compare.json`` and ``learning_curve.png`` (default :func:`default_compare_dir`).

    Returns:
        ``{label: {"run_dir", "status", "labels", "curve", "aulc_accuracy", "aulc_macro_f1", "aulc_ece", ...}}``.
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
    output = default_compare_dir(run_dirs) if output is None else Path(output)
    output.mkdir(parents=True, exist_ok=True)
    keys = ("run_dir", "status", "dataset", "model", "labels", "majority_baseline", "curve", "aulc_accuracy",
            "aulc_macro_f1", "aulc_ece")
    result = {label: {k: s[k] for k in keys} for label, s in zip(labels, summaries)}
    (output / COMPARE_FILE).write_text(json.dumps(result, indent=2))
    baselines = {json.dumps(s["majority_baseline"], sort_keys=True) for s in summaries}
    learning_curve({label: s["curve"] for label, s in zip(labels, summaries)}, output / CURVE_FILE,
                   title=_plot_title(summaries, "Strategies compared" if len(set(names)) > 1 else names[0]),
                   baseline=summaries[0]["majority_baseline"] if len(baselines) == 1 else None,
                   subtitle=None if len(baselines) == 1 else "the runs' test sets differ: no common baseline")
    return result
