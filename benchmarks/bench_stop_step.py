"""When to stop training a round's model: the whole schedule, or the step the cross-fitting folds pick.

    python benchmarks/bench_stop_step.py --name rotten_tomatoes --data ../shared/data/rotten_tomatoes \
        --sizes 200,400 --seeds 0,1,2
    python benchmarks/bench_stop_step.py --aggregate-only

For seeded random labelled sets of each size (from a seeded 2,000-item pool of the dataset's training split; 1,000
seeded test items), MiniLM with ``al run``'s adapter and classification recipe (LoRA r=8 on the top two blocks,
head at lr 1e-4, label smoothing 0.1, at least 8 epochs and 100 steps, bf16 autocast, the prefix cache):

- the round model is trained once over its whole schedule and its test predictions are taken at each of its epoch
  ends (the model ``TrainConfig.stop_step`` at that step gives: the same weights, tested in
  tests/training/test_selection.py);
- three fold models, each on 2/3 of the labels for the round model's optimiser steps (``al run``'s
  cross-fitting), predict their held-out third and the test set at the same steps.

Each row keeps, per candidate step, the round model's test accuracy, ECE and mean confidence, the cross-fitted
ensemble's (round model and fold models, plain mean), and every labelled item's held-out loss, so that any stopping
rule can be replayed. The summary compares, per dataset and size, ``final`` (``--train-steps fixed``), ``folds``
(``--train-steps folds``: :func:`loracle.training.selection.stop_step_by_loss`, one standard error), ``folds_2se``
and ``argmin`` (the lowest pooled held-out loss). Rows go to ``benchmarks/results/stop_step_rows.jsonl`` (finished
rows are skipped: the script resumes) and the summary to ``benchmarks/results/stop_step.json``. 1-5 min a row on
one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS = RESULTS / "stop_step_rows.jsonl"
RULES = ("final", "folds", "folds_2se", "argmin")


def pick(row: dict, rule: str) -> int:
    """The step ``rule`` stops at, from the row's held-out losses."""
    import torch

    from loracle.training.selection import stop_step_by_loss

    per = {p["step"]: p for p in row["per"]}
    if rule == "final":
        return max(per)
    if rule == "argmin":
        return min(per, key=lambda s: (statistics.mean(per[s]["items"]), s))
    losses = {s: torch.tensor(p["items"], dtype=torch.float64) for s, p in per.items()}
    return stop_step_by_loss(losses, 2.0 if rule == "folds_2se" else 1.0)


