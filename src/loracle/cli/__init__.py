"""The ``loracle`` command: ``train``, ``evaluate`` and ``al`` (active learning) subcommands.

Each subcommand module registers its parsers through ``add_parsers(subparsers)`` and sets ``func``; heavy imports
(torch, transformers) happen inside the handlers so ``loracle --help`` stays fast.
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns the process exit code; user errors print one clear line and exit with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
