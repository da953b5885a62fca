"""The building blocks of the file's records: durations, sizes, bounded strings, quoting. Pure.

Guarantees: a duration is seconds (float) once parsed and a size is bytes (int); in the file they are
``500ms``, ``30s``, ``10m``, ``1h`` and ``64m``, ``1g``, ``512k`` (or a whole number of bytes). Every
duration has a floor and a ceiling (``DURATION_LIMITS``); bare numbers are refused as durations (units
are never guessed). Strings that reach a pattern are bounded in length first (``MAX_*``), and a message
quotes at most ``QUOTED_CUT`` characters of a value, with its length (``shown``). An env value holds
no control character but tab and newline, an argument no NUL: Docker and execve could not pass them on.
``Strict`` records are frozen and refuse unknown keys.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, StringConstraints, WithJsonSchema

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")  # ASCII digits: `\d` takes any script's
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PATTERN = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$"

# The longest (and shortest) each duration may be, as the file spells it. Docker takes the stop timeout
# as whole seconds in an int; a probe interval of 0 would probe in a busy loop; past these ceilings a
# value is a typo (10000h for 10000s), not a wish.
DURATION_LIMITS: dict[str, tuple[str, str]] = {
    "stop_timeout": ("0s", "1h"),
    "interval": ("1ms", "1h"),
    "timeout": ("0s", "24h"),
    "healthy_for": ("0s", "24h"),
    "stable_after": ("0s", "720h"),  # 30 days
    "drain": ("0s", "1h"),
    "keep_warm": ("0s", "720h"),
    "delay": ("0s", "1h"),
    "release": ("1s", "24h"),  # a release command (a migration) that runs past a day is stuck
    "pause": ("1s", "24h"),  # a rollout step's: its traffic is judged at its end
}


def parse_duration(value: object) -> float:
    """``"500ms" | "30s" | "10m" | "1h"`` -> seconds. Bare numbers are refused: units are never guessed."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        raise ValueError(f"a duration needs a unit: write {value}s (units: ms, s, m, h)")
    if not isinstance(value, str):
        raise ValueError("a duration is a string such as 500ms, 30s, 10m or 1h")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{shown(value)} is not a duration: use 500ms, 30s, 10m or 1h")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):  # 400 nines are inf as a float
        raise ValueError(f"{shown(value)} is too long to be a duration")
    return seconds


QUOTED_MAX = 80  # a value longer than this is quoted by its first QUOTED_CUT characters and its length
QUOTED_CUT = 60


def shown(value: str | None) -> str:
    """``value`` quoted for a message, cut short: a file may hold 300 KB where a duration goes, and a
    message is one line a person reads (``'aaaa…' (100000 characters)``)."""
    if value is None or len(value) <= QUOTED_MAX:
        return repr(value)
    return f"{value[:QUOTED_CUT] + '…'!r} ({len(value)} characters)"


def bounded_duration(field: str) -> Any:
    """A validator that parses a duration and refuses one outside ``DURATION_LIMITS[field]``."""
    shortest, longest = DURATION_LIMITS[field]
    floor, ceiling = parse_duration(shortest), parse_duration(longest)

    def check(value: object) -> float:
        seconds = parse_duration(value)
        if seconds > ceiling:
            raise ValueError(f"{shown(str(value))} is longer than {longest}, the most {field} may be")
        if seconds < floor:
            raise ValueError(f"{shown(str(value))} is shorter than {shortest}, the least {field} may be")
        return seconds

    return BeforeValidator(check)


def format_duration(seconds: float) -> str:
    """The shortest file spelling of ``seconds`` (inverse of ``parse_duration`` for whole units)."""
    for unit in ("h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


_DURATION_SCHEMA = WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["500ms", "30s", "10m"]})
StopTimeout = Annotated[float, bounded_duration("stop_timeout"), _DURATION_SCHEMA]
Interval = Annotated[float, bounded_duration("interval"), _DURATION_SCHEMA]
Timeout = Annotated[float, bounded_duration("timeout"), _DURATION_SCHEMA]
HealthyFor = Annotated[float, bounded_duration("healthy_for"), _DURATION_SCHEMA]
StableAfter = Annotated[float, bounded_duration("stable_after"), _DURATION_SCHEMA]
Drain = Annotated[float, bounded_duration("drain"), _DURATION_SCHEMA]
KeepWarm = Annotated[float, bounded_duration("keep_warm"), _DURATION_SCHEMA]
Delay = Annotated[float, bounded_duration("delay"), _DURATION_SCHEMA]
ReleaseTimeout = Annotated[float, bounded_duration("release"), _DURATION_SCHEMA]
Pause = Annotated[float, bounded_duration("pause"), _DURATION_SCHEMA]


