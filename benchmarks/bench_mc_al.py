"""Active learning for a multiple-choice task with a causal LM: SmolLM2-135M on social_iqa, paired seeds.

    python benchmarks/bench_mc_al.py --time-limit 2400          # the benchmark (resumable; run again to go on)
    python benchmarks/bench_mc_al.py --smoke                    # tiny sizes, one seed: checks that it all runs

Setting: ``loracle al run --task-kind multiple_choice`` on social_iqa (3 answers per question; the model scores
each answer's log-likelihood after the question), SmolLM2-135M-Instruct with the default adapter (LoRA r=8 on
the top two blocks, the cross-round prefix cache) and the default recipe for the task kind (lr 1e-3, at least 3
epochs and ``--min-steps`` steps, batch 8), a seeded ``--pool-size`` pool and ``--test-size`` test questions,
``--initial-size`` random initial labels (the same for every strategy of a seed), ``--query-size`` per round.
Strategies: ``random`` and the library's default (``badge``) by default, any other with ``--strategies``
(MC strategies use S=``--mc-samples`` dropout passes).

Each strategy is compared with random on the seeds both finished (paired): AULC of accuracy (trapezoid area over
the label range), the gain over random and its paired bootstrap interval. Runs go seed by seed; a killed run
resumes (``loracle.active.resume``); ``--time-limit`` stops before a run that the last run's duration says would
not fit. Writes ``benchmarks/results/mc_al.json``, with the wall time of every session so far.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT = "badge"


def config_for(strategy: str, seed: int, args: argparse.Namespace) -> Any:
    from loracle.active import ALConfig

    return ALConfig(
        model=args.model, data=str(Path(args.data)), task_kind="multiple_choice", strategy=strategy,
        initial_size=args.initial_size, query_size=args.query_size, rounds=args.rounds, pool_size=args.pool_size,
        test_size=args.test_size, mc_samples=args.mc_samples if strategy not in ("random", "badge") else 0,
        max_length=args.max_length, train={"min_steps": args.min_steps, "batch_size": 8},
        eval_batch_size=16, cache_dir=str(Path(args.runs) / "cache"), seed=seed, progress=False)


def run_dir(strategy: str, seed: int, args: argparse.Namespace) -> Path:
    return Path(args.runs) / f"{strategy}-seed{seed}"


def finished(path: Path) -> bool:
    report = path / "report.json"
    return report.exists() and json.loads(report.read_text()).get("status") == "done"


def drive(strategy: str, seed: int, args: argparse.Namespace) -> None:
    from loracle.active.loop import resume, run_active_learning

    path = run_dir(strategy, seed, args)
    if (path / "state.sqlite").exists():
        resume(path)
    else:
        run_active_learning(config_for(strategy, seed, args), path)


def curve(path: Path) -> list[dict[str, Any]]:
    from loracle.active.state import RunState

    if not (path / "state.sqlite").exists():
        return []
    state = RunState.open(path)
    try:
        return [{"n_labels": r["n_labels"], "accuracy": r["metrics"]["accuracy"], "ece": r["metrics"]["ece"],
                 "train_seconds": round(r["train_seconds"] or 0.0, 1),
                 "query_seconds": round(r["score_seconds"] or 0.0, 1)} for r in state.rounds()]
    finally:
        state.close()


def aggregate(args: argparse.Namespace, wall: float) -> dict[str, Any]:
    from loracle.active.report import area_under_curve
    from loracle.evaluation.bootstrap import paired_bootstrap_ci

    runs = {s: {seed: curve(run_dir(s, seed, args)) for seed in args.seeds} for s in args.strategies}
    done = {s: [seed for seed in args.seeds if finished(run_dir(s, seed, args))] for s in args.strategies}
    aulc = {s: {seed: area_under_curve([r["n_labels"] for r in runs[s][seed]], [r["accuracy"] for r in runs[s][seed]])
                for seed in done[s]} for s in args.strategies}
    strategies: dict[str, Any] = {}
    for s in args.strategies:
        paired = sorted(set(done[s]) & set(done.get("random", [])))
        entry: dict[str, Any] = {"seeds": paired, "runs": {str(seed): runs[s][seed] for seed in args.seeds
                                                             if runs[s][seed]}}
        if paired:
            rows = [runs[s][seed] for seed in paired]
            entry["n_labels"] = [r["n_labels"] for r in rows[0]]
            entry["accuracy_mean"] = [round(sum(r[i]["accuracy"] for r in rows) / len(rows), 4)
                                      for i in range(len(rows[0]))]
            entry["ece_mean"] = [round(sum(r[i]["ece"] for r in rows) / len(rows), 4) for i in range(len(rows[0]))]
            entry["aulc_accuracy"] = sum(aulc[s][seed] for seed in paired) / len(paired)
            if s != "random":
                diff, low, high = paired_bootstrap_ci([aulc[s][seed] for seed in paired],
                                                      [aulc["random"][seed] for seed in paired], seed=0)
                entry["gain_accuracy"], entry["gain_accuracy_ci95"] = diff, [low, high]
        strategies[s] = entry
    return {"summary": {"task": "social_iqa", "model": args.model, "default_strategy": DEFAULT,
                        "seeds": {s: strategies[s]["seeds"] for s in args.strategies},
                        "gain_accuracy": {s: strategies[s].get("gain_accuracy") for s in args.strategies
                                          if s != "random"}},
            "setting": {k: getattr(args, k) for k in ("model", "pool_size", "test_size", "initial_size",
                                                      "query_size", "rounds", "min_steps", "mc_samples",
                                                      "max_length", "threads")},
            "wall_seconds_all_sessions": round(wall, 1), "strategies": strategies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "social_iqa"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "mc_al"))
    parser.add_argument("--output", default=str(RESULTS / "mc_al.json"))
    parser.add_argument("--strategies", default=f"random,{DEFAULT}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pool-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--initial-size", type=int, default=24)
    parser.add_argument("--query-size", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="query rounds after round 0")
    parser.add_argument("--min-steps", type=int, default=30)
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds; stop before a run that won't fit")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one seed: checks that everything runs")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.strategies = [s for s in args.strategies.split(",") if s]
    if "random" not in args.strategies:
        parser.error("--strategies must include random (every strategy is compared with it)")
    if args.smoke:
        args.seeds, args.pool_size, args.test_size = args.seeds[:1], 40, 20
        args.initial_size, args.query_size, args.rounds, args.min_steps = 8, 8, 1, 4
        args.runs = args.runs.rstrip("/") + "_smoke"
        args.output = str(Path(args.output).with_name("mc_al_smoke.json"))

    import torch

    torch.set_num_threads(args.threads)
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    clock = Path(args.runs) / "wall_seconds.json"
    before = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
    start = time.time()
    deadline = start + args.time_limit if args.time_limit else None

    def save() -> None:
        wall = before + time.time() - start
        clock.write_text(json.dumps({"seconds": wall}))
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(aggregate(args, wall), indent=2) + "\n")

    last = 0.0
    for seed in args.seeds:
        for strategy in args.strategies:
            path = run_dir(strategy, seed, args)
            if finished(path):
                continue
            if deadline is not None and time.time() + last > deadline:
                print(f"[bench] time limit: stopping before {strategy} seed {seed}", flush=True)
                save()
                return
            began = time.time()
            drive(strategy, seed, args)
            last = time.time() - began
            print(f"[bench] {strategy} seed {seed}: {last:.0f} s", flush=True)
            save()
    save()
    print(json.dumps(aggregate(args, before + time.time() - start)["summary"], indent=2), flush=True)


if __name__ == "__main__":
    main()
