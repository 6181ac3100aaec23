"""Benchmark MC-dropout scoring speed: the naive loop of S full forward passes vs loracle's fast ``mc_probs``.

Issue target: S=8 stochastic passes over 2,000 rotten_tomatoes texts with MiniLM in <= 0.5x the time of the naive
loop, measured in the same run. Writes ``benchmarks/results/scoring.json``.

    python benchmarks/bench_scoring.py --data ../shared/data/rotten_tomatoes

Variants (same model, same adapters with non-zero random ``B`` so MC dropout changes the output):

- ``naive``: ``mc_probs(..., fast=False)``: for each batch in file order, S full forward passes.
- ``fast_all``: length sorting + the S samples batched into one forward; every adapter stochastic.
- ``fast_last_k``: as ``fast_all`` with MC dropout only in the last ``k`` blocks' adapters, so the frozen blocks
  below are computed once per batch and reused (prefix cache). This is the active-learning default (k = 2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/rotten_tomatoes")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--stochastic-layers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=250, help="texts per interleaved timing chunk")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "scoring.json"))
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from loracle.adapters import LoRAConfig, apply_adapter
    from loracle.data import load_examples
    from loracle.models import load_model
    from loracle.tasks import build_task
    from loracle.uncertainty.sampling import mc_probs

    examples = load_examples(args.data, "classification", split="train")
    pool = list(examples.sample(args.n, seed=0)) if len(examples) > args.n else list(examples)
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, "classification", num_labels=len(examples.label_names))
    apply_adapter(model, LoRAConfig(rank=8, alpha=16, dropout=0.1, modules_to_save=["classifier"], seed=0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)  # as after training: adapters matter
    model.eval()
    task = build_task("classification", tokenizer, max_length=args.max_length, label_names=examples.label_names)

    variants = {"naive": {"fast": False}, "fast_all": {},
                "fast_last_k": {"stochastic_layers": args.stochastic_layers}}
    wall = dict.fromkeys(variants, 0.0)
    cpu = dict.fromkeys(variants, 0.0)
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    # The box is shared: interleave the variants chunk by chunk (rotating the order) so that load changes hit
    # them alike, and report process CPU time beside wall time.
    chunks = [pool[i:i + args.chunk] for i in range(0, len(pool), args.chunk)]
    names = list(variants)
    for c, chunk in enumerate(chunks):
        for name in names[c % 3:] + names[:c % 3]:
            w0, c0 = time.perf_counter(), time.process_time()
            outputs[name].append(mc_probs(model, task, chunk, samples=args.samples, batch_size=args.batch_size,
                                          seed=c, **variants[name]))
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
        print(f"chunk {c + 1}/{len(chunks)}: " + ", ".join(f"{n} {wall[n]:.1f}s" for n in names), flush=True)
    probs = {name: torch.cat(out) for name, out in outputs.items()}
    check = pool[:64]
    det_fast = mc_probs(model, task, check, samples=0, batch_size=args.batch_size)
    det_naive = mc_probs(model, task, check, samples=0, batch_size=args.batch_size, fast=False)
    rep1 = mc_probs(model, task, check, samples=args.samples, stochastic_layers=args.stochastic_layers, seed=5)
    rep2 = mc_probs(model, task, check, samples=args.samples, stochastic_layers=args.stochastic_layers, seed=5)

    def mean_entropy(p):
        m = p.mean(1)
        return float(-(m * m.clamp_min(1e-12).log()).sum(-1).mean())

    result = {
        "model": args.model, "n_texts": len(pool), "samples": args.samples, "batch_size": args.batch_size,
        "max_length": args.max_length, "stochastic_layers": args.stochastic_layers,
        "torch_threads": torch.get_num_threads(), "chunk": args.chunk,
        "note": "shared 2-core box under load from other jobs; variants interleaved chunk by chunk",
        "wall_seconds": {k: round(v, 2) for k, v in wall.items()},
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "ratio_wall": {k: round(wall[k] / wall["naive"], 3) for k in ("fast_all", "fast_last_k")},
        "ratio_cpu": {k: round(cpu[k] / cpu["naive"], 3) for k in ("fast_all", "fast_last_k")},
        "target_ratio": 0.5,
        "samples0_fast_vs_naive_max_abs_diff": float((det_fast - det_naive).abs().max()),
        "seeded_repeat_identical": bool(torch.equal(rep1, rep2)),
        "mean_sample_std": {k: float(v.std(1).mean()) for k, v in probs.items()},
        "mean_predictive_entropy": {k: mean_entropy(v) for k, v in probs.items()},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