def limits(field: str) -> str:
    shortest, longest = DURATION_LIMITS[field]
    return f"at most {longest}" if parse_duration(shortest) == 0 else f"{shortest} to {longest}"


# Length bounds, checked before any pattern, so that a value of 300 KB (the file may hold 1 MiB) is one
# short message at once. Each is far above what a real value needs:
# - an image repository: Docker refuses a reference longer than 255 characters;
# - a URL (health.http, a host's engine): 2,048, the practical limit of URLs (browsers, proxies);
# - HOST:PORT and a port mapping: a DNS name is at most 253 characters, an IPv6 address in brackets 41;
# - a path on the server (env_file, tls.certs, a path prefix) 4,096 (Linux's PATH_MAX), a volume two;
# - an env value or one argument of a command: 32,768 characters; Linux refuses one KEY=VALUE or
#   argument over 128 KiB (MAX_ARG_STRLEN) and a character may take 4 bytes in UTF-8.
MAX_IMAGE = 255
MAX_URL = 2048
MAX_HOST_PORT = 300
MAX_PORT_MAPPING = 64
MAX_PATH = 4096
MAX_ARG = 32_768
MAX_ENV_KEY = 256  # not a kernel limit: a name that long is a mistake, and it is printed in messages

UrlStr = Annotated[str, StringConstraints(max_length=MAX_URL)]
HostPortStr = Annotated[str, StringConstraints(max_length=MAX_HOST_PORT)]
PathStr = Annotated[str, StringConstraints(max_length=MAX_PATH)]
ArgStr = Annotated[str, StringConstraints(max_length=MAX_ARG)]


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def check_env_value(value: str) -> str:
    # The message names the character, never the value: env values are secrets.
    bad = _CONTROL.search(value)
    if bad is not None:
        char = bad.group()
        raise ValueError(
            "the value holds a NUL character"
            if char == "\x00"
            else f"the value holds the control character U+{ord(char):04X}"
        )
    return value


def check_argv(argv: tuple[str, ...] | None) -> tuple[str, ...] | None:
    for index, arg in enumerate(argv or ()):
        if "\x00" in arg:
            raise ValueError(f"argument {index} holds a NUL character, which no program can receive")
    return argv


class Strict(BaseModel):
    """Frozen, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def scalar_to_str(value: object) -> object:
    # YAML reads `PORT: 8000` and `DEBUG: true` as int and bool; docker wants strings, so does compose.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a number that is not finite (inf, nan): quote the text you mean")
    if isinstance(value, int | float):
        return str(value)
    return value


EnvValue = Annotated[
    str,
    StringConstraints(max_length=MAX_ARG),  # before the BeforeValidator: a str's bound, not a generic one
    BeforeValidator(scalar_to_str),
    AfterValidator(check_env_value),
    WithJsonSchema({"type": ["string", "number", "boolean"], "maxLength": MAX_ARG}),
]


def scalar_labels(value: object) -> object:
    # `canary: true` and `zone: 1` are YAML booleans and numbers; a label is text, as in the file.
    if isinstance(value, dict):
        return {key: scalar_to_str(item) for key, item in value.items()}
    return value


Labels = Annotated[dict[str, str], BeforeValidator(scalar_labels)]


_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([bkmg]?)$")  # docker's units, as compose writes them (64m, 1g)
_UNIT_BYTES = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
SIZE_PATTERN = r"^[0-9]+(\.[0-9]+)?[bkmgBKMG]?$"
MAX_SIZE = 1024**4  # 1 TiB: more than any container's memory or shm on one host; past it, a typo


def parse_size(value: object) -> int:
    """``"64m" | "1g" | "512k" | 1048576`` -> bytes (whole): the sizes of memory, shm_size and tmpfs."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a size is a number of bytes or a string such as 512k, 64m or 1g")
    if isinstance(value, int):
        size = value  # exact: float() of an int past 1e308 raises
    else:
        match = _SIZE.match(value.strip().lower())
        if not match:
            raise ValueError(f"{shown(value)} is not a size: use 512k, 64m, 1g (or a number of bytes)")
        scaled = float(match.group(1)) * _UNIT_BYTES[match.group(2)]
        size = int(scaled) if math.isfinite(scaled) else MAX_SIZE + 1  # 400 digits are past any float
    if not 0 < size <= MAX_SIZE:
        raise ValueError(f"{shown(str(value))}: a size is more than 0 and at most 1024g")
    return size


def format_size(size: int) -> str:
    """The shortest file spelling of ``size`` bytes (``64m``; inverse of ``parse_size`` for whole units)."""
    for unit in ("g", "m", "k"):
        if size % _UNIT_BYTES[unit] == 0:
            return f"{size // _UNIT_BYTES[unit]}{unit}"
    return str(size)


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": ["string", "integer"], "pattern": SIZE_PATTERN, "examples": ["64m", "1g"]}),
]
