"""``loracle al``: active learning from the command line.

    loracle al run --model minilm --data ../shared/data/rotten_tomatoes --strategy star --output runs/main
    loracle al status runs/main
    loracle al resume runs/main            # after a crash or kill, or after human labelling
    loracle al label runs/main             # answer pending queries in the terminal (or --export/--import CSV)
    loracle al compare runs/a runs/b --output runs/compare

Flags override the fields of ``--config run.yaml`` (fields of :class:`loracle.active.ALConfig`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any


def _default(name: str) -> Any:
    from loracle.active.config import ALConfig

    field = {f.name: f for f in dataclasses.fields(ALConfig)}[name]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``al`` and its sub-subcommands run/status/resume/label/compare."""
    al = subparsers.add_parser("al", help="active learning: run, status, resume, label, compare",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = al.add_subparsers(dest="al_command", metavar="ACTION")
    al.set_defaults(func=lambda args: (al.print_help(), 2)[1])

    run = sub.add_parser("run", help="start a run (simulated oracle: runs to the end; human: stops for labels)")
    run.add_argument("--config", help="YAML file of ALConfig fields (flags override it)")
    run.add_argument("--output", "-o", required=True, help="run folder (state.sqlite, rounds/, report.json)")
    g = run.add_argument_group("data and model")
    g.add_argument("--model", help="built-in name (minilm, smollm2), hub id or folder [minilm]")
    g.add_argument("--data", help="dataset folder/file with train (and test) splits")
    g.add_argument("--test-data", help="evaluation set [the data's test split]")
    g.add_argument("--task-kind", choices=["classification", "multiple_choice"])
    g.add_argument("--text-field")
    g.add_argument("--pool-size", type=int, help="seeded pool subset [2000]; 0 = whole training split")
    g.add_argument("--test-size", type=int, help="seeded test subset [500]; 0 = whole test split")
    g.add_argument("--max-length", type=int, help="token limit [64]")
    g = run.add_argument_group("active learning")
    g.add_argument("--strategy", help="random, entropy, least_confidence, margin, bald, star, kcenter [star]")
    g.add_argument("--score", help="uncertainty measure inside star (entropy, bald, least_confidence, margin)")
    g.add_argument("--schedule-slope", type=float, help="star: λ_t = min(1, slope·(t+1)) [0.1]")
    g.add_argument("--initial-size", type=int, help="[100]")
    g.add_argument("--initial-mode", choices=["random", "stratified"])
    g.add_argument("--query-size", type=int, help="labels per round [100]")
    g.add_argument("--rounds", type=int, help="query rounds [4]")
    g.add_argument("--budget", type=int, help="total labels incl. the initial set")
    g.add_argument("--score-subset", type=int, help="score a seeded random subset of the unlabelled pool")
    g.add_argument("--oracle", choices=["simulated", "human"])
    g.add_argument("--seed", type=int)
    g = run.add_argument_group("uncertainty")
    g.add_argument("--mc-samples", type=int, help="stochastic passes [8]; 0 = deterministic")
    g.add_argument("--no-mc-dropout", dest="mc_dropout", action="store_false", default=None)
    g.add_argument("--mc-posterior", action="store_true", default=None, help="sample MonteCLoRA posteriors")
    g.add_argument("--stochastic-layers", type=int, help="MC only in the last k blocks [2]; 0 = all adapters")
    g = run.add_argument_group("adapter and training")
    g.add_argument("--adapter", dest="adapter_method", help="lora, lora_sp, monteclora [lora]")
    g.add_argument("--rank", type=int)
    g.add_argument("--alpha", type=float)
    g.add_argument("--lora-dropout", type=float)
    g.add_argument("--warm-start", action="store_true", default=None, help="continue the adapter across rounds")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--b-weight-decay", type=float, help="STAR constraint: weight decay on lora_B only [0.5]")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show a run's progress and metrics")
    status.add_argument("run_dir")
    status.add_argument("--json", action="store_true", help="print the full summary as JSON")
    status.set_defaults(func=cmd_status)

    resume = sub.add_parser("resume", help="continue a run from its last completed step")
    resume.add_argument("run_dir")
    resume.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    resume.set_defaults(func=cmd_resume)

    label = sub.add_parser("label", help="answer pending queries (terminal), or export/import them as CSV")
    label.add_argument("run_dir")
    both = label.add_mutually_exclusive_group()
    both.add_argument("--export", metavar="CSV", help="write pending queries to CSV (fill in the label column)")
    both.add_argument("--import", dest="import_csv", metavar="CSV", help="read a labelled CSV back")
    label.set_defaults(func=cmd_label)

    compare = sub.add_parser("compare", help="one learning curve and JSON over several runs")
    compare.add_argument("run_dirs", nargs="+")
    compare.add_argument("--output", "-o", default="al_compare", help="folder for compare.json and the PNG")
    compare.set_defaults(func=cmd_compare)


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
    flat = {name: getattr(args, name) for name in (
        "model", "data", "test_data", "task_kind", "text_field", "max_length", "strategy", "initial_size",
        "initial_mode", "query_size", "rounds", "budget", "score_subset", "oracle", "seed", "mc_samples",
        "mc_dropout", "mc_posterior", "progress")}
    data.update({k: v for k, v in flat.items() if v is not None})
    for name in ("pool_size", "test_size", "stochastic_layers"):
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
    if options:
        data["strategy_options"] = options
    adapter = {**_default("adapter"), **(data.get("adapter") or {})}
    for flag, key in (("adapter_method", "method"), ("rank", "rank"), ("alpha", "alpha"), ("lora_dropout", "dropout")):
        if getattr(args, flag) is not None:
            adapter[key] = getattr(args, flag)
    data["adapter"] = adapter
    train = {**_default("train"), **(data.get("train") or {})}
    for key in ("epochs", "batch_size", "lr", "b_weight_decay"):
        if getattr(args, key) is not None:
            train[key] = getattr(args, key)
    data["train"] = train
    return ALConfig.from_dict(data)


