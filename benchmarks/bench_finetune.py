"""Fine-tuning benchmark: accuracy, calibration, trainable parameters, time and memory of each adapter.

1. rotten_tomatoes (binary sentiment) with MiniLM (``load_model("minilm", "classification", num_labels=2)``): a fixed
   random subset of training examples (default 2,000), full fine-tuning vs LoRA vs LoRA-SP vs MonteCLoRA vs LoRA with
   STAR's constraint (AdamW decay 0.5 on ``lora_B`` only), several seeds (the seed changes adapter init, data order
   and dropout; the training subset stays fixed). Test metrics on a fixed random subset of the test split.
2. strategyqa (yes/no, as multiple choice) with SmolLM2-135M-Instruct: zero-shot vs LoRA fine-tuned on a subset of
   the training split, accuracy on a fixed subset of the test split.

Every run happens in a fresh worker process, so its peak resident memory (sampled every 20 ms during training,
reported beside the increase over the pre-training baseline) is its own. Results are written to
``benchmarks/results/finetune.json`` after every run (``--append`` adds runs to an existing file) and a markdown
table is printed.

Usage::

    python benchmarks/bench_finetune.py                        # 1 seed, both parts
    python benchmarks/bench_finetune.py --seeds 1 2 --skip-mc --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "finetune.json"
DEFAULT_DATA = REPO.parent / "shared" / "data"

# rotten_tomatoes methods: (adapter method or "full", config overrides, training overrides)
RT_METHODS: dict[str, dict[str, Any]] = {
    "full": {"adapter": "full", "train": {"lr": 5e-5, "weight_decay": 0.01}},
    "lora": {"adapter": "lora", "train": {"lr": 1e-3}},
    "lora_sp": {"adapter": "lora_sp", "train": {"lr": 1e-3}},
    "monteclora": {"adapter": "monteclora", "train": {"lr": 1e-3}},
    "lora_star": {"adapter": "lora", "train": {"lr": 1e-3, "b_weight_decay": 0.5}},
}


class PeakRSS:
    """Samples the process's resident set size in a thread; ``peak`` is the largest value seen (bytes)."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


# -- workers (one run each, in a fresh process) ------------------------------------------------------------------------


