"""Progress of long phases: a live bar on a terminal, one line per phase in a log.

A redirected log should read like a log: no carriage returns, no cursor escapes, one line when a phase ends
(``train: 120 steps in 14.2 s (8.5 step/s), loss=0.3121``). On a terminal the same call gives a tqdm bar with the
rate and the time left. Every phase of the library goes through :func:`progress`, and one-off messages through
:func:`log`, so this choice is made in one place.

tqdm is imported only when a bar is shown.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

#: environment variables that switch off the progress bars of huggingface_hub, transformers and datasets
LIBRARY_BAR_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal rather than a file or a pipe."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def log(message: str, stream: TextIO | None = None) -> None:
    """Write one line to ``stream`` (default ``sys.stderr``) and flush it, without tearing a live bar."""
    stream = sys.stderr if stream is None else stream
    if "tqdm" in sys.modules and is_terminal(stream):
        from tqdm import tqdm

        tqdm.write(message, file=stream)
    else:
        print(message, file=stream, flush=True)


def _plural(unit: str, n: float) -> str:
    if n == 1 or unit.endswith("s"):
        return unit
    return f"{unit}es" if unit.endswith(("x", "ch", "sh")) else f"{unit}s"


class PhaseLine:
    """What :func:`progress` returns off a terminal: counts quietly, then writes one line when the phase ends.

    It offers the part of tqdm's interface the library uses: iteration (when built over an iterable),
    ``update(n)``, ``set_postfix(**values)``, ``set_description(desc)``, ``close()`` and ``with``. The line reads
    ``desc: N units in X s (Y unit/s)``, with ``N/total`` when the phase stopped early and the last postfix after
    a comma. Counting starts after ``initial`` (work done before a resume), so the rate is this run's.

    Args:
        iterable: the items to pass through, or None.
        total: the expected count, or None.
        desc: the phase's name, the line's start.
        unit: what is counted (singular: ``step``, ``batch``, ``round``).
        initial: units already done before this phase started.
        stream: where the line goes (default ``sys.stderr`` when the line is written).
        silent: write nothing at all (for example on a non-main process).
    """

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str, initial: int = 0,
                 stream: TextIO | None = None, silent: bool = False) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.postfix: dict[str, Any] = {}
        self.stream = stream
        self.silent = silent
        self.start = time.perf_counter()
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError(f"progress({self.desc!r}) was given a total, not an iterable; use update()")
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __enter__(self) -> "PhaseLine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **values: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **values}

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        """Nothing to redraw off a terminal."""

    def line(self) -> str:
        """The line written at :meth:`close`."""
        seconds = time.perf_counter() - self.start
        done = self.n - self.initial
        count = f"{self.n}/{self.total}" if self.total is not None and self.n != self.total else f"{self.n}"
        rate = f"{done / seconds:.1f} {self.unit}/s" if seconds > 0 and done > 0 else f"0 {self.unit}/s"
        text = f"{self.desc}: {count} {_plural(self.unit, self.n)} in {seconds:.1f} s ({rate})"
        if self.postfix:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.silent:
            log(self.line(), self.stream)


def progress(iterable_or_total: Iterable[Any] | int | None, desc: str, unit: str = "it", enabled: bool = True, *,
             initial: int = 0, leave: bool = True, silent: bool = False, stream: TextIO | None = None) -> Any:
    """A progress reporter for one phase: a tqdm bar on a terminal, else a :class:`PhaseLine`.

    Use it as tqdm: iterate over it (given an iterable), or ``update(n)`` it (given a total), and ``close()`` it
    (or use ``with``). A bar shows the count, items per second and the time left; off a terminal, or with
    ``enabled=False``, one line is written when the phase ends.

    Args:
        iterable_or_total: the items of the phase, or how many units it has (None: unknown).
        desc: the phase's name (``train``, ``score``, ``AL rounds``).
        unit: what is counted, singular.
        enabled: False for no bar even on a terminal (``--no-progress``); the end-of-phase line stays.
        initial: units done before (a resumed run), shown as done and left out of the rate.
        leave: keep the finished bar on screen (False for a bar nested inside another).
        silent: no output at all (a non-main process of a distributed run).
        stream: where to write (default ``sys.stderr``).

    Returns:
        A ``tqdm.tqdm`` bar or a :class:`PhaseLine`; both iterate, ``update``, ``set_postfix`` and ``close``.
    """
    if isinstance(iterable_or_total, int) or iterable_or_total is None:
        iterable, total = None, iterable_or_total
    else:
        iterable = iterable_or_total
        total = len(iterable) if hasattr(iterable, "__len__") else None
    if enabled and not silent and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    file=sys.stderr if stream is None else stream, dynamic_ncols=True, mininterval=0.5)
    return PhaseLine(iterable, total, desc, unit, initial=initial, stream=stream, silent=silent)


def library_bars_off() -> None:
    """Switch off the progress bars of huggingface_hub, transformers and datasets (their "Loading weights" bars).

    Sets their environment switches (read when they are first imported, and inherited by child processes) unless
    the user set them, and turns the bars off in any of them already imported.
    """
    for name in LIBRARY_BAR_SWITCHES:
        os.environ.setdefault(name, "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "datasets" in sys.modules:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
