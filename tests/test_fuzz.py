"""Hostile and mutated desired-state files: every one is a ``DesiredState`` or located errors, nothing else.

What a user sees is checked: ``parse_desired`` (``parse_yaml``, then ``load_desired``, its messages
scrubbed of the file's env values: what ``reconcile validate`` and the agent run) either returns a
``DesiredState`` or raises ``InvalidDesiredState`` whose every line is ``FILE:LINE:COL: ...``, never
another exception, never a traceback, never an env value of the file.

- The corpus (tests/fuzz_corpus/, one file per case) holds the cases of issue 7, the stacks of issue 20 and
  the SOPS references of issue 21;
  each file starts with the exact lines it must be refused with (``# expect: ...``), or ``# expect: valid``
  for a file that must load (``stack-every-key.yaml``: every key of issue 20, each checked present). Each
  runs in a thread that must finish within a generous bound: that catches a hang (a missing cap), it is
  not a measure of speed.
- Hypothesis mutates valid files (bytes, lines, tags, anchors and aliases, deep nesting, odd keys,
  huge numbers, and from issue 18: unicode escapes, ``%YAML`` directives, values of 100 KB) and
  builds random structures for the validator alone. bench/fuzz.py runs the same kinds of mutation
  over 10,000 files and prints the counts.
"""

from __future__ import annotations

import re
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.adapters.yamlfile import MAX_FILE_BYTES_ENV
from reconciler.converge.run import parse_desired
from reconciler.core.desired import Positions, load_desired
from reconciler.core.model import AppSpec, DesiredState
from reconciler.errors import InvalidDesiredState, UserError
from tests.support.state import cli, show

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
LOCATED = re.compile(r"^[^:\n]+:\d+:\d+: ")
SECRET = "Zq7-secret-Vx9"
HANG_GUARD_SECONDS = 60  # only a missing cap gets near it: every corpus file takes milliseconds
FILE = "desired-state.yaml"
# The keys of an app before issue 20 (the stack keys, the container options): the rest must be in the corpus.
_BEFORE_ISSUE_20 = (
    "canary", "command", "env", "env_file", "health", "image", "init", "on", "ports", "replicas", "restart",
    "route", "stable_after", "stop_timeout", "update", "version", "volumes",
)  # fmt: skip


def outcome(data: str | bytes, filename: str = FILE) -> DesiredState | InvalidDesiredState:
    """The file's ``DesiredState`` or its ``InvalidDesiredState``; any other exception propagates."""
    try:
        return parse_desired(data.encode() if isinstance(data, str) else data, filename, "")
    except InvalidDesiredState as exc:
        return exc


def assert_user_facing(result: DesiredState | InvalidDesiredState, *, secret: str = SECRET) -> None:
    if isinstance(result, DesiredState):
        return
    lines = str(result).split("\n")
    assert lines == result.errors and lines, result.errors
    unlocated = [line for line in lines if not LOCATED.match(line)]
    assert not unlocated, unlocated
    assert secret not in str(result), str(result)
    assert "Traceback" not in str(result)


def in_thread(data: bytes, filename: str) -> DesiredState | InvalidDesiredState | BaseException:
    """``outcome`` in a daemon thread: a hang fails the test instead of stopping the run."""
    results: list[DesiredState | InvalidDesiredState | BaseException] = []

    def run() -> None:
        try:
            results.append(outcome(data, filename))
        except BaseException as exc:  # reported by the test, with its type
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_SECONDS)
    assert results, f"{filename}: no answer after {HANG_GUARD_SECONDS}s (a cap is missing)"
    return results[0]


# -- the corpus ---------------------------------------------------------------------------------------


def corpus() -> list[Path]:
    return sorted(CORPUS.iterdir())


def test_the_corpus_holds_the_cases_of_the_issue() -> None:
    names = {path.name for path in corpus()}
    assert {"tag-int.yaml", "complex-key.yaml", "nesting-250-flow.yaml", "billion-laughs.yaml"} <= names
    assert len(names) >= 25