def summarise() -> dict:
    groups: dict[tuple, list[dict]] = {}
    for line in ROWS.read_text().splitlines():
        row = json.loads(line)
        groups.setdefault((row["dataset"], row["n"]), []).append(row)
    table = []
    for (dataset, n), rows in sorted(groups.items()):
        entry = {"dataset": dataset, "n_labels": n, "seeds": sorted(r["seed"] for r in rows), "rules": {}}
        for rule in RULES:
            chosen = [({p["step"]: p for p in r["per"]}[pick(r, rule)], r) for r in rows]
            mean = lambda key: round(statistics.mean(p[key] for p, _ in chosen), 4)  # noqa: E731
            entry["rules"][rule] = {
                "steps": [p["step"] for p, _ in chosen], "planned": [r["steps"] for _, r in chosen],
                **{f"{k}_mean": mean(k) for k in ("accuracy", "macro_f1", "ece", "confidence", "accuracy_ensemble",
                                                  "macro_f1_ensemble", "ece_ensemble")
                   if all(k in p for p, _ in chosen)}}
        table.append(entry)
    out = {"setting": {"model": "minilm", "pool_size": 2000, "test_size": 1000, "folds": 3,
                       "recipe": "al run's classification recipe"}, "results": table}
    (RESULTS / "stop_step.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def markdown(out: dict) -> str:
    lines = ["| task | labels | steps kept (`folds`) | accuracy fixed → folds | macro-F1 fixed → folds | ECE fixed → "
             "folds | mean confidence fixed → folds | plain-ensemble ECE fixed → folds |",
             "|---|---|---|---|---|---|---|---|"]
    for e in out["results"]:
        f, g = e["rules"]["final"], e["rules"]["folds"]
        kept = statistics.mean(s / p for s, p in zip(g["steps"], g["planned"]))
        f1 = (f"{f['macro_f1_mean']:.3f} → {g['macro_f1_mean']:.3f}" if "macro_f1_mean" in f else "–")
        lines.append(f"| {e['dataset']} | {e['n_labels']} ({len(e['seeds'])} seeds) | {kept:.0%} | "
                     f"{f['accuracy_mean']:.3f} → {g['accuracy_mean']:.3f} | {f1} | {f['ece_mean']:.3f} → "
                     f"{g['ece_mean']:.3f} | {f['confidence_mean']:.3f} → {g['confidence_mean']:.3f} | "
                     f"{f['ece_ensemble_mean']:.3f} → {g['ece_ensemble_mean']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "rotten_tomatoes"),
                        help="a folder with train.jsonl and test.jsonl")
    parser.add_argument("--name", default="rotten_tomatoes", help="the dataset's name in the rows")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--sizes", default="200,400")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.aggregate_only or args.markdown:
        out = summarise()
        print(markdown(out) if args.markdown else json.dumps(out, indent=1))
        return

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from loracle.active.config import default_adapter, default_train
    from loracle.data.loaders import load_examples
    from loracle.evaluation.metrics import classification_metrics
    from loracle.modeling.build import ModelBuilder
    from loracle.modeling.prefix_cache import PrefixCache
    from loracle.training import train
    from loracle.training.selection import StepSnapshots
    from loracle.uncertainty.sampling import mc_probs

    columns = {"text_field": args.text_field, "label_field": args.label_field}
    pool = load_examples(Path(args.data) / "train.jsonl", "classification", **columns)
    test = load_examples(Path(args.data) / "test.jsonl", "classification", label_names=pool.label_names, **columns)
    names = pool.label_names
    pool = [pool[i] for i in np.random.default_rng(0).choice(len(pool), min(2000, len(pool)), replace=False)]
    test = [test[i] for i in np.random.default_rng(1).choice(len(test), min(1000, len(test)), replace=False)]
    test_labels = torch.tensor([e.label for e in test])
    builder = ModelBuilder("minilm", "classification", label_names=names, examples=pool, max_length=256,
                           adapter=default_adapter())
    cache = None
    done = set()
    if ROWS.exists():
        done = {(r["dataset"], r["n"], r["seed"]) for r in map(json.loads, ROWS.read_text().splitlines())}

    def predict(built, items):
        return mc_probs(built.model, built.task, items, samples=0, batch_size=64, precision="bf16")[:, 0].float()

    for n in (int(x) for x in args.sizes.split(",")):
        for seed in (int(x) for x in args.seeds.split(",")):
            if (args.name, n, seed) in done:
                continue
            start = time.perf_counter()
            labelled = [pool[i] for i in np.random.default_rng(100 + seed).choice(len(pool), n, replace=False)]
            config = default_train("classification").replace(seed=seed, progress=False, mixed_precision="bf16")
            steps = config.steps_for(n)
            candidates = config.epoch_end_steps(n)
            members = []  # per model: {step: test probs}, and for fold models {step: held-out probs}
            held_losses = {s: [] for s in candidates}
            order = np.random.default_rng(1000 + seed).permutation(n)
            for i in range(4):  # 0: the round model; 1-3: the fold models
                held = set(order[i - 1::3].tolist()) if i else set()
                fit_on = [e for j, e in enumerate(labelled) if j not in held]
                held_out = [labelled[j] for j in sorted(held)]
                built = builder.fresh(head_seed=seed + 10 * i, adapter_seed=seed + 10 * i)
                if cache is None:
                    cache = PrefixCache(built.layout.first_trainable_block)
                with cache.attached(built.model, built.layout):
                    copies = StepSnapshots(built.model, candidates, lambda: (
                        predict(built, test), predict(built, held_out) if held_out else None))
                    run = config if i == 0 else config.replace(min_steps=steps, max_steps=steps, seed=seed + i)
                    train(built.model, built.task, fit_on, run, callbacks=[copies])
                members.append({s: copies.probes[s][0] for s in candidates})
                if held_out:
                    y = torch.tensor([e.label for e in held_out])
                    for s in candidates:
                        p = copies.probes[s][1]
                        held_losses[s].append(-p.clamp_min(1e-12).log()[torch.arange(len(y)), y])
            per = []
            for s in candidates:
                own = classification_metrics(members[0][s], test_labels)
                ensemble = classification_metrics(torch.stack([m[s] for m in members]).mean(0), test_labels)
                per.append({"step": s, "accuracy": own["accuracy"], "macro_f1": own["macro_f1"], "ece": own["ece"],
                            "nll": own["nll"],
                            "confidence": float(members[0][s].max(-1).values.mean()),
                            "accuracy_ensemble": ensemble["accuracy"], "macro_f1_ensemble": ensemble["macro_f1"],
                            "ece_ensemble": ensemble["ece"],
                            "items": [round(x, 4) for x in torch.cat(held_losses[s]).tolist()]})
            row = {"dataset": args.name, "n": n, "seed": seed, "steps": steps, "per": per,
                   "seconds": round(time.perf_counter() - start, 1)}
            with ROWS.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            chosen = {rule: pick(row, rule) for rule in RULES}
            print(args.name, n, seed, chosen, f"{row['seconds']} s", flush=True)
    print(markdown(summarise()))


if __name__ == "__main__":
    main()
