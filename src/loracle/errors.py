"""The project's error type for user errors: bad data, bad options, unreadable or untrusted files.

A :class:`LoracleError` message says what was wrong, where (file, line, field or layer) and what would be right. The
command line prints it as one ``loracle <command>: error: <message>`` line and exits with status 2, never with a
traceback. It subclasses :class:`ValueError`, so code that catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class LoracleError(ValueError):
    """A user error: wrong input, options or files, described for the person who can fix them."""


class DataError(LoracleError):
    """A dataset that cannot be read as examples (the message names the file, the line and the field)."""


class AdapterFileError(LoracleError):
    """An adapter folder that is unreadable, malformed, or asks for more than the base model allows."""


__all__ = ["AdapterFileError", "DataError", "LoracleError"]