@pytest.mark.parametrize("path", corpus(), ids=lambda path: path.name)
def test_a_corpus_file_is_refused_with_exactly_its_expected_lines(path: Path) -> None:
    data = path.read_bytes()
    expected = [
        line.removeprefix(b"# expect: ").decode() for line in data.splitlines() if line.startswith(b"# expect: ")
    ]
    assert expected, f"{path.name} names no expected error"

    result = in_thread(data, path.name)

    if expected == ["valid"]:  # a file that holds every key of a kind (``# expect: valid``): it loads
        assert isinstance(result, DesiredState), f"{path.name}: {result!r}"
        return
    assert isinstance(result, InvalidDesiredState), f"{path.name}: {result!r}"
    assert result.errors == expected
    assert_user_facing(result, secret="hunter2")


def test_the_stack_file_in_the_corpus_holds_every_key_of_issue_20() -> None:
    result = outcome((CORPUS / "stack-every-key.yaml").read_bytes())
    assert isinstance(result, DesiredState)
    stack_keys = set(AppSpec.model_fields) - set(_BEFORE_ISSUE_20) - {"rollout"}  # rollout: came after
    assert stack_keys, "the model's keys of issue 20"
    for key in sorted(stack_keys):
        assert any(key in spec.model_fields_set for spec in result.apps.values()), f"{key} is in no app"
    assert result.networks, "the top-level networks: too"


def test_a_duplicate_env_key_names_both_places_and_neither_value() -> None:
    result = outcome(
        "apps:\n  web:\n    image: a\n    version: v1\n    env:\n      PW: first-pw\n      PW: second-pw\n"
    )
    assert isinstance(result, InvalidDesiredState)
    assert result.errors == [
        f'{FILE}:7:7: apps.web.env.PW: duplicate key "PW": it is also at line 6, column 7; keep one'
    ]


@pytest.mark.parametrize(
    "text",
    [
        "apps:\n  web: &a {image: a, version: v1}\n  api: &a {image: b, version: v2}\n",  # ReusedAnchorWarning
        "%YAML 1.1\n---\napps: {web: {image: a, version: v1, env: {A: 1e5, B: 0755}}}\n",  # MantissaNoDot...
    ],
)
def test_no_warning_of_the_yaml_library_reaches_the_user(text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would raise here instead of printing
        assert_user_facing(outcome(text))


def test_five_megabytes_of_comments_are_refused_by_the_size_cap_before_parsing() -> None:
    text = "# " + "x" * (5 * 1024 * 1024) + "\napps: {}\n"

    result = in_thread(text.encode(), FILE)

    assert isinstance(result, InvalidDesiredState)
    assert result.errors == [f"{FILE}:1:1: the file is {len(text)} bytes; the limit is 524288 ({MAX_FILE_BYTES_ENV})"]


def test_the_size_cap_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "apps: {}\n" + "# padding\n" * 20
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "100")
    result = outcome(text)
    assert isinstance(result, InvalidDesiredState)
    assert result.errors == [f"{FILE}:1:1: the file is {len(text)} bytes; the limit is 100 ({MAX_FILE_BYTES_ENV})"]

    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "1000")
    assert isinstance(outcome(text), DesiredState)

    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "lots")
    with pytest.raises(UserError, match=f"^{MAX_FILE_BYTES_ENV}='lots' is not a number of bytes"):
        outcome(text)


def test_a_merge_key_is_followed_and_its_values_keep_their_places() -> None:
    text = "apps:\n  web: &w {image: example/web, version: v1, init: true}\n  api:\n    <<: *w\n    version: v2\n"
    result = outcome(text)
    assert isinstance(result, DesiredState)
    assert (result.apps["api"].image, result.apps["api"].version, result.apps["api"].init) == (
        "example/web",
        "v2",
        True,
    )

    bad = outcome(text.replace("init: true", "init: maybe"))
    assert isinstance(bad, InvalidDesiredState)
    # A merged value is placed where it is written, for each app that has it.
    assert bad.errors == [
        f"{FILE}:2:51: apps.api.init: Input should be a valid boolean, unable to interpret input",
        f"{FILE}:2:51: apps.web.init: Input should be a valid boolean, unable to interpret input",
    ]


