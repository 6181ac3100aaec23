"""A real headless Chromium (Playwright driving the system browser) against a live ``loracle al serve``.

Imported as ``browser_helpers`` (``tests/serve`` is on ``sys.path`` under pytest's default import mode).

- :func:`chromium_path`: the system Chromium (``scripts/setup.sh`` installs Debian's ``chromium``), or
  ``$LORACLE_CHROMIUM``.
- :class:`LiveServer`: the app served by uvicorn in a thread of the test process, on a free port.
- :class:`ServeProcess`: ``loracle al serve`` as a child process, which a test may kill with SIGKILL and restart.
- :class:`Shots`: numbered screenshots under ``test-artifacts/browser/<test>/`` (``$LORACLE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def chromium_path() -> str | None:
    """The Chromium executable to drive, or None when there is none."""
    named = os.environ.get("LORACLE_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    for candidate in CANDIDATES:
        found = candidate if Path(candidate).is_file() else shutil.which(candidate)
        if found:
            return found
    return None


def artifacts_dir() -> Path:
    return Path(os.environ.get("LORACLE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"


class Shots:
    """Numbered full-page screenshots of one test, in ``folder`` (emptied first)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.count = 0

    def __call__(self, page: Any, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200 (or fail: the child process died, or the time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class LiveServer:
    """``app`` served by uvicorn in a daemon thread on a free loopback port, for the length of a ``with`` block."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until_up(self.url + "api/state", timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


class ServeProcess:
    """``python -m loracle al serve RUN_DIR --port PORT --no-predictions`` as a child process (output to ``log``)."""

    def __init__(self, run_dir: Path, port: int, log: Path) -> None:
        self.run_dir, self.port, self.log = run_dir, port, log
        self.url = f"http://127.0.0.1:{port}/"
        self.process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loracle", "al", "serve", str(self.run_dir), "--port", str(self.port),
                 "--no-predictions"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until_up(self.url + "api/state", timeout=90, process=self.process)
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}; its output:\n{self.log.read_text(errors='replace')[-3000:]}") from None
        return self

    def kill(self) -> None:
        """SIGKILL (``kill -9``): no shutdown, no cleanup."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
