"""Keeps secrets out of everything reconciler writes: the terminal, the agent's log, the journal.

Guarantees:
- ``scrub(text)`` replaces every value ``remember``ed in this process (env values of the file, values
  read from env_files) with ``***``, the value of ``KEY=VALUE`` for every remembered env key, and the
  password of every URL (``scheme://user:***@host``), wherever the text came from (an engine's error
  that echoes a container's environment, a probe's detail, a validation message). Occurrences of
  remembered values that overlap are masked together, as one ``***``.
- The boundaries call it: the CLI's streams, ``EventLog.emit``, the journal's writes. Values shorter than
  ``MIN_SECRET`` characters are scrubbed only as ``KEY=VALUE`` (a ``1`` or an ``on`` cannot be told
  apart from the rest of a message).
- Its time grows with the text, not with the text times the number of remembered values: the values
  and keys are found in one pass over the text (an Aho-Corasick automaton over their first
  ``_PREFIX`` characters; a longer value is then compared in full where its start was found, once per
  occurrence); the URL pattern cannot backtrack over a long run of letters. A 300 KB text with a
  thousand remembered values is scrubbed in well under a second (bench/fuzz.py --scrub).
- ``remember`` is cheap however often it is called: an automaton is rebuilt once, at the next
  ``scrub`` that needs it, after values or keys were added.

The remembered values are process-wide on purpose: an error may reach a boundary far from the spec
whose value it quotes.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MIN_SECRET = 4
MASK = "***"
# The depth of the automaton: a value longer than this is found by its first _PREFIX characters and
# then compared whole, so that a few long values (a certificate, a 150 KB string) cost a few nodes each.
_PREFIX = 64

# The lookbehind makes a scheme start where no scheme character precedes it: without it, every letter
# of a long run of letters would start a new attempt that reads the whole run (quadratic time).
_URL_PASSWORD = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]*:)(?P<password>[^\s/@]+)(?=@)"
)
_KEY_VALUE_END = re.compile(r"[^\s,;'\")\]}]*")  # what follows ``KEY=`` up to a delimiter is its value


@dataclass(frozen=True, slots=True)
class _Automaton:
    """Aho-Corasick over a set of words (their first ``_PREFIX`` characters): per node its transitions,
    its failure link and the next node on its failure chain where a word ends."""

    goto: list[dict[str, int]]
    fail: list[int]
    output: list[int]
    ends: dict[int, tuple[str, ...]]  # node -> the whole words of which that node is the first _PREFIX
    first: re.Pattern[str]  # the characters that start a word: from the root, skip to the next one

    @classmethod
    def of(cls, words: Iterable[str]) -> _Automaton | None:
        goto: list[dict[str, int]] = [{}]
        depth = [0]
        ends: dict[int, list[str]] = {}
        for word in words:
            node = 0
            for char in word[:_PREFIX]:
                nxt = goto[node].get(char)
                if nxt is None:
                    nxt = len(goto)
                    goto[node][char] = nxt
                    goto.append({})
                    depth.append(depth[node] + 1)
                node = nxt
            ends.setdefault(node, []).append(word)
        if not ends:
            return None
        fail = [0] * len(goto)
        output = [0] * len(goto)
        queue = list(goto[0].values())
        for node in queue:  # breadth first: a node's failure link is settled before its children's
            for char, child in goto[node].items():
                link = fail[node]
                while link and char not in goto[link]:
                    link = fail[link]
                target = goto[link].get(char, 0)
                fail[child] = target if target != child else 0
                queue.append(child)
            link = fail[node]
            output[node] = link if link in ends else output[link]
        first = re.compile("[" + "".join(re.escape(char) for char in goto[0]) + "]")
        frozen = {node: tuple(sorted(found, key=len, reverse=True)) for node, found in ends.items()}
        return cls(goto, fail, output, frozen, first)

    def matches(self, text: str, *, every: bool = False) -> Iterable[tuple[int, int]]:
        """``(start, end)`` of the longest word found to end at each place of ``text`` (with ``every``:
        of each word found to end there). A word longer than ``_PREFIX`` counts only where it is whole,
        and is compared again only past its last occurrence (so a long run of one repeated character
        costs one comparison per occurrence, not one per character)."""
        goto, fail, output, ends = self.goto, self.fail, self.output, self.ends
        last: dict[str, int] = {}  # a long word -> where its last occurrence ends
        node, index, size = 0, 0, len(text)
        while index < size:
            if node == 0:
                found = self.first.search(text, index)
                if found is None:
                    return
                index = found.start()
            char = text[index]
            while True:
                nxt = goto[node].get(char)
                if nxt is not None:
                    node = nxt
                    break
                if node == 0:
                    break
                node = fail[node]
            index += 1
            hit = node if node in ends else output[node]
            while hit:
                for word in ends[hit]:
                    if len(word) <= _PREFIX:
                        yield index - len(word), index
                        break
                    start = index - _PREFIX
                    if start >= last.get(word, 0) and text.startswith(word, start):
                        last[word] = start + len(word)
                        yield start, start + len(word)
                        break
                else:
                    hit = output[hit]
                    continue
                if not every:
                    break
                hit = output[hit]


_lock = threading.Lock()
_values: set[str] = set()
_keys: set[str] = set()
# Built at the first scrub that needs one after a change (the KEY= automaton only for a text with a
# "="): None while out of date, (None,) when there is nothing to find.
_values_automaton: tuple[_Automaton | None] | None = (None,)
_keys_automaton: tuple[_Automaton | None] | None = (None,)


def remember(values: Iterable[str] = (), *, keys: Iterable[str] = ()) -> None:
    """Never print these values, nor what follows ``KEY=`` for these keys."""
    global _values_automaton, _keys_automaton
    with _lock:
        count = len(_values)
        _values.update(value for value in values if len(value) >= MIN_SECRET)
        if len(_values) != count:
            _values_automaton = None
        count = len(_keys)
        _keys.update(key for key in keys if key)
        if len(_keys) != count:
            _keys_automaton = None


def forget() -> None:
    """Forget every remembered value and key: for a process that reads many unrelated files in turn
    (bench/fuzz.py), as if each were read by a new process."""
    global _values_automaton, _keys_automaton
    with _lock:
        _values.clear()
        _keys.clear()
        _values_automaton = _keys_automaton = (None,)


def _values_found() -> _Automaton | None:
    global _values_automaton
    built = _values_automaton
    if built is None:
        with _lock:
            built = _values_automaton
            if built is None:
                built = _values_automaton = (_Automaton.of(_values),)
    return built[0]


def _keys_found() -> _Automaton | None:
    global _keys_automaton
    built = _keys_automaton
    if built is None:
        with _lock:
            built = _keys_automaton
            if built is None:
                built = _keys_automaton = (_Automaton.of(key + "=" for key in _keys),)
    return built[0]


def remember_env(env: Mapping[str, str]) -> None:
    remember(env.values(), keys=env.keys())


def remember_in(data: Any) -> None:
    """Remember the secrets of a desired-state file as parsed, before it is validated: whatever its
    shape, env values of each app and the password of its health URL."""
    apps = data.get("apps") if isinstance(data, Mapping) else None
    if not isinstance(apps, Mapping):
        return
    previews = data.get("previews")
    for spec in previews.values() if isinstance(previews, Mapping) else ():  # a preview's env overrides
        env = spec.get("env") if isinstance(spec, Mapping) else None
        if isinstance(env, Mapping):
            remember(
                (str(value) for value in env.values() if isinstance(value, str | int | float)),
                keys=(key for key in env if isinstance(key, str)),
            )
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


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _at_boundary(text: str, index: int) -> bool:
    """Whether ``\\b`` holds before ``text[index]``: a key is masked only where it starts a word."""
    return (index > 0 and _word(text[index - 1])) != _word(text[index])


def scrub(text: str) -> str:
    """``text`` without any remembered secret or URL password."""
    if not text:
        return text
    text = redact_url(text)
    spans: list[tuple[int, int]] = []
    keys = _keys_found() if "=" in text else None
    values = _values_found()
    if keys is not None:
        for start, end in keys.matches(text, every=True):
            if _at_boundary(text, start):
                found = _KEY_VALUE_END.match(text, end)
                spans.append((end, found.end() if found else end))
    if values is not None:
        spans.extend(values.matches(text))
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    done = 0  # text[:done] is in pieces
    start, end = spans[0]
    for next_start, next_end in spans[1:]:
        if next_start < end:  # overlapping occurrences are masked together
            end = max(end, next_end)
            continue
        pieces += (text[done:start], MASK)
        done = end
        start, end = next_start, next_end
    pieces += (text[done:start], MASK, text[end:])
    return "".join(pieces)


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
