"""The ``loracle`` command: ``train``, ``evaluate`` and ``al`` (active learning) subcommands.

Each subcommand module registers its parsers through ``add_parsers(subparsers)`` and sets ``func``; heavy imports
(torch, transformers) happen inside the handlers so ``loracle --help`` stays fast (``tests/cli`` checks that building
the parser imports no torch).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

_SUBCOMMAND_MODULES = ("loracle.cli.train", "loracle.cli.al")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from loracle import __version__

    parser = argparse.ArgumentParser(
        prog="loracle",
        description="Fine-tune language models when labels are scarce: active learning (STAR), LoRA, LoRA-SP, "
        "MonteCLoRA, calibration.",
    )
    parser.add_argument("--version", action="version", version=f"loracle {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(subparsers)
    return parser


def quiet_when_logged(args: argparse.Namespace) -> None:
    """Off a terminal (a redirected log), or with ``--no-progress``, switch off the libraries' own progress bars.

    transformers draws a "Loading weights" bar on every model load and huggingface_hub/datasets draw download bars;
    in a log they are lines of carriage returns. loracle's own phases go through :mod:`loracle.progress`.
    """
    from loracle.progress import is_terminal, library_bars_off

    if not is_terminal() or getattr(args, "progress", None) is False or getattr(args, "no_progress", False):
        library_bars_off()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the process exit code; user errors print one clear line and exit with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    quiet_when_logged(args)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func`` and turn a user error into one line, ``loracle <command>: error: <message>``, exit 2.

    User errors are the project's :class:`~loracle.errors.LoracleError` and what bad input or a bad environment
    raises from libraries: ``ValueError``, ``OSError`` (a missing or unwritable file, a full disk), YAML errors,
    SQLite's ``DatabaseError`` and safetensors' ``SafetensorError``. Anything else is a bug and keeps its
    traceback; so does everything with ``LORACLE_DEBUG=1``. A closed output pipe (``loracle al status | head``)
    ends the command quietly with 141, as a process stopped by SIGPIPE. Ctrl-C exits with 130.
    """
    command = " ".join(c for c in (args.command, getattr(args, "al_command", None)) if c)
    if int(os.environ.get("RANK", "0")) > 0:  # a helper process of `accelerate launch`/torchrun: rank 0 reports
        _discard_stdout()
    try:
        result = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here rather than in the interpreter's exit, with a traceback
        return result
    except BrokenPipeError:
        _discard_stdout()
        return 141
    except KeyboardInterrupt:
        print("loracle: interrupted; completed steps are saved", file=sys.stderr)
        return 130
    except Exception as err:
        distributed = sys.modules.get("loracle.distributed")
        if distributed is not None and isinstance(err, distributed.WriterFailed):
            return 2  # rank 0 failed and printed why; this rank only stops
        message = user_error_message(err)
        if message is None or os.environ.get("LORACLE_DEBUG"):
            raise
        print(f"loracle {command}: error: {message}", file=sys.stderr)
        return 2


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for a user error, or None when ``err`` is not one (a bug: keep the traceback)."""
    yaml = sys.modules.get("yaml")  # a library that was never imported cannot have raised
    if yaml is not None and isinstance(err, yaml.YAMLError):
        mark = getattr(err, "problem_mark", None)
        where = f"{mark.name}: line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        return f"{where}malformed YAML ({problem})"
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(err, sqlite3.DatabaseError):
        hint = "; another loracle process may be using this run" if "locked" in str(err) else ""
        return f"run state database: {err}{hint}"
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(err, getattr(safetensors, "SafetensorError", ())):
        return f"{err} (a .safetensors file is damaged, truncated or of another format)"
    if isinstance(err, OSError):
        if err.filename is None or not err.strerror:
            return str(err)
        hint = "; free some disk space or write to another folder" if err.errno == errno.ENOSPC else ""
        return f"{err.filename}: {err.strerror}{hint}"
    if isinstance(err, ValueError):
        return str(err)
    return None


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
