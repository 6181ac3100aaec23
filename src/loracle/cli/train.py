"""``loracle train`` and ``loracle evaluate``: fine-tune with an adapter, score a saved adapter.

Heavy imports (torch, transformers) happen inside the handlers so ``loracle --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from loracle.cli.formatting import HelpFormatter, show_default
from loracle.errors import LoracleError
from loracle.names import ADAPTER_NAMES, SCHEDULER_NAMES, TASK_KINDS

TASK_FILE = "loracle_task.json"


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``evaluate`` on the ``loracle`` command's subparsers."""
    train = subparsers.add_parser(
        "train", help="fine-tune a model with an adapter (or in full) and evaluate it",
        description="Fine-tune MODEL on DATA with a LoRA / LoRA-SP / MonteCLoRA adapter (or all weights), then "
        "write the adapter, metrics.json, train_log.jsonl and (with test data) reliability.png into --output.",
        formatter_class=HelpFormatter,
    )
    _data_options(train)
    train.add_argument("--model", required=True, help="built-in name (minilm, smollm2), local folder or hub id")
    show_default(train.add_argument("--test-data", default=None, help="test data (same forms as --data)"),
                 "the --test-split of --data when --data is a folder that has one, else no test evaluation")
    train.add_argument("--task", required=True, choices=TASK_KINDS, help="how examples become model inputs")
    train.add_argument("--adapter", default="lora", choices=(*ADAPTER_NAMES, "full"), metavar="NAME",
                       help=f"adapter method: {', '.join(ADAPTER_NAMES)}, or full to train every weight")
    train.add_argument("--rank", type=int, default=8, help="adapter rank r")
    train.add_argument("--alpha", type=float, default=16.0, help="adapter scale numerator (update scaled by alpha/r)")
    train.add_argument("--dropout", type=float, default=0.1,
                       help="adapter input dropout (also the source of MC-dropout uncertainty)")
    show_default(train.add_argument("--target-modules", nargs="+", default=None,
                                    help="layer name suffixes to adapt (e.g. query value); one value with regex "
                                    "characters is a regular expression"),
                 "every linear layer except the output head")
    show_default(train.add_argument("--modules-to-save", nargs="*", default=None,
                                    help="modules trained in full beside the adapter"),
                 "the classification head (classifier/score) for --task classification, none otherwise")
    train.add_argument("--adapter-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra adapter config field (JSON value), e.g. mask_mode='\"row\"' or num_samples=4; "
                       "repeatable (default: none)")
    train.add_argument("--epochs", type=int, default=3, help="passes over the training data")
    train.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    show_default(train.add_argument("--head-lr", type=float, default=None, help="learning rate of --modules-to-save"),
                 "--lr")
    train.add_argument("--head-init", default="random", choices=("random", "probe", "auto"),
                       help="probe: fit the classification head as a linear probe before fine-tuning (LP-FT); auto: "
                       "probe for more than two classes or a class under 25%% of the examples")
    train.add_argument("--label-smoothing", type=float, default=0.0,
                       help="mix the training targets with the uniform distribution by X (0: none)")
    train.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                       help="hold this fraction of the training examples out and end with the weights of the epoch "
                       "with the lowest loss on them (0: train on everything, keep the last weights)")
    train.add_argument("--batch-size", type=int, default=16, help="examples per forward pass (global)")
    train.add_argument("--grad-accum", type=int, default=1, help="forward passes per optimiser step")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (all but lora_B*)")
    show_default(train.add_argument("--b-weight-decay", type=float, default=None,
                                    help="weight decay of lora_B* only (STAR's constraint, e.g. 0.5)"),
                 "--weight-decay")
    train.add_argument("--warmup-ratio", type=float, default=0.06, help="fraction of steps of linear warm-up")
    train.add_argument("--scheduler", default="linear", choices=SCHEDULER_NAMES, metavar="NAME",
                       help=f"learning-rate schedule after warm-up: {', '.join(SCHEDULER_NAMES)}")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm (0: none)")
    train.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"), help="autocast precision")
    train.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    show_default(train.add_argument("--max-train", type=int, default=None, metavar="N",
                                    help="use a seeded random subset of N training examples"), "all")
    show_default(train.add_argument("--max-test", type=int, default=None, metavar="N",
                                    help="evaluate on a seeded random subset of N test examples"), "all")
    train.add_argument("--seed", type=int, default=0, help="seeds the adapter init, data order, dropout, subsets")
    train.add_argument("--samples", type=int, default=0,
                       help="MC passes for the test evaluation (0: one deterministic pass)")
    train.add_argument("--output", required=True, metavar="DIR",
                       help="output folder (adapter, metrics.json, train_log.jsonl, reliability.png)")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "evaluate", help="score a saved adapter (or fully fine-tuned model) on labelled data",
        description="Load the model and adapter saved by `loracle train`, evaluate on DATA and print the metrics "
        "as JSON (accuracy, macro-F1, ECE, NLL, Brier; exact match for generation).",
        formatter_class=HelpFormatter,
    )
    evaluate.add_argument("--adapter-dir", required=True, help="the --output folder of `loracle train`")
    show_default(evaluate.add_argument("--model", default=None,
                                       help="base model (built-in name, folder or hub id)"),
                 "the one the adapter was trained from")
    _data_options(evaluate, default_split="test")
    evaluate.add_argument("--samples", type=int, default=0,
                          help="MC passes averaged (0: one deterministic pass)")
    evaluate.add_argument("--posterior", action="store_true",
                          help="with --samples, also sample MonteCLoRA posteriors")
    evaluate.add_argument("--no-dropout", action="store_true", help="with --samples, turn MC dropout off")
    show_default(evaluate.add_argument("--max-test", type=int, default=None, metavar="N",
                                       help="evaluate on a seeded random subset of N examples"), "all")
    evaluate.add_argument("--seed", type=int, default=0, help="seeds the MC passes and the subset")
    evaluate.add_argument("--metrics-out", default=None, help="also write the metrics JSON to this file")
    evaluate.add_argument("--plot", default=None, help="write a reliability diagram PNG here (classification, MC)")
    evaluate.set_defaults(func=run_evaluate)


