"""Keeps secrets out of everything reconciler writes: the terminal, the agent's log, the journal.

Guarantees:
- ``scrub(text)`` replaces every value ``remember``ed in this process (env values of the file, values
  read from env_files) with ``***``, the value of ``KEY=VALUE`` for every remembered env key, and the
  password of every URL (``scheme://user:***@host``), wherever the text came from (an engine's error
  that echoes a container's environment, a probe's detail, a validation message).
- The boundaries call it: the CLI's streams, ``Events.emit``, the journal's writes. Values shorter than
  ``MIN_SECRET`` characters are scrubbed only as ``KEY=VALUE`` (a ``1`` or an ``on`` cannot be told
  apart from the rest of a message).

The remembered values are process-wide on purpose: an error may reach a boundary far from the spec
whose value it quotes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

MIN_SECRET = 4
MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)(?P<password>[^\s/@]+)(?=@)")
_lock = threading.Lock()
_values: set[str] = set()
_keys: set[str] = set()
_pattern: re.Pattern[str] | None = None
_key_pattern: re.Pattern[str] | None = None


def remember(values: Iterable[str] = (), *, keys: Iterable[str] = ()) -> None:
    """Never print these values, nor what follows ``KEY=`` for these keys."""
    global _pattern, _key_pattern
    with _lock:
        new_values = {value for value in values if value and value not in _values}
        new_keys = {key for key in keys if key and key not in _keys}
        if new_values:
            _values.update(new_values)
            long = sorted((v for v in _values if len(v) >= MIN_SECRET), key=len, reverse=True)
            _pattern = re.compile("|".join(map(re.escape, long))) if long else None
        if new_keys:
            _keys.update(new_keys)
            _key_pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(_keys))) + r")=[^\s,;'\")\]}]*")


def remember_env(env: Mapping[str, str]) -> None:
    remember(env.values(), keys=env.keys())


def remember_in(data: Any) -> None:
    """Remember the secrets of a desired-state file as parsed, before it is validated: whatever its
    shape, env values of each app and the password of its health URL."""
    apps = data.get("apps") if isinstance(data, Mapping) else None
    if not isinstance(apps, Mapping):
        return
    for spec in apps.values():
        if not isinstance(spec, Mapping):
            continue
        env = spec.get("env")
        if isinstance(env, Mapping):
            remember(
                (str(value) for value in env.values() if isinstance(value, str | int | float)),
                keys=(key for key in env if isinstance(key, str)),
            )
        health = spec.get("health")
        if isinstance(health, Mapping) and isinstance(health.get("http"), str):
            found = _URL_PASSWORD.search(health["http"])
            if found:
                remember([found.group("password")])


def scrub(text: str) -> str:
    """``text`` without any remembered secret or URL password."""
    if not text:
        return text
    text = redact_url(text)
    pattern, key_pattern = _pattern, _key_pattern
    if key_pattern is not None:
        text = key_pattern.sub(lambda m: m.group(1) + "=" + MASK, text)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return text


def redact_url(url: str) -> str:
    """``url`` with its password (if any) masked: what may be shown or written on a label."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, url)


def scrub_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: scrub(value) if isinstance(value, str) else value for key, value in fields.items()}


class ScrubbedStream:
    """A text stream that scrubs what is written to it (the CLI's stdout and stderr)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def fileno(self) -> int:
        return int(self._stream.fileno())

    @property
    def encoding(self) -> str:
        return str(getattr(self._stream, "encoding", "utf-8"))
