"""The ``loracle`` command: ``train``, ``evaluate`` and ``al`` (active learning) subcommands.

Each subcommand module registers its parsers through ``add_parsers(subparsers)`` and sets ``func``; heavy imports
(torch, transformers) happen inside the handlers so ``loracle --help`` stays fast (``tests/cli`` checks that building
the parser imports no torch).
"""

from __future__ import annotations

import argparse
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
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"loracle {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loracle: interrupted; completed steps are saved", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
