"""The machine's real dockerd, stopped and started again: for the engine-restart tests and bench/drill.py.

Guarantees: `dockerd_pid` is the running dockerd's pid (from /var/run/docker.pid; None when none runs);
`dockerd_command(pid)` is the command line it was started with (else plain `dockerd`); `stop_dockerd`
sends SIGTERM and waits until it has exited; `start_dockerd` starts it again detached (`setsid`), its
output appended to /tmp/dockerd.log; `wait_engine` waits until `docker info` answers. A step that does
not finish in time raises `DockerdError`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class DockerdError(RuntimeError):
    """dockerd did not stop, or the engine did not answer again, in time."""


DOCKER_PID = Path("/var/run/docker.pid")
DOCKERD_LOG = Path("/tmp/dockerd.log")
ENGINE_TIMEOUT = 60.0


def engine_answers() -> bool:
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def dockerd_pid() -> int | None:
    """The pid of the running dockerd, from its pid file (None when there is none)."""
    try:
        pid = int(DOCKER_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if process_alive(pid) else None


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie left for an init that does not reap counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def dockerd_command(pid: int | None) -> list[str]:
    """The command line `pid` was started with, else plain `dockerd`."""
    if pid is not None:
        try:
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            argv = []
        if argv and Path(argv[0]).name == "dockerd":
            return argv
    return ["dockerd"]


def stop_dockerd(pid: int, timeout: float = ENGINE_TIMEOUT) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            raise DockerdError(f"dockerd (pid {pid}) did not exit within {timeout}s of SIGTERM")
        time.sleep(0.1)


def start_dockerd(command: list[str]) -> None:
    """Start dockerd detached from this process (its own session), output appended to DOCKERD_LOG."""
    with DOCKERD_LOG.open("ab") as log:
        subprocess.run(
            ["setsid", "-f", *command], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True
        )


def wait_engine(timeout: float = ENGINE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not engine_answers():
        if time.monotonic() >= deadline:
            tail = DOCKERD_LOG.read_text(errors="replace")[-3000:] if DOCKERD_LOG.exists() else ""
            raise DockerdError(f"the Docker engine did not answer within {timeout}s; {DOCKERD_LOG}:\n{tail}")
        time.sleep(0.2)
