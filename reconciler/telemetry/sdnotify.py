"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), for the agent, with the standard library.

Guarantees: without ``NOTIFY_SOCKET`` every call does nothing; a socket that cannot be reached is
ignored (systemd's watchdog then restarts a unit that stopped answering, which is its job). The
watchdog is fed only while ``alive()`` says the agent's loop is alive, so a stuck loop is restarted.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable


def notify(state: str) -> None:
    """Send ``state`` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``) to systemd, if it listens."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        pass


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec`` (systemd's ``WATCHDOG_USEC``) for this process, or None when it is off."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def feed_watchdog(alive: Callable[[], bool], stop: threading.Event) -> threading.Thread | None:
    """A daemon thread that sends ``WATCHDOG=1`` every half period while ``alive()``; None when off."""
    every = watchdog_interval()
    if every is None:
        return None

    def run() -> None:
        while not stop.wait(every):
            if alive():
                notify("WATCHDOG=1")

    thread = threading.Thread(target=run, name="watchdog", daemon=True)
    thread.start()
    return thread
