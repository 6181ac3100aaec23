"""An exclusive lock on a run folder, so two processes never drive one run at once.

The lock is an ``fcntl.flock`` on ``<run_dir>/.lock``, which the kernel releases when its holder exits (also on
``kill -9``), so a crashed run never leaves a stale lock. The file holds the holder's pid for the error message.
"""

from __future__ import annotations

import os
from pathlib import Path

from loracle.errors import LoracleError

LOCK_FILE = ".lock"


class RunInUseError(LoracleError):
    """Another process holds the run folder's lock."""


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder exclusively.

    Raises:
        RunInUseError: when another live process holds it (the message names its pid).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"run in use by pid {holder}: {self.path.parent} is being driven by another loracle process; wait "
                "for it to finish (or stop it) before running `loracle al resume` on this folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
