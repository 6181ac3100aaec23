"""Training recipes on the labelled sets active learning picks: calibration of the round model and its ensemble.

    python benchmarks/bench_al_recipe.py runs/cal200/s0 runs/cal200/s1 ... --recipes default,hl1e-3 --labels 200

``benchmarks/bench_recipe.py`` compares recipes on random labelled sets; this script compares them on the labelled
sets finished ``loracle al run`` folders actually hold (their round-0 random sample plus the strategy's picks), on
each run's own test set. For each run, each round whose labelled-set size is in ``--labels`` and each recipe, it
trains the round model with the run's recipe changed as the recipe name says, and redoes the round's cross-fitting
(``ActiveLearningLoop.cross_fit``: 3 fold models trained for the round model's steps), then records:

- ``raw``: the round model alone; ``temperature``: it scaled by the cross-fitted temperature on the round-0 items
  (``--calibration temperature``); ``temperature_labelled``: by the one fitted on every labelled item
  (``--calibration-items labelled``); ``ensemble``: the mean of the round model and its fold models in the pool's class
  prior (``al run``'s default ``--calibration ensemble``);
- for each: accuracy, ECE (15 bins), ``gap`` (mean top-class probability minus accuracy) and ``auroc``, how well
  the top-class probability ranks right above wrong predictions (what no temperature can change);
- ``saturated``: the share of test items whose top-class probability lies within 0.01 of the round model's
  largest: a frozen BERT pooler's ``tanh`` with a slow, small head caps the model's confidence, and the items at
  the cap are indistinguishable;
- ``ece_floor``: the ECE a perfectly calibrated ensemble with the same confidences would show on this test set;
- ``oracle``: the ensemble's ECE after a temperature, a class bias, or both, fitted (NLL) on the **test labels**
  themselves: not a calibrator anyone could run, but the bound on what any such two-parameter recalibration of
  the ensemble could reach; and ``auroc_with_disagreement``, the AUROC of a logistic regression of right/wrong on
  the ensemble's confidence and its members' disagreement (the standard deviation of their probabilities of the
  ensemble's class), fitted on the test labels too: how much a calibrator that reads disagreement could rank
  better than the confidence alone.

Recipe names: ``default`` (the run's own) or changes joined by ``+``: ``hl<x>`` head learning rate, ``lr<x>``
adapter learning rate, ``ls<x>`` label smoothing, ``ep<n>`` epochs, ``wd<x>`` weight decay, ``hi<how>`` head start (``hiprobe``). One JSON row per (run,
round, recipe) is appended to ``benchmarks/results/al_recipe_rows.jsonl`` (present rows are skipped, so the script
resumes); ``benchmarks/results/al_recipe.json`` holds the means per (budget, recipe). About 1.5 minutes per row on 2
cores at 200 labels with 2,000 test items.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = HERE / "results" / "al_recipe_rows.jsonl"
KINDS = ("raw", "temperature", "temperature_labelled", "ensemble")
FIELDS = {"hl": ("head_lr", float), "lr": ("lr", float), "ls": ("label_smoothing", float), "ep": ("epochs", int),
          "wd": ("weight_decay", float), "hi": ("head_init", str)}


def recipe_changes(name: str) -> dict:
    """TrainConfig field changes of a recipe name such as ``hl1e-3+ls0``."""
    if name == "default":
        return {}
    changes = {}
    for part in name.split("+"):
        field = FIELDS.get(part[:2])
        if field is None:
            raise SystemExit(f"unknown recipe part {part!r} in {name!r}; expected default or parts starting with "
                             f"{', '.join(FIELDS)} joined by +")
        changes[field[0]] = field[1](part[2:])
    return changes


def auroc(confidence, correct) -> float:
    """Probability that a right prediction has a higher top-class probability than a wrong one (ties count half)."""
    right, wrong = confidence[correct], confidence[~correct]
    if len(right) == 0 or len(wrong) == 0:
        return float("nan")
    greater = (right[:, None] > wrong[None, :]).double().mean()
    ties = (right[:, None] == wrong[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def describe(probs, labels) -> dict:
    from loracle.evaluation.metrics import expected_calibration_error

    confidence, predicted = probs.max(-1)
    correct = predicted == labels
    accuracy = float(correct.double().mean())
    return {"acc": round(accuracy, 4), "ece": round(expected_calibration_error(probs, labels), 4),
            "gap": round(float(confidence.double().mean()) - accuracy, 4),
            "auroc": round(auroc(confidence.double(), correct), 4)}


def oracle_ece(probs, labels) -> dict:
    """The ensemble's test ECE after recalibration fitted on the test labels (``temperature``, ``bias``, ``both``)."""
    import torch

    from loracle.evaluation.metrics import expected_calibration_error

    z = probs.clamp_min(1e-12).log().double()
    out = {}
    for name, fit_scale, fit_bias in (("temperature", True, False), ("bias", False, True), ("both", True, True)):
        log_scale = torch.zeros(1, dtype=torch.float64, requires_grad=fit_scale)
        bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=fit_bias)
        optimizer = torch.optim.LBFGS([p for p in (log_scale, bias) if p.requires_grad], max_iter=200,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(z * log_scale.exp() + bias, labels)
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            out[name] = round(expected_calibration_error(torch.softmax(z * log_scale.exp() + bias, -1), labels), 4)
    return out


def disagreement_auroc(members, labels) -> float:
    """AUROC of right/wrong from a logistic regression (fitted on these labels) on the ensemble's confidence (as a
    logit) and the standard deviation of the members' probabilities of the ensemble's class."""
    import torch

    confidence, predicted = members.mean(0).max(-1)
    spread = members.gather(2, predicted[None, :, None].expand(len(members), -1, 1))[..., 0].std(0)
    x = torch.stack([torch.logit(confidence.clamp(1e-6, 1 - 1e-6)), spread], 1).double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    correct = (predicted == labels).double()
    weight = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight[:2] + weight[2], correct)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return round(auroc(x @ weight[:2] + weight[2], correct.bool()), 4)