def _data_options(parser: argparse.ArgumentParser, default_split: str = "train") -> None:
    parser.add_argument("--data", required=True,
                        help="JSONL/CSV/Parquet file, folder with <split>.jsonl, datasets.save_to_disk folder, or "
                        "hub dataset name")
    parser.add_argument("--split", default=default_split, help="split of a folder or hub dataset")
    if default_split == "train":
        parser.add_argument("--test-split", default="test", help="split used for --test-data (or --data)")
    show_default(parser.add_argument("--text-field", default=None, help="the text (or question) field"),
                 "the loader's guess: text, question, ...")
    parser.add_argument("--label-field", default="label", help="class label / right-choice field")
    parser.add_argument("--choices-field", default="choices", help="choices field (multiple choice)")
    parser.add_argument("--answer-field", default="answer", help="answer field (generation, MC fallback)")
    parser.add_argument("--max-length", type=int, default=128, help="longest token sequence")
    parser.add_argument("--batch-size-eval", type=int, default=32, help="batch size of evaluation")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar even on a terminal (a log gets one line per phase either way)")


def _field_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"text_field": args.text_field, "label_field": args.label_field, "choices_field": args.choices_field,
            "answer_field": args.answer_field}


def _adapter_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LoracleError(f"--adapter-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


# Adapter config fields that have their own ``train`` flag (an --adapter-option for them would be ambiguous).
_FIELD_FLAGS = {"rank": "--rank", "alpha": "--alpha", "dropout": "--dropout", "target_modules": "--target-modules",
                "modules_to_save": "--modules-to-save", "seed": "--seed"}


def _adapter_config(args: argparse.Namespace) -> Any:
    """The adapter config of the flags, validated before any data or model is loaded (``modules_to_save`` is
    filled in once the model is known).

    Raises:
        LoracleError: an --adapter-option that is not a field of the method (the message lists the valid ones) or
            that has its own flag; ValueError from the config's own checks (a wrong type or value).
    """
    from loracle.adapters import ADAPTERS

    cls = ADAPTERS[args.adapter]
    options = _adapter_options(args.adapter_option)
    extra_fields = sorted({f.name for f in dataclasses.fields(cls)} - set(_FIELD_FLAGS))
    for key in options:
        if key in _FIELD_FLAGS:
            raise LoracleError(f"--adapter-option {key}=...: {key} has its own flag, use {_FIELD_FLAGS[key]}")
        if key not in extra_fields:
            raise LoracleError(f"--adapter-option {key!r} is not an option of --adapter {args.adapter}; its options "
                               f"are {extra_fields}")
    return cls(rank=args.rank, alpha=args.alpha, dropout=args.dropout, target_modules=_target_modules(
        args.target_modules), modules_to_save=[], seed=args.seed, **options)


def _target_modules(values: list[str] | None) -> list[str] | str | None:
    if values and len(values) == 1 and any(ch in values[0] for ch in "*|()[]^$\\+?"):
        return values[0]
    return values


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``loracle train``."""
    from loracle.adapters import ADAPTERS, save_adapter, trainable_parameters
    from loracle.data import load_examples
    from loracle.distributed import Ranks
    from loracle.evaluation import evaluate, reliability_diagram
    from loracle.modeling.build import ModelBuilder
    from loracle.training import TrainConfig, train

    methods = sorted(ADAPTERS) + ["full"]
    if args.adapter not in methods:
        raise ValueError(f"unknown --adapter {args.adapter!r}; expected one of {methods}")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                         weight_decay=args.weight_decay, b_weight_decay=args.b_weight_decay,
                         warmup_ratio=args.warmup_ratio, scheduler=args.scheduler, grad_accum=args.grad_accum,
                         max_grad_norm=args.max_grad_norm or None, mixed_precision=args.mixed_precision,
                         seed=args.seed, progress=not args.no_progress, cpu=args.cpu,
                         eval_batch_size=args.batch_size_eval, label_smoothing=args.label_smoothing,
                         validation_fraction=args.validation_fraction, head_init=args.head_init)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise LoracleError(f"--output {output} is an existing file; give a folder (new, or one to write into)")
    adapter_config = _adapter_config(args) if args.adapter != "full" else None
    fields = _field_options(args)
    train_set = load_examples(args.data, args.task, split=args.split, **fields)
    if args.max_train is not None:
        train_set = train_set.sample(args.max_train, seed=args.seed)
    test_source = args.test_data or (args.data if Path(args.data).is_dir() else None)
    test_set = None
    if test_source is not None:
        try:
            test_set = load_examples(test_source, args.task, split=args.test_split, label_names=train_set.label_names,
                                     **fields)
        except FileNotFoundError:
            if args.test_data:
                raise
            print(f"loracle train: no {args.test_split!r} split in {args.data}; skipping test evaluation",
                  file=sys.stderr)
    if test_set is not None and args.max_test is not None:
        test_set = test_set.sample(args.max_test, seed=args.seed)

    label_names = train_set.label_names
    # The one builder of model + task + adapter (+ the head and a BERT pooler trained in full by default).
    adapter = None
    if adapter_config is not None:
        adapter = adapter_config.replace(modules_to_save=args.modules_to_save or [])
    builder = ModelBuilder(args.model, args.task, label_names=label_names,
                           examples=list(train_set) + (list(test_set) if test_set is not None else []),
                           max_length=args.max_length, adapter=adapter)
    if adapter is None:
        model, task = builder.base()  # full fine-tuning: every weight trains
    else:
        built = builder.fresh(head_seed=args.seed, adapter_seed=adapter.seed)
        model, task = built.model, built.task
    ranks = Ranks.current()  # under accelerate launch: train with DDP, evaluate in shards, write on rank 0
    output.mkdir(parents=True, exist_ok=True)
    config = config.replace(log_path=output / "train_log.jsonl")
    if config.log_path.exists() and ranks.is_writer:
        config.log_path.unlink()
    start = time.perf_counter()
    result = train(model, task, train_set, config)
    train_time = time.perf_counter() - start
    ranks.place(model)

    extra = {"task": args.task, "task_options": task.options(), "label_names": label_names, "model": args.model,
             "adapter": args.adapter, "train_config": config.to_dict()}
    if args.adapter == "full":
        extra["model"] = str((output / "model").resolve())

    def save() -> None:
        if args.adapter == "full":
            model.save_pretrained(output / "model")
            task.tokenizer.save_pretrained(output / "model")
        else:
            save_adapter(model, output, extra=extra)
        (output / TASK_FILE).write_text(json.dumps(extra, indent=2))

    ranks.writer(save)

    metrics: dict[str, Any] = {"train": {"examples": len(train_set), "steps": result.steps,
                                         "train_time_s": train_time, "history": result.history,
                                         "best_epoch": result.best_epoch,
                                         "trainable_parameters": trainable_parameters(model)}}
    if test_set is not None:
        scores = evaluate(model, task, test_set, samples=args.samples, batch_size=args.batch_size_eval,
                          seed=args.seed, return_probs=args.task != "generation", ranks=ranks)
        probs, labels = scores.pop("probs", None), scores.pop("labels", None)
        if probs is not None and ranks.is_writer:
            reliability_diagram(probs, labels, output / "reliability.png", title=f"{args.adapter} on test")
        metrics["test"] = scores
    ranks.writer(lambda: (output / "metrics.json").write_text(json.dumps(metrics, indent=2)))
    summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.get("test", {}).items() if isinstance(v, float))
    print(f"loracle train: {result.steps} steps in {train_time:.1f} s; test {summary or 'not evaluated'}; "
          f"wrote {output}")
    return 0


def _read_task_info(folder: Path) -> tuple[dict[str, Any], Path]:
    """The task information `loracle train` wrote, and the file it came from (checked: the folder is untrusted).

    Raises:
        LoracleError: malformed JSON, no task, or a field of the wrong type; the message names the file.
    """
    from loracle.adapters.io import CONFIG_FILE, read_adapter_info

    path = folder / TASK_FILE
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # JSONDecodeError, not UTF-8, nesting too deep
            raise LoracleError(f"{path}: malformed JSON ({err}); expected the file written by `loracle train`") from err
    else:
        path = folder / CONFIG_FILE
        info = read_adapter_info(folder).get("extra") or {}
    if not isinstance(info, dict) or "task" not in info:
        raise LoracleError(f"{folder}: the adapter carries no task information (expected {TASK_FILE} or 'task' in "
                           "the adapter's extra); was it written by `loracle train`?")
    label_names = info.get("label_names")
    if info["task"] not in TASK_KINDS:
        raise LoracleError(f"{path}: task {info['task']!r:.80} is none of {list(TASK_KINDS)}")
    if label_names is not None and (not isinstance(label_names, list) or not all(isinstance(n, str)
                                                                                 for n in label_names)):
        raise LoracleError(f"{path}: label_names must be a list of strings, got {label_names!r:.80}")
    if info.get("model") is not None and not isinstance(info["model"], str):
        raise LoracleError(f"{path}: model must be a string, got {info['model']!r:.80}")
    if not isinstance(info.get("task_options") or {}, dict):
        raise LoracleError(f"{path}: task_options must be a JSON object, got {info['task_options']!r:.80}")
    return info, path


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``loracle evaluate``."""
    from loracle.adapters import load_adapter
    from loracle.data import load_examples
    from loracle.distributed import Ranks
    from loracle.evaluation import evaluate, reliability_diagram
    from loracle.models import load_model
    from loracle.tasks import build_task

    folder = Path(args.adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"--adapter-dir {folder} is not a folder")
    info, info_path = _read_task_info(folder)
    kind, label_names = info["task"], info.get("label_names")
    full = info.get("adapter") == "full"
    model_name = args.model or info.get("model")
    if kind == "classification" and not label_names:
        raise LoracleError(f"{info_path} has no label_names for a classification adapter; was it written by "
                           "`loracle train`?")
    if not model_name:
        raise LoracleError(f"{info_path} names no base model; pass --model (the model the adapter was trained from)")
    if not args.model:
        # The folder chooses what gets loaded (a hub id, a path): say so before loading it.
        print(f"loracle evaluate: {'model' if full else 'base model'} {model_name} (named in {info_path}; --model "
              "chooses another)", file=sys.stderr)
    model, tokenizer = load_model(model_name, kind, num_labels=len(label_names) if label_names else None,
                                  label_names=label_names)
    if not full:
        load_adapter(model, folder)
    options = dict(info.get("task_options") or {})
    options["max_length"] = args.max_length
    if kind != "classification":
        options.pop("label_names", None)
        options.pop("num_labels", None)
    else:
        options.setdefault("label_names", label_names)
    task = build_task(kind, tokenizer, **options)
    examples = load_examples(args.data, kind, split=args.split, label_names=label_names, **_field_options(args))
    if args.max_test is not None:
        examples = examples.sample(args.max_test, seed=args.seed)
    ranks = Ranks.current()  # under accelerate launch: one shard per rank, rank 0 writes and prints
    ranks.place(model)
    scores = evaluate(model, task, examples, samples=args.samples, dropout=not args.no_dropout,
                      posterior=args.posterior, batch_size=args.batch_size_eval, seed=args.seed,
                      return_probs=kind != "generation", ranks=ranks)
    probs, labels = scores.pop("probs", None), scores.pop("labels", None)
    text = json.dumps(scores, indent=2)

    def write() -> None:
        if args.plot and probs is not None:
            reliability_diagram(probs, labels, args.plot, title=f"{folder.name}")
        if args.metrics_out:
            Path(args.metrics_out).write_text(text)

    ranks.writer(write)
    print(text)
    return 0
