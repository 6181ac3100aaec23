"""Which members make the calibrated ensemble: cross-fitted fold models or models trained on every label.

    python benchmarks/bench_ensemble_members.py runs/main runs/cal200/s1 ... [--labels 200,300]

Input: finished ``loracle al run`` folders with ``al run``'s default calibration (the round model and its 3 fold
models, each trained on 2/3 of the labels for the round model's steps, whose test probabilities the run stores).
For each round at ``--labels``, this script trains 3 more models on **every** label of that round (the round's
recipe and steps, other seeds: a plain deep ensemble, arXiv 1612.01474), predicts the run's test set, and compares
the test ECE, accuracy and mean confidence minus accuracy (``gap``) of the round model alone (``raw``), the
cross-fitted ensemble (``crossfit``, what ``al run`` reports), round model + full-data members (``deep``) and all
seven (``both``). Rows (one per run and round) are appended to ``benchmarks/results/ensemble_members.jsonl`` and
skipped when present, so the script resumes; ``benchmarks/results/ensemble_members.json`` holds the means per
budget. About 2 minutes per run on 2 cores (two rounds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = HERE / "results" / "ensemble_members.jsonl"
KINDS = ("raw", "crossfit", "deep", "both")


def summarise() -> dict:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    out: dict = {"runs": sorted({r["run"] for r in rows}), "budgets": {}}
    for n in sorted({r["n"] for r in rows}):
        at = [r for r in rows if r["n"] == n]
        out["budgets"][str(n)] = {"runs": len(at), **{
            kind: {m: round(sum(r[kind][m] for r in at) / len(at), 4) for m in ("ece", "acc", "gap")}
            | {"ece_range": [min(r[kind]["ece"] for r in at), max(r[kind]["ece"] for r in at)]}
            for kind in KINDS}}
    (HERE / "results" / "ensemble_members.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="al run folders")
    parser.add_argument("--labels", default="200,300", help="the budgets (labels) whose rounds are compared")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from loracle.active.config import ALConfig
    from loracle.active.loop import ActiveLearningLoop
    from loracle.active.state import RunState
    from loracle.evaluation.metrics import expected_calibration_error
    from loracle.training import train
    from loracle.uncertainty.sampling import mc_probs

    torch.set_num_threads(args.threads)
    budgets = {int(x) for x in args.labels.split(",")}
    done = {(r["run"], r["n"]) for r in map(json.loads, ROWS.read_text().splitlines())} if ROWS.exists() else set()
    for run in args.runs:
        state = RunState.open(run)
        try:
            loop = ActiveLearningLoop(state)
            # "temperature": the members' adapters are not staged into the run's folder
            loop.config = ALConfig.from_dict({**state.config, "calibration": "temperature"})
            labels = state.get_signal("test_labels")
            for r in state.rounds():
                t = r["round"]
                folds = state.get_signal(f"calibration_oof/{t}/test_probs")
                if r["n_labels"] not in budgets or (run, r["n_labels"]) in done or folds is None:
                    continue
                labelled = state.labelled_examples(max_round=t)
                recipe = loop._train_config(t)
                members = []
                for i in range(3):
                    built = loop.builder.fresh(head_seed=7000 + 10 * t + i, adapter_seed=7000 + 10 * t + i)
                    with loop._cached(built):
                        train(built.model, built.task, labelled, recipe.replace(seed=recipe.seed + 100 + i,
                                                                                progress=False))
                        built.model.eval()
                        members.append(mc_probs(built.model, built.task, loop.test, samples=0, batch_size=64,
                                                precision=loop.precision)[:, 0].double())
                p = state.get_signal(f"test_probs/{t}").double()
                folds = folds.double()
                row = {"run": run, "t": t, "n": r["n_labels"]}
                for kind, q in (("raw", p), ("crossfit", torch.cat([p[None], folds]).mean(0)),
                                ("deep", torch.cat([p[None], torch.stack(members)]).mean(0)),
                                ("both", torch.cat([p[None], folds, torch.stack(members)]).mean(0))):
                    accuracy = (q.argmax(-1) == labels).double().mean().item()
                    row[kind] = {"ece": round(expected_calibration_error(q, labels), 4), "acc": round(accuracy, 4),
                                 "gap": round(q.max(-1).values.mean().item() - accuracy, 4)}
                print(json.dumps(row), flush=True)
                with ROWS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        finally:
            state.close()
    print(json.dumps(summarise()["budgets"], indent=1))


if __name__ == "__main__":
    main()