def worker_rotten_tomatoes(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from loracle.adapters import ADAPTERS, apply_adapter, trainable_parameters
    from loracle.data import load_examples
    from loracle.evaluation import evaluate
    from loracle.models import load_model
    from loracle.tasks import build_task
    from loracle.training import TrainConfig, train

    torch.set_num_threads(spec["threads"])
    data = Path(spec["data_root"]) / "rotten_tomatoes"
    train_set = load_examples(data, "classification").sample(spec["train_size"], seed=0)
    test_set = load_examples(data, "classification", split="test", label_names=train_set.label_names)
    test_set = test_set.sample(spec["test_size"], seed=0)
    method = RT_METHODS[spec["method"]]
    torch.manual_seed(spec["seed"])  # the fresh classification head's init
    model, tokenizer = load_model("minilm", "classification", num_labels=2, label_names=train_set.label_names)
    task = build_task("classification", tokenizer, label_names=train_set.label_names, max_length=spec["max_length"])
    if method["adapter"] != "full":
        config = ADAPTERS[method["adapter"]](rank=spec["rank"], alpha=spec["alpha"], dropout=0.1,
                                            modules_to_save=["classifier"], seed=spec["seed"])
        apply_adapter(model, config)
    options = {"epochs": spec["epochs"], "batch_size": spec["batch_size"], "warmup_ratio": 0.06, "seed": spec["seed"],
               "progress": False, **method["train"]}
    with PeakRSS() as memory:
        result = train(model, task, train_set, TrainConfig(**options))
    start = time.perf_counter()
    scores = evaluate(model, task, test_set, batch_size=64)
    return {
        "dataset": "rotten_tomatoes", "method": spec["method"], "seed": spec["seed"],
        "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "ece": scores["ece"], "nll": scores["nll"],
        "brier": scores["brier"], "trainable_parameters": trainable_parameters(model),
        "train_time_s": result.train_time_s, "eval_time_s": time.perf_counter() - start,
        "peak_rss_mb": memory.peak / 2**20, "train_rss_increase_mb": (memory.peak - memory.baseline) / 2**20,
        "final_train_loss": result.final_loss, "steps": result.steps, "train_config": options,
    }


def worker_strategyqa(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from loracle.adapters import LoRAConfig, apply_adapter, trainable_parameters
    from loracle.data import load_examples
    from loracle.evaluation import evaluate
    from loracle.models import load_model
    from loracle.tasks import build_task
    from loracle.training import TrainConfig, train

    torch.set_num_threads(spec["threads"])
    data = Path(spec["data_root"]) / "strategyqa"
    train_set = load_examples(data, "multiple_choice").sample(spec["mc_train"], seed=spec["seed"])
    test_set = load_examples(data, "multiple_choice", split="test").sample(spec["mc_test"], seed=0)
    model, tokenizer = load_model("smollm2", "multiple_choice")
    task = build_task("multiple_choice", tokenizer, max_length=spec["max_length"])
    start = time.perf_counter()
    zero = evaluate(model, task, test_set, batch_size=16)
    zero_time = time.perf_counter() - start
    runs = [{"dataset": "strategyqa", "method": "zero_shot", "seed": spec["seed"], "accuracy": zero["accuracy"],
             "macro_f1": zero["macro_f1"], "ece": zero["ece"], "nll": zero["nll"], "brier": zero["brier"],
             "trainable_parameters": 0, "train_time_s": 0.0, "eval_time_s": zero_time}]
    apply_adapter(model, LoRAConfig(rank=spec["rank"], alpha=spec["alpha"], dropout=0.1,
                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], seed=spec["seed"]))
    options = {"epochs": spec["mc_epochs"], "batch_size": 8, "lr": spec["mc_lr"], "warmup_ratio": 0.06,
               "seed": spec["seed"], "progress": False}
    with PeakRSS() as memory:
        result = train(model, task, train_set, TrainConfig(**options))
    start = time.perf_counter()
    tuned = evaluate(model, task, test_set, batch_size=16)
    runs.append({"dataset": "strategyqa", "method": "lora", "seed": spec["seed"], "accuracy": tuned["accuracy"],
                 "macro_f1": tuned["macro_f1"], "ece": tuned["ece"], "nll": tuned["nll"], "brier": tuned["brier"],
                 "trainable_parameters": trainable_parameters(model), "train_time_s": result.train_time_s,
                 "eval_time_s": time.perf_counter() - start, "peak_rss_mb": memory.peak / 2**20,
                 "train_rss_increase_mb": (memory.peak - memory.baseline) / 2**20,
                 "final_train_loss": result.final_loss, "steps": result.steps, "train_config": options})
    return {"runs": runs}


# -- orchestration -----------------------------------------------------------------------------------------------------


def run_worker(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; returns its JSON result."""
    command = [sys.executable, __file__, "--worker", kind, json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {kind} {spec.get('method', '')} seed {spec['seed']} failed:\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean (and sample std for accuracy) over seeds per (dataset, method)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(f"{run['dataset']}/{run['method']}", []).append(run)
    summary = {}
    for key, items in groups.items():
        def mean(name: str) -> float | None:
            values = [r[name] for r in items if r.get(name) is not None]
            return statistics.fmean(values) if values else None

        acc = [r["accuracy"] for r in items]
        summary[key] = {
            "seeds": sorted(r["seed"] for r in items), "accuracy_mean": statistics.fmean(acc),
            "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0, "ece_mean": mean("ece"),
            "nll_mean": mean("nll"), "brier_mean": mean("brier"), "trainable_parameters": items[0]["trainable_parameters"],
            "train_time_s_mean": mean("train_time_s"), "peak_rss_mb_mean": mean("peak_rss_mb"),
            "train_rss_increase_mb_mean": mean("train_rss_increase_mb"),
        }
    return summary


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    def fmt(value: Any, digits: int = 3) -> str:
        if value is None:
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| dataset / method | seeds | accuracy (mean ± std) | ECE | NLL | Brier | trainable params | train time (s) "
             "| peak RSS (MB) | RSS increase in training (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, s in summary.items():
        lines.append(
            f"| {key} | {len(s['seeds'])} | {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} | {fmt(s['ece_mean'])} "
            f"| {fmt(s['nll_mean'])} | {fmt(s['brier_mean'])} | {s['trainable_parameters']:,} "
            f"| {fmt(s['train_time_s_mean'], 0)} | {fmt(s['peak_rss_mb_mean'], 0)} "
            f"| {fmt(s['train_rss_increase_mb_mean'], 0)} |")
    return "\n".join(lines)


def save(path: Path, meta: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary = summarise(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding rotten_tomatoes/, strategyqa/")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON")
    parser.add_argument("--append", action="store_true", help="add runs to an existing results file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the rotten_tomatoes runs")
    parser.add_argument("--methods", nargs="+", default=list(RT_METHODS), choices=list(RT_METHODS),
                        help="rotten_tomatoes methods")
    parser.add_argument("--train-size", type=int, default=2000, help="rotten_tomatoes training examples")
    parser.add_argument("--test-size", type=int, default=1000, help="rotten_tomatoes test examples (fixed subset)")
    parser.add_argument("--epochs", type=int, default=2, help="rotten_tomatoes epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="rotten_tomatoes batch size")
    parser.add_argument("--rank", type=int, default=8, help="adapter rank")
    parser.add_argument("--alpha", type=float, default=16.0, help="adapter alpha")
    parser.add_argument("--max-length", type=int, default=64, help="token limit")
    parser.add_argument("--mc-train", type=int, default=600, help="strategyqa training examples (subset)")
    parser.add_argument("--mc-test", type=int, default=500, help="strategyqa test examples (500 = the whole split)")
    parser.add_argument("--mc-epochs", type=int, default=1, help="strategyqa epochs")
    parser.add_argument("--mc-lr", type=float, default=5e-4, help="strategyqa LoRA learning rate")
    parser.add_argument("--mc-seed", type=int, default=0, help="strategyqa seed")
    parser.add_argument("--skip-rt", action="store_true", help="skip rotten_tomatoes")
    parser.add_argument("--skip-mc", action="store_true", help="skip strategyqa")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (1 is much faster than 2 on a busy 2-core box)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, spec = args.worker[0], json.loads(args.worker[1])
        result = (worker_rotten_tomatoes if kind == "rt" else worker_strategyqa)(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    out = Path(args.out)
    runs: list[dict[str, Any]] = []
    if args.append and out.exists():
        runs = json.loads(out.read_text())["runs"]
    import torch

    meta = {"machine": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "threads": args.threads, "rotten_tomatoes": {
                "model": "minilm (all-MiniLM-L6-v2)", "train_size": args.train_size, "train_subset_seed": 0,
                "test_size": args.test_size, "test_subset_seed": 0, "epochs": args.epochs,
                "batch_size": args.batch_size, "rank": args.rank, "alpha": args.alpha, "dropout": 0.1,
                "max_length": args.max_length, "modules_to_save": ["classifier"], "methods": RT_METHODS},
            "strategyqa": {"model": "smollm2 (SmolLM2-135M-Instruct, fp32)", "train_size": args.mc_train,
                           "test_size": args.mc_test, "epochs": args.mc_epochs, "lr": args.mc_lr,
                           "rank": args.rank, "alpha": args.alpha, "target_modules": "q,k,v,o_proj",
                           "scoring": "length-normalised log-likelihood of ' Yes'/' No' after 'Question: ...\\nAnswer:'"},
            "memory": "peak resident set size of the worker process, sampled every 20 ms during training"}
    spec = {"data_root": args.data_root, "train_size": args.train_size, "test_size": args.test_size,
            "epochs": args.epochs, "batch_size": args.batch_size, "rank": args.rank, "alpha": args.alpha,
            "max_length": args.max_length, "threads": args.threads, "mc_train": args.mc_train,
            "mc_test": args.mc_test, "mc_epochs": args.mc_epochs, "mc_lr": args.mc_lr}
    jobs: list[tuple[str, dict[str, Any]]] = []
    if not args.skip_rt:
        jobs += [("rt", {**spec, "method": m, "seed": s}) for s in args.seeds for m in args.methods]
    if not args.skip_mc:
        jobs.insert(min(len(args.methods), len(jobs)), ("mc", {**spec, "seed": args.mc_seed}))
    for kind, job in jobs:
        start = time.perf_counter()
        label = f"{kind} {job.get('method', 'zero_shot+lora')} seed {job['seed']}"
        print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)
        try:
            result = run_worker(kind, job)
        except RuntimeError as err:
            print(str(err), flush=True)
            continue
        new = result["runs"] if "runs" in result else [result]
        runs = [r for r in runs if not any((r["dataset"], r["method"], r["seed"]) == (n["dataset"], n["method"],
                                                                                     n["seed"]) for n in new)] + new
        for n in new:
            print(f"    {n['method']}: accuracy {n['accuracy']:.4f}, ECE {n['ece']:.4f}, "
                  f"train {n['train_time_s']:.0f}s ({time.perf_counter() - start:.0f}s with load/eval)", flush=True)
        summary = save(out, meta, runs)
    summary = save(out, meta, runs)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
