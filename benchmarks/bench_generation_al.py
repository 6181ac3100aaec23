"""Active learning for a generative task with a causal LM (STAR's own setting, arXiv 2403.01165): SmolLM2-135M.

    python benchmarks/bench_generation_al.py --threads 2            # the full benchmark (resumable)
    python benchmarks/bench_generation_al.py --threads 1 --smoke    # a few minutes: tiny sizes, checks it all runs

Tasks:

- ``gsm_symbolic``: grade-school maths questions, the answer an integer; exact match of the last number generated.
- ``strategyqa_yesno``: built deterministically from strategyqa: each question answered ``Yes`` or ``No`` as free
  text (the choice the data marks right), so a 135M model has something it can learn from a few dozen answers;
  exact match of a leading yes/no (``--answer-pattern '(?i)^\\W*(yes|no)\\b'``).

For each task: the zero-shot exact match of the base LM (greedy, the same prompt ``Question: ...\\nAnswer:``), then
``loracle al run --task-kind generation`` with ``random``, ``sequence_nll`` (MC mean length-normalised NLL of the
model's own greedy answer, S=4 MC-dropout passes) and ``star_generation`` (STAR's dynamic mix of the same measure
from the fine-tuned model and from the base LM with adapters off, B-only weight decay 0.5), for every seed. Each
round trains a fresh LoRA adapter (r=8, top two blocks, the cross-round prefix cache) on the answers so far.

Per round the JSON keeps exact match, answer-confidence ECE and Brier (confidence ``exp(-NLL)`` of the greedy
answer), and seconds per phase (train, evaluate, generate, score). ``scaling`` times greedy generation and S=4
scoring on growing numbers of questions (how the per-round cost grows with the pool).

Resumable: every run lives in ``--runs`` (default ``runs/generation_al``); finished runs are skipped, an interrupted
one resumes where it stopped (``loracle.active.resume``), and ``--time-limit`` stops before starting a run that the
last run's duration says would not fit. The summary is rewritten after every run, with the wall time of all
sessions so far. Writes ``benchmarks/results/generation_al.json``.
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
STRATEGIES = ("random", "sequence_nll", "star_generation")
TASKS: dict[str, dict[str, Any]] = {
    "gsm_symbolic": {"answer_mode": "number", "max_new_tokens": 10, "max_length": 192},
    "strategyqa_yesno": {"answer_mode": "text", "answer_pattern": r"(?i)^\W*(yes|no)\b", "max_new_tokens": 4,
                         "max_length": 96},
}
PRIMARY = "gsm_symbolic"


def build_yesno(source: Path, target: Path) -> Path:
    """strategyqa as free-text generation: ``{"question", "answer": "Yes" | "No"}`` (the marked choice)."""
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        out = target / f"{split}.jsonl"
        if out.exists():
            continue
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()]
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"question": r["question"], "answer": r["choices"][r["answer"]]}) + "\n"
                               for r in rows))
        tmp.replace(out)
    return target


def data_dir(task: str, args: argparse.Namespace) -> Path:
    if task == "gsm_symbolic":
        return Path(args.data_root) / "gsm_symbolic"
    return build_yesno(Path(args.data_root) / "strategyqa", Path(args.runs) / "data" / task)


def sizes(args: argparse.Namespace) -> dict[str, int]:
    if args.smoke:
        return {"pool_size": 24, "test_size": 8, "initial_size": 4, "query_size": 4, "rounds": 1, "min_steps": 4}
    return {"pool_size": args.pool_size, "test_size": args.test_size, "initial_size": args.initial_size,
            "query_size": args.query_size, "rounds": args.rounds, "min_steps": args.min_steps}


def config_for(task: str, strategy: str, seed: int, args: argparse.Namespace) -> Any:
    from loracle.active import ALConfig

    s = sizes(args)
    spec = TASKS[task]
    return ALConfig(
        model=args.model, data=str(data_dir(task, args)), task_kind="generation", strategy=strategy,
        initial_size=s["initial_size"], query_size=s["query_size"], rounds=s["rounds"], pool_size=s["pool_size"],
        test_size=s["test_size"], mc_samples=0 if strategy == "random" else args.mc_samples,
        answer_mode=spec["answer_mode"], answer_pattern=spec.get("answer_pattern"),
        max_new_tokens=spec["max_new_tokens"], max_length=spec["max_length"], stop_strings=["\n"],
        train={"epochs": 3, "min_steps": s["min_steps"], "batch_size": 8, "lr": 1e-3},
        eval_batch_size=16, score_chunk=128, cache_dir=str(Path(args.runs) / "cache"), seed=seed, progress=False)


def zero_shot(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """Exact match and answer calibration of the base LM on the task's test subset (the runs' test set)."""
    out = Path(args.runs) / f"zero_shot_{task}.json"
    if out.exists():
        return json.loads(out.read_text())
    from loracle.active.loop import _subset, derived_seed
    from loracle.data import load_examples
    from loracle.evaluation import evaluate
    from loracle.modeling.build import ModelBuilder

    config = config_for(task, "random", 0, args)
    test = _subset(list(load_examples(config.data, "generation", split="test")), config.test_size,
                   derived_seed(0, 0, "test"))  # the test set of the seed-0 runs
    builder = ModelBuilder(config.model, "generation", max_length=config.max_length, adapter=None,
                           task_extra=config.generation_options())
    model, task_obj = builder.base()
    start = time.perf_counter()
    result = evaluate(model, task_obj, test, batch_size=config.eval_batch_size)
    record = {"exact_match": result["exact_match"], "answer_ece": result["answer_ece"],
              "answer_brier": result["answer_brier"], "mean_confidence": result["mean_confidence"],
              "n": result["n"], "seconds": round(time.perf_counter() - start, 2),
              "examples": [{"question": e.text[:120], "reference": e.answer, "generated": p}
                           for e, p in list(zip(test, result["predictions"]))[:5]]}
    out.write_text(json.dumps(record, indent=2))
    return record


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of greedy generation and of S-pass scoring on ``n`` questions, for growing ``n``."""
    out = Path(args.runs) / "scaling.json"
    if out.exists():
        return json.loads(out.read_text())
    from loracle.active.loop import _builder
    from loracle.data import load_examples
    from loracle.uncertainty.generation import greedy_answers, mc_answer_scores

    config = config_for(PRIMARY, "sequence_nll", 0, args)
    questions = list(load_examples(config.data, "generation", split="train"))
    built = _builder(config, None, [], None).fresh(head_seed=1, adapter_seed=1)
    rows = []
    for n in ([8, 16] if args.smoke else [32, 64, 128]):
        items = questions[:n]
        start = time.perf_counter()
        greedy = greedy_answers(built.model, built.task, items, batch_size=config.eval_batch_size)
        generate = time.perf_counter() - start
        start = time.perf_counter()
        mc_answer_scores(built.model, built.task, items, greedy.token_ids, samples=args.mc_samples,
                         batch_size=config.eval_batch_size, seed=0)
        score = time.perf_counter() - start
        rows.append({"questions": n, "generate_seconds": round(generate, 2), "score_seconds": round(score, 2),
                     "generate_items_per_s": round(n / generate, 2), "score_items_per_s": round(n / score, 2),
                     "mean_answer_tokens": round(sum(len(x) for x in greedy.token_ids) / n, 2)})
    record = {"task": PRIMARY, "mc_samples": args.mc_samples, "batch_size": config.eval_batch_size, "rows": rows}
    out.write_text(json.dumps(record, indent=2))
    return record


