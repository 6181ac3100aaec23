"""How calibrated is the model ``loracle al export`` writes, against the raw round model a PEFT user would otherwise
load and the run's own calibrated ensemble.

    python benchmarks/bench_export.py convention_party=runs/bench_export/a/convention_party/auto-seed0,... \\
        subjectivity=... [--from-labels 200] [--peft-check 1] [--name export]

For each finished run (the name before ``=`` is the task) and each round with at least ``--from-labels`` labels, it
exports the round with ``--calibration matched`` (one pass of the round model over the run's unlabelled stop-set
items) and ``--calibration temperature`` into a scratch folder and reads the test metrics ``export_round`` computes
from the run's recorded test predictions. With ``--peft-check N`` the first ``N`` matched exports of each task are
also loaded with ``peft.PeftModel.from_pretrained`` alone (fp32, no loracle code) and scored on the run's test
items, to show the folder gives what the recorded numbers say.

Rows go to ``benchmarks/results/<name>_rows.jsonl`` as they are made (a rerun skips rows it has), the table per task
and budget (mean test ECE over the runs: raw round model, exported matched, exported temperature, the run's
calibrated output; accuracy) to ``benchmarks/results/<name>.json``; ``--markdown`` prints the README table. About
15 s a round on 2 cores (model load, the stop-set pass, two folder writes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def rounds_of(run: Path, from_labels: int) -> list[tuple[int, int, dict]]:
    from loracle.active.state import RunState

    state = RunState.open(run)
    try:
        return [(r["round"], r["n_labels"], r["metrics"] or {}) for r in state.rounds()
                if r["n_labels"] >= from_labels and "accuracy_estimate" in (r["metrics"] or {})]
    finally:
        state.close()


def peft_test_metrics(run: Path, folder: Path) -> dict:
    """The exported folder loaded with PEFT alone, scored on the run's test items (fp32)."""
    import peft
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from loracle.active.config import ALConfig
    from loracle.active.state import RunState
    from loracle.evaluation.metrics import classification_metrics

    cfg = json.loads((folder / "adapter_config.json").read_text())
    state = RunState.open(run)
    try:
        test, labels = state.test_examples(), state.get_signal("test_labels")
        config, names = ALConfig.from_dict(state.config), state.label_names
    finally:
        state.close()
    base = AutoModelForSequenceClassification.from_pretrained(cfg["base_model_name_or_path"], num_labels=len(names))
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_name_or_path"])
    model = peft.PeftModel.from_pretrained(base, folder).eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(test), 64):
            batch = tokenizer([e.text for e in test[i:i + 64]], padding=True, truncation=True,
                              max_length=config.max_length, return_tensors="pt")
            probs.append(torch.softmax(model(**batch).logits.double(), -1))
    scored = classification_metrics(torch.cat(probs), labels)
    return {k: round(float(scored[k]), 4) for k in ("accuracy", "ece", "nll", "brier")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="*", metavar="TASK=RUN,RUN,...")
    parser.add_argument("--from-labels", type=int, default=200)
    parser.add_argument("--peft-check", type=int, default=0, metavar="N")
    parser.add_argument("--name", default="export")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows_file, out_file = RESULTS / f"{args.name}_rows.jsonl", RESULTS / f"{args.name}.json"
    if args.markdown:
        print(markdown(json.loads(out_file.read_text())))
        return 0
    sys.path.insert(0, str(HERE.parent / "src"))
    from loracle.active.export import export_round

    done = {}
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            row = json.loads(line)
            done[(row["run"], row["round"])] = row
    started = time.perf_counter()
    for spec in args.tasks:
        task, runs = spec.split("=", 1)
        checked = sum(1 for r in done.values() if r["task"] == task and "peft" in r)
        for run in (Path(r) for r in runs.split(",")):
            for t, n, metrics in rounds_of(run, args.from_labels):
                if (str(run), t) in done:
                    continue
                row = {"task": task, "run": str(run), "round": t, "n_labels": n,
                       "ece_calibrated": metrics.get("ece_calibrated"), "accuracy_calibrated": metrics.get(
                           "accuracy_calibrated")}
                with tempfile.TemporaryDirectory() as scratch:
                    for method in ("matched", "temperature"):
                        start = time.perf_counter()
                        info = export_round(run, Path(scratch) / method, t, calibration=method)
                        row[method] = {"temperature": info["temperature"], "seconds": round(
                            time.perf_counter() - start, 1), **info["test"]["exported"]}
                        row["model"] = info["test"]["model"]
                    if checked < args.peft_check:
                        row["peft"] = peft_test_metrics(run, Path(scratch) / "matched")
                        checked += 1
                done[(str(run), t)] = row
                with open(rows_file, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{task} {run.name} round {t} ({n} labels): ECE raw {row['model']['ece']:.3f}, exported "
                      f"matched {row['matched']['ece']:.3f} (T {row['matched']['temperature']:.2f}), temperature "
                      f"{row['temperature']['ece']:.3f}; run's calibrated {row['ece_calibrated'] or float('nan'):.3f}",
                      flush=True)
    summary = summarise(list(done.values()))
    summary["seconds_this_invocation"] = round(time.perf_counter() - started, 1)
    out_file.write_text(json.dumps(summary, indent=2))
    print(markdown(summary))
    return 0


def summarise(rows: list[dict]) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 4) if values else None

    tasks: dict = {}
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        budgets = {}
        for n in sorted({r["n_labels"] for r in mine}):
            at = [r for r in mine if r["n_labels"] == n]
            budgets[str(n)] = {
                "rounds": len(at),
                "accuracy": mean(r["model"]["accuracy"] for r in at),
                "ece_raw": mean(r["model"]["ece"] for r in at),
                "ece_export_matched": mean(r["matched"]["ece"] for r in at),
                "ece_export_matched_max": max(r["matched"]["ece"] for r in at),
                "ece_export_temperature": mean(r["temperature"]["ece"] for r in at),
                "ece_run_calibrated": mean(r["ece_calibrated"] for r in at),
                "nll_raw": mean(r["model"]["nll"] for r in at),
                "nll_export_matched": mean(r["matched"]["nll"] for r in at),
                "temperature_matched": [round(min(r["matched"]["temperature"] for r in at), 2),
                                        round(max(r["matched"]["temperature"] for r in at), 2)],
            }
        checks = [{"run": r["run"], "round": r["round"], "recorded": {k: r["matched"][k] for k in r["peft"]},
                   "peft": r["peft"]} for r in mine if "peft" in r]
        tasks[task] = {"runs": sorted({r["run"] for r in mine}), "budgets": budgets, "peft_checks": checks}
    return {"tasks": tasks}


def markdown(summary: dict) -> str:
    lines = ["| task | labels | rounds | accuracy | ECE raw model | exported, matched (max) | exported, temperature "
             "| run's calibrated output | NLL raw → exported | T matched |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, block in summary["tasks"].items():
        for n, b in block["budgets"].items():
            lines.append(f"| {task} | {n} | {b['rounds']} | {b['accuracy']:.3f} | {b['ece_raw']:.3f} | "
                         f"{b['ece_export_matched']:.3f} ({b['ece_export_matched_max']:.3f}) | "
                         f"{b['ece_export_temperature']:.3f} | "
                         f"{'–' if b['ece_run_calibrated'] is None else format(b['ece_run_calibrated'], '.3f')} | "
                         f"{b['nll_raw']:.3f} → {b['nll_export_matched']:.3f} | "
                         f"{b['temperature_matched'][0]:.2f}-{b['temperature_matched'][1]:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
