"""The next round, run in a background thread so the page never blocks, with a status the page polls.

The round is :func:`loracle.active.resume` on the run folder: it takes the folder's lock (:class:`RunLock`) for as
long as it runs and releases it when it returns or fails, so the server holds no lock while idle and
``loracle al resume`` keeps working after a failed round. Labels are committed one by one before the round starts,
so a failure loses none of them.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from loracle.errors import LoracleError
from loracle.progress import log


class RoundJob:
    """One background round at a time.

    Args:
        runner: runs the round and returns the loop's result (``"waiting_for_labels"``, ``"done"``...).
    """

    def __init__(self, runner: Callable[[], str]) -> None:
        self.runner = runner
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] = {"state": "idle", "result": None, "error": None, "round": None,
                                        "started": None, "finished": None}

    @property
    def running(self) -> bool:
        with self._lock:
            return self._status["state"] == "running"

    def status(self) -> dict[str, Any]:
        """``state`` (``idle``, ``running``, ``finished`` or ``failed``), ``result``, ``error``, ``round`` (the round
        being trained), ``started``/``finished`` (Unix times) and ``seconds``."""
        with self._lock:
            status = dict(self._status)
        if status["started"] is not None:
            status["seconds"] = round((status["finished"] or time.time()) - status["started"], 1)
        return status

    def start(self, round_index: int | None, guard: threading.Lock | None = None) -> bool:
        """Start the round unless one is running; returns whether it started.

        Args:
            round_index: the round it trains (for the status line).
            guard: a lock the caller holds while changing labels; taken while the job is marked running, so an
                undo never interleaves with the start of a round.
        """
        with guard or threading.Lock(), self._lock:
            if self._status["state"] == "running":
                return False
            self._status = {"state": "running", "result": None, "error": None, "round": round_index,
                            "started": time.time(), "finished": None}
            self._thread = threading.Thread(target=self._run, name="loracle-round", daemon=True)
            self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the running round (tests and shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        result, error = None, None
        try:
            result = self.runner()
        except LoracleError as err:  # a user error: its message says what to do
            error = str(err)
        except Exception as err:  # anything else: the page shows it, the log keeps the traceback
            traceback.print_exc()
            error = f"{type(err).__name__}: {err}"
        if error is not None:
            log(f"serve: the round failed: {error}")
        with self._lock:
            self._status.update(state="failed" if error is not None else "finished", result=result, error=error,
                                finished=time.time())