# -- mutated text -------------------------------------------------------------------------------------

SEEDS = [
    f"""\
apps:
  web:
    image: registry.example.com:5000/team/web
    version: v1.2.3
    ports: ["8000:8000", "127.0.0.1:8443:443"]
    env:
      LOG_LEVEL: info
      PW: {SECRET}
    command: ["/bin/server", "--port", "8000"]
    stop_timeout: 500ms
    health:
      http: http://127.0.0.1:8000/health
      interval: 500ms
    stable_after: 1h
  worker: {{image: team/worker, version: stable, env: {{PW: "{SECRET}"}}}}
""",
    f"""\
apps:
  web:
    image: example/web
    version: &v 'v1.0.0'
    env: &common {{LOG_LEVEL: info, PW: {SECRET}}}
  api:
    <<: &base {{image: example/api, restart: "no"}}
    version: *v
    env: *common
""",
    # issue 20: every key of a stack (the corpus's own file, the planted secret in place of its "hunter2")
    (CORPUS / "stack-every-key.yaml").read_text().replace("hunter2", SECRET),
]

TAGS = ["!!int", "!!float", "!!bool", "!!null", "!!set", "!!omap", "!!binary", "!!str", "!!map", "!vault", "!"]
KEYS = ["? [a, [b]]\n:", "? {a: 1}\n:", '"a\\nb":', "<<:", "~:", "1.5:", "!!int 1:", "'':", "*k:", "0x1F:"]
VALUES = ["9" * 400 + "h", "1000000000h", ".inf", ".nan", "1e999", "9" * 5000, "*v", "*undefined", "&v x", "~", ""]
VALUES += ['"\\UFFFFFFFF"', '"\\U00110000"', '"\\uD800"', "a" * 100_000, "http://u:" + "p" * 50_000 + "@h/"]
DIRECTIVES = ["%YAML 1.1", "%YAML 9.9", "%YAML 1.9", "%YAML 1." + "9" * 5000, "%TAG ! tag:x,2000:", "%FOO"]
CHUNKS = [*":-?[]{},&*!|>'\"%@`#\t", "\n", "\x00", "\\", "\r", "\u2028", "\ufeff", "<<", ": ", "- ", "\\0"]


def nested(depth: int, style: int) -> str:
    return ["[" * depth + "]" * depth, "{a: " * depth + "x" + "}" * depth, "- " * depth + "x", "[" * depth][style]


def bomb(width: int, levels: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


Mutation = tuple[Any, ...]

mutation = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.sampled_from(CHUNKS) | st.text(max_size=3)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 12)),
    st.tuples(st.just("line"), st.integers(0, 10**6), st.sampled_from(["dup", "drop", "swap", "in", "out"])),
    st.tuples(st.just("tag"), st.integers(0, 10**6), st.sampled_from(TAGS)),
    st.tuples(st.just("key"), st.integers(0, 10**6), st.sampled_from(KEYS)),
    st.tuples(st.just("value"), st.integers(0, 10**6), st.sampled_from(VALUES)),
    st.tuples(st.just("alias"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("deep"), st.integers(0, 10**6), st.sampled_from([60, 64, 65, 250, 3000]), st.integers(0, 3)),
    st.tuples(st.just("bomb"), st.integers(2, 10), st.integers(3, 10)),
    st.tuples(st.just("directive"), st.sampled_from(DIRECTIVES), st.booleans()),
)


def secret_lines(lines: list[str]) -> set[int]:
    return {index for index, line in enumerate(lines) if SECRET in line}


