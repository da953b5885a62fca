"""A `reconcile agent` process for the release tests, with its event lines.

Guarantees: `Agent.start()` runs `python -m reconciler agent ARGS` with the tests' interpreter, no
stdin and `cli_env()` (the running test's own `RECONCILE_INSTANCE`); a daemon thread collects stderr
line by line as it comes. `wait_for` returns the first matching line or fails with the whole log
(at once when the process died). `stop()` sends SIGTERM, then SIGKILL; it never raises.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from .cli import cli_env


class Agent:
    """One agent process; see the module docstring."""

    def __init__(self, repo: str, state_dir: Path, *, branch: str = "main", extra: Iterable[str] = ()) -> None:
        self.args = ["--repo", repo, "--branch", branch, "--state-dir", str(state_dir), "--interval", "60s", *extra]
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._lock = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> Agent:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "agent", *self.args],
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            with self._lock:
                self.lines.append(raw.rstrip("\n"))
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def log(self) -> str:
        with self._lock:
            return f"--- agent {self.args}\n" + "\n".join(self.lines)

    def events(self, event: str, *words: str, app: str | None = None) -> list[str]:
        """The lines of `event` (a text line's second field) with every one of `words`, about `app`."""
        with self._lock:
            return _matching(list(self.lines), event, words, app)

    def wait_for(self, event: str, *words: str, app: str | None = None, timeout: float = 30.0) -> str:
        """The first line `events(event, *words, app=app)` would give; waits up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = _matching(self.lines, event, words, app)
                if found:
                    return found[0]
                reading = self._reader is not None and self._reader.is_alive()
                left = deadline - time.monotonic()
                if left <= 0 or not reading:
                    why = "timed out" if left <= 0 else "the agent exited"
                    raise AssertionError(f"{why} waiting for {event} {words} app={app}\n" + "\n".join(self.lines))
                self._lock.wait(min(left, 0.2))

    def stop(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(Exception):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if process.stderr is not None:
            with contextlib.suppress(Exception):
                process.stderr.close()


def _matching(lines: list[str], event: str, words: tuple[str, ...], app: str | None) -> list[str]:
    found = []
    for line in lines:
        fields = line.split(None, 2)
        if len(fields) < 2 or fields[1] != event or not all(word in line for word in words):
            continue
        if app is not None and not re.search(rf" app={re.escape(app)}(\s|$)", line):
            continue
        found.append(line)
    return found
