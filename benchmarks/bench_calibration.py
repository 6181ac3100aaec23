"""How long cross-fitting's fold models train, and what it does to calibration without extra labels.

    python benchmarks/bench_calibration.py --runs runs/bench_al_full --seeds 0,1,2,3,4 --time-limit 3600

Input: a finished ``bench_active_learning.py`` runs folder (its default strategy's runs: every round stores the
round model's test probabilities and the cross-fitting's out-of-fold and fold-model test probabilities, trained
under the fold rule the benchmark ran with). For each dataset, seed and round from ``--from-labels`` on, this script
trains the round's ``K`` fold models again under ``--fold-steps`` (``ActiveLearningLoop.cross_fit``, on a copy of
the run; the same labelled set, recipe, folds and seeds) and compares both rules on the same test set:

- ``ece_raw``: the round model as trained (the same for both rules);
- ``ece_t_initial``: at the temperature fitted on the round-0 items' out-of-fold predictions (``al run``'s default
  ``calibration_items="initial"``), ``ece_t_labelled`` on every labelled item's; like ``ece_calibrated`` (the
  ensemble), moved to the pool's class prior where the round moves its predictions (``pool_shift``; rows written
  before 0.3's review fixes hold those two unmoved, the round-0 temperature fitted without the prior's offset);
- ``ece_ensemble``: the mean of the round model and its ``K`` fold models (``--calibration ensemble``), with its
  ``accuracy_ensemble`` / ``macro_f1_ensemble`` beside the round model's ``accuracy`` / ``macro_f1``;
- ``fold_confidence``: the fold models' mean top probability on the test set beside the round model's
  ``confidence`` (a fold model that trains too little comes out less confident than the model it stands for).

The stored rule's numbers come from the run; the new rule's from the refit. Rows go to ``<runs>/calibration.jsonl``
as they finish, so the script resumes; two worker processes (one dataset each, one torch thread). Measured here:
about 65 s per refit at 200 labels and ~10 min per seed and dataset for rounds 1-5 (2 cores). Writes
``benchmarks/results/<--results>`` (per dataset and budget: the mean over seeds of each number under each rule,
and the worst budget's mean per method); ``--markdown`` prints its README table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATASETS = ("rotten_tomatoes", "rotten_tomatoes_imbalanced")
METHODS = ("ece_raw", "ece_t_initial", "ece_t_labelled", "ece_ensemble", "ece_calibrated")
OTHER_RULE = {"round": "epochs", "epochs": "round"}


def _numbers(p, fold_test, temperatures, labels, shift) -> dict:
    """The compared numbers of one round for one fold rule (``p``: the round model's test probabilities;
    ``shift``: the round's ``(train prior, pool prior)`` or None, ``ActiveLearningLoop._pool_prior``), every
    calibrated prediction moved to the pool's prior as ``al run`` reports it."""
    import torch

    from loracle.evaluation.calibration import apply_temperature
    from loracle.evaluation.label_shift import shift_prior
    from loracle.evaluation.metrics import classification_metrics

    def to_pool(q):
        return q if shift is None else shift_prior(q, *shift)

    log_p = p.clamp_min(1e-12).log()
    mean = torch.cat([p[None], fold_test]).mean(0)
    ensemble = classification_metrics(mean, labels)
    calibrated = classification_metrics(to_pool(mean), labels)  # what ``al run`` reports as calibrated
    return {"ece_calibrated": calibrated["ece"], "accuracy_calibrated": calibrated["accuracy"],
            "macro_f1_calibrated": calibrated["macro_f1"], "pool_shift": shift is not None,
            "ece_t_initial": classification_metrics(to_pool(apply_temperature(log_p, temperatures["initial"])),
                                                    labels)["ece"],
            "ece_t_labelled": classification_metrics(to_pool(apply_temperature(log_p, temperatures["labelled"])),
                                                     labels)["ece"],
            "ece_ensemble": ensemble["ece"], "accuracy_ensemble": ensemble["accuracy"],
            "macro_f1_ensemble": ensemble["macro_f1"],
            "fold_confidence": float(fold_test.max(-1).values.mean()),
            "t_initial": temperatures["initial"], "t_labelled": temperatures["labelled"]}


def _stored(state, t: int, shift) -> tuple[dict[str, float], object] | None:
    """The run's own cross-fitting of round ``t``: its two temperatures (the round-0 items' fitted in the pool's
    prior where ``shift`` moves the predictions, as ``al run`` fits it) and fold-model test probabilities."""
    from loracle.evaluation.calibration import fit_temperature

    oof = state.get_signal(f"calibration_oof/{t}/log_probs")
    if oof is None:
        return None
    labels = state.get_signal(f"calibration_oof/{t}/labels")
    initial = state.get_signal(f"calibration_oof/{t}/initial").bool()
    offset = None if shift is None else (shift[1] / shift[0]).log()
    return ({"initial": fit_temperature(oof[initial], labels[initial], offset),
             "labelled": fit_temperature(oof, labels)},
            state.get_signal(f"calibration_oof/{t}/test_probs").float())


def worker(dataset: str, args: argparse.Namespace, deadline: float) -> None:
    import torch

    torch.set_num_threads(1)
    from loracle.active.config import ALConfig
    from loracle.active.loop import ActiveLearningLoop
    from loracle.active.state import RunState
    from loracle.evaluation.metrics import classification_metrics

    out = Path(args.runs) / "calibration.jsonl"
    done = {(r.get("strategy", "badge"), r["dataset"], r["seed"], r["n_labels"]) for r in _rows(out)}
    stored_rule = OTHER_RULE[args.fold_steps]
    cost = 0.0
    for seed in [int(s) for s in args.seeds.split(",")]:
        source = Path(args.runs) / dataset / f"{args.strategy}-seed{seed}"
        if not (source / "state.sqlite").exists():
            print(f"[calibration] {source}: no run; skipped", flush=True)
            continue
        scratch = Path(args.runs) / "calibration_scratch" / dataset / source.name
        if scratch.exists():
            shutil.rmtree(scratch)
        shutil.copytree(source, scratch)  # the refit must not touch the benchmark's own run
        state = RunState.open(scratch)
        try:
            loop = ActiveLearningLoop(state)
            loop.config = ALConfig.from_dict({**state.config, "calibration": "temperature",
                                              "calibration_fold_steps": args.fold_steps})
            labels = state.get_signal("test_labels")
            for r in state.rounds():
                t = r["round"]
                if r["n_labels"] < args.from_labels or (args.strategy, dataset, seed, r["n_labels"]) in done:
                    continue
                if time.time() + cost > deadline:
                    print(f"[calibration] time limit: stop before {dataset} seed {seed} round {t}", flush=True)
                    return
                shift = loop._pool_prior(state.labelled_examples(max_round=t), loop._train_config(t))
                stored = _stored(state, t, shift)  # None: a run without cross-fitting, refitted under the new rule
                start = time.time()
                temperatures, oof = loop.cross_fit(t)
                cost = time.time() - start
                p = state.get_signal(f"test_probs/{t}").float()
                base = classification_metrics(p, labels)
                row = {"dataset": dataset, "seed": seed, "t": t, "n_labels": r["n_labels"],
                       "ece_raw": base["ece"], "accuracy": base["accuracy"], "macro_f1": base["macro_f1"],
                       "confidence": float(p.max(-1).values.mean()),
                       **({stored_rule: _numbers(p, stored[1], stored[0], labels, shift)} if stored else {}),
                       args.fold_steps: _numbers(p, oof["test_probs"], temperatures, labels, shift),
                       "seconds": cost}
                if args.strategy != "badge":  # rows without the field are the default's (badge) runs
                    row["strategy"] = args.strategy
                with out.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                before = f"{row[stored_rule]['ece_ensemble']:.3f} -> " if stored else ""
                print(f"[calibration] {dataset} seed {seed} round {t}: ensemble ECE "
                      f"{before}{row[args.fold_steps]['ece_ensemble']:.3f}, in the pool's prior "
                      f"{row[args.fold_steps]['ece_calibrated']:.3f} in {cost:.0f}s", flush=True)
        finally:
            state.close()
            shutil.rmtree(scratch, ignore_errors=True)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def aggregate(args: argparse.Namespace, wall: float) -> dict:
    import numpy as np

    rows = [r for r in _rows(Path(args.runs) / "calibration.jsonl") if r.get("strategy", "badge") == args.strategy]
    rules = ("epochs", "round")
    result: dict = {"setting": {"runs": str(args.runs), "strategy": args.strategy, "refit_rule": args.fold_steps,
                                "seeds": sorted({r["seed"] for r in rows})},
                    "wall_seconds": round(wall), "datasets": {}}
    for dataset in DATASETS:
        mine = [r for r in rows if r["dataset"] == dataset]
        budgets = {}
        for n in sorted({r["n_labels"] for r in mine}):
            at = [r for r in mine if r["n_labels"] == n]
            entry = {"seeds": len(at), **{k: float(np.mean([r[k] for r in at]))
                                          for k in ("ece_raw", "accuracy", "macro_f1", "confidence")}}
            for rule in (rule for rule in rules if all(rule in r for r in at)):  # a run without its own
                entry[rule] = {k: float(np.mean([r[rule][k] for r in at])) for k in at[0][rule]  # cross-fitting
                               if all(k in r[rule] for r in at)}
            budgets[str(n)] = entry
        if not budgets:
            continue
        from_200 = [b for n, b in budgets.items() if int(n) >= 200]  # the budgets: 200 labels and up
        worst = {"ece_raw": max(b["ece_raw"] for b in from_200)} if from_200 else {}
        for rule in (rule for rule in rules if from_200 and all(rule in b for b in from_200)):
            worst[rule] = {m: max(b[rule][m] for b in from_200) for m in METHODS[1:]
                           if all(m in b[rule] for b in from_200)}  # refits before 0.3: no ece_calibrated
        result["datasets"][dataset] = {"budgets": budgets, "max_ece_from_200": worst}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.results).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def markdown(result: dict) -> str:
    lines = []
    for dataset, d in result["datasets"].items():
        lines += [f"**{dataset}** (mean over {len(result['setting']['seeds'])} seeds; fold models trained for the "
                  "round model's epochs / its steps)", "",
                  "| labels | raw ECE | T (initial) | T (labelled) | ensemble | accuracy: round model / ensemble "
                  "| confidence: round model / fold models |", "|---|---|---|---|---|---|---|"]
        for n, b in d["budgets"].items():
            s = b["round"]
            e = b.get("epochs") or {k: float("nan") for k in s}  # a run without its own cross-fitting
            lines.append(f"| {n} | {b['ece_raw']:.3f} | {e['ece_t_initial']:.3f} / {s['ece_t_initial']:.3f} | "
                         f"{e['ece_t_labelled']:.3f} / {s['ece_t_labelled']:.3f} | "
                         f"{e['ece_ensemble']:.3f} / {s['ece_ensemble']:.3f} | {b['accuracy']:.3f} / "
                         f"{e['accuracy_ensemble']:.3f} / {s['accuracy_ensemble']:.3f} | {b['confidence']:.3f} / "
                         f"{e['fold_confidence']:.3f} / {s['fold_confidence']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent / "runs" / "bench_al_full"),
                        help="a finished bench_active_learning.py runs folder")
    parser.add_argument("--strategy", default="badge", help="the runs that hold cross-fitting (the default's)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: refit these datasets' runs")
    parser.add_argument("--fold-steps", choices=("round", "epochs"), default="round",
                        help="the rule to refit with (the runs hold the other)")
    parser.add_argument("--from-labels", type=int, default=100, help="refit the rounds from this many labels on")
    parser.add_argument("--results", default="calibration_fold_steps.json",
                        help="file name of the results JSON under benchmarks/results")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds for all workers")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the README table of the results JSON")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((RESULTS / args.results).read_text())))
        return
    if args.worker is not None:
        worker(args.worker, args, args.deadline)
        return
    start = time.time()
    if not args.aggregate_only:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        deadline = start + args.time_limit
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", d, "--deadline",
                                   str(deadline)], env=env) for d in DATASETS
                 if d in args.datasets.split(",")]
        for proc in procs:
            proc.wait()
    wall_file = Path(args.runs) / "calibration_wall_seconds.json"  # summed over invocations
    wall = json.loads(wall_file.read_text())["seconds"] if wall_file.exists() else 0.0
    wall += time.time() - start
    wall_file.write_text(json.dumps({"seconds": wall}))
    print(markdown(aggregate(args, wall)))


if __name__ == "__main__":
    main()
