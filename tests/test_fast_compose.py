"""The pure parts of ``reconcile import compose``: interpolation, durations, and single mappings, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.compose_file import read_compose, render
from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core.compose import ComposeError, compose_millis, convert, interpolate, our_duration
from reconciler.errors import InvalidDesiredState

ENV = {"NAME": "web", "EMPTY": "", "TAG": "1.2"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("$NAME-x", "web-x"),
        ("${NAME}x", "webx"),
        ("$$NAME", "$NAME"),
        ("cost: $$5 and $ alone", "cost: $5 and $ alone"),
        ("${MISSING:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${MISSING-dflt}", "dflt"),
        ("${NAME:-dflt}", "web"),
        ("${MISSING:-${TAG}-x}", "1.2-x"),
        ("${NAME:+set}", "set"),
        ("${EMPTY:+set}", ""),
        ("${EMPTY+set}", "set"),
        ("${MISSING+set}", ""),
        ("${NAME:?unused}", "web"),
        ("${EMPTY?empty is set}", ""),
        ("${MISSING:-a}${MISSING:-b}", "ab"),
        ("${MISSING:-{braces}}", "{braces}"),
    ],
)
def test_interpolation(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


def test_an_unset_plain_variable_is_blank_and_said() -> None:
    said: list[str] = []
    assert interpolate("a${MISSING}b$MISSING2", ENV, said.append) == "ab"
    assert said == ["MISSING", "MISSING2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("${MISSING:?set it in .env}", "required variable MISSING is missing a value: set it in .env"),
        ("${EMPTY:?}", "required variable EMPTY is missing a value"),
        ("${MISSING?no ${NAME}}", "required variable MISSING is missing a value: no web"),
        ("${NAME", "is never closed"),
        ("${1A}", "is not a variable reference"),
        ("${NAME/x/y}", "is not a variable reference"),
    ],
)
def test_interpolation_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        interpolate(text, ENV)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("compose", "ours"),
    [
        ("1m30s", "90s"),
        ("1.5s", "1500ms"),
        ("10s", "10s"),
        ("500ms", "500ms"),
        ("2m", "2m"),
        ("1h", "1h"),
        ("1h30m", "90m"),
        ("0s", "0s"),
        ("0", "0s"),
        ("1us", "1ms"),  # rounded up: a wait is never made shorter
        ("250000000ns", "250ms"),
        (".5s", "500ms"),
        (30_000_000_000, "30s"),  # an int is nanoseconds, as in compose's JSON
    ],
)
def test_durations_come_out_in_one_unit(compose: Any, ours: str) -> None:
    assert our_duration(compose_millis(compose)) == ours


@pytest.mark.parametrize("bad", ["10", "1d", "ten seconds", "-1s", True, 1.5])
def test_what_is_not_a_duration(bad: Any) -> None:
    with pytest.raises(ValueError):
        compose_millis(bad)


def _app(service: dict[str, Any], **top: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    converted = convert({"services": {"s": {"image": "example/s:1", **service}}, **top}, {}, "/srv/stack")
    return converted.desired["apps"]["s"], converted.warnings


def _errors(service: dict[str, Any], **top: Any) -> list[str]:
    with pytest.raises(ComposeError) as caught:
        _app(service, **top)
    return caught.value.problems


@pytest.mark.parametrize(
    ("image", "repository", "version", "warned"),
    [
        ("nginx:1.27", "nginx", "1.27", ""),
        ("localhost:5000/team/app", "localhost:5000/team/app", "latest", "has no tag"),
        ("localhost:5000/team/app:2.0", "localhost:5000/team/app", "2.0", ""),
        ("app@sha256:" + "a" * 64, "app", "sha256:" + "a" * 64, ""),
        ("app:1.0@sha256:" + "b" * 64, "app", "sha256:" + "b" * 64, "the tag 1.0 is dropped"),
    ],
)
def test_image_references(image: str, repository: str, version: str, warned: str) -> None:
    app, warnings = _app({"image": image})
    assert (app["image"], app["version"]) == (repository, version)
    assert (warned in " ".join(warnings)) if warned else warnings == ()


@pytest.mark.parametrize(
    ("port", "ours"),
    [
        (80, "80"),
        ("8080:80", "8080:80"),
        ("127.0.0.1:8080:80", "127.0.0.1:8080:80"),
        ("127.0.0.1::80", "127.0.0.1:80"),
        ("[::1]:8080:80", "[::1]:8080:80"),
        ("53:53/udp", "53:53/udp"),
        ("443:443/tcp", "443:443"),
        ({"target": 80, "published": "8080", "protocol": "udp"}, "8080:80/udp"),
        ({"target": 80, "host_ip": "127.0.0.1"}, "127.0.0.1:80"),
    ],
)
def test_ports(port: Any, ours: str) -> None:
    app, _ = _app({"ports": [port]})
    assert app["ports"] == [ours]


def test_a_bare_environment_key_takes_the_variable_or_is_dropped() -> None:
    converted = convert(
        {"services": {"s": {"image": "x/s:1", "environment": ["A", "B", "C=3"]}}}, {"A": "from env"}, "/srv"
    )
    assert converted.desired["apps"]["s"]["env"] == {"A": "from env", "C": "3"}
    assert converted.warnings == (
        "services.s.environment.B: no value here, in --env-file or in the environment; dropped",
    )


def test_short_volume_syntax_and_relative_binds() -> None:
    app, warnings = _app({"volumes": ["data:/data", "./conf:/etc/conf:ro", "/abs:/abs:rw", "../up:/up"]})
    assert app["volumes"] == ["data:/data", "/srv/stack/conf:/etc/conf:ro", "/abs:/abs", "/srv/up:/up"]
    assert len(warnings) == 2


def test_secret_modes() -> None:
    secrets = {name: {"file": f"/etc/{name}"} for name in ("a", "b", "c", "d")}
    app, _ = _app(
        {
            "secrets": [
                "a",
                {"source": "b", "mode": 0o400},
                {"source": "c", "mode": 292},
                {"source": "d", "mode": "440"},
            ]
        },
        secrets=secrets,
    )
    assert [secret["mode"] for secret in app["secrets"]] == ["0444", "0400", "0444", "0440"]


def test_every_problem_is_said_at_once() -> None:
    problems = _errors({"ports": ["1-2:1-2"], "restart": "maybe", "network_mode": "container:x", "extends": "y"})
    assert [line.split(":")[0] for line in problems] == [
        "services.s.ports[0]", "services.s.restart", "services.s.network_mode", "services.s.extends",
    ]  # fmt: skip


def test_a_leading_zero_is_octal_in_a_compose_file_as_compose_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("a: 0400\nb: 400\nc: '0400'\nd: 0o440\ne: 0\nf: 08\n")
    assert read_compose(path) == {"a": 256, "b": 400, "c": "0400", "d": 288, "e": 0, "f": 8}


def test_a_broken_compose_file_is_one_line_at_its_place(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("services:\n  web: [\n")
    with pytest.raises(InvalidDesiredState) as caught:
        read_compose(path)
    assert len(caught.value.errors) == 1 and caught.value.errors[0].startswith(f"{path}:3:1: ")


def test_the_rendered_text_reads_back_to_the_same_values() -> None:
    data = {
        "apps": {
            "web": {
                "image": "x/web",
                "version": "1.10",
                "env": {"A": "yes", "B": "0400", "C": "1:30", "D": "", "E": "# not a comment"},
                "command": ["a b", "true", "null", "-x"],
                "secrets": [{"source": "/s", "target": "t", "mode": "0400", "uid": 0, "gid": 0}],
            }
        }
    }
    text = render(data, "header")
    assert text.startswith("# header\napps:\n")
    assert 'version: "1.10"' in text and 'mode: "0400"' in text
    assert parse_yaml(text, filename="t.yaml")[0] == data


def test_a_malformed_option_is_an_error_not_a_crash() -> None:
    problems = _errors({"ulimits": {"nofile": {"soft": 1}}, "cpus": [1], "read_only": "yes"})
    places = [line.split(":")[0] for line in problems]
    assert places == ["services.s.ulimits", "services.s.cpus", "services.s.read_only"]


def test_include_and_undeclared_things() -> None:
    assert _errors({}, include=["other.yml"]) == ["include: not supported: bring the included services into this file"]
    assert _errors({"secrets": ["nope"]}) == [
        "services.s.secrets[0]: the secret 'nope' is not declared in the top-level secrets:"
    ]
    assert _errors({"depends_on": ["ghost"]}) == ["services.s.depends_on: ghost is not a service of this file"]


def test_extension_keys_are_dropped_but_a_label_may_start_with_x() -> None:
    app, warnings = _app({"x-note": "${NEVER:?read}", "labels": {"x-team": "shop"}}, **{"x-anchors": {"a": 1}})
    assert app == {"image": "example/s", "version": "1", "labels": {"x-team": "shop"}}
    assert warnings == ()


def test_deeply_nested_references_are_an_error_not_a_crash() -> None:
    deep = "${A:-" * 5000 + "x" + "}" * 5000
    with pytest.raises(ValueError, match="nested deeper than"):
        interpolate(deep, {})
    assert interpolate("${A:-" * 10 + "x" + "}" * 10, {}) == "x"
