"""Benchmark active-learning strategies: MiniLM + LoRA on rotten_tomatoes, accuracy and ECE per label budget.

    python benchmarks/bench_active_learning.py --data ../shared/data/rotten_tomatoes --time-limit 2100

Setting (the issue's): 100 initial labels, +100 per round, 8 rounds (up to 900 labels), strategies

- ``random``;
- ``entropy``: predictive entropy of MC-dropout predictions;
- ``bald_dropout``: BALD with MC dropout through the adapters;
- ``bald_monteclora``: BALD with MonteCLoRA adapters, posterior sampled at inference (no dropout sampling);
- ``star``: STAR = dynamic uncertainty (entropy, λ_t = min(1, 0.1 (t+1))) + weight decay 0.5 on ``lora_B`` only +
  MC dropout;
- ``kcenter``: k-center greedy on the [CLS] features (diversity baseline).

Only STAR trains with the B-only weight decay; the others are plain LoRA (weight decay 0). Everything else is
shared: LoRA r=8, alpha 16, dropout 0.1, a fresh adapter and head each round, 3 epochs, batch 16, lr 3e-3,
max_length 64, S=8 MC samples in the adapters of the last 2 blocks, a 2,000-item pool (seeded subset of train),
500 test items, and each round a seeded random subset of ``--score-subset`` unlabelled items is scored.

The box is a shared 2-core machine, so the runs advance round-robin (every strategy finishes round t before any
starts round t+1) in two worker processes with one torch thread each, and stop at ``--time-limit``: all strategies
then have curves of equal length. Runs are resumable: running the script again with the same ``--runs`` continues
them. Writes ``benchmarks/results/active_learning.json`` and ``active_learning.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

STRATEGIES: dict[str, dict] = {
    "random": {"strategy": "random"},
    "entropy": {"strategy": "entropy"},
    "bald_dropout": {"strategy": "bald"},
    "bald_monteclora": {"strategy": "bald", "mc_dropout": False, "mc_posterior": True,
                        "adapter": {"method": "monteclora", "rank": 8, "alpha": 16.0, "dropout": 0.1}},
    "star": {"strategy": "star", "train": {"b_weight_decay": 0.5}},
    "kcenter": {"strategy": "kcenter"},
}
# Two workers, balanced by expected cost (scoring, embeddings, MonteCLoRA sampling).
WORKERS = (["random", "entropy", "star"], ["kcenter", "bald_dropout", "bald_monteclora"])


def config_for(name: str, seed: int, args: argparse.Namespace):
    from loracle.active import ALConfig

    spec = STRATEGIES[name]
    adapter = spec.get("adapter", {"method": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.1})
    train = {"epochs": args.epochs, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0, "b_weight_decay": 0.0,
             **spec.get("train", {})}
    return ALConfig(
        model=args.model, data=args.data, strategy=spec["strategy"], initial_size=100, query_size=100,
        rounds=args.rounds, pool_size=args.pool_size, test_size=args.test_size, score_subset=args.score_subset,
        mc_samples=8, stochastic_layers=2, mc_dropout=spec.get("mc_dropout", True),
        mc_posterior=spec.get("mc_posterior", False), adapter=adapter, train=train, max_length=64,
        eval_batch_size=64, seed=seed, progress=False)


def worker(names: list[str], seeds: list[int], args: argparse.Namespace, deadline: float) -> None:
    import torch

    torch.set_num_threads(1)
    from loracle.active.loop import resume, run_active_learning

    runs = Path(args.runs)
    last_cost: dict[str, float] = {}
    for t in range(args.rounds + 1):
        for seed in seeds:
            for name in names:
                run_dir = runs / f"{name}-seed{seed}"
                # Round t trains on 100 (t+1) labels: extrapolate the last round's cost.
                estimate = last_cost.get(name, 0.0) * (t + 1) / max(t, 1)
                if time.time() + estimate > deadline:
                    print(f"[worker] time limit: stop before {name} seed {seed} round {t}", flush=True)
                    return
                start = time.time()
                if (run_dir / "state.sqlite").exists():
                    status = resume(run_dir, stop_after_round=t)
                else:
                    status = run_active_learning(config_for(name, seed, args), run_dir, stop_after_round=t)
                last_cost[name] = time.time() - start
                print(f"[worker] {name} seed {seed} round {t}: {status} in {last_cost[name]:.0f}s", flush=True)


def aggregate(args: argparse.Namespace, seeds: list[int], wall: float) -> dict:
    from loracle.active.report import area_under_curve, learning_curve
    from loracle.active.state import RunState

    per_run: dict[str, dict[int, list[dict]]] = {}
    for name in STRATEGIES:
        for seed in seeds:
            run_dir = Path(args.runs) / f"{name}-seed{seed}"
            if not (run_dir / "state.sqlite").exists():
                continue
            state = RunState.open(run_dir)
            per_run.setdefault(name, {})[seed] = state.rounds()
            state.close()
    # Compare on the rounds every strategy completed for every seed it ran.
    common = min((len(r) for runs in per_run.values() for r in runs.values()), default=0)
    result: dict = {"setting": {k: getattr(args, k) for k in ("model", "data", "rounds", "pool_size", "test_size",
                                                                  "score_subset", "epochs")},
                    "initial_labels": 100, "query_size": 100, "seeds": seeds, "rounds_compared": common,
                    "wall_seconds": round(wall, 1), "strategies": {}}
    curves = {}
    for name, runs in per_run.items():
        import numpy as np

        acc = np.array([[r["metrics"]["accuracy"] for r in rounds[:common]] for rounds in runs.values()])
        ece = np.array([[r["metrics"]["ece"] for r in rounds[:common]] for rounds in runs.values()])
        n_labels = [r["n_labels"] for r in next(iter(runs.values()))[:common]]
        aulc = [area_under_curve(n_labels, a.tolist()) for a in acc]
        entry = {"seeds": sorted(runs), "n_labels": n_labels, "accuracy_mean": acc.mean(0).round(4).tolist(),
                 "accuracy_std": acc.std(0).round(4).tolist(), "ece_mean": ece.mean(0).round(4).tolist(),
                 "ece_std": ece.std(0).round(4).tolist(), "aulc_accuracy_mean": round(float(np.mean(aulc)), 4),
                 "aulc_accuracy_per_seed": [round(a, 4) for a in aulc],
                 "aulc_ece_mean": round(float(np.mean([area_under_curve(n_labels, e.tolist()) for e in ece])), 4),
                 "per_seed": {str(s): [{k: r[k] for k in ("n_labels", "train_seconds", "score_seconds")}
                                       | {"accuracy": r["metrics"]["accuracy"], "ece": r["metrics"]["ece"]}
                                       for r in rounds] for s, rounds in runs.items()}}
        result["strategies"][name] = entry
        label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        curves[label] = {"n_labels": n_labels, "accuracy": entry["accuracy_mean"], "ece": entry["ece_mean"]}
        if len(runs) > 1:
            curves[label].update(accuracy_std=entry["accuracy_std"], ece_std=entry["ece_std"])
    result["notes"] = (f"seeds per strategy vary (see each entry's 'seeds'; compare means only between strategies "
                       f"with the same seeds); {common} of {args.rounds + 1} rounds compared (time limit "
                       f"{args.time_limit:.0f} s); {args.score_subset} scored candidates per round; test set "
                       f"{args.test_size} items")
    ranking = sorted(result["strategies"], key=lambda n: -result["strategies"][n]["aulc_accuracy_mean"])
    result["ranking_by_aulc_accuracy"] = ranking
    RESULTS.mkdir(parents=True, exist_ok=True)
    if curves:
        learning_curve(curves, RESULTS / "active_learning.png",
                       title="rotten_tomatoes, MiniLM + LoRA (mean ± std over seeds)")
    (RESULTS / "active_learning.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--runs", default=str(HERE.parent / "runs" / "bench_active_learning"))
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--score-subset", type=int, default=500)
    parser.add_argument("--time-limit", type=float, default=2100.0, help="seconds for all workers")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--strategies", default=None,
                        help="comma-separated subset to run (e.g. random,star for extra seeds); default all")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = set(args.strategies.split(",")) if args.strategies else set(STRATEGIES)
    unknown = chosen - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; valid: {sorted(STRATEGIES)}")
    # Keep two workers busy: split the chosen strategies between them in the balanced order of WORKERS.
    ordered = [n for group in WORKERS for n in group if n in chosen]
    workers = (ordered[0::2], ordered[1::2]) if args.strategies else WORKERS
    if args.worker is not None:
        worker(list(workers[args.worker]), seeds, args, args.deadline)
        return
    start = time.time()
    if not args.aggregate_only:
        deadline = start + args.time_limit
        argv = [a for a in sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        procs = [subprocess.Popen([sys.executable, __file__, *argv, "--worker", str(i), "--deadline", str(deadline)],
                                  env=env) for i in range(len(workers)) if workers[i]]
        for proc in procs:
            proc.wait()
    print(json.dumps(aggregate(args, seeds, time.time() - start), indent=2)[:4000])


if __name__ == "__main__":
    main()