def summarise(rows_path: Path = ROWS) -> dict:
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    out: dict = {"runs": sorted({r["run"] for r in rows}), "results": []}
    for n, recipe in sorted({(r["n"], r["recipe"]) for r in rows}):
        at = [r for r in rows if r["n"] == n and r["recipe"] == recipe]
        entry = {"n_labels": n, "recipe": recipe, "runs": len(at),
                 "saturated": round(statistics.mean(r["saturated"] for r in at), 4),
                 "ece_floor": round(statistics.mean(r["ece_floor"] for r in at), 4)}
        for kind in (k for k in KINDS if all(k in r for r in at)):
            entry[kind] = {m: round(statistics.mean(r[kind][m] for r in at), 4) for m in ("acc", "ece", "gap", "auroc")}
            entry[kind]["ece_max"] = max(r[kind]["ece"] for r in at)
        if all("oracle" in r for r in at):
            entry["oracle"] = {k: round(statistics.mean(r["oracle"][k] for r in at), 4) for k in at[0]["oracle"]}
        out["results"].append(entry)
    rows_path.with_name(rows_path.name.replace("_rows.jsonl", ".json")).write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished al run folders")
    parser.add_argument("--recipes", default="default")
    parser.add_argument("--labels", default="200", help="the budgets (labelled-set sizes) whose rounds are redone")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=Path, default=ROWS,
                        help="the rows file (JSON lines, ending in _rows.jsonl); the means go beside it")
    args = parser.parse_args()
    rows_path = args.rows

    import torch

    from loracle.active.config import ALConfig
    from loracle.active.loop import ActiveLearningLoop
    from loracle.active.state import RunState
    from loracle.evaluation.calibration import apply_temperature
    from loracle.evaluation.label_shift import shift_prior
    from loracle.evaluation.metrics import ece_floor
    from loracle.training import train
    from loracle.uncertainty.sampling import mc_probs

    torch.set_num_threads(args.threads)
    budgets = {int(x) for x in args.labels.split(",")}
    recipes = args.recipes.split(",")
    changes = {name: recipe_changes(name) for name in recipes}
    done = ({(r["run"], r["n"], r["recipe"]) for r in map(json.loads, rows_path.read_text().splitlines())}
            if rows_path.exists() else set())
    for run in args.runs:
        state = RunState.open(run)
        try:
            labels = state.get_signal("test_labels")
            for r in state.rounds():
                t, n = r["round"], r["n_labels"]
                if n not in budgets:
                    continue
                for recipe in recipes:
                    if (run, n, recipe) in done:
                        continue
                    start = time.perf_counter()
                    loop = ActiveLearningLoop(state)
                    # "temperature": the fold adapters are not staged into the run's folder
                    loop.config = ALConfig.from_dict({**state.config, "calibration": "temperature", "progress": False,
                                                      "train": {**state.config["train"], **changes[recipe]}})
                    labelled = state.labelled_examples(max_round=t)
                    config = loop._train_config(t)
                    built = loop._fresh(t)
                    with loop._cached(built):
                        train(built.model, built.task, labelled, config)
                        built.model.eval()
                        probs = mc_probs(built.model, built.task, loop.test, samples=0, batch_size=64,
                                         precision=loop.precision)[:, 0].double()
                    temperatures, out_of_fold = loop.cross_fit(t)
                    shift = loop._pool_prior(labelled, config)

                    def to_pool(p):
                        return p if shift is None else shift_prior(p, *shift)

                    members = torch.cat([probs[None], out_of_fold["test_probs"].double()])
                    ensemble = to_pool(members.mean(0))
                    scaled = to_pool(apply_temperature(probs.clamp_min(1e-12).log(), temperatures["initial"]))
                    confidence = probs.max(-1).values
                    row = {"run": run, "t": t, "n": n, "recipe": recipe,
                           "saturated": round(float((confidence >= confidence.max() - 0.01).double().mean()), 4),
                           "ece_floor": round(ece_floor(ensemble), 4),
                           "raw": describe(probs, labels),
                           "temperature": describe(scaled, labels) | {"value": round(temperatures["initial"], 4)},
                           "temperature_labelled": describe(to_pool(apply_temperature(
                               probs.clamp_min(1e-12).log(), temperatures["labelled"])), labels)
                           | {"value": round(temperatures["labelled"], 4)},
                           "ensemble": describe(ensemble, labels), "oracle": oracle_ece(ensemble, labels)
                           | {"auroc_with_disagreement": disagreement_auroc(members, labels)},
                           "seconds": round(time.perf_counter() - start, 1)}
                    print(json.dumps(row), flush=True)
                    with rows_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
        finally:
            state.close()
    print(json.dumps(summarise(rows_path)["results"], indent=1))


if __name__ == "__main__":
    main()