def _finish(result: str, run_dir: str) -> int:
    if result == "waiting_for_labels":
        print(f"queries are waiting for labels: run `loracle al label {run_dir}` (or --export/--import CSV), "
              f"then `loracle al resume {run_dir}`")
        return 0
    print(f"done: {run_dir}/report.json and {run_dir}/learning_curve.png")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from loracle.active.loop import run_active_learning

    config = config_from_args(args)
    return _finish(run_active_learning(config, args.output), args.output)


def cmd_resume(args: argparse.Namespace) -> int:
    from loracle.active.loop import resume

    overrides = {} if args.progress is None else {"progress": args.progress}
    return _finish(resume(args.run_dir, **overrides), args.run_dir)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from loracle.active.report import run_summary
    from loracle.active.state import RunState

    state = RunState.open(args.run_dir)
    try:
        summary = run_summary(state)
    finally:
        state.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"run {args.run_dir}: strategy {summary['strategy']}, {summary['status']}, "
          f"rounds {summary['rounds_completed']}/{summary['rounds_planned']}, labels {summary['labels']} "
          f"{summary['labels_by_source']}, pending queries {summary['pending_queries']}")
    print(f"{'round':>5} {'labels':>6} {'accuracy':>8} {'ece':>7} {'train s':>8} {'score s':>8}")
    for r in summary["rounds"]:
        m = r["metrics"]
        print(f"{r['round']:>5} {r['n_labels']:>6} {m.get('accuracy', float('nan')):>8.4f} "
              f"{m.get('ece', float('nan')):>7.4f} {r['train_seconds'] or 0:>8.1f} {r['score_seconds'] or 0:>8.1f}")
    if summary["aulc_accuracy"] is not None:
        print(f"area under the accuracy curve: {summary['aulc_accuracy']:.4f}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from loracle.active.oracle import export_queries, import_labels, label_interactive
    from loracle.active.state import RunState

    state = RunState.open(args.run_dir)
    try:
        if args.export:
            n = export_queries(state, args.export)
            print(f"wrote {n} pending queries to {args.export}; fill in the 'label' column, then "
                  f"`loracle al label {args.run_dir} --import {args.export}`")
        elif args.import_csv:
            n = import_labels(state, args.import_csv)
            print(f"recorded {n} labels; {len(state.pending_queries())} queries still pending")
        else:
            n = label_interactive(state)
            print(f"recorded {n} labels; {len(state.pending_queries())} queries still pending", file=sys.stderr)
        if not state.pending_queries():
            print(f"all queries labelled: continue with `loracle al resume {args.run_dir}`")
    finally:
        state.close()
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from loracle.active.report import compare_runs

    result = compare_runs(args.run_dirs, args.output)
    for name, r in result.items():
        aulc = r["aulc_accuracy"]
        print(f"{name:>30}: labels {r['labels']:>5}  AULC accuracy {aulc if aulc is None else round(aulc, 4)}")
    print(f"wrote {args.output}/compare.json and {args.output}/learning_curve.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run only the ``al`` commands (``python -m loracle.cli.al al run ...``), without the other subcommands."""
    parser = argparse.ArgumentParser(prog="loracle")
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"loracle al: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
