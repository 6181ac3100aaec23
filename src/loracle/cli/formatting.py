"""Help text of the ``loracle`` command: every option ends with its default, read only when help is shown."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any

#: attribute of an ``argparse.Action``: its default as shown in help, a value or a function called at help time
SHOWN_DEFAULT = "shown_default"


def show_default(action: argparse.Action, shown: Any | Callable[[], Any]) -> argparse.Action:
    """Set what help shows as ``action``'s default (a function is called only when help is rendered)."""
    setattr(action, SHOWN_DEFAULT, shown)
    return action


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions by paragraph and ends each option's help with ``(default: ...)`` or ``(required)``.

    A description paragraph (text between blank lines) with an indented line, such as a block of examples, is kept
    as written; the others are filled to the terminal's width.

    The default is the action's ``shown_default`` (see :func:`show_default`) when it has one, so a default that
    lives in a config class is read from there, lazily; else ``off`` for a switch, ``none`` for None, or the value.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.strip("\n").split("\n\n")
        return "\n\n".join(
            "\n".join(indent + line for line in p.splitlines()) if any(line[:1].isspace() for line in p.splitlines())
            else textwrap.fill(" ".join(p.split()), width, initial_indent=indent, subsequent_indent=indent)
            for p in paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", "version")
                or "(default" in text):
            return text
        if action.required:
            return f"{text} (required)"
        shown = getattr(action, SHOWN_DEFAULT, None)
        if callable(shown):
            shown = shown()
        elif shown is None:
            if action.nargs == 0:  # a switch
                shown = "off" if action.default in (None, False) else "on"
            else:
                shown = "none" if action.default is None else action.default
        # help strings are %-formatted by argparse
        return f"{text} (default: {str(shown).replace('%', '%%')})"
