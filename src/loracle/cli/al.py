"""``loracle al``: active learning from the command line (run, status, resume, label, compare, predict).

Parsers are built without torch: the closed sets come from :mod:`loracle.names`, and the defaults shown in help are
read from :class:`loracle.active.ALConfig` only when help is rendered. Handlers import what they need.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loracle.cli.formatting import HelpFormatter, show_default
from loracle.names import (
    ADAPTER_NAMES,
    AL_TASK_KINDS,
    ANSWER_SCORE_NAMES,
    COLD_START_NAMES,
    INITIAL_MODES,
    ORACLE_NAMES,
    SCORE_NAMES,
    STRATEGY_NAMES,
)

DESCRIPTION = """\
Pool-based active learning with adapters: train on the labelled set, score the
unlabelled pool, ask for the labels that help most, repeat. Every step is saved,
so a killed run resumes where it stopped.

examples:
  loracle al run --model minilm --data data/rotten_tomatoes --output runs/star
  loracle al status runs/star
  loracle al resume runs/star    # after a crash or a kill, or after labelling
  loracle al label runs/star     # answer pending queries (or --export/--import)
  loracle al serve runs/star     # ... or in the browser, at http://127.0.0.1:8000/
  loracle al compare runs/star runs/random --output runs/compare
  loracle al predict runs/star --data new.jsonl  # calibrated predictions on other data
  loracle al export runs/star    # the last round as a calibrated PEFT folder

`loracle al run --config run.yaml` reads the run's settings (the fields of
loracle.active.ALConfig) from a YAML file; command-line flags override it.
"""

#: ``al run`` flags that are copied as they are into the ALConfig field of the same name
_PLAIN_FIELDS = ("model", "data", "test_data", "task_kind", "text_field", "max_length", "strategy", "initial_size",
                 "initial_mode", "query_size", "rounds", "budget", "oracle", "seed", "mc_samples", "mc_dropout",
                 "mc_posterior", "progress", "label_field", "calibration", "calibration_folds", "calibration_items",
                 "calibration_fold_steps", "train_steps", "calibration_prior", "calibrate_scores",
                 "stop_set_size", "stop_early", "precision", "prefix_cache", "cache_dir", "answer_field",
                 "max_new_tokens", "stop_strings", "answer_mode", "answer_pattern", "prompt_template")
#: ``al run`` flags where 0 means None ("all")
_ZERO_IS_ALL = ("pool_size", "test_size", "score_subset", "stochastic_layers")


def _default(name: str) -> Any:
    """The ``ALConfig`` default of a field; a dotted name reads inside it (``train.epochs``, ``adapter.rank``).
    ``train.*`` reads the classification recipe (:func:`loracle.active.config.default_train`)."""
    from loracle.active.config import ALConfig, default_train

    top, *rest = name.split(".")
    field = {f.name: f for f in dataclasses.fields(ALConfig)}[top]
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if top == "train" and value is None:
        value = default_train()
    for part in rest:
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return value


def _as_dict(section: Any) -> dict[str, Any]:
    """An ALConfig section (``adapter``, ``train``) as a plain dict, whether it is a dict or a config object."""
    if section is None:
        return {}
    if isinstance(section, Mapping):
        return dict(section)
    if hasattr(section, "to_dict"):
        return dict(section.to_dict())
    return dataclasses.asdict(section)


def _strategy_default(option: str, strategy: str = "star") -> Any:
    """The default of a strategy's constructor option (``score``, ``schedule``), or ``"the strategy's own"``."""
    import inspect

    from loracle.active.strategies import STRATEGIES

    try:
        default = inspect.signature(STRATEGIES[strategy]).parameters[option].default
    except (KeyError, TypeError, ValueError):
        return "the strategy's own"
    return "the strategy's own" if default is inspect.Parameter.empty else default


def _option(group: argparse._ActionsContainer, *flags: str, field: str | None = None, none: str = "none",
            sets: Any = None, **kwargs: Any) -> argparse.Action:
    """Add an ``al run`` option whose help ends with the ALConfig default of ``field``, read at help time.

    Args:
        field: the ALConfig field (dotted inside ``adapter``/``train``) the option overrides.
        none: how a None default reads (``all``, ``the data's test split``...).
        sets: for a switch, the field value it sets; help then says whether the default already does that.
    """
    kwargs.setdefault("default", None)
    action = group.add_argument(*flags, **kwargs)
    if field is not None:
        def shown() -> Any:
            value = _default(field)
            if action.nargs == 0:
                return "on" if value == (action.const if sets is None else sets) else "off"
            return none if value in (None, "") else value

        show_default(action, shown)
    return action