def apply(text: str, step: Mutation) -> str:
    """One mutation; a byte mutation never touches a line that holds the planted env value (it could
    turn it into a key, and keys are shown)."""
    if step[0] == "directive":  # at the top, or before a second document
        return f"{step[1]}\n---\n{text}" if step[2] else f"{text}\n...\n{step[1]}\n---\napps: {{}}\n"
    lines = text.split("\n")
    kind, where = step[0], step[1]
    line = where % len(lines)
    if kind in ("insert", "delete"):
        position = where % (len(text) + 1)
        end = position + (step[2] if kind == "delete" else 0)
        touched = {text.count("\n", 0, position), text.count("\n", 0, min(end, len(text)))}
        if touched & secret_lines(lines):
            return text
        return text[:position] + (step[2] if kind == "insert" else "") + text[end:]
    if kind == "line":
        other = (where * 7 + 3) % len(lines)
        if step[2] == "dup":
            lines.insert(line, lines[line])
        elif step[2] == "drop" and len(lines) > 1:
            del lines[line]
        elif step[2] == "swap":
            lines[line], lines[other] = lines[other], lines[line]
        elif step[2] == "in":
            lines[line] = "  " + lines[line]
        else:
            lines[line] = lines[line][2:]
    elif kind == "tag":
        match = re.search(r":\s", lines[line])
        at = match.end() if match else len(lines[line]) - len(lines[line].lstrip())
        lines[line] = lines[line][:at] + step[2] + " " + lines[line][at:]
    elif kind == "key" and line not in secret_lines(lines):
        indent = len(lines[line]) - len(lines[line].lstrip())
        lines[line] = " " * indent + step[2] + lines[line].partition(":")[2]
    elif kind == "value" and line not in secret_lines(lines):
        lines[line] = re.sub(r": [^#\n]*", lambda _: ": " + step[2], lines[line], count=1)
    elif kind == "alias":
        second = step[2] % len(lines)
        lines[line] = lines[line].replace(": ", ": &k ", 1)
        if second not in secret_lines(lines):
            lines[second] = re.sub(r": .*$", ": *k", lines[second], count=1)
    elif kind == "deep" and line not in secret_lines(lines):
        lines[line] = re.sub(r": .*$", lambda _: ": " + nested(step[2], step[3]), lines[line], count=1)
    elif kind == "bomb":
        return bomb(step[1], step[2]) + text
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), steps=st.lists(mutation, min_size=1, max_size=5))
def test_mutated_text_is_valid_or_refused_with_places(seed: str, steps: list[Mutation]) -> None:
    text = seed
    for step in steps:
        text = apply(text, step)

    assert_user_facing(outcome(text))


@settings(max_examples=60, deadline=None)
@given(seed=st.sampled_from(SEEDS), data=st.binary(min_size=1, max_size=8), where=st.integers(0, 10**6))
def test_bytes_that_are_not_text_are_refused_with_places(seed: str, data: bytes, where: int) -> None:
    raw = seed.encode()
    at = where % (len(raw) + 1)
    if SECRET.encode() in raw[max(0, at - 80) : at + 80]:
        at = 0  # next to the planted value: put the bytes at the top instead
    assert_user_facing(outcome(raw[:at] + data + raw[at:]))


def test_the_seeds_are_valid_and_hold_the_secret() -> None:
    for seed in SEEDS:
        result = outcome(seed)
        assert isinstance(result, DesiredState)
        assert any(spec.env.get("PW") == SECRET for spec in result.apps.values())


# -- random structures for the validator --------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # inf and nan too: the validator must not pass them on
    | st.text(max_size=12)
    | st.sampled_from(["1h", "99999999999h", "0s", "80:80", "300.1.1.1:80:80", "a\nb", "\x00", "v1", "stable"])
)
trees = st.recursive(
    leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
)
FIELDS = [
    "image", "version", "ports", "env", "env_file", "volumes", "command", "restart", "init", "stop_timeout",
    "health", "stable_after", "apps", "interval", "timeout", "healthy_for", "http", "tcp", "exec", "docker",
    # issue 20
    "networks", "depends_on", "release", "secrets", "aliases", "source", "target", "mode", "uid", "ulimits",
    "soft", "hard", "logging", "options", "network_mode", "devices", "privileged", "security_opt", "cap_add",
    "tmpfs", "sysctls", "memory", "cpus", "user", "extra_hosts",
]  # fmt: skip


