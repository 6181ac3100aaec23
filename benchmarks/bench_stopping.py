"""When each stopping criterion would have stopped finished active-learning runs, and what stopping there cost.

    python benchmarks/bench_stopping.py \
        rotten_tomatoes=runs/bench_committee/rotten_tomatoes/density_committee-seed0,... \
        rotten_tomatoes_imbalanced=runs/bench_f1/rotten_tomatoes_imbalanced/class_balance-seed0,... [--name stopping]

Input: finished ``loracle al run`` folders (the task's name before ``=``; a folder may be a glob). Nothing is
retrained: each criterion is replayed round by round over the stop-set predictions the run stored, exactly as the
loop and ``al status`` replay them (:func:`loracle.active.loop.stop_decision`), and the first round where it says
stop is that run's stopping point. There the run's test accuracy and balanced-decision macro-F1 (the round model's
probabilities with its labelled set's class shares divided out, the prediction to use when every class counts) are
compared with those of its last round: ``lost`` is last minus at-stop (positive: stopping cost that much), and
``labels_saved`` is how many of the run's labels stopping would not have asked for. A run where a criterion never
fires keeps its last round (nothing lost, nothing saved). The reference is a fixed budget: every run stopped at
the same number of labels, whatever its predictions did (``fixed_budget``).

Writes ``benchmarks/results/<name>.json`` (per task and criterion: each run's stopping round, and the means) and
prints the README table. Seconds.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CRITERIA = ("stabilizing_predictions", "agreement_plateau", "overall_uncertainty")


def replay(run: Path, criteria: tuple[str, ...], max_labels: int | None = None) -> dict:
    """One run's curve and, per criterion, the first round where it says stop (None: never); with
    ``max_labels``, the run as if it had ended at its last round of at most that many labels."""
    from loracle.active.loop import stop_decision
    from loracle.active.state import RunState

    state = RunState.open(run)
    try:
        rows = [r for r in sorted(state.rounds(), key=lambda r: r["round"])
                if max_labels is None or r["n_labels"] <= max_labels]
        out = {"run": str(run), "n_labels": [r["n_labels"] for r in rows],
               "accuracy": [r["metrics"]["accuracy"] for r in rows],
               "macro_f1_balanced": [r["metrics"].get("macro_f1_balanced", r["metrics"].get("macro_f1"))
                                     for r in rows],
               "stop_round": {}, "kappa": None}
        for name in criteria:
            first = None
            for row in rows:
                decision = stop_decision(state, [name], upto=row["round"])
                if decision is not None and decision.stop:
                    first = row["round"]
                    break
            out["stop_round"][name] = first
        last = stop_decision(state, ["agreement_plateau"], upto=rows[-1]["round"])  # each kappa with the round before
        out["kappa"] = None if last is None else last.values["agreement_plateau"]["kappa"]
        return out
    finally:
        state.close()


def summarise(runs: list[dict], criteria: tuple[str, ...]) -> dict:
    import numpy as np

    entry: dict = {"runs": len(runs), "n_labels_last": runs[0]["n_labels"][-1] if runs else None,
                   "kappa_mean": np.mean([r["kappa"] for r in runs], 0).round(3).tolist() if runs else [],
                   "criteria": {}}
    for name in criteria:
        stops = [r["stop_round"][name] for r in runs]
        at = [len(r["n_labels"]) - 1 if s is None else s for r, s in zip(runs, stops)]
        lost_acc = [r["accuracy"][-1] - r["accuracy"][t] for r, t in zip(runs, at)]
        lost_f1 = [r["macro_f1_balanced"][-1] - r["macro_f1_balanced"][t] for r, t in zip(runs, at)]
        saved = [r["n_labels"][-1] - r["n_labels"][t] for r, t in zip(runs, at)]
        entry["criteria"][name] = {
            "fired": sum(s is not None for s in stops),
            "stop_labels": sorted(r["n_labels"][s] for r, s in zip(runs, stops) if s is not None),
            "labels_saved_mean": float(np.mean(saved)), "accuracy_lost_mean": round(float(np.mean(lost_acc)), 4),
            "accuracy_lost_max": round(float(np.max(lost_acc)), 4),
            "macro_f1_lost_mean": round(float(np.mean(lost_f1)), 4),
            "macro_f1_lost_max": round(float(np.max(lost_f1)), 4)}
    # The reference: every run stopped at the same budget, whatever its predictions did
    entry["fixed_budget"] = {str(n): {
        "accuracy_lost_mean": round(float(np.mean([r["accuracy"][-1] - r["accuracy"][t] for r in runs])), 4),
        "macro_f1_lost_mean": round(float(np.mean([r["macro_f1_balanced"][-1] - r["macro_f1_balanced"][t]
                                                   for r in runs])), 4)}
        for t, n in enumerate(runs[0]["n_labels"][:-1])} if runs else {}
    return entry


def markdown(result: dict) -> str:
    lines = ["| task | runs | kappa between rounds (mean) | criterion | fired | at labels | labels saved (mean) | "
             "accuracy lost: mean / max | macro-F1 lost: mean / max |", "|---|---|---|---|---|---|---|---|---|"]
    for task, entry in result["tasks"].items():
        kappa = " / ".join(f"{k:.2f}" for k in entry["kappa_mean"])
        for name, c in entry["criteria"].items():
            at = ", ".join(str(n) for n in c["stop_labels"]) or "–"
            lines.append(f"| {task} | {entry['runs']} | {kappa} | `{name}` | {c['fired']} | {at} | "
                         f"{c['labels_saved_mean']:.0f} | {c['accuracy_lost_mean']:+.3f} / {c['accuracy_lost_max']:+.3f}"
                         f" | {c['macro_f1_lost_mean']:+.3f} / {c['macro_f1_lost_max']:+.3f} |")
    lines += ["", "Every run stopped at one fixed budget instead (mean accuracy / macro-F1 lost against the last round):",
              "", "| task | " + " | ".join(f"{n} labels" for n in next(iter(result["tasks"].values()))["fixed_budget"])
              + " |", "|---|" + "---|" * len(next(iter(result["tasks"].values()))["fixed_budget"])]
    for task, entry in result["tasks"].items():
        lines.append(f"| {task} | " + " | ".join(f"{v['accuracy_lost_mean']:+.3f} / {v['macro_f1_lost_mean']:+.3f}"
                                                 for v in entry["fixed_budget"].values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", help="task=run_folder[,run_folder...] (folders may be globs)")
    parser.add_argument("--name", default="stopping", help="results file name under benchmarks/results")
    parser.add_argument("--max-labels", type=int, default=None,
                        help="treat every run as ending at its last round of at most this many labels")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))
    result: dict = {"criteria": list(CRITERIA), "max_labels": args.max_labels, "tasks": {}}
    for spec in args.tasks:
        task, _, folders = spec.partition("=")
        paths = sorted(p for f in folders.split(",") for p in (glob.glob(f) or [f]))
        if not task or not paths:
            parser.error(f"expected task=folder[,folder...], got {spec!r}")
        runs = [replay(Path(p), CRITERIA, args.max_labels) for p in paths]
        result["tasks"][task] = {**summarise(runs, CRITERIA), "per_run": runs}
    out = HERE / "results" / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