def _epochs_default() -> str:
    epochs, min_steps = _default("train.epochs"), _default("train.min_steps")
    return f"{epochs}, more if needed for at least {min_steps} steps" if min_steps else str(epochs)


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``al`` and its sub-subcommands run/status/resume/label/serve/compare/predict/export."""
    al = subparsers.add_parser("al", help="active learning: run, status, resume, label, serve, compare, predict, "
                               "export", description=DESCRIPTION, formatter_class=HelpFormatter)
    sub = al.add_subparsers(dest="al_command", metavar="ACTION")
    al.set_defaults(func=lambda args: (al.print_help(), 2)[1])

    run = sub.add_parser("run", help="start a run (simulated oracle: runs to the end; human: stops for labels)",
                         description="Start an active-learning run in --output. Flags override --config; "
                         "the defaults shown are those of loracle.active.ALConfig.", formatter_class=HelpFormatter)
    _option(run, "--config", metavar="YAML", help="YAML file of ALConfig fields; the flags below override it")
    run.add_argument("--output", "-o", required=True, metavar="DIR",
                     help="run folder (state.sqlite, rounds/, report.json, learning_curve.png)")
    g = run.add_argument_group("data and model")
    _option(g, "--model", field="model", help="built-in name (minilm, smollm2), Hugging Face hub id or model folder")
    _option(g, "--data", field="data", none="none: give it here or in --config",
            help="dataset: a folder with train (and test) splits, a JSONL/CSV/Parquet file, or a hub dataset")
    _option(g, "--test-data", field="test_data", none="the test split of --data",
            help="evaluation set (same forms as --data)")
    _option(g, "--task-kind", field="task_kind", choices=AL_TASK_KINDS, metavar="KIND",
            help=f"how examples become model inputs: {', '.join(AL_TASK_KINDS)}")
    _option(g, "--text-field", field="text_field", metavar="FIELD", none="the loader's guess: text, question, ...",
            help="the field holding the input text")
    _option(g, "--label-field", field="label_field", metavar="FIELD", none="label",
            help="the field holding the class label (classification) or the right choice (multiple choice)")
    _option(g, "--pool-size", field="pool_size", type=int, metavar="N", none="all of the training split",
            help="use a seeded random subset of N training items as the pool; 0 = all")
    _option(g, "--test-size", field="test_size", type=int, metavar="N", none="all of the test split",
            help="evaluate on a seeded random subset of N test items; 0 = all")
    _option(g, "--max-length", field="max_length", type=int, metavar="N",
            help="token limit; longer inputs are truncated")
    g = run.add_argument_group("generation (--task-kind generation: the pool is questions, labels are answers)")
    _option(g, "--answer-field", field="answer_field", metavar="FIELD", none="answer",
            help="the field holding the reference answer (the simulated oracle's; never shown to strategies)")
    _option(g, "--max-new-tokens", field="max_new_tokens", type=int, metavar="N",
            help="longest generated answer (greedy, once per item and round)")
    _option(g, "--stop-string", dest="stop_strings", field="stop_strings", action="append", metavar="TEXT",
            help="an answer ends at this text (repeatable; besides EOS)")
    _option(g, "--answer-mode", field="answer_mode", choices=("number", "text"), metavar="MODE",
            help="exact match compares the last number (number) or the first line, lower-cased (text)")
    _option(g, "--answer-pattern", field="answer_pattern", metavar="REGEX", none="none: --answer-mode",
            help="regular expression whose group 1 (or whole match) is the answer for exact match")
    _option(g, "--prompt-template", field="prompt_template", metavar="TEXT", none="'Question: {question}\\nAnswer:'",
            help="prompt with {question}")
    g = run.add_argument_group("active learning")
    _option(g, "--strategy", field="strategy", choices=STRATEGY_NAMES, metavar="NAME",
            none="auto for classification, badge for multiple choice, random for generation",
            help=f"query strategy: {', '.join(STRATEGY_NAMES)}")
    show_default(g.add_argument("--score", choices=SCORE_NAMES + ANSWER_SCORE_NAMES, metavar="NAME",
                                help=f"star: the uncertainty measure ({', '.join(SCORE_NAMES)}); star_generation: "
                                f"the measure of the model's answer ({', '.join(ANSWER_SCORE_NAMES)})"),
                 lambda: _strategy_default("score"))
    show_default(g.add_argument("--schedule-slope", type=float, metavar="SLOPE",
                                help="star: the fine-tuned model's share of the uncertainty grows as "
                                "min(1, slope * (round + 1))"),
                 lambda: _strategy_default("schedule"))
    g.add_argument("--prior-correction", nargs="?", const="on", choices=("auto", "on", "off"), default=None,
                   metavar="auto|on|off",
                   help="badge, density_margin: hypothetical labels and gradients (density_margin: the margin) from "
                   "the probabilities with the labelled set's class prior divided out (the balanced decision): auto "
                   "when the rarest class holds under half an even share of the labels (beyond chance), on (the bare flag) "
                   "always, "
                   "off never (default: auto)")
    _option(g, "--initial-size", field="initial_size", type=int, metavar="N",
            help="labels before the first query (round 0 trains on them)")
    _option(g, "--initial-mode", field="initial_mode", choices=INITIAL_MODES + COLD_START_NAMES, metavar="MODE",
            help="how the initial set is drawn: random, stratified (by class), or a cold start on the base model's "
            f"features ({', '.join(COLD_START_NAMES)})")
    _option(g, "--query-size", field="query_size", type=int, metavar="N", help="labels asked for per round")
    _option(g, "--rounds", field="rounds", type=int, metavar="N", none="as many as --budget allows",
            help="query rounds after round 0")
    _option(g, "--budget", field="budget", type=int, metavar="N", none="initial size + rounds x query size",
            help="total labels, the initial set included")
    _option(g, "--score-subset", field="score_subset", type=int, metavar="N", none="all of the unlabelled pool",
            help="each round, score a seeded random subset of N unlabelled items and query the best of it; 0 = all")
    _option(g, "--oracle", field="oracle", choices=ORACLE_NAMES, metavar="NAME",
            help="simulated: labels come from the data, hidden from the strategy; human: the run stops for "
            "`loracle al label`")
    _option(g, "--seed", field="seed", type=int,
            help="seeds the pool subset, initial set, adapters, training, MC passes and selection")
    g = run.add_argument_group("uncertainty")
    _option(g, "--mc-samples", field="mc_samples", type=int, metavar="N",
            none="the strategy's choice: 8 for entropy, margin, bald, diverse, power and star strategies, 0 for auto, "
                 "badge, class_balance, density_margin, kcenter, random",
            help="stochastic passes per scored item; 0 = one deterministic pass")
    _option(g, "--no-mc-dropout", dest="mc_dropout", action="store_false", field="mc_dropout", sets=False,
            help="score without MC dropout through the adapters' dropout")
    _option(g, "--mc-posterior", action="store_true", field="mc_posterior",
            help="sample MonteCLoRA posteriors when scoring (needs --adapter monteclora)")
    _option(g, "--stochastic-layers", field="stochastic_layers", type=int, metavar="K", none="all adapters",
            help="randomness only in the adapters of the last K blocks; 0 = all adapters")
    g = run.add_argument_group("adapter and training")
    _option(g, "--adapter", dest="adapter_method", field="adapter.method", choices=ADAPTER_NAMES, metavar="NAME",
            help=f"adapter method: {', '.join(ADAPTER_NAMES)}")
    _option(g, "--rank", field="adapter.rank", type=int, metavar="R", help="adapter rank r")
    _option(g, "--alpha", field="adapter.alpha", type=float, help="adapter scale numerator (update scaled by alpha/r)")
    _option(g, "--lora-dropout", field="adapter.dropout", type=float, metavar="P",
            help="adapter input dropout (also the source of MC-dropout uncertainty)")
    _option(g, "--warm-start", action="store_true", field="fresh_adapter", sets=False,
            help="continue each round's adapter from the previous round instead of a fresh one")
    show_default(g.add_argument("--epochs", type=int, metavar="N", help="passes over the labelled set per round"),
                 _epochs_default)
    _option(g, "--batch-size", field="train.batch_size", type=int, metavar="N", help="examples per training step")
    _option(g, "--lr", field="train.lr", type=float, help="peak learning rate")
    _option(g, "--b-weight-decay", field="train.b_weight_decay", type=float, metavar="WD",
            none="the weight decay of the other parameters",
            help="weight decay on lora_B only (STAR's constraint)")
    _option(g, "--class-weight", field="train.class_weight", choices=("balanced", "none"), metavar="MODE",
            help="balanced: weight each class's loss by n / (C * n_c) so a rare class counts as much as a common "
            "one (classification; better minority recall, probabilities tilted towards equal classes); none: "
            "plain cross-entropy")
    _option(g, "--label-smoothing", field="train.label_smoothing", type=float, metavar="X",
            help="mix the training targets with the uniform distribution by X (0: none)")
    _option(g, "--logit-adjustment", field="train.logit_adjustment", type=float, metavar="TAU",
            help="train with TAU * log(class share) added to the logits (logit-adjusted loss, arXiv 2007.07314): "
            "the model's plain logits then favour rare classes, without reweighting any gradient (0: off)")
    _option(g, "--head-init", field="train.head_init", choices=("auto", "probe", "random"), metavar="HOW",
            help="probe: start the classification head as a linear probe fitted on the labels (LP-FT); random: the "
            "model's own initialisation; auto: probe for more than two classes or a class under 25%% of the labels")
    _option(g, "--head-lr", field="train.head_lr", type=float, none="--lr",
            help="learning rate of the classification head (trained in full beside the adapter)")
    _option(g, "--validation-fraction", field="train.validation_fraction", type=float, metavar="F",
            help="hold this fraction of the labels out of training and keep the epoch with the lowest loss on "
            "them (0: train on every label)")
    g = run.add_argument_group("calibration, stopping and speed")
    _option(g, "--calibration", field="calibration", choices=("auto", "ensemble", "matched", "temperature", "none"),
            metavar="NAME", none="matched for classification, none for the other task kinds",
            help="temperature: fit a temperature each round by cross-fitting on the labelled set and report ECE, "
            "NLL and Brier before and after it; ensemble: keep the cross-fitting's fold models and report the "
            "mean of them and the round model as the calibrated predictions (their adapters are saved in the "
            "round's folds/); matched: that ensemble at the temperature that sets its mean confidence on the "
            "stop set to an accuracy estimate (the mean of the fold models' agreement there and their out-of-fold "
            "accuracy); auto: the ensemble, or the temperature in a round whose temperature is below 1 "
            "(fold models under-confident out of fold); none: no calibration")
    _option(g, "--calibration-folds", field="calibration_folds", type=int, metavar="K",
            help="cross-fitting folds (K extra trainings per round)")
    _option(g, "--calibration-items", field="calibration_items", choices=("initial", "labelled"), metavar="WHICH",
            help="initial: fit the temperature on the out-of-fold predictions of round 0's items only (a sample "
            "like the test set when the initial set is random); labelled: on every labelled item, queried ones "
            "included")
    _option(g, "--calibration-fold-steps", field="calibration_fold_steps", choices=("round", "epochs"),
            metavar="RULE", help="round: each fold model takes as many optimiser steps as the round's model; "
            "epochs: as many epochs (fewer steps on its smaller set)")
    _option(g, "--train-steps", field="train_steps", choices=("fixed", "folds"), metavar="RULE",
            help="fixed: the round's model trains the recipe's whole schedule; folds: it stops at the latest of its "
            "epoch ends where the cross-fitting folds' pooled held-out loss is within one standard error of its "
            "lowest, on the round-0 items under --calibration-items initial (no extra training; needs calibration "
            "and --calibration-fold-steps round)")
    _option(g, "--calibration-prior", field="calibration_prior", choices=("pool", "labelled"), metavar="WHICH",
            help="pool: when the queried labels' class shares differ from the random round-0 sample's beyond "
            "chance, move the calibrated predictions from the labelled set's class prior to that sample's (a "
            "strategy that seeks a rare class trains on more of it than the pool holds); labelled: keep the "
            "labelled set's prior")
    _option(g, "--calibrate-scores", action="store_true", field="calibrate_scores",
            help="strategies see temperature-scaled probabilities")
    _option(g, "--stop-set-size", field="stop_set_size", type=int, metavar="N",
            help="items of the fixed unlabelled stop set the stopping criteria watch")
    _option(g, "--stop-early", action="store_true", field="stop_early",
            help="end the run at the first round where a stopping criterion says labelling more is unlikely to help")
    _option(g, "--precision", field="precision", choices=("auto", "fp32", "bf16"), metavar="NAME",
            help="auto: bf16 autocast where the hardware runs it fast (AMX / AVX512-BF16 CPUs, bf16 GPUs)")
    _option(g, "--no-prefix-cache", dest="prefix_cache", action="store_false", field="prefix_cache", sets=False,
            help="recompute the frozen blocks below the adapter in every round instead of caching them once")
    _option(g, "--cache-dir", field="cache_dir", metavar="DIR", none="cache/ inside the run folder",
            help="where the prefix cache is kept (runs on the same model may share one)")
    _option(run, "--no-progress", dest="progress", action="store_false", field="progress", sets=False,
            help="no progress bars even on a terminal (a log gets one line per phase and per round either way)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show a run's progress and metrics", formatter_class=HelpFormatter)
    status.add_argument("run_dir", help="the run folder (the --output of `loracle al run`)")
    status.add_argument("--json", action="store_true", help="print the full summary as JSON")
    status.set_defaults(func=cmd_status)

    resume = sub.add_parser("resume", help="continue a run from its last completed step",
                            formatter_class=HelpFormatter)
    resume.add_argument("run_dir", help="the run folder")
    resume.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bars even on a terminal")
    resume.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="plan N query rounds in all: more than the run was started with extends it (a "
                             "finished run queries again from its last round), with the labels an N-round run "
                             "would have asked for")
    resume.add_argument("--budget", type=int, default=None, metavar="LABELS",
                        help="plan this many labels in all, initial set included (as `al run --budget`)")
    resume.set_defaults(func=cmd_resume)

    label = sub.add_parser("label", help="answer pending queries (terminal), or export/import them (CSV, Label "
                           "Studio, Argilla)",
                           formatter_class=HelpFormatter)
    label.add_argument("run_dir", help="the run folder")
    both = label.add_mutually_exclusive_group()
    both.add_argument("--export", metavar="CSV", help="write pending queries to CSV (fill in the label column)")
    both.add_argument("--import", dest="import_csv", metavar="CSV", help="read a labelled CSV back")
    from loracle.serve.cli import add_handoff_flags, add_serve_parser  # light: argparse only

    add_handoff_flags(both, label)
    label.set_defaults(func=cmd_label)
    add_serve_parser(sub)

    compare = sub.add_parser("compare", help="one learning curve and JSON over several runs",
                             formatter_class=HelpFormatter)
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders to compare")
    show_default(compare.add_argument("--output", "-o", metavar="DIR", help="folder for compare.json and "
                                      "learning_curve.png"), "a folder named compare beside the first run's folder")
    compare.set_defaults(func=cmd_compare)

    predict = sub.add_parser("predict", help="a round's predictions on other data, with the run's calibrated "
                             "confidence", formatter_class=HelpFormatter,
                             description="Predict every item of DATA with a classification run's round (default: "
                             "its last) and write one JSON line per item: the predicted class, its calibrated "
                             "confidence, every class's calibrated probability and the round model's own "
                             "confidence. Calibrated as the run reports it: the mean of the round model and its "
                             "cross-fitted fold models (the default), or its temperature, moved to the pool's class "
                             "prior where the run's queries shifted it. When DATA has labels, the metrics of both "
                             "are printed as well.")
    predict.add_argument("run_dir", help="the run folder")
    predict.add_argument("--data", required=True, help="JSONL/CSV/Parquet file, folder with <split>.jsonl, "
                         "datasets.save_to_disk folder, or hub dataset name; labels optional (the run's class "
                         "names)")
    predict.add_argument("--split", default="test", help="split of a folder or hub dataset")
    show_default(predict.add_argument("--text-field", default=None, help="the text field"), "the run's")
    show_default(predict.add_argument("--label-field", default=None, help="the label field (if any)"), "the run's")
    show_default(predict.add_argument("--round", type=int, default=None, metavar="T",
                                      help="the round whose model predicts"), "the last completed")
    show_default(predict.add_argument("--output", "-o", metavar="JSONL", help="where the predictions go"),
                 "predictions.jsonl in the run folder")
    show_default(predict.add_argument("--batch-size", type=int, default=None, metavar="N",
                                      help="items per forward pass"), "the run's")
    predict.add_argument("--calibration", choices=("run", "ensemble", "matched", "temperature", "none"),
                         default="run",
                         help="run: as the run calibrated (default); ensemble: the round model and its fold "
                         "models; matched: that ensemble at the round's matched temperature; temperature: the round model with its cross-fitted temperature, the better "
                         "choice where the fold models were far over-confident out of fold (a task the model "
                         "learns little of; the run's log shows both calibrations' test ECE each round); none: "
                         "the round model raw")
    predict.add_argument("--decision", choices=("auto", "argmax", "balanced", "f1"), default="auto",
                         help="which class each item is predicted to be. argmax: the most probable (the most "
                         "accurate); balanced: the most probable once the class prior the calibrated probabilities "
                         "carry is divided out (the best mean per-class recall); f1: the most probable under the "
                         "class weights that maximise the expected macro-F1, fitted by the round on unlabelled pool "
                         "items (on an imbalanced task argmax all but never predicts a rare class); auto (default): "
                         "balanced where the run's round-0 labels are imbalanced, argmax elsewhere. The "
                         "probabilities written are the same")
    predict.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="a round's model as a Hugging Face PEFT folder, calibrated",
                            formatter_class=HelpFormatter,
                            description="Write a round's model (default: the last) as a PEFT LoRA folder that "
                            "peft.PeftModel.from_pretrained loads, with a calibration folded into its "
                            "classification head: the PEFT model's probabilities are softmax(z / T + b) where the "
                            "round model's logits are z (T a temperature, b the move to the pool's class prior where "
                            "the run's queries shifted it). One model cannot hold the run's calibrated ensemble; "
                            "the temperature stands in for it. Writes loracle_export.json beside the adapter, and "
                            "prints the round model's and the exported model's test metrics where the run has a "
                            "test set.")
    export.add_argument("run_dir", help="the run folder")
    show_default(export.add_argument("--output", "-o", metavar="DIR", help="the PEFT folder to write"),
                 "peft in the run folder")
    show_default(export.add_argument("--round", type=int, default=None, metavar="T", help="the round to export"),
                 "the last completed")
    export.add_argument("--calibration", choices=("matched", "temperature", "none"), default="matched",
                        help="matched (default): the temperature at which the round model's mean confidence on the "
                        "run's unlabelled stop-set items equals the round's accuracy estimate (what the run's "
                        "matched calibration sets its ensemble's confidence to; one pass over those items); "
                        "temperature: the round's cross-fitted temperature; none: the round model as trained")
    show_default(export.add_argument("--batch-size", type=int, default=None, metavar="N",
                                     help="items per forward pass"), "the run's")
    export.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    export.set_defaults(func=cmd_export)


def config_from_args(args: argparse.Namespace):
    """Merge ``--config`` YAML (if any) with the flags given; returns an ``ALConfig``."""
    from loracle.active.config import ALConfig

    data: dict[str, Any] = {}
    if args.config:
        import yaml

        with open(args.config) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: expected a mapping of ALConfig fields")
    data.update({name: getattr(args, name) for name in _PLAIN_FIELDS if getattr(args, name) is not None})
    for name in _ZERO_IS_ALL:
        value = getattr(args, name)
        if value is not None:
            data[name] = None if value == 0 else value
    if args.warm_start:
        data["fresh_adapter"] = False
    options = dict(data.get("strategy_options") or {})
    if args.score is not None:
        options["score"] = args.score
    if args.schedule_slope is not None:
        options["schedule"] = args.schedule_slope
    if getattr(args, "prior_correction", None) is not None:
        import inspect

        from loracle.active.strategies import STRATEGIES, strategy_class

        takes = sorted(name for name in STRATEGIES
                       if "prior_correction" in inspect.signature(strategy_class(name)).parameters)
        from loracle.active.config import default_strategy

        strategy = data.get("strategy") or default_strategy(data.get("task_kind") or "classification")
        if strategy not in takes:
            raise ValueError(f"--prior-correction is an option of the {' and '.join(takes)} strategies, not of "
                             f"{strategy!r}; drop it or use --strategy {takes[0]}")
        options["prior_correction"] = {"auto": "auto", "on": True, "off": False}[args.prior_correction]
    if options:
        data["strategy_options"] = options
    adapter = {"adapter_method": "method", "rank": "rank", "alpha": "alpha", "lora_dropout": "dropout"}
    train = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "b_weight_decay": "b_weight_decay",
             "class_weight": "class_weight", "label_smoothing": "label_smoothing", "head_lr": "head_lr",
             "validation_fraction": "validation_fraction", "logit_adjustment": "logit_adjustment",
             "head_init": "head_init"}
    for section, flags in (("adapter", adapter), ("train", train)):
        given = {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag) is not None}
        if given.get("class_weight") == "none":
            given["class_weight"] = None
        if given or section in data:
            # ALConfig fills the rest from its defaults for the task kind
            data[section] = {**_as_dict(data.get(section)), **given}
    return ALConfig.from_dict(data)


def _finish(result: str, run_dir: str) -> int:
    if result == "waiting_for_labels":
        print(f"queries are waiting for labels: run `loracle al label {run_dir}` (or --export/--import CSV), "
              f"then `loracle al resume {run_dir}`")
        return 0
    plots = sorted(p.name for p in Path(run_dir).glob("*.png"))  # learning curve, reliability diagram
    print(f"done: {run_dir}/report.json" + (f" and {', '.join(plots)}" if plots else ""))
    from loracle.active.state import RunState

    state = RunState.open(run_dir)
    try:
        kind = (state.config or {}).get("task_kind", "classification")
    finally:
        state.close()
    if kind == "classification":
        print(f"predictions with calibrated confidence on other data: `loracle al predict {run_dir} --data FILE`; "
              f"the last round as a calibrated PEFT adapter: `loracle al export {run_dir}`")
    from loracle.distributed import Ranks

    Ranks.current().barrier()  # launched: every rank is done with the group before any leaves it at exit
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from loracle.active.loop import run_active_learning

    config = config_from_args(args)
    return _finish(run_active_learning(config, args.output), args.output)


def cmd_resume(args: argparse.Namespace) -> int:
    from loracle.active.loop import resume

    overrides = {name: getattr(args, name) for name in ("progress", "rounds", "budget")
                 if getattr(args, name) is not None}
    return _finish(resume(args.run_dir, **overrides), args.run_dir)


def cmd_status(args: argparse.Namespace) -> int:
    from loracle.active.report import METRICS, format_value, run_summary
    from loracle.active.state import RunState

    state = RunState.open(args.run_dir)
    try:
        summary = run_summary(state)
    finally:
        state.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    sources = ", ".join(f"{n} {source}" for source, n in summary["labels_by_source"].items())
    acting = [name for name in summary.get("query_strategies") or [] if name != summary["strategy"]]
    strategy = f"{summary['strategy']} (queries by {', '.join(acting)})" if acting else summary["strategy"]
    print(f"run {args.run_dir}: strategy {strategy}, {summary['status']}, "
          f"rounds {summary['rounds_completed']}/{summary['rounds_planned']}, labels {summary['labels']}"
          f"{f' ({sources})' if sources else ''}, pending queries {summary['pending_queries']}")
    print(f"data {summary['dataset']} (pool {summary['pool_size']}, test {summary['test_size']}), "
          f"model {summary['model']}; {_baseline_text(summary['majority_baseline'])}")
    # ECE floor: what a calibrated model with the same confidences would show on this test set (of the calibrated
    # predictions where the round has them)
    # an ensemble run also scored its cross-fitted temperature: its ECE ("ECE T"), for `al predict --calibration`
    other = f"ece_calibrated_{summary['config'].get('calibration_items', 'initial')}"
    both = any("ensemble_members" in r["metrics"] and other in r["metrics"] for r in summary["rounds"])
    # a matched run: the plain ensemble's ECE too ("ECE ens."), for `al predict --calibration ensemble`
    plain = any("temperature_matched" in r["metrics"] and "ece_matched" not in r["metrics"] for r in summary["rounds"])
    # the macro-F1 of the classes `al predict` names by default from the calibrated predictions ("F1 cal.")
    decided = any("macro_f1_calibrated" in r["metrics"] for r in summary["rounds"])
    # the round model alone at its matched temperature ("ECE exp."): what `al export` writes
    exported = any("ece_export" in r["metrics"] for r in summary["rounds"])
    header = ["round", "labels", *(label for _, label in METRICS), *(["F1 cal."] if decided else []), "ECE cal.",
              *(["ECE ens."] if plain else []),
              *(["ECE T"] if both else []), *(["ECE exp."] if exported else []), "ECE floor", "train s", "score s"]
    widths = [max(len(h), 6) for h in header]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in summary["rounds"]:
        cells = [str(r["round"]), str(r["n_labels"]), *(format_value(r["metrics"].get(key)) for key, _ in METRICS),
                 *([format_value(r["metrics"].get("macro_f1_calibrated"))] if decided else []),
                 format_value(r["metrics"].get("ece_calibrated")),
                 *([format_value(r["metrics"].get("ece_ensemble"))] if plain else []),
                 *([format_value(r["metrics"].get(other, r["metrics"].get("ece_calibrated")
                                                  if r["metrics"].get("calibration_temperature") else None))]
                   if both else []),
                 *([format_value(r["metrics"].get("ece_export"))] if exported else []),
                 format_value(r["metrics"].get("ece_floor_calibrated", r["metrics"].get("ece_floor"))),
                 format_value(r["train_seconds"], 1), format_value(r["score_seconds"], 1)]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    if summary["rounds"]:
        calibrated = summary.get("aulc_ece_calibrated")
        print("area under the curve: " + ", ".join(f"{label} {format_value(summary[f'aulc_{key}'])}"
                                                   for key, label in METRICS)
              + ("" if calibrated is None else f" (round model), ECE cal. {format_value(calibrated)}"))
    stopping = summary.get("stopping")
    if stopping:
        print(f"stopping: {stopping['reason']}")
    return 0


def _baseline_text(baseline: dict[str, float] | None) -> str:
    from loracle.active.report import format_value

    if baseline is None:
        return "no majority-class baseline (unlabelled test set)"
    return (f"majority-class baseline: accuracy {format_value(baseline['accuracy'])}, "
            f"macro-F1 {format_value(baseline['macro_f1'])}")


def cmd_label(args: argparse.Namespace) -> int:
    from loracle.serve.cli import cmd_handoff, wants_handoff

    if wants_handoff(args):
        return cmd_handoff(args)
    from loracle.active.oracle import export_queries, import_labels, label_interactive
    from loracle.active.state import RunState

    state = RunState.open(args.run_dir)
    try:
        if args.export:
            n = export_queries(state, args.export)
            print(f"wrote {n} pending queries to {args.export}; fill in the 'label' column, then "
                  f"`loracle al label {args.run_dir} --import {args.export}`")
        elif args.import_csv:
            result = import_labels(state, args.import_csv)
            skipped = f" ({result.already_recorded} rows already recorded, skipped)" if result.already_recorded else ""
            print(f"recorded {result.recorded} labels{skipped}; {len(state.pending_queries())} queries still pending")
        else:
            n = label_interactive(state)
            print(f"recorded {n} labels; {len(state.pending_queries())} queries still pending", file=sys.stderr)
        if not state.pending_queries():
            print(f"all queries labelled: continue with `loracle al resume {args.run_dir}`")
    finally:
        state.close()
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loracle.active.report import METRICS, compare_runs, default_compare_dir, format_value

    output = args.output or default_compare_dir(args.run_dirs)
    result = compare_runs(args.run_dirs, output)
    header = ["run", "labels", *(f"AULC {label}" for _, label in METRICS)]
    widths = [max(len(header[0]), *(len(name) for name in result)), *(len(h) for h in header[1:])]
    print("  ".join([header[0].ljust(widths[0]), *(h.rjust(w) for h, w in zip(header[1:], widths[1:]))]))
    for name, r in result.items():
        cells = [str(r["labels"]), *(format_value(r[f"aulc_{key}"]) for key, _ in METRICS)]
        print("  ".join([name.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:]))]))
    baselines = {json.dumps(r["majority_baseline"], sort_keys=True) for r in result.values()}
    if len(baselines) == 1:
        print(_baseline_text(next(iter(result.values()))["majority_baseline"]))
    print(f"wrote {output}/compare.json and {output}/learning_curve.png")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from loracle.active.config import ALConfig
    from loracle.active.predict import predict_with_run
    from loracle.active.state import RunState
    from loracle.data import load_examples
    from loracle.distributed import Ranks
    from loracle.evaluation.metrics import classification_metrics

    state = RunState.open(args.run_dir)
    try:
        config, label_names = ALConfig.from_dict(state.config), state.label_names
    finally:
        state.close()
    fields = {"text_field": args.text_field or config.text_field}
    if args.label_field or config.label_field:
        fields["label_field"] = args.label_field or config.label_field
    examples = load_examples(args.data, config.task_kind, split=args.split,
                             label_names=label_names if config.task_kind == "classification" else None, **fields)
    ranks = Ranks.current()
    result = predict_with_run(args.run_dir, examples, args.round, batch_size=args.batch_size,
                              progress=args.progress and sys.stderr.isatty(), ranks=ranks,
                              calibration=args.calibration, decision=args.decision)
    names, raw, calibrated = result["label_names"], result["raw"], result["calibrated"]
    predicted = result["predicted"]
    output = Path(args.output) if args.output else Path(args.run_dir) / "predictions.jsonl"
    summary: dict[str, Any] = {"round": result["round"], "labels": result["n_labels"],
                               "calibration": result["calibration"], "members": result["members"],
                               "decision": result["decision"], "items": len(examples), "output": str(output)}
    labels = [e.label for e in examples]
    if labels and all(y is not None for y in labels):
        from loracle.evaluation.metrics import accuracy, macro_f1, per_class_recall

        gold = torch.tensor(labels)
        keys = ("accuracy", "macro_f1", "ece", "ece_floor", "nll", "brier")
        summary["metrics"] = {name: {k: round(float(v), 4) for k, v in classification_metrics(p, gold).items()
                                     if k in keys} for name, p in (("model", raw), ("calibrated", calibrated))}
        # the written predictions: the decision's classes (argmax of the calibrated probabilities or not)
        decided = torch.nn.functional.one_hot(predicted, len(names)).double()
        summary["metrics"]["calibrated"].update(
            accuracy=round(accuracy(decided, gold), 4), macro_f1=round(macro_f1(decided, gold), 4),
            recall={names[c]: round(float(r), 4) for c, r in enumerate(per_class_recall(decided, gold)) if r == r})

    def write() -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for e, p, q, y, best in zip(examples, calibrated.tolist(), raw.max(-1).values.tolist(), labels,
                                        predicted.tolist()):
                row = {"id": e.id, "text": e.text, "prediction": names[best], "confidence": round(p[best], 6),
                       "probabilities": {n: round(v, 6) for n, v in zip(names, p)}, "model_confidence": round(q, 6)}
                if y is not None:
                    row["label"] = names[y]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(output)
        print(json.dumps(summary, indent=2))

    ranks.writer(write)
    ranks.barrier()  # every rank has received rank 0's last message before any leaves the group at exit
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from loracle.active.export import export_round

    output = Path(args.output) if args.output else Path(args.run_dir) / "peft"
    info = export_round(args.run_dir, output, args.round, calibration=args.calibration, batch_size=args.batch_size,
                        progress=args.progress and sys.stderr.isatty())
    print(json.dumps(info, indent=2))
    print(f"load it with: peft.PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, "
          f"num_labels={len(info['label_names'] or []) or 'N'}), {str(output)!r}); BASE: the run's model "
          f"({info['base_model']})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run only the ``al`` commands (``python -m loracle.cli.al al run ...``), without the other subcommands."""
    parser = argparse.ArgumentParser(prog="loracle")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from loracle.cli import quiet_when_logged, run_command

    quiet_when_logged(args)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
