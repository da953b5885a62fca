"""What wakes the agent's loop from its wait: a pipe, signals, a watched repository, webhooks.

Guarantees:
- ``Waker.set`` takes no lock, so that a signal handler may call it whatever the code it interrupted holds.
- SIGTERM and SIGINT stop the agent; SIGHUP asks for a pass now, with a fetch. The handlers only set flags
  and the waker: the code they interrupted turns a hangup into a fetch (no lock is taken in a handler).
- A local repository is watched for writes to its refs (a push, a commit): each wakes the loop at once
  and marks the branch as maybe moved. Reads of the refs (the agent's own) wake nothing; a mirrored
  repository is not watched (its fetch is on the interval).
- Pushes announced by webhooks mark the branch as maybe moved at once and start passes at most every
  ``HOOK_SPACING`` seconds: a flood is one pass now and one after it.
- The engine's ``die`` event for a container of this instance (``DeathWatch``) wakes the loop at once, not
  at its interval, and at most once every ``DEATH_SPACING`` seconds: the dies that a pass causes itself
  (a deploy stopping the old release, a warm release cooled) are one more pass, not a storm. The watcher
  follows the engine the agent holds; when the stream breaks (a dockerd restarting) it connects again with
  a backoff and asks the engine for what it said meanwhile, so that no death is missed; it ends when the
  agent stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.adapters.git import Source
from reconciler.adapters.protocols import DockerEngine

HOOK_SPACING = 2.0  # seconds between passes that webhooks start: 1,000 hooks in a second are two passes
DEATH_SPACING = 1.0  # seconds between passes that die events start: a pass's own stops are one more pass
DEATH_RETRY = (0.5, 30.0)  # the backoff, first and longest, while the engine's event stream cannot be opened


class Waker:
    """What wakes the agent's loop from its wait: a pipe, so that a signal handler may set it too.

    A ``threading.Event`` takes a lock to be set; a handler that runs while the interrupted code holds that
    lock (in ``clear()``, say) waits for itself for ever. A write to a non-blocking pipe takes no lock.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe is already set
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> None:
        select.select([self._read], [], [], max(0.0, timeout))

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._read, 4096):
                pass


@dataclass
class Wakes:
    """What wakes the loop's wait (``waker``), and whether the branch may have moved since it was last read
    (``changed``: a watcher, a webhook or SIGHUP said so; the next read fetches)."""

    waker: Waker = field(default_factory=Waker)
    changed: threading.Event = field(default_factory=threading.Event)
    hup_pending: bool = False  # SIGHUP came: turned into ``changed`` by the code it interrupted (``took_hangup``)

    def hangup(self) -> None:
        """In the SIGHUP handler: no lock (``Waker``), so ``changed`` is not set here."""
        self.hup_pending = True
        self.waker.set()

    def took_hangup(self) -> None:
        if self.hup_pending:
            self.hup_pending = False
            self.changed.set()

    def moved(self) -> None:
        """The branch may have moved (a watched ref was written): read it now."""
        self.changed.set()
        self.waker.set()


def on_signals(*, stop: Callable[[], None], hangup: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop``, SIGHUP ``hangup``: both must take no lock (``Waker``)."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        stop()

    def hungup(signum: int, frame: FrameType | None) -> None:
        hangup()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    signal.signal(signal.SIGHUP, hungup)


class _InactiveEmitter(logging.Filter):
    """Drops watchdog's "called when the thread is inactive": its reader woke after we stopped it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "thread is inactive" not in record.getMessage()


def watch_refs(source: Source, changed: Callable[[], None]) -> Any:
    """Call ``changed`` when refs change in a local repository (a push to a bare one, a commit); the
    watchdog observer to stop, or None for a mirror."""
    if source.mirrored:
        return None
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    class RefsChanged(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            # Only writes: our own reads of the refs raise open/close events, which must not wake us.
            if event.event_type not in ("created", "modified", "moved", "deleted", "closed"):
                return
            path = str(event.src_path) + " " + str(getattr(event, "dest_path", ""))
            if "refs" in path or "HEAD" in path:
                changed()

    # watchdog 7.1 logs an error when its reader wakes after stop() (a race inside its inotify
    # emitter, harmless at shutdown); our stderr is the event stream, so that line is dropped.
    logging.getLogger("watchdog.observers.inotify").addFilter(_InactiveEmitter())
    observer = Observer()
    git_dir = Path(source.git_dir)
    # refs/ for loose refs (a push renames refs/heads/x.lock into place); the git dir itself, not
    # recursively, for packed-refs and HEAD. Objects are left alone: a push writes many of them.
    observer.schedule(RefsChanged(), str(git_dir / "refs"), recursive=True)
    observer.schedule(RefsChanged(), str(git_dir), recursive=False)
    observer.daemon = True
    observer.start()
    return observer


class Spaced:
    """Calls ``wake`` at once, but at most every ``spacing`` seconds: a call within that time is put off to
    its end, once, however many there were."""

    def __init__(self, wake: Callable[[], None], spacing: float) -> None:
        self._wake, self._spacing = wake, spacing
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last = float("-inf")

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._wake()

    def __call__(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            delay = self._last + self._spacing - time.monotonic()
            if delay > 0:
                self._timer = threading.Timer(delay, self._fire)
                self._timer.daemon = True
                self._timer.start()
                return
            self._last = time.monotonic()
        self._wake()


class HookWake:
    """Pushes announced by webhooks: ``changed`` at once (a gate under way sees the newer commit), ``wake``
    at most every ``HOOK_SPACING`` seconds (a later one is put off to then, once)."""

    def __init__(self, changed: Callable[[], None], wake: Callable[[], None]) -> None:
        self._changed, self._wake = changed, Spaced(wake, HOOK_SPACING)

    def pushed(self) -> None:
        self._changed()
        self._wake()


class DeathWatch:
    """A thread that follows the engine's ``die`` events for this instance's containers and wakes the loop.

    ``engine`` gives the engine the agent holds now (None while it has none: the engine is away); ``wake``
    is called at most every ``spacing`` seconds. A die while a pass runs sets the waker: the loop runs one
    more pass when this one ends, which is what ``core.stable.died`` needs to bring the app in line.
    """

    def __init__(
        self, engine: Callable[[], DockerEngine | None], wake: Callable[[], None], *, spacing: float = DEATH_SPACING
    ) -> None:
        self._engine = engine
        self._wake = Spaced(wake, spacing)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="deaths", daemon=True)
        self.deaths = 0  # how many die events came: for the tests and for a look in a debugger

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _follow(self) -> None:
        # From a second before now: a death before the stream is open (the agent connects in its first pass)
        # is replayed by the engine (its clock and ours may round apart; a die said twice is one pass).
        retry, since = DEATH_RETRY[0], time.time() - 1.0
        while not self._stop.is_set():
            engine = self._engine()
            if engine is None:  # the agent has none now (the engine is away): its next pass connects again
                if self._stop.wait(DEATH_RETRY[0]):
                    return
                continue
            opened = time.monotonic()
            try:
                for _name in engine.deaths(self._stop, since=since):
                    self.deaths += 1
                    self._wake()
                return  # it ends only when we stop
            except Exception:  # EngineUnavailable, or a bug: a lost watcher must not end the agent
                if time.monotonic() - opened > 10 * DEATH_RETRY[0]:
                    # A new outage (the stream had been open a while): what the engine says from a second
                    # before now is asked again once it is back, and the backoff starts again.
                    retry, since = DEATH_RETRY[0], time.time() - 1.0
            if self._stop.wait(retry):
                return
            retry = min(retry * 2, DEATH_RETRY[1])
