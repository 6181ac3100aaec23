"""One active-learning round, side by side: a plain PEFT + MC-dropout loop against loracle's default round.

Setting (issue "fast rounds"): rotten_tomatoes, the MiniLM encoder, 300 labelled items (a seeded subset of the
training split), the whole remaining pool (10,452 items) scored with S=8 MC samples, the 2,000-item test set.

Variants, each run in its own subprocess (so its peak RSS is its own):

- ``reference``: what a user would write with Hugging Face PEFT: LoRA r=8, alpha 16, dropout 0.1 on
  query/key/value/attention-output in every block, the head trained in full, a plain PyTorch loop (AdamW,
  linear warm-up/decay, padding to the longest item of each batch, fp32), evaluation in eval mode, and MC dropout
  as in baal: every dropout module switched on and S full forward passes over the pool.
- ``loracle``: ``loracle al run``'s default round: LoRA r=8 on every linear layer of the top 2 blocks (the head
  and BERT's pooler trained in full), the
  cross-round prefix cache (the 4 frozen blocks below are computed once per run), bf16 autocast where the CPU has
  AMX / AVX512-BF16, length-sorted batches and the S samples batched together.
- ``loracle_all_blocks``: loracle's training with adapters in every block (q/k/v/attention-output, as the
  reference), so no cross-round cache: what the placement costs in accuracy (train and evaluate only; its scoring
  would cost about as much as the reference's).

All variants train the same number of optimiser steps (max(3 epochs, 100 steps), batch 16, lr 1e-3, weight decay
0.01). The reference's pool scoring (fp32, 8 full passes over 10,452 items) takes about 10 minutes on the 2-core box,
so it runs for seed 0 only (``--score-seeds``); training and evaluation run for every seed. Scoring time is linear
in the pool by construction (a fixed cost per item); the growth table reads the cumulative scoring time after the
first 2,000 / 5,000 / all items of the same pass, plus each variant's per-round fixed cost (train + evaluate).

Resumable: each (variant, seed) result is stored in the JSON as soon as it is measured; a rerun skips it.
Wall time on the 2-core box: about 35 minutes for 3 seeds.

Usage: python benchmarks/bench_round.py [--seeds 0,1,2] [--score-seeds 0] [--main-job-seconds S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "round.json"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rotten_tomatoes"
N_LABELLED = 300
SAMPLES = 8
ROUNDS_PER_RUN = 5  # one-off per-run work is counted as a fifth in each of 5 rounds
CHECKPOINTS = (2000, 5000)
REFERENCE_SCORED = 2000  # items the reference's S-pass scoring is timed on (then scaled to the pool)


def _split(data: Path, seed: int):
    import numpy as np

    from loracle.data import load_examples

    train = load_examples(str(data), "classification", split="train")
    test = list(load_examples(str(data), "classification", split="test", label_names=train.label_names))
    items = list(train)
    chosen = set(np.random.default_rng(1000 + seed).choice(len(items), N_LABELLED, replace=False).tolist())
    labelled = [e for i, e in enumerate(items) if i in chosen]
    pool = [e for i, e in enumerate(items) if i not in chosen]
    return train.label_names, labelled, pool, test


def _steps(n: int, batch: int = 16) -> int:
    per_epoch = math.ceil(n / batch)
    return per_epoch * max(3, math.ceil(100 / per_epoch))


def _metrics(probs, labels) -> dict:
    from loracle.evaluation.metrics import classification_metrics

    m = classification_metrics(probs, labels)
    return {"accuracy": float(m["accuracy"]), "ece": float(m["ece"]), "macro_f1": float(m["macro_f1"])}


def _flops_per_token(hidden: int, inter: int, blocks: int, tokens: float, lora: int) -> float:
    """Multiply-adds x2 of ``blocks`` BERT blocks for one token in a sequence of ``tokens`` (+ LoRA ``lora``)."""
    linear = 4 * hidden * hidden + 2 * hidden * inter
    attention = 2 * tokens * hidden  # QK^T and AV
    return 2.0 * blocks * (linear + attention) + 2.0 * lora


# -- reference ---------------------------------------------------------------------------------------------------
def run_reference(seed: int, score: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding
    from transformers import get_scheduler

    from loracle.models import resolve_model

    label_names, labelled, pool, test = _split(DATA, seed)
    path = resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.1, modules_to_save=["classifier"],
        target_modules=r".*\.(query|key|value|attention\.output\.dense)$"))
    collator = DataCollatorWithPadding(tokenizer)

    def encode(examples, with_labels):
        rows = []
        for e in examples:
            row = dict(tokenizer(e.text, truncation=True, max_length=256))
            if with_labels:
                row["labels"] = e.label
            rows.append(row)
        return rows

    out: dict = {"variant": "reference", "seed": seed}
    start = time.perf_counter()
    train_rows = encode(labelled, True)
    loader = DataLoader(train_rows, batch_size=16, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(seed))
    steps = _steps(len(train_rows))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01)
    scheduler = get_scheduler("linear", optimizer, int(0.06 * steps), steps)
    model.train()
    done = 0
    while done < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done += 1
            if done >= steps:
                break
    out["train_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    test_rows = encode(test, False)
    probs = []
    with torch.no_grad():
        for i in range(0, len(test_rows), 64):
            probs.append(model(**collator(test_rows[i:i + 64])).logits.softmax(-1))
    out["evaluate_seconds"] = time.perf_counter() - start
    out.update(_metrics(torch.cat(probs), torch.tensor([e.label for e in test])))

    if score:
        start = time.perf_counter()
        # The reference costs the same per item all through the pool (fixed batches in pool order), so its pass is
        # timed on the first REFERENCE_SCORED items and scaled to the whole pool (stated in the results).
        full = len(pool)
        pool_rows = encode(pool[:REFERENCE_SCORED], False)
        model.train()  # MC dropout as in baal: every dropout module on
        n = len(pool_rows)
        with torch.no_grad():
            for s in range(SAMPLES):
                torch.manual_seed(seed * 100 + s)
                for i in range(0, n, 64):
                    model(**collator(pool_rows[i:i + 64])).logits.softmax(-1)
        measured = time.perf_counter() - start
        total = measured * full / n
        out["score_seconds_measured"] = measured
        out["score_items_measured"] = n
        out["score_seconds"] = total
        out["score_extrapolated"] = True
        out["pool_scored"] = full
        # A fixed cost per item: the time for the first m items with S samples is m / n of the measured pass.
        out["score_seconds_at"] = {str(m): measured * m / n for m in CHECKPOINTS}
        out["score_seconds_at"][str(full)] = total
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# -- loracle -----------------------------------------------------------------------------------------------------
def run_loracle(seed: int, all_blocks: bool, score: bool, mode: str = "mc", top: int | None = None) -> dict:
    import torch

    from loracle.active.config import default_adapter, default_train
    from loracle.active.pool import Scorer
    from loracle.evaluation import evaluate
    from loracle.modeling.build import ModelBuilder
    from loracle.modeling.precision import resolve_precision
    from loracle.modeling.prefix_cache import PrefixCache
    from loracle.training import train

    label_names, labelled, pool, test = _split(DATA, seed)
    adapter = default_adapter()
    if all_blocks:
        adapter = adapter.replace(layers=None, target_modules=r".*\.(query|key|value|attention\.output\.dense)$")
    if top is not None:
        adapter = adapter.replace(layers=list(range(-top, 0)))
    precision = resolve_precision("auto")
    builder = ModelBuilder("minilm", "classification", label_names=label_names, max_length=256, adapter=adapter)
    built = builder.fresh(head_seed=seed, adapter_seed=seed)
    model, task, layout = built.model, built.task, built.layout
    names = {"mc": "loracle", "mc1": "loracle_mc1", "badge": "loracle_badge"}
    variant = "loracle_all_blocks" if all_blocks else names[mode] + (f"_top{top}" if top else "")
    out: dict = {"variant": variant, "seed": seed,
                 "precision": precision, "first_adapted_block": layout.first_trainable_block}
    import contextlib

    cache = PrefixCache(layout.first_trainable_block) if layout.first_trainable_block >= 1 else None
    context = cache.attached(model, layout) if cache is not None else contextlib.nullcontext()
    # mc: S samples through every adapter; mc1: S samples through the top block's adapters only (the block below
    # computed once per batch); badge: the default strategy's signals (one deterministic pass and the head's input).
    scorer = Scorer(samples=0 if mode == "badge" else SAMPLES, batch_size=64, precision=precision,
                    stochastic_layers=1 if mode == "mc1" else None)
    requires = frozenset({"probs", "embeddings"}) if mode == "badge" else frozenset({"probs"})
    with context:
        if cache is not None:
            # The one-off per-run work: the frozen prefix of every pool, labelled and test item.
            start = time.perf_counter()
            scorer_once = Scorer(samples=0, batch_size=64, precision=precision)
            # Without scoring, only the labelled and test items are needed (accuracy-only seeds).
            scorer_once.probs(model, task, labelled + (pool if score else []) + test, seed=0)
            if score:
                out["per_run_seconds"] = time.perf_counter() - start
            out["cache_fill_seconds"] = cache.fill_seconds_
            out["cache_mib"] = cache.nbytes / 2**20
            out["cache_items"] = len(cache)
        config = default_train().replace(seed=seed, progress=False,
                                         mixed_precision="bf16" if precision == "bf16" else "no")
        start = time.perf_counter()
        train(model, task, labelled, config)
        out["train_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics = evaluate(model, task, test, batch_size=64, precision=precision)
        out["evaluate_seconds"] = time.perf_counter() - start
        out.update({k: float(metrics[k]) for k in ("accuracy", "ece", "macro_f1")})
        if score:
            start = time.perf_counter()
            marks: dict[str, float] = {}
            done = 0
            for chunk_start in range(0, len(pool), 1000):
                chunk = pool[chunk_start:chunk_start + 1000]
                scorer.measure(requires, model, task, chunk, seed=seed * 100 + chunk_start)
                done += len(chunk)
                for mark in CHECKPOINTS:
                    if done >= mark and str(mark) not in marks:
                        marks[str(mark)] = time.perf_counter() - start
            out["score_seconds"] = time.perf_counter() - start
            marks[str(len(pool))] = out["score_seconds"]
            out["score_seconds_at"] = marks
            out["pool_scored"] = len(pool)
            # Useful work of scoring: S samples through the blocks that run (from the first adapted one up).
            lengths = task.tokenizer([e.text for e in pool], truncation=True, max_length=256)["input_ids"]
            blocks = layout.num_blocks - (layout.first_trainable_block if cache is not None else 0)
            cfg = model.config
            lora = sum(layer.rank * (layer.in_features + layer.out_features) for _, layer, _ in layout.adapters)
            lora_per_block = lora / max(1, len({b for _, _, b in layout.adapters}))
            # Block passes per item: S through every computed block (mc), the blocks below the top one once and
            # S through the top one (mc1), or two deterministic passes (badge: predictions, then features).
            passes = {"mc": SAMPLES * blocks, "mc1": blocks - 1 + SAMPLES, "badge": 2 * blocks}[mode]
            flops = sum(len(ids) * _flops_per_token(cfg.hidden_size, cfg.intermediate_size, 1, len(ids),
                                                    lora_per_block) for ids in lengths) * passes
            out["scoring_gflop"] = flops / 1e9
            out["scoring_gflops"] = flops / 1e9 / out["score_seconds"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def matmul_peak(threads: int) -> dict:
    """Best of 5 runs of a 2048x2048 matmul, fp32 and bf16, at the benchmark's thread count."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(5))
        out[name] = 2 * 2048**3 / best / 1e9
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _child(variant: str, seed: int, score: bool, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if variant == "reference":
        return run_reference(seed, score)
    base, _, top = variant.partition("_top")
    mode = {"loracle_mc1": "mc1", "loracle_badge": "badge"}.get(base, "mc")
    return run_loracle(seed, variant == "loracle_all_blocks", score, mode, int(top) if top else None)


def summarise(results: dict) -> dict:
    jobs = results["jobs"]

    def mean(variant: str, key: str) -> float | None:
        # Seconds come from the scored seeds only (they ran alone, in sequence; the accuracy-only seeds may share
        # the machine); accuracy and ECE from every seed.
        timing = key.endswith("seconds") or key in ("peak_rss_mib", "cache_mib")
        values = [j[key] for j in jobs.values() if j["variant"] == variant and key in j
                  and (not timing or "score_seconds" in j or variant == "loracle_all_blocks")]
        return sum(values) / len(values) if values else None

    def round_seconds(variant: str) -> float | None:
        scored = [j for j in jobs.values() if j["variant"] == variant and "score_seconds" in j]
        if not scored:
            return None
        fixed = mean(variant, "train_seconds") + mean(variant, "evaluate_seconds")
        once = mean(variant, "per_run_seconds") or 0.0
        return fixed + sum(j["score_seconds"] for j in scored) / len(scored) + once / ROUNDS_PER_RUN

    table = {}
    for variant in ("reference", "loracle", "loracle_mc1", "loracle_badge", "loracle_all_blocks"):
        seconds = round_seconds(variant)
        table[variant] = {
            "seeds": sorted(j["seed"] for j in jobs.values() if j["variant"] == variant),
            "train_seconds": mean(variant, "train_seconds"), "evaluate_seconds": mean(variant, "evaluate_seconds"),
            "score_seconds": mean(variant, "score_seconds"), "per_run_seconds": mean(variant, "per_run_seconds"),
            "round_seconds": seconds, "accuracy": mean(variant, "accuracy"), "ece": mean(variant, "ece"),
            "peak_rss_mib": mean(variant, "peak_rss_mib"), "cache_mib": mean(variant, "cache_mib"),
        }
        ref = round_seconds("reference")
        table[variant]["ratio_to_reference"] = seconds / ref if seconds and ref else None
        scored = [j for j in jobs.values() if j["variant"] == variant and "score_seconds_at" in j]
        if scored:
            fixed = table[variant]["train_seconds"] + table[variant]["evaluate_seconds"] + (
                (table[variant]["per_run_seconds"] or 0.0) / ROUNDS_PER_RUN)
            table[variant]["round_seconds_by_pool"] = {
                m: fixed + s for m, s in scored[0]["score_seconds_at"].items()}
    # The default round is `al run`'s: BADGE (one deterministic pass and the head's input per item). Its accuracy
    # is the same model's as the S=8 variant's (same training), measured over every seed.
    loracle_scored = [j for j in jobs.values() if j["variant"] == "loracle_badge" and "scoring_gflops" in j]
    results["table"] = table
    results["summary"] = {
        "ratio_default_to_reference": table["loracle_badge"]["ratio_to_reference"],
        "accuracy_default": table["loracle"]["accuracy"],
        "accuracy_reference": table["reference"]["accuracy"],
        "pool_scored": loracle_scored[0]["pool_scored"] if loracle_scored else None,
        "scoring_gflops": loracle_scored[0]["scoring_gflops"] if loracle_scored else None,
        "matmul_peak_gflops": results.get("matmul_peak", {}).get(
            loracle_scored[0]["precision"] if loracle_scored else "fp32"),
        "main_job_seconds": results.get("main_job_seconds"),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--score-seeds", default="0", help="seeds whose round also scores the pool")
    parser.add_argument("--variants", default="loracle,reference,loracle_all_blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--main-job-seconds", type=float, help="record the main job's measured wall time")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, seed, score = args.child.split(":")
        print(json.dumps(_child(variant, int(seed), score == "1", args.threads)))
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"jobs": {}}
    results["setting"] = {"data": "rotten_tomatoes", "model": "minilm", "labelled": N_LABELLED, "samples": SAMPLES,
                          "threads": args.threads, "rounds_per_run": ROUNDS_PER_RUN}
    if "matmul_peak" not in results:
        results["matmul_peak"] = matmul_peak(args.threads)
    if args.main_job_seconds:
        results["main_job_seconds"] = args.main_job_seconds
    score_seeds = {int(s) for s in args.score_seeds.split(",") if s}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in args.variants.split(","):
            key = f"{variant}:{seed}"
            if key in results["jobs"]:
                continue
            score = seed in score_seeds and variant != "loracle_all_blocks"
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--child",
                                   f"{variant}:{seed}:{int(score)}"], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                sys.exit(f"{key} failed:\n{proc.stderr[-3000:]}")
            record = json.loads(proc.stdout.strip().splitlines()[-1])
            record["wall_seconds"] = time.perf_counter() - start
            results["jobs"][key] = record
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(summarise(results), indent=2))
            print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()
                        if k not in ("score_seconds_at",)}, flush=True)
    RESULTS.write_text(json.dumps(summarise(results), indent=2))
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
