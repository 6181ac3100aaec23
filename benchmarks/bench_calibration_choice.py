"""Which calibration each round should report: the cross-fitted ensemble, the cross-fitted temperature, ``auto``,
or ``matched``.

    python benchmarks/bench_calibration_choice.py rotten_tomatoes=runs/cal200/s0,runs/cal200/s1 \
        subjectivity=runs/bench_subj/subjectivity/auto-seed0,... [--name calibration_choice]

Input: finished ``loracle al run`` folders whose rounds cross-fitted and kept their fold models (``calibration``
``ensemble`` or ``auto``): each such round records the test ECE of both calibrations it could report, the
ensemble's (the mean of the round model and its fold models, ``ece_ensemble``; in the pool's class prior where the
round moved its predictions there, ``ece_calibrated`` of an ensemble round) and the temperature's (the round model
scaled by the temperature fitted on the fold models' out-of-fold predictions of the round-0 items), with that
temperature. Nothing is retrained: the script reads the recorded numbers and applies ``al run``'s
``calibration="auto"`` rule (:func:`loracle.evaluation.calibration.calibration_choice`: the temperature where it is
below 1, the ensemble elsewhere) to each round, so runs made before ``auto`` existed are scored under it too.

``matched`` (the ensemble at the temperature that sets its mean confidence to the mean of the fold models'
agreement and their out-of-fold accuracy on the round-0 items, :func:`loracle.evaluation.calibration.match_confidence`)
is read from the round where the run recorded it (runs made since ``matched`` exists: ``ece_matched``, or ``ece_calibrated`` of a
``matched`` round; agreement and confidence measured on the stop set, unlabelled pool items). For older runs it is
replayed from the stored predictions: the round model's and fold models' test probabilities and the fold models'
out-of-fold predictions, with the agreement and the mean confidence taken on the **test inputs** in place of the
stop set (their labels are read only to score the result; test and stop set are both random samples of the same
split), moved to the pool's class prior where the round moved its predictions there. ``matched_source`` counts
which.

For each task (the name before ``=``) and budget it writes the rounds' count, how many had a temperature below 1,
and the mean and largest test ECE of the three (``ensemble``, ``temperature``, ``auto``), to
``benchmarks/results/<name>.json``, and prints the README table. Seconds.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("ensemble", "temperature", "auto", "matched")


def replay_matched(run: Path) -> dict[int, float]:
    """``{round: test ECE of the matched ensemble}`` replayed from the stored predictions of ``run``'s cross-fitted
    rounds, with the test inputs standing in for the stop set (module docstring)."""
    import torch

    from loracle.active.config import ALConfig
    from loracle.active.state import RunState
    from loracle.evaluation.calibration import fold_agreement, match_confidence, matched_accuracy
    from loracle.evaluation.label_shift import pool_prior_shift
    from loracle.evaluation.metrics import expected_calibration_error

    state = RunState.open(run)
    try:
        config = ALConfig.from_dict(state.config)
        labels = state.get_signal("test_labels")
        classes = len(state.label_names or [])
        initial = torch.bincount(torch.tensor([int(y) for y in state.labels(max_round=0).values()]),
                                 minlength=classes)
        out = {}
        for row in state.rounds():
            t = row["round"]
            folds = state.get_signal(f"calibration_oof/{t}/test_probs")
            if folds is None:
                continue
            ensemble = torch.cat([state.get_signal(f"test_probs/{t}").double()[None], folds.double()]).mean(0)
            offset = None
            if "pool_prior_0" in (row["metrics"] or {}):  # the round moved its predictions to the pool's prior
                labelled = torch.bincount(torch.tensor([int(y) for y in state.labels(max_round=t).values()]),
                                          minlength=classes)
                train = config.train
                shift = pool_prior_shift(initial, labelled, train.class_weight, train.logit_adjustment or 0.0)
                offset = None if shift is None else (shift[1] / shift[0]).log()
            log_probs = state.get_signal(f"calibration_oof/{t}/log_probs").double()
            held_labels = state.get_signal(f"calibration_oof/{t}/labels")
            keep = state.get_signal(f"calibration_oof/{t}/initial").bool()
            if config.calibration_items == "initial" and bool(keep.any()):
                log_probs, held_labels = log_probs[keep], held_labels[keep]
            picks = (log_probs if offset is None else log_probs + offset).argmax(-1)
            oof_accuracy = float((picks == held_labels).double().mean())
            target = max(matched_accuracy(fold_agreement(folds), oof_accuracy), 1e-3)
            temperature = match_confidence(ensemble.clamp_min(1e-12).log(), target, offset)
            z = ensemble.clamp_min(1e-12).log() / temperature
            calibrated = torch.softmax(z if offset is None else z + offset, -1)
            out[t] = expected_calibration_error(calibrated, labels)
        return out
    finally:
        state.close()


def round_choices(run: Path) -> list[dict]:
    """One row per cross-fitted round of ``run``: labels, the temperature and each calibration's test ECE."""
    from loracle.evaluation.calibration import calibration_choice

    db = sqlite3.connect(f"file:{run / 'state.sqlite'}?mode=ro", uri=True)
    try:
        (items,) = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone() or ("{}",)
        items = json.loads(items).get("calibration_items", "initial")
        rows, replayed = [], None
        for t, n, metrics in db.execute("SELECT round, n_labels, metrics FROM rounds ORDER BY round"):
            m = json.loads(metrics)
            if "ece_ensemble" not in m:  # not cross-fitted (too few labels, or calibration none / temperature)
                continue
            matched_round = "temperature_matched" in m and "ece_matched" not in m  # calibration "matched"
            if "temperature_matched" in m:
                matched, source = (m["ece_calibrated"] if matched_round else m["ece_matched"]), "recorded"
            else:
                replayed = replay_matched(run) if replayed is None else replayed
                matched, source = replayed[t], "replayed"
            # an ensemble round names the temperature by its items; one where "auto" chose it, plainly
            chose_temperature = bool(m.get("calibration_temperature"))
            if matched_round:  # the plain ensemble and the temperature are both scored beside it, by name
                m = {**m, "ece_calibrated": m["ece_ensemble"]}
            temperature = m["temperature"] if chose_temperature else m[f"temperature_{items}"]
            ece_temperature = m["ece_calibrated"] if chose_temperature else m[f"ece_calibrated_{items}"]
            ece_ensemble = m["ece_ensemble"] if chose_temperature else m["ece_calibrated"]
            auto = calibration_choice(temperature)
            rows.append({"n": n, "temperature": temperature, "ensemble": ece_ensemble, "temperature_ece": ece_temperature,
                         "auto": ece_temperature if auto == "temperature" else ece_ensemble,
                         "matched": matched, "matched_source": source})
        return rows
    finally:
        db.close()


