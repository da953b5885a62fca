"""The agent's log: one line per event, as text or JSON, never the same condition twice in a row.

Guarantees: ``emit`` writes exactly one line and flushes it; ``once(key, ...)`` writes only when the
condition under ``key`` is new or its message changed, and ``clear(key)`` reports whether it was
set, so "remote unreachable" is logged once and "recovered" once, however many passes fail between.
Every line is named by an ``Event`` (``core.events``): no name outside that list is ever logged.
Callers pass only names, versions, commits and reasons: never env values; and every line is scrubbed
(``scrub``) on its way out, for the reasons that quote one anyway (an engine's error, a URL).
A listener that raises (metrics, notifications) never stops the line nor the caller, and never goes
unseen: ``listener_failed`` gets it, by default its whole traceback on stderr.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from reconciler.core.events import Event
from reconciler.telemetry import scrub


class EventLog:
    def __init__(self, *, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stderr
        self._active: dict[str, str] = {}
        # Called with each line's event, scrubbed message and fields (metrics, notifications): after the
        # line is written, and never able to stop the agent.
        self.listeners: list[Callable[[Event, str, Mapping[str, Any]], None]] = []
        self._lock = threading.Lock()  # the listener's threads emit too: lines stay whole
        self._keys = threading.Lock()  # and say conditions once: the keys are shared
        # Told of a listener that raised (a bug: listeners handle the failures they expect themselves);
        # by default its traceback goes whole to stderr, apart from the event lines.
        self.listener_failed: Callable[[Callable[..., object], BaseException], None] = _traceback_on_stderr

    def emit(self, event: Event, message: str, **fields: Any) -> None:
        message, fields = scrub.scrub(message), scrub.scrub_fields(fields)
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        if self.fmt == "json":
            line = json.dumps({"time": stamp, "event": event.value, "message": message, **fields}, sort_keys=False)
        else:
            extra = "".join(f" {key}={value}" for key, value in fields.items() if value not in (None, ""))
            line = f"{stamp} {event.value:<18} {message}{extra}"
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
        for listener in self.listeners:
            try:
                listener(event, message, fields)
            except Exception as exc:  # a metric or a notification never costs a deploy; its bug is kept
                self.listener_failed(listener, exc)

    def once(self, key: str, event: Event, message: str, *, again_if_changed: bool = True, **fields: Any) -> None:
        """Emit unless ``key`` is active with the same message (with any message: ``again_if_changed=False``)."""
        with self._keys:
            if key in self._active and (not again_if_changed or self._active[key] == message):
                return
            self._active[key] = message
        self.emit(event, message, **fields)

    def clear(self, key: str) -> bool:
        with self._keys:
            return self._active.pop(key, None) is not None

    def active(self, prefix: str) -> list[str]:
        with self._keys:
            return [key for key in self._active if key.startswith(prefix)]


def warn_on_stderr(message: str) -> None:
    """One ``warning:`` line on stderr: the command line's default for the adapters' and the journal's warnings
    (the agent passes its event log instead)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _traceback_on_stderr(listener: Callable[..., object], exc: BaseException) -> None:
    name = getattr(listener, "__qualname__", repr(listener))
    print(f"warning: the event listener {name} failed (a bug):", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
