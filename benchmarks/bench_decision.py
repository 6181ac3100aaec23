"""Which class `al predict` should name: the argmax of the calibrated probabilities, the argmax once the class
prior they carry is divided out, or the argmax under the class weights that maximise the expected macro-F1 of the
items predicted (``--decision argmax`` / ``balanced`` / ``f1``; ``auto`` picks by the run's round-0 labels).

    python benchmarks/bench_decision.py \
        rotten_tomatoes_imbalanced=runs/bench_matched/rotten_tomatoes_imbalanced/class_balance-seed0,... \
        rotten_tomatoes=runs/bench_matched/rotten_tomatoes/density_margin-seed0,... [--name decision]

Input: finished ``loracle al run`` folders (the task's name before ``=``). Nothing is retrained or re-run: each
round's calibrated test predictions are rebuilt from what the run stored, exactly as ``al predict`` builds them
from the round's checkpoint folder (:class:`loracle.active.predict.RoundCalibration` read from that folder, applied
to the stored test probabilities of the round model and of its fold models), and each decision
(:func:`loracle.active.predict.decide`, with the class prior the calibrated probabilities carry) are scored against
the test labels: accuracy, macro-F1, each class's recall and their mean (balanced accuracy). A run's stored
probabilities come from its own pass (bf16 with the prefix cache where the CPU has it); ``al predict`` repeats
them to about 1e-3.

Writes ``benchmarks/results/<name>.json`` (per task and budget, the mean over runs of each metric under each
decision, and which decision ``auto`` takes on each task) and prints the README table. Seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DECIDE = ("argmax", "balanced", "f1")


def stop_set_weights(state, row: dict, calibration, classes: int):
    """The ``f1`` decision's class weights for a round and where they came from: ``recorded`` by the round (runs
    made since the decision exists), ``stop set`` (fitted as the loop fits them, on the stored calibrated
    predictions of the stop set's unlabelled items moved to the pool's prior), or ``test inputs`` (None: ``decide``
    fits them on the rows it decides, for runs that kept no stop-set predictions)."""
    import torch

    from loracle.active.config import ALConfig
    from loracle.active.loop import stop_set_indices
    from loracle.active.predict import recorded_weights
    from loracle.evaluation.label_shift import shift_prior
    from loracle.evaluation.metrics import f1_log_weights

    weights = recorded_weights(row["metrics"] or {}, classes)
    if weights is not None:
        return weights, "recorded"
    stop = state.get_signal(f"stop_probs/{row['round']}")
    if stop is None:
        return None, "test inputs"
    stop = stop.double()
    if calibration.pool_prior is not None:
        stop = shift_prior(stop, torch.tensor(calibration.train_prior, dtype=torch.float64),
                           torch.tensor(calibration.pool_prior, dtype=torch.float64))
    labelled = set(state.labels(max_round=row["round"]))
    keep = torch.tensor([i not in labelled for i in stop_set_indices(ALConfig.from_dict(state.config), state.pool_size())])
    return f1_log_weights(stop[keep] if bool(keep.any()) else stop), "stop set"


def run_rows(run: Path) -> list[dict]:
    """One row per round of ``run`` whose checkpoint is present: labels, and each decision's test metrics."""
    import torch

    from loracle.active.config import ALConfig
    from loracle.active.predict import RoundCalibration, carried_prior, decide
    from loracle.active.state import RunState
    from loracle.active.strategies.diversity import is_imbalanced
    from loracle.evaluation.metrics import accuracy, macro_f1, per_class_recall

    state = RunState.open(run)
    try:
        config = ALConfig.from_dict(state.config)
        names = state.label_names or []
        gold = state.get_signal("test_labels").long()
        initial = torch.tensor([int(y) for y in state.labels(max_round=0).values()], dtype=torch.long)
        auto = "balanced" if is_imbalanced(initial, len(names)) else "argmax"
        rows = []
        for row in state.rounds():
            t, folder = row["round"], run / (row["checkpoint"] or "")
            if not row["checkpoint"] or not folder.is_dir():
                continue
            calibration = RoundCalibration.read(folder)
            members = [state.get_signal(f"test_probs/{t}").double()]
            if len(calibration.members) > 1:
                members += list(state.get_signal(f"calibration_oof/{t}/test_probs").double())
            if len(members) != len(calibration.members):
                raise SystemExit(f"{run}: round {t} keeps {len(calibration.members)} members but stored "
                                 f"{len(members)} predictions")
            probs = calibration.apply(members)
            prior = carried_prior(calibration, [int(y) for y in state.labels(max_round=t).values()], len(names),
                                   config)
            weights, source = stop_set_weights(state, row, calibration, len(names))
            out = {"n": row["n_labels"], "calibration": calibration.method, "auto": auto, "f1_weights": source}
            for decision in DECIDE:
                picked = torch.nn.functional.one_hot(decide(probs, prior, decision, weights), len(names)).double()
                recall = per_class_recall(picked, gold)
                seen = [r for r in recall if r == r]
                out[decision] = {"accuracy": accuracy(picked, gold), "macro_f1": macro_f1(picked, gold),
                                 "balanced_accuracy": sum(seen) / len(seen), "min_recall": min(seen),
                                 **{f"recall_{names[c]}": r for c, r in enumerate(recall) if r == r}}
            rows.append(out)
        return rows
    finally:
        state.close()


def summarise(tasks: dict[str, list[Path]]) -> dict:
    out: dict = {"tasks": {}}
    for task, runs in tasks.items():
        rows = [r for run in runs for r in run_rows(run)]
        budgets = {}
        for n in sorted({r["n"] for r in rows}):
            at = [r for r in rows if r["n"] == n]
            budgets[str(n)] = {"rounds": len(at), **{
                d: {k: round(sum(r[d][k] for r in at) / len(at), 4) for k in at[0][d]} for d in DECIDE}}
        out["tasks"][task] = {"runs": [str(r) for r in runs], "auto": sorted({r["auto"] for r in rows}),
                              "f1_weights": sorted({r["f1_weights"] for r in rows}),
                              "calibration": sorted({r["calibration"] for r in rows}), "budgets": budgets}
    return out


def markdown(result: dict) -> str:
    lines = ["| task (auto) | labels | accuracy argmax / balanced / f1 | macro-F1 argmax / balanced / f1 | "
             "smallest class recall argmax / balanced / f1 |", "|---|---|---|---|---|"]
    for task, d in result["tasks"].items():
        for n, b in d["budgets"].items():
            cells = [" / ".join(f"{b[x][k]:.3f}" for x in DECIDE) for k in ("accuracy", "macro_f1", "min_recall")]
            lines.append(f"| {task} ({', '.join(d['auto'])}) | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", metavar="TASK=RUN[,RUN...]")
    parser.add_argument("--name", default="decision", help="results file name (without .json)")
    args = parser.parse_args()
    from bench_calibration_choice import task_runs  # the same TASK=RUN,... arguments

    result = summarise(task_runs(args.tasks))
    out = HERE / "results" / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