def summarise(tasks: dict[str, list[Path]]) -> dict:
    out: dict = {"tasks": {}}
    for task, runs in tasks.items():
        rows = [r for run in runs for r in round_choices(run)]
        budgets = {}
        for n in sorted({r["n"] for r in rows}):
            at = [r for r in rows if r["n"] == n]
            ece = {"ensemble": [r["ensemble"] for r in at], "temperature": [r["temperature_ece"] for r in at],
                   "auto": [r["auto"] for r in at], "matched": [r["matched"] for r in at]}
            budgets[str(n)] = {"rounds": len(at), "temperature_below_1": sum(r["temperature"] < 1 for r in at),
                               "matched_source": {s: sum(r["matched_source"] == s for r in at)
                                                  for s in ("recorded", "replayed")},
                               "temperature_range": [round(min(r["temperature"] for r in at), 2),
                                                     round(max(r["temperature"] for r in at), 2)],
                               **{k: {"mean": round(sum(v) / len(v), 4), "max": round(max(v), 4)}
                                  for k, v in ece.items()}}
        out["tasks"][task] = {"runs": [str(r) for r in runs], "budgets": budgets}
    return out


def markdown(result: dict) -> str:
    lines = ["| task | labels | rounds (T < 1) | ensemble | temperature | auto | matched |",
             "|---|---|---|---|---|---|---|"]
    for task, d in result["tasks"].items():
        for n, b in d["budgets"].items():
            cells = [f"{b[k]['mean']:.3f} ({b[k]['max']:.3f})" for k in KINDS]
            best = min(b[k]["mean"] for k in KINDS)
            cells = [f"**{c}**" if b[k]["mean"] == best else c for c, k in zip(cells, KINDS)]
            lines.append(f"| {task} | {n} | {b['rounds']} ({b['temperature_below_1']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_runs(specs: list[str]) -> dict[str, list[Path]]:
    """``{task: [run folder, ...]}`` from ``TASK=RUN,RUN,...`` arguments; exits with a one-line message for a
    malformed one or a folder that holds no run."""
    tasks = {}
    for spec in specs:
        task, _, runs = spec.partition("=")
        folders = [Path(r) for r in runs.split(",") if r]
        missing = [str(f) for f in folders if not (f / "state.sqlite").exists()]
        if not task or not folders or missing:
            sys.exit(f"expected TASK=RUN,RUN,... with run folders holding state.sqlite; got {spec!r}"
                     + (f" (no run at {', '.join(missing)})" if missing else ""))
        tasks[task] = folders
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="+", metavar="TASK=RUN,RUN,...",
                        help="a task's name and its finished run folders")
    parser.add_argument("--name", default="calibration_choice", help="results file name (without .json)")
    args = parser.parse_args()
    result = summarise(task_runs(args.tasks))
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