def run_dir(task: str, strategy: str, seed: int, args: argparse.Namespace) -> Path:
    return Path(args.runs) / task / f"{strategy}-seed{seed}"


def finished(path: Path) -> bool:
    report = path / "report.json"
    return report.exists() and json.loads(report.read_text()).get("status") == "done"


def drive(task: str, strategy: str, seed: int, args: argparse.Namespace) -> None:
    from loracle.active.loop import resume, run_active_learning

    path = run_dir(task, strategy, seed, args)
    if (path / "state.sqlite").exists():
        resume(path)
    else:
        run_active_learning(config_for(task, strategy, seed, args), path)


def run_record(path: Path) -> dict[str, Any] | None:
    from loracle.active.report import area_under_curve
    from loracle.active.state import RunState

    if not (path / "state.sqlite").exists():
        return None
    state = RunState.open(path)
    try:
        rounds = []
        for r in state.rounds():
            m = r["metrics"]
            phases = state.get_meta(f"phase_seconds/{r['round']}") or {}
            rounds.append({"round": r["round"], "n_labels": r["n_labels"], "exact_match": m["exact_match"],
                           "answer_ece": m["answer_ece"], "answer_brier": m["answer_brier"],
                           "mean_confidence": m["mean_confidence"],
                           "seconds": {"train": round(r["train_seconds"] or 0.0, 2),
                                       "evaluate": round(m.get("evaluate_seconds", 0.0), 2),
                                       "generate": round(phases.get("generate", 0.0), 2),
                                       "score": round(phases.get("score", 0.0), 2),
                                       "query_total": round(r["score_seconds"] or 0.0, 2)}})
        done = finished(path)
    finally:
        state.close()
    aulc = area_under_curve([r["n_labels"] for r in rounds], [r["exact_match"] for r in rounds]) if rounds else None
    return {"done": done, "aulc_exact_match": aulc, "rounds": rounds}