@settings(max_examples=250, deadline=None)
@given(
    app=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), trees, max_size=6),
    health=st.dictionaries(st.sampled_from(FIELDS), trees, max_size=4) | trees,
    name=st.sampled_from(["web", "Web", "a\nb", "", "x" * 70]) | st.text(max_size=8),
)
def test_random_structures_are_refused_with_places_and_without_env_values(
    app: dict[str, Any], health: Any, name: str
) -> None:
    env = app.get("env")
    spec = {"image": "example/web", "version": "v1", **app, "health": health}
    spec["env"] = {**env, "PW": SECRET} if isinstance(env, dict) else {"PW": SECRET}
    assert_user_facing(_validated({"apps": {name: spec, "other": app}}))


def _validated(data: Any) -> DesiredState | InvalidDesiredState:
    try:
        return load_desired(data, Positions(), filename=FILE)
    except InvalidDesiredState as exc:
        return exc


# -- issue 18: inputs the fuzzer found, through the CLI -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'apps:\n  web:\n    image: example/web\n    version: "\\UFFFFFFFF"\n',
            "4:15: an escape names no Unicode character (\\u and \\U take U+0000 to U+10FFFF, not surrogates)",
        ),
        (
            "%YAML 1.1\n---\napps: {web: {image: example/web, version: v1}}\n...\n%YAML 9.9\n---\napps: {}\n",
            "5:1: this YAML version is not supported: write %YAML 1.2 (or 1.1), or no directive",
        ),
        (
            "%YAML 1.9\n---\napps: {web: {image: example/web, version: v1}}\n",
            "1:1: this YAML version is not supported: write %YAML 1.2 (or 1.1), or no directive",
        ),
    ],
    ids=["escape-beyond-unicode", "second-directive-9.9", "directive-1.9"],
)
def test_an_escape_that_names_no_character_and_an_unknown_yaml_version_are_located_errors(
    tmp_path: Path, text: str, expected: str
) -> None:
    (tmp_path / FILE).write_text(text)

    result = cli("validate", FILE, cwd=tmp_path)

    assert result.returncode == 1, show(result)
    assert result.stderr.splitlines() == [f"{FILE}:{expected}", "1 error; nothing was changed"], show(result)


def test_a_long_value_is_quoted_by_its_first_characters_and_its_length_through_the_cli(tmp_path: Path) -> None:
    long = "a" * 100_000
    (tmp_path / FILE).write_text(
        "apps:\n  web:\n    image: example/web\n    version: v1\n"
        f"    stop_timeout: {long}\n"
        f"    health: {{http: 'http://127.0.0.1:8000/{long}'}}\n"
    )

    result = cli("validate", FILE, cwd=tmp_path)

    assert result.returncode == 1, show(result)
    assert result.stderr.splitlines() == [
        f"{FILE}:5:19: apps.web.stop_timeout: '{'a' * 60}…' (100000 characters) is not a duration:"
        " use 500ms, 30s, 10m or 1h",
        f"{FILE}:6:20: apps.web.health.http: String should have at most 2048 characters",
        "2 errors; nothing was changed",
    ], show(result)


def test_a_long_key_and_app_name_are_shown_cut_and_an_env_value_over_its_bound_is_not_shown() -> None:
    long = "k" * 5000
    secret = "s" * 40_000
    text = f"apps:\n  ? {long}\n  : {{image: example/web, version: v1}}\n  web:\n    image: example/web\n"
    text += f"    version: v1\n    ? {long}\n    : 1\n    env: {{PW: {secret}}}\n"

    result = outcome(text)

    assert isinstance(result, InvalidDesiredState)
    cut = f"'{'k' * 60}…' (5000 characters)"
    assert result.errors == [
        f"{FILE}:2:5: apps[{cut}]: app name {cut}: lowercase letters, digits, '-' and '_', starting with a letter"
        " or digit",
        f"{FILE}:7:7: apps.web[{cut}]: unknown key {cut}; `reconcile schema` lists the"
        f" {len(AppSpec.model_fields)} valid keys",
        f"{FILE}:9:15: apps.web.env.PW: String should have at most 32768 characters",
    ]
