"""The agent's log: one line per event, as text or JSON, never the same condition twice in a row.

Guarantees: ``emit`` writes exactly one line and flushes it; ``once(key, ...)`` writes only when the
condition under ``key`` is new or its message changed, and ``clear(key)`` reports whether it was
set, so "remote unreachable" is logged once and "recovered" once, however many passes fail between.
Every line is named by an ``Event`` (``core.events``): no name outside that list is ever logged.
Callers pass only names, versions, commits and reasons: never env values; and every line is scrubbed
(``scrub``) on its way out, for the reasons that quote one anyway (an engine's error, a URL).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from reconciler.core.events import Event
from reconciler.telemetry import scrub


class Events:
    def __init__(self, *, fmt: str = "text", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stderr
        self._active: dict[str, str] = {}
        # Called with each line's event, scrubbed message and fields (metrics, notifications): after the
        # line is written, and never able to stop the agent.
        self.listeners: list[Callable[[Event, str, Mapping[str, Any]], None]] = []
        self._lock = threading.Lock()  # the listener's threads emit too: lines stay whole
        self._keys = threading.Lock()  # and say conditions once: the keys are shared

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
            with contextlib.suppress(Exception):  # a metric or a notification never costs a deploy
                listener(event, message, fields)

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