def aggregate(args: argparse.Namespace, wall_total: float) -> dict[str, Any]:
    seeds = args.seeds
    tasks: dict[str, Any] = {}
    for task in args.tasks:
        zs = Path(args.runs) / f"zero_shot_{task}.json"
        entry: dict[str, Any] = {"zero_shot": json.loads(zs.read_text()) if zs.exists() else None, "strategies": {}}
        for strategy in STRATEGIES:
            runs = {seed: run_record(run_dir(task, strategy, seed, args)) for seed in seeds}
            aulcs = [r["aulc_exact_match"] for r in runs.values() if r and r["done"]]
            entry["strategies"][strategy] = {
                "mean_aulc_exact_match": sum(aulcs) / len(aulcs) if aulcs else None,
                "seeds_done": [s for s, r in runs.items() if r and r["done"]],
                "runs": {str(s): r for s, r in runs.items() if r}}
        tasks[task] = entry
    primary = PRIMARY if PRIMARY in tasks else args.tasks[0]
    p = tasks[primary]
    # The summary compares strategies on the seeds every one of them finished (paired), not on the configured ones.
    common = sorted(set.intersection(*[set(v["seeds_done"]) for v in p["strategies"].values()]))

    def paired_aulc(entry: dict[str, Any]) -> float | None:
        values = [entry["runs"][str(seed)]["aulc_exact_match"] for seed in common]
        return sum(values) / len(values) if values else None

    summary = {"task": primary, "model": "SmolLM2-135M-Instruct (smollm2)" if args.model == "smollm2" else args.model,
               "seeds": common,
               "zero_shot_exact_match": p["zero_shot"]["exact_match"] if p["zero_shot"] else None,
               "strategies": {k: paired_aulc(v) for k, v in p["strategies"].items()}}
    s = sizes(args)
    return {"summary": summary,
            "setting": {**s, "model": args.model, "mc_samples": args.mc_samples, "threads": args.threads,
                        "smoke": args.smoke, "adapter": "LoRA r=8, alpha 16, dropout 0.1, top two blocks (default)",
                        "train": f"fresh adapter per round, 3 epochs and >= {s['min_steps']} steps, batch 8, lr 1e-3",
                        "aulc": "trapezoid area under exact match vs labels, divided by the label range"},
            "wall_seconds_all_sessions": round(wall_total, 1),
            "scaling": json.loads((Path(args.runs) / "scaling.json").read_text())
            if (Path(args.runs) / "scaling.json").exists() else None,
            "tasks": tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "generation_al"))
    parser.add_argument("--output", default=str(RESULTS / "generation_al.json"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--pool-size", type=int, default=300)
    parser.add_argument("--test-size", type=int, default=100)
    parser.add_argument("--initial-size", type=int, default=16)
    parser.add_argument("--query-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=30)
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--time-limit", type=float, default=None, help="seconds; stop before a run that won't fit")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one seed: checks that everything runs")
    args = parser.parse_args()
    if args.smoke:
        args.seeds = args.seeds[:1]
        args.runs = args.runs.rstrip("/") + "_smoke"
        args.output = str(Path(args.output).with_name("generation_al_smoke.json"))

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

    for task in args.tasks:
        print(f"[bench] zero-shot {task}: {zero_shot(task, args)['exact_match']:.3f}", flush=True)
    scaling(args)
    save()
    last = 0.0
    for seed in args.seeds:
        for task in args.tasks:
            for strategy in STRATEGIES:
                path = run_dir(task, strategy, seed, args)
                if finished(path):
                    continue
                if deadline is not None and time.time() + last > deadline:
                    print(f"[bench] time limit: stopping before {task}/{strategy} seed {seed}", flush=True)
                    save()
                    return
                began = time.time()
                drive(task, strategy, seed, args)
                last = time.time() - began
                print(f"[bench] {task}/{strategy} seed {seed}: {last:.0f} s", flush=True)
                save()
    save()
    print(f"[bench] wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
