"""Command line of the browser labelling and the hand-off to Label Studio and Argilla.

``loracle al serve RUN_DIR`` (:func:`add_serve_parser`, :func:`cmd_serve`) and the Label Studio and Argilla flags
of ``loracle al label`` (:func:`add_handoff_flags`, :func:`cmd_handoff`).
Building the parsers imports nothing heavy; the handlers import the web framework and torch when they run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loracle.cli.formatting import HelpFormatter, show_default
from loracle.errors import LoracleError

SERVE_DESCRIPTION = """\
Label a run's pending queries in the browser: one item at a time with the
uncertainty score that made it a query and the model's prediction, a button and
a key (1..9) per label, skip and undo, the round's progress and the learning
curve so far; when the round is answered, one button runs the next round.
Every answer is saved at once (the same checks as `loracle al label`).

examples:
  loracle al run --oracle human --model minilm --data data/reviews --output runs/h
  loracle al serve runs/h                     # then open http://127.0.0.1:8000/
  loracle al serve runs/h --host 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_urlsafe())')"
"""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1..65535")
    return port


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``al serve``."""
    serve = sub.add_parser("serve", help="label pending queries in the browser and run the next round from there",
                           description=SERVE_DESCRIPTION, formatter_class=HelpFormatter)
    serve.add_argument("run_dir", help="the run folder (started with --oracle human)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but a loopback address needs --token")
    serve.add_argument("--port", type=_port, default=8000, help="port to listen on")
    serve.add_argument("--token", metavar="T",
                       help="every request must bring T (?token=T in the address, or the X-Loracle-Token header)")
    show_default(serve.add_argument("--no-predictions", dest="predictions", action="store_false",
                                    help="do not load the model to show its prediction beside each query"), "off")
    serve.set_defaults(func=cmd_serve)
    return serve


def _address(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def cmd_serve(args: argparse.Namespace) -> int:
    from loracle.serve.security import check_bind

    check_bind(args.host, args.token)  # before anything heavy is loaded
    try:
        import uvicorn

        from loracle.serve.app import create_app
    except ImportError as err:
        raise LoracleError(f"the web server needs the serve extra ({err.name} is missing): "
                           "pip install 'loracle[serve]'") from None
    app = create_app(args.run_dir, host=args.host, token=args.token, predictions=args.predictions)
    print(f"labelling {args.run_dir} at {_address(args.host, args.port, args.token)} (Ctrl-C stops the server; "
          "every answer is saved as it is given)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


# -- `al label --export/--import-label-studio`, `--export/--import-argilla` -----------------------------------------
HANDOFF_FLAGS = ("export_label_studio", "import_label_studio", "export_argilla", "import_argilla")


def add_handoff_flags(group: argparse._ActionsContainer, parser: argparse.ArgumentParser) -> None:
    """Add the Label Studio and Argilla flags to ``al label`` (``group``: its mutually exclusive group)."""
    group.add_argument("--export-label-studio", metavar="JSON",
                       help="write pending queries as Label Studio tasks (and the labelling interface beside it, "
                       "as .label_config.xml)")
    group.add_argument("--import-label-studio", metavar="JSON",
                       help="read a Label Studio JSON export back; tasks with unknown items or labels, or "
                       "repeated items, are reported and skipped")
    group.add_argument("--export-argilla", metavar="JSON",
                       help="write pending queries as Argilla records (uncertainty in the metadata)")
    group.add_argument("--import-argilla", metavar="JSON",
                       help="read exported Argilla records back (dataset.records.to_json); records with unknown "
                       "items or labels, or repeated items, are reported and skipped")
    parser.add_argument("--with-predictions", action="store_true",
                        help="--export-label-studio/--export-argilla: load the model that chose the queries and add "
                        "its predictions (pre-annotations, suggestions)")


def wants_handoff(args: argparse.Namespace) -> bool:
    """Whether ``al label`` was given one of the hand-off flags."""
    return any(getattr(args, name, None) for name in HANDOFF_FLAGS)


def cmd_handoff(args: argparse.Namespace) -> int:
    """``al label`` with ``--export-label-studio``, ``--import-label-studio``, ``--export-argilla`` or
    ``--import-argilla``."""
    from loracle.serve.session import LabelSession

    session = LabelSession(args.run_dir)
    multiple_choice = session.config.get("task_kind") == "multiple_choice"
    if args.export_label_studio:
        from loracle.serve.label_studio import export_tasks, label_config

        path = Path(args.export_label_studio)
        predictions = _predictions(session) if args.with_predictions else None
        tasks = export_tasks(session, path, predictions)
        xml = path.with_suffix(".label_config.xml")
        xml.write_text(label_config(session.label_names, multiple_choice), encoding="utf-8")
        with_predictions = sum("predictions" in t for t in tasks)
        print(f"wrote {len(tasks)} pending queries as Label Studio tasks to {path}"
              f"{f' ({with_predictions} with predictions)' if with_predictions else ''} and the labelling interface "
              f"to {xml}; import the tasks into a Label Studio project with that interface, annotate, export the "
              f"project as JSON, then `loracle al label {args.run_dir} --import-label-studio EXPORT.json`")
        return 0
    if args.export_argilla:
        from loracle.serve.argilla import export_records, settings_hint

        path = Path(args.export_argilla)
        predictions = _predictions(session) if args.with_predictions else None
        records = export_records(session, path, predictions)
        with_suggestions = sum(bool(r["suggestions"]) for r in records)
        print(f"wrote {len(records)} pending queries as Argilla records to {path}"
              f"{f' ({with_suggestions} with suggestions)' if with_suggestions else ''}; create a dataset with "
              f"{settings_hint(session.label_names, multiple_choice)}, log the records "
              f"(dataset.records.log([rg.Record.from_dict(r) for r in json.load(open({str(path)!r}))])), annotate, "
              "export them with dataset.records.to_json(\"EXPORT.json\"), then "
              f"`loracle al label {args.run_dir} --import-argilla EXPORT.json`")
        return 0
    if args.import_label_studio:
        from loracle.serve.label_studio import import_tasks

        report, tool, kind = import_tasks(session, args.import_label_studio), "Label Studio", "task"
    else:
        from loracle.serve.argilla import import_records

        report, tool, kind = import_records(session, args.import_argilla), "Argilla", "record"
    with session.state() as state:
        pending = len(state.pending_queries())
    parts = [f"{report.already_recorded} already recorded"] if report.already_recorded else []
    if report.unannotated:
        parts.append(f"{report.unannotated} without an annotation")
    detail = f" ({', '.join(parts)})" if parts else ""
    print(f"recorded {report.recorded} labels{detail}; {pending} queries still pending")
    for problem in report.problems:
        print(f"skipped {problem}", file=sys.stderr)
    if report.problems:
        print(f"{len(report.problems)} {kind}(s) skipped; fix them in {tool} and import the export again ({kind}s "
              "recorded already are recognised and skipped)", file=sys.stderr)
    if not pending:
        print(f"all queries labelled: continue with `loracle al resume {args.run_dir}`")
    return 1 if report.problems else 0


def _predictions(session) -> dict:
    """The predictions of every round with pending queries (loads the model that chose them)."""
    from loracle.serve.predictions import RoundPredictions

    with session.state() as state:
        rounds = sorted({state.query_round_of(i) for i in state.pending_queries()})
    cache = RoundPredictions(session.run_dir)
    found: dict = {}
    for r in rounds:
        status = cache.wait(r, timeout=3600)
        if status.state == "failed":
            raise LoracleError(status.message)
        found.update(status.predictions)
    return found
