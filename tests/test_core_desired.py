"""desired-state.yaml text -> ``DesiredState``, or every error at once as ``FILE:LINE:COL: path: message``.

Drives the real reader (``reconciler.adapters.yamlfile.parse_yaml``, no I/O) and the pure validator
(``reconciler.core.desired.load_desired``). Positions are 1-based; every YAML document below is written
out line by line so that the expected line and column can be counted by eye.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core.desired import Positions, load_desired
from reconciler.core.fields import DURATION_PATTERN, format_duration, parse_duration
from reconciler.core.model import AppSpec, DesiredState
from reconciler.errors import InvalidDesiredState, UserError

ABSOLUTE = "env_file must be an absolute path on the server, or {sops: PATH}"
FILE = "desired-state.yaml"
APP_KEYS = f"`reconcile schema` lists the {len(AppSpec.model_fields)} valid keys"  # too many to list
DIGEST = "sha256:" + "0123456789abcdef" * 4


def load(text: str | bytes, *, revision: str = "") -> DesiredState:
    data, positions = parse_yaml(text, filename=FILE)
    return load_desired(data, positions, filename=FILE, revision=revision)


def errors_of(text: str | bytes) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        load(text)
    error = caught.value
    assert isinstance(error, UserError)
    assert str(error) == "\n".join(error.errors)
    return error.errors


def the_error(text: str | bytes) -> str:
    """The one error `text` is refused with (the test fails when there are more or none)."""
    errors = errors_of(text)
    assert len(errors) == 1
    return errors[0]


def one_app(*extra: str, image: str = "myrepo/web", version: str = "v1") -> str:
    """``apps.web`` with image on line 3 (value at col 12), version on line 4 (col 14), extra from line 5."""
    lines = ["apps:", "  web:", f"    image: {image}", f"    version: {version}", *(f"    {line}" for line in extra)]
    return "\n".join(lines) + "\n"


# -- a valid file ---------------------------------------------------------------------------------

FULL = f"""\
# yaml-language-server: $schema=schemas/desired-state.schema.json
apps:
  web:                                   # also the container name
    image: registry.example.com:5000/team/web
    version: v1.2.3
    ports: ["8000:8000", "127.0.0.1:8443:443", "53:53/udp", "9000", "[::1]:8080:80"]
    env:
      LOG_LEVEL: info
      PORT: 8000
      DEBUG: true
      QUIET: false
      RATIO: 0.5
    env_file: /etc/web/app.env
    volumes: ["web-data:/data", "/srv/web:/srv:ro", "cache:/cache:rw"]
    command: ["/bin/server", "--port", "8000"]
    restart: always
    init: true
    stop_timeout: 500ms
    health:
      http: http://127.0.0.1:8000/health
      interval: 500ms
      timeout: 30s
      healthy_for: 10m
    stable_after: 1h
  worker:
    image: team/worker
    version: {DIGEST}
    health: {{exec: [/bin/check, --quick]}}
  db_1:
    image: postgres
    version: stable
    health: {{tcp: "127.0.0.1:5432"}}
  cache-2:
    image: redis
    version: "7"
    health: {{docker: true}}
"""


def test_a_file_with_every_field_loads() -> None:
    desired = load(FULL, revision="0123456789abcdef0123456789abcdef01234567")
    assert desired.revision == "0123456789abcdef0123456789abcdef01234567"
    assert desired.short == "01234567"
    assert desired.path == FILE
    assert list(desired.apps) == ["web", "worker", "db_1", "cache-2"]

    web = desired.apps["web"]
    assert web.image == "registry.example.com:5000/team/web"
    assert web.version == "v1.2.3"
    assert web.ports == ("8000:8000", "127.0.0.1:8443:443", "53:53/udp", "9000", "[::1]:8080:80")
    assert web.env == {"LOG_LEVEL": "info", "PORT": "8000", "DEBUG": "true", "QUIET": "false", "RATIO": "0.5"}
    assert all(type(value) is str for value in web.env.values())
    assert web.env_file == "/etc/web/app.env"
    assert web.volumes == ("web-data:/data", "/srv/web:/srv:ro", "cache:/cache:rw")
    assert web.command == ("/bin/server", "--port", "8000")
    assert web.restart == "always"
    assert web.init is True
    assert web.stop_timeout == 0.5
    assert web.stable_after == 3600.0
    assert web.health is not None
    assert web.health.http == "http://127.0.0.1:8000/health"
    assert (web.health.interval, web.health.timeout, web.health.healthy_for) == (0.5, 30.0, 600.0)
    assert web.health.probe == "http"
    assert web.gate is web.health

    worker = desired.apps["worker"]
    assert worker.version == DIGEST
    assert worker.health is not None and worker.health.exec == ("/bin/check", "--quick")
    assert worker.health.probe == "exec"
    assert desired.apps["db_1"].gate.probe == "tcp"
    assert desired.apps["cache-2"].gate.probe == "docker"
    assert desired.apps["cache-2"].version == "7"


def test_defaults_of_a_minimal_app() -> None:
    spec = load(one_app()).apps["web"]
    assert spec == AppSpec.model_validate({"image": "myrepo/web", "version": "v1"})
    assert (spec.ports, spec.env, spec.env_file, spec.volumes, spec.command) == ((), {}, None, (), None)
    assert (spec.restart, spec.init, spec.stop_timeout, spec.stable_after) == ("unless-stopped", False, 10.0, 600.0)
    assert spec.health is None
    assert spec.gate.probe is None  # running-only gate
    assert (spec.gate.interval, spec.gate.timeout, spec.gate.healthy_for) == (1.0, 30.0, 5.0)


def test_no_apps_is_valid_and_no_commit_reads_so() -> None:
    desired = load("apps: {}\n")
    assert desired.apps == {}
    assert desired.short == "(no commit)"


def test_bytes_are_read_like_text() -> None:
    assert load(one_app().encode()) == load(one_app())


# -- every error at once, sorted, with its place ------------------------------------------------

MANY_ERRORS = """\
apps:
  web:
    image: myrepo/web:v2
    prots: ["80:80"]
    ports: ["99999:80", "abc", "8080:80"]
    volumes: ["data", "ok:/data"]
    env_file: app.env
    stop_timeout: 10
    stable_after: 10x
    health:
      http: http://127.0.0.1:8000/
      tcp: 127.0.0.1:8000
  Bad.App:
    image: myrepo/x@sha256:abc
    version: "not a tag!"
"""


def test_all_errors_are_reported_at_once_in_file_order() -> None:
    assert errors_of(MANY_ERRORS) == [
        f"{FILE}:2:3: apps.web.version: required key is missing",
        f"{FILE}:3:12: apps.web.image: image is the repository only; put the tag in version: v2",
        f"{FILE}:4:5: apps.web.prots: unknown key 'prots'; did you mean 'ports'?",
        f"{FILE}:5:13: apps.web.ports[0]: port 99999 is out of range 1-65535",
        f"{FILE}:5:25: apps.web.ports[1]: 'abc' is not [IP:]HOST:CONTAINER[/udp]",
        f"{FILE}:6:15: apps.web.volumes[0]: 'data' is not SOURCE:/CONTAINER/PATH[:ro|rw]",
        f"{FILE}:7:15: apps.web.env_file: {ABSOLUTE}",
        f"{FILE}:8:19: apps.web.stop_timeout: a duration needs a unit: write 10s (units: ms, s, m, h)",
        f"{FILE}:9:19: apps.web.stable_after: '10x' is not a duration: use 500ms, 30s, 10m or 1h",
        f"{FILE}:11:7: apps.web.health: choose one probe, not http and tcp",
        f"{FILE}:13:3: apps.Bad.App: app name 'Bad.App': lowercase letters, digits, '-' and '_', "
        "starting with a letter or digit",
        f"{FILE}:14:12: apps.Bad.App.image: image is the repository only; put the digest in version: sha256:...",
        f"{FILE}:15:14: apps.Bad.App.version: 'not a tag!' is not a tag, a sha256: digest or stable",
    ]


def _position(line: str) -> tuple[int, int]:
    match = re.match(rf"^{re.escape(FILE)}:(\d+):(\d+): ", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def test_errors_sort_by_line_as_numbers_not_text() -> None:
    # Errors on lines 3, 9, 10 and 12: text order would put 10 and 12 before 3.
    text = one_app(
        "ports: []",  # 5
        "volumes: []",  # 6
        "env: {}",  # 7
        "command: [a]",  # 8
        "stop_timeout: 1",  # 9
        "stable_after: 2",  # 10
        "init: false",  # 11
        "restart: sometimes",  # 12
        image="Bad/Image",
    )
    errors = errors_of(text)
    assert [_position(line)[0] for line in errors] == [3, 9, 10, 12]
    assert errors == sorted(errors, key=_position)


def test_missing_required_key_points_at_the_app_key() -> None:
    text = "apps:\n  web:\n    image: myrepo/web\n    init: true\n"
    assert errors_of(text) == [f"{FILE}:2:3: apps.web.version: required key is missing"]


def test_missing_image_and_version_are_both_reported() -> None:
    assert errors_of("apps:\n  web:\n    init: true\n") == [
        f"{FILE}:2:3: apps.web.image: required key is missing",
        f"{FILE}:2:3: apps.web.version: required key is missing",
    ]


def test_missing_apps_at_the_top() -> None:
    assert errors_of("# nothing but\nversion: 1\n") == [
        f"{FILE}:2:1: apps: required key is missing",
        f"{FILE}:2:1: version: unknown key 'version'; valid keys: apps, hosts, networks, previews, proxy",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            one_app('prots: ["80:80"]'),
            f"{FILE}:5:5: apps.web.prots: unknown key 'prots'; did you mean 'ports'?",
            id="app-key",
        ),
        pytest.param(
            one_app("healthcheck: {docker: true}"),
            f"{FILE}:5:5: apps.web.healthcheck: unknown key 'healthcheck'; did you mean 'health'?",
            id="app-key-longer",
        ),
        pytest.param(
            "aps:\n  web: {image: a, version: v1}\n",
            f"{FILE}:1:1: aps: unknown key 'aps'; did you mean 'apps'?",
            id="top-key",
        ),
        pytest.param(
            one_app("health:", "  http: http://127.0.0.1:8000/", "  intervl: 2s"),
            f"{FILE}:7:7: apps.web.health.intervl: unknown key 'intervl'; did you mean 'interval'?",
            id="health-key",
        ),
        pytest.param(
            one_app("zzz: 1"),
            f"{FILE}:5:5: apps.web.zzz: unknown key 'zzz'; {APP_KEYS}",
            id="nothing-close",
        ),
    ],
)
def test_unknown_key_names_the_nearest_valid_one(text: str, expected: str) -> None:
    assert expected in errors_of(text)


@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        pytest.param(one_app("init: true", version=""), 4, "apps.web.version", id="empty-version-then-a-key"),
        pytest.param("apps:\n  web:\n\n\n  api: {image: a, version: v1}\n", 2, "apps.web", id="empty-app-then-blanks"),
        pytest.param(one_app("env:", "  A:", "  B: x"), 6, "apps.web.env.A", id="empty-env-value"),
        pytest.param("apps:\n", 1, "apps", id="empty-apps-last-line"),
        pytest.param("apps:\n\n\n# trailing comment\n", 1, "apps", id="empty-apps-then-comment"),
    ],
)
def test_an_empty_value_is_placed_on_its_own_line(text: str, line: int, path: str) -> None:
    # A key with no value (YAML null) must be reported where it is written, not at the next token
    # (another key, another app, or a line past the end of the file).
    error = the_error(text)
    assert error.split(": ")[1] == path
    assert _position(error)[0] == line, error


def test_unknown_key_in_a_flow_mapping_has_its_column() -> None:
    text = one_app("health: {tcp: 'h:1', extra: 1, intervl: 1s}")
    assert errors_of(text) == [
        f"{FILE}:5:26: apps.web.health.extra: unknown key 'extra'; valid keys: docker, exec, healthy_for, "
        "http, interval, tcp, timeout",
        f"{FILE}:5:36: apps.web.health.intervl: unknown key 'intervl'; did you mean 'interval'?",
    ]


# -- the file as a whole ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file(text: str) -> None:
    assert errors_of(text) == [f"{FILE}:1:1: the file is empty; it needs at least 'apps:'"]


@pytest.mark.parametrize("text", ["- web\n- api\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert errors_of(text) == [f"{FILE}:1:1: the top level must be a mapping with 'apps:'"]


def test_top_level_list_after_a_comment_points_at_the_list() -> None:
    assert errors_of("# a comment\n\n- web\n") == [f"{FILE}:3:1: the top level must be a mapping with 'apps:'"]


def test_yaml_syntax_error_has_a_place() -> None:
    error = the_error("apps:\n  web:\n    image: a\n\tversion: v1\n")
    assert error.startswith(f"{FILE}:4:1: ")
    assert "\\t" in error


def test_unclosed_flow_mapping_points_at_where_it_ends() -> None:
    error = the_error("apps:\n  web: {image: a, version: v1\n")
    assert error.startswith(f"{FILE}:3:1: ")


def test_duplicate_key_points_at_the_second_one() -> None:
    error = the_error("apps:\n  web:\n    image: a\n    image: b\n    version: v1\n")
    assert error.startswith(f"{FILE}:4:5: ")
    assert 'duplicate key "image"' in error


def test_duplicate_app_is_an_error_too() -> None:
    error = the_error("apps:\n  web: {image: a, version: v1}\n  web: {image: b, version: v2}\n")
    assert error.startswith(f"{FILE}:3:3: ")
    assert 'duplicate key "web"' in error


def test_apps_must_be_a_mapping() -> None:
    error = the_error("apps:\n  - web\n")
    assert error.startswith(f"{FILE}:2:3: apps: ")


def test_an_app_must_be_a_mapping() -> None:
    error = the_error("apps:\n  web: 3\n")
    assert error.startswith(f"{FILE}:2:8: apps.web: ")


# -- fields ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # durations
        ("stop_timeout: 10", "5:19: apps.web.stop_timeout: a duration needs a unit: write 10s (units: ms, s, m, h)"),
        ("stop_timeout: 1.5", "5:19: apps.web.stop_timeout: a duration needs a unit: write 1.5s (units: ms, s, m, h)"),
        ("stop_timeout: 10x", "5:19: apps.web.stop_timeout: '10x' is not a duration: use 500ms, 30s, 10m or 1h"),
        ("stop_timeout: 1d", "5:19: apps.web.stop_timeout: '1d' is not a duration: use 500ms, 30s, 10m or 1h"),
        ("stop_timeout: -1s", "5:19: apps.web.stop_timeout: '-1s' is not a duration: use 500ms, 30s, 10m or 1h"),
        ("stop_timeout: s", "5:19: apps.web.stop_timeout: 's' is not a duration: use 500ms, 30s, 10m or 1h"),
        ("stop_timeout: true", "5:19: apps.web.stop_timeout: a duration is a string such as 500ms, 30s, 10m or 1h"),
        ("stable_after: 10", "5:19: apps.web.stable_after: a duration needs a unit: write 10s (units: ms, s, m, h)"),
        (
            "health: {interval: 5}",
            "5:24: apps.web.health.interval: a duration needs a unit: write 5s (units: ms, s, m, h)",
        ),
        (
            "health: {timeout: 1 minute}",
            "5:23: apps.web.health.timeout: '1 minute' is not a duration: use 500ms, 30s, 10m or 1h",
        ),
        # ports
        ('ports: ["99999:80"]', "5:13: apps.web.ports[0]: port 99999 is out of range 1-65535"),
        ('ports: ["80:99999"]', "5:13: apps.web.ports[0]: port 99999 is out of range 1-65535"),
        ('ports: ["0:80"]', "5:13: apps.web.ports[0]: port 0 is out of range 1-65535"),
        ('ports: ["abc"]', "5:13: apps.web.ports[0]: 'abc' is not [IP:]HOST:CONTAINER[/udp]"),
        ('ports: ["80:80/sctp"]', "5:13: apps.web.ports[0]: '80:80/sctp' is not [IP:]HOST:CONTAINER[/udp]"),
        ('ports: ["80:80", "x"]', "5:22: apps.web.ports[1]: 'x' is not [IP:]HOST:CONTAINER[/udp]"),
        ("ports: [8000]", "5:13: apps.web.ports[0]: Input should be a valid string"),
        # volumes
        ('volumes: ["data"]', "5:15: apps.web.volumes[0]: 'data' is not SOURCE:/CONTAINER/PATH[:ro|rw]"),
        (
            'volumes: ["data:relative"]',
            "5:15: apps.web.volumes[0]: 'data:relative' is not SOURCE:/CONTAINER/PATH[:ro|rw]",
        ),
        ('volumes: ["data:/d:rx"]', "5:15: apps.web.volumes[0]: 'data:/d:rx' is not SOURCE:/CONTAINER/PATH[:ro|rw]"),
        (
            'volumes: ["my data:/data"]',
            "5:15: apps.web.volumes[0]: 'my data' is neither a volume name nor an absolute path",
        ),
        (
            'volumes: ["./rel:/data"]',
            "5:15: apps.web.volumes[0]: './rel' is neither a volume name nor an absolute path",
        ),
        # env and env_file
        (
            "env_file: app.env",
            f"5:15: apps.web.env_file: {ABSOLUTE}",
        ),
        (
            "env_file: ./etc/app.env",
            f"5:15: apps.web.env_file: {ABSOLUTE}",
        ),
        # a SOPS file of the repository
        (
            "env_file: {sops: s.env, key: A}",
            "5:15: apps.web.env_file: env_file takes a whole SOPS file (KEY=VALUE pairs): no key",
        ),
        (
            "env_file: {sops: ../s.env}",
            "5:22: apps.web.env_file.sops: '../s.env': a path inside the repository (relative, without '..')",
        ),
        (
            "secrets: [{source: {sops: s.yaml, kye: x}, target: t}]",
            "5:39: apps.web.secrets[0].source.kye: unknown key 'kye'; did you mean 'key'?",
        ),
        ("secrets: [{source: {key: x}, target: t}]", "5:16: apps.web.secrets[0].source.sops: required key is missing"),
        (
            "secrets: [{source: {sops: s.yaml, key: 'db..x'}, target: t}]",
            "5:44: apps.web.secrets[0].source.key: 'db..x' is not a path in the file's tree (db.password)",
        ),
        ("env: {'BAD KEY': x}", "5:10: apps.web.env: 'BAD KEY' is not an environment variable name"),
        ("env: [A=b]", "5:10: apps.web.env: Input should be a valid dictionary"),
        # restart, init, command, health probes
        (
            "restart: sometimes",
            "5:14: apps.web.restart: Input should be 'no', 'always', 'unless-stopped' or 'on-failure'",
        ),
        ("health: {http: ftp://x/}", "5:20: apps.web.health.http: 'ftp://x/' is not an http(s) URL"),
        ("health: {tcp: nohost}", "5:19: apps.web.health.tcp: 'nohost' is not HOST:PORT"),
        ("health: {exec: []}", "5:20: apps.web.health.exec: exec needs at least the program to run"),
        ("health: {http: 'http://x/', tcp: 'x:1'}", "5:13: apps.web.health: choose one probe, not http and tcp"),
        ("health: {exec: [check], docker: true}", "5:13: apps.web.health: choose one probe, not exec and docker"),
        (
            "health: {http: 'http://x/', tcp: 'x:1', exec: [c], docker: true}",
            "5:13: apps.web.health: choose one probe, not http and tcp and exec and docker",
        ),
    ],
)
def test_bad_field(extra: str, expected: str) -> None:
    assert errors_of(one_app(extra)) == [f"{FILE}:{expected}"]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("myrepo/web:v2", "image is the repository only; put the tag in version: v2"),
        ("registry.local:5000/team/web:1.0", "image is the repository only; put the tag in version: 1.0"),
        ("myrepo/web@sha256:abc", "image is the repository only; put the digest in version: sha256:..."),
        (f"myrepo/web@{DIGEST}", "image is the repository only; put the digest in version: sha256:..."),
        ("MyRepo/Web", "'MyRepo/Web' is not an image repository"),
        ("myrepo//web", "'myrepo//web' is not an image repository"),
        ('"myrepo/web "', "'myrepo/web ' is not an image repository"),
    ],
)
def test_bad_image(image: str, message: str) -> None:
    assert errors_of(one_app(image=image)) == [f"{FILE}:3:12: apps.web.image: {message}"]


@pytest.mark.parametrize(
    "image",
    ["nginx", "team/web", "registry.local:5000/team/web", "localhost:5000/web", "ghcr.io/org/sub/app", "a.b-c_d/e"],
)
def test_good_image(image: str) -> None:
    assert load(one_app(image=image)).apps["web"].image == image


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("sha256:abc", "a digest is sha256: followed by 64 hex characters"),
        ("sha256:" + "A" * 64, "a digest is sha256: followed by 64 hex characters"),
        ('"bad version!"', "'bad version!' is not a tag, a sha256: digest or stable"),
        (".v1", "'.v1' is not a tag, a sha256: digest or stable"),
        ("-v1", "'-v1' is not a tag, a sha256: digest or stable"),
        ("v" * 129, f"'{'v' * 60}…' (129 characters) is not a tag, a sha256: digest or stable"),
    ],
)
def test_bad_version(version: str, message: str) -> None:
    assert errors_of(one_app(version=version)) == [f"{FILE}:4:14: apps.web.version: {message}"]


@pytest.mark.parametrize("version", ["v1", "1.2.3", "stable", "latest", "v1_rc-2", DIGEST, "v" * 128, '"7"'])
def test_good_version(version: str) -> None:
    assert load(one_app(version=version)).apps["web"].version == version.strip('"')


@pytest.mark.parametrize("name", ["Web", "web.x", "-web", "_web", "web app", "w" * 64])
def test_bad_app_name(name: str) -> None:
    text = f"apps:\n  {name}:\n    image: a\n    version: v1\n"
    assert errors_of(text) == [
        f"{FILE}:2:3: apps.{name}: app name {name!r}: lowercase letters, digits, '-' and '_', "
        "starting with a letter or digit"
    ]


@pytest.mark.parametrize("name", ["web", "web-2", "web_2", "0web", "w" * 63])
def test_good_app_name(name: str) -> None:
    assert list(load(f"apps:\n  {name}:\n    image: a\n    version: v1\n").apps) == [name]


@pytest.mark.parametrize(
    "port",
    ["80", "8080:80", "8080:80/udp", "8080:80/tcp", "127.0.0.1:8080:80", "[::1]:8080:80", "65535:1"],
)
def test_good_port(port: str) -> None:
    assert load(one_app(f'ports: ["{port}"]')).apps["web"].ports == (port,)


def test_env_scalars_become_the_strings_docker_wants() -> None:
    spec = load(one_app("env: {PORT: 8000, DEBUG: true, QUIET: false, NAME: web, EMPTY: ''}")).apps["web"]
    assert spec.env == {"PORT": "8000", "DEBUG": "true", "QUIET": "false", "NAME": "web", "EMPTY": ""}


def test_error_messages_never_show_an_env_value() -> None:
    secret = "s3cr3t-Value-7Q"
    errors = errors_of(one_app(f"env: {{TOKEN: [{secret}], OTHER: {{x: {secret}}}}}"))
    assert errors
    assert all(secret not in line for line in errors)


# -- the reader's promises ---------------------------------------------------------------------------


def _plain_types(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) in (str, int) and _plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types(item) for item in value)
    return value is None or type(value) in (str, int, float, bool)


def test_reader_returns_plain_python_and_positions() -> None:
    data, positions = parse_yaml(FULL, filename=FILE)
    assert _plain_types(data)
    assert positions.of(()) == (2, 1)
    assert positions.of(("apps", "web"), key=True) == (3, 3)
    assert positions.of(("apps", "web", "ports", 2)) == (6, 48)
    assert positions.of(("apps", "web", "ports", 99)) == (6, 12)  # unknown index: its list
    assert positions.of(("nowhere", "at", "all")) == (2, 1)  # unknown path: the document


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("env: {RELEASED: 2024-01-01}", id="timestamp"),
        pytest.param("env: {TOKEN: !vault abc}", id="custom-tag"),
    ],
)
def test_reader_never_returns_non_plain_values(extra: str) -> None:
    # yamlfile's docstring: "the plain values hold only dict, list, str, int, float, bool and None";
    # a tag it does not accept must be an InvalidDesiredState with a place instead.
    try:
        data, _ = parse_yaml(one_app(extra), filename=FILE)
    except InvalidDesiredState as exc:
        assert all(line.startswith(f"{FILE}:5:") for line in exc.errors)
    else:
        assert _plain_types(data), f"parse_yaml returned {data!r}"


def test_an_unquoted_date_in_env_stays_the_text_that_was_written() -> None:
    data, positions = parse_yaml(one_app("env: {RELEASED: 2024-01-01}"), filename=FILE)
    desired = load_desired(data, positions, filename=FILE)
    assert desired.apps["web"].env == {"RELEASED": "2024-01-01"}


def test_a_yaml_tag_is_refused_with_a_place() -> None:
    errors = errors_of(one_app("env: {TOKEN: !vault abc}"))
    assert errors == [f"{FILE}:5:18: apps.web.env.TOKEN: the YAML tag !vault is not supported; write the value plainly"]


# -- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("10m", 600.0), ("1h", 3600.0), ("1.5h", 5400.0), ("0s", 0.0), ("2.5s", 2.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [10, 10.0, True, None, "10", "10x", "s", "-1s", "1d", "1h30m", "", [1]])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (30.0, "30s"), (600.0, "10m"), (3600.0, "1h"), (90.0, "90s"), (5400.0, "90m"), (7200, "2h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


UNITS = st.sampled_from(["ms", "s", "m", "h"])


@settings(max_examples=200, deadline=None)
@given(number=st.integers(min_value=0, max_value=10**7), unit=UNITS)
def test_duration_round_trip(number: int, unit: str) -> None:
    seconds = parse_duration(f"{number}{unit}")
    text = format_duration(seconds)
    assert re.match(DURATION_PATTERN, text), text
    assert parse_duration(text) == seconds
    assert format_duration(parse_duration(text)) == text  # the shortest spelling is a fixed point


def test_a_health_url_with_a_port_that_is_not_a_number_is_refused_with_its_place() -> None:
    error = the_error(one_app("health: {http: 'http://127.0.0.1:abc/health'}"))
    assert re.fullmatch(rf"{re.escape(FILE)}:5:\d+: apps\.web\.health\.http: .*port.*", error), error


# -- issue 7: tags, keys, numbers and secrets ---------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("init: !!bool x", "5:11: apps.web.init: the YAML tag !!bool is not supported; write the value plainly"),
        ("init: !!int 1", "5:11: apps.web.init: the YAML tag !!int is not supported; write the value plainly"),
        ("stop_timeout: !!float x", "5:19: apps.web.stop_timeout: the YAML tag !!float is not supported; write the "
         "value plainly"),
        ("env: !!set {A: x}", "5:10: apps.web.env: the YAML tag !!set is not supported; write the value plainly"),
        ("env: !!omap [{A: x}]", "5:10: apps.web.env: the YAML tag !!omap is not supported; write the value plainly"),
        ("command: !!python/object/apply:os.system [id]", "5:14: apps.web.command: the YAML tag "
         "!!python/object/apply:os.system is not supported; write the value plainly"),
        ("env: {!!int 1: x}", "5:11: apps.web.env: the YAML tag !!int is not supported: keys are plain strings"),
        ("env: {? [a, [b]] : x}", "5:13: apps.web.env: keys must be plain strings, not a list"),
        ("env: {? {a: 1} : x}", "5:13: apps.web.env: keys must be plain strings, not a mapping"),
    ],
)  # fmt: skip
def test_a_tag_or_a_key_that_is_not_a_string_is_refused_where_it_is_written(extra: str, expected: str) -> None:
    assert errors_of(one_app(extra)) == [f"{FILE}:{expected}"]


def test_the_top_level_tag_of_the_issue_is_refused() -> None:
    assert errors_of("apps: !!float true\n") == [
        f"{FILE}:1:7: apps: the YAML tag !!float is not supported; write the value plainly"
    ]


@pytest.mark.parametrize("tag", ["!!str", "!"])
def test_a_string_tag_makes_a_string(tag: str) -> None:
    assert load(one_app(f"env: {{PORT: {tag} 8000}}", version=f"{tag} 7")).apps["web"].env == {"PORT": "8000"}


def test_a_key_is_the_text_that_was_written() -> None:
    assert errors_of(one_app("env: {1: x, 0x1F: y}")) == [
        f"{FILE}:5:10: apps.web.env: '1' is not an environment variable name"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('apps:\n  "web\\nx": {image: a, version: v1}\n', f"{FILE}:2:3: apps['web\\nx']: app name 'web\\nx': "
         "lowercase letters, digits, '-' and '_', starting with a letter or digit"),
        ('apps:\n  "": {image: a, version: v1}\n', f"{FILE}:2:3: apps['']: app name '': lowercase letters, "
         "digits, '-' and '_', starting with a letter or digit"),
        (one_app('"x\\ny": 1'), f"{FILE}:5:5: apps.web['x\\ny']: unknown key 'x\\ny'; {APP_KEYS}"),
    ],
)  # fmt: skip
def test_a_key_with_a_newline_or_no_text_stays_on_one_line(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_a_duplicate_key_names_the_key_and_both_places_and_no_value() -> None:
    errors = errors_of(one_app("env:", "  PW: first-s3cret", "  OK: x", "  PW: second-s3cret"))
    assert errors == [f'{FILE}:8:7: apps.web.env.PW: duplicate key "PW": it is also at line 6, column 7; keep one']


def test_a_duplicate_key_holding_a_newline_stays_on_one_line() -> None:
    errors = errors_of(one_app("env:", '  "A\\nB": x', '  "A\\nB": y'))
    assert errors == [
        f"{FILE}:7:7: apps.web.env['A\\nB']: duplicate key \"A\\nB\": it is also at line 6, column 7; keep one"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"ab\\0cd"', "the value holds a NUL character"),
        ('"ab\\ecd"', "the value holds the control character U+001B"),
        ('"ab\\x7fcd"', "the value holds the control character U+007F"),
        ('"ab\\rcd"', "the value holds the control character U+000D"),
    ],
)
def test_an_env_value_with_a_control_character_is_refused_without_showing_it(value: str, expected: str) -> None:
    assert errors_of(one_app(f"env: {{PW: {value}}}")) == [f"{FILE}:5:15: apps.web.env.PW: {expected}"]


def test_a_tab_or_a_newline_in_an_env_value_is_kept() -> None:
    assert load(one_app('env: {PW: "a\\tb"}')).apps["web"].env == {"PW": "a\tb"}
    assert load(one_app('env: {KEY: "line one\\nline two\\n"}')).apps["web"].env == {"KEY": "line one\nline two\n"}


def test_a_nul_in_an_argument_is_refused() -> None:
    assert errors_of(one_app('command: [/bin/x, "a\\0b"]')) == [
        f"{FILE}:5:14: apps.web.command: argument 1 holds a NUL character, which no program can receive"
    ]


def test_an_env_value_aliased_into_a_field_that_quotes_its_value_is_not_shown() -> None:
    text = one_app("env: {TOKEN: &t Not-An-Image}") + "  api:\n    image: *t\n    version: v1\n"
    assert errors_of(text) == [f"{FILE}:7:12: apps.api.image: <an env value> is not an image repository"]


def test_a_value_that_only_looks_like_an_env_value_is_still_quoted() -> None:
    errors = errors_of(one_app("env: {A: 10x}", "stop_timeout: 10x"))
    assert errors == [f"{FILE}:6:19: apps.web.stop_timeout: '10x' is not a duration: use 500ms, 30s, 10m or 1h"]


@pytest.mark.parametrize(
    ("written", "read"),
    [(".inf", ".inf"), ("-.inf", "-.inf"), (".nan", ".nan"), ("1e999", "1e999"), ("9" * 70, "9" * 70),
     ("2024-01-01 10:00:00", "2024-01-01 10:00:00"), ("0.5", "0.5"), ("1_000", "1000"), ("0x1F", "31")],
)  # fmt: skip
def test_a_number_python_cannot_hold_stays_the_text_that_was_written(written: str, read: str) -> None:
    data, _ = parse_yaml(one_app(f"env: {{A: {written}}}"), filename=FILE)
    assert _plain_types(data)
    assert load(one_app(f"env: {{A: {written}}}")).apps["web"].env == {"A": read}


def test_the_validator_refuses_an_infinite_float_it_is_given() -> None:
    data = {"apps": {"web": {"image": "a", "version": "v1", "env": {"A": float("inf"), "B": float("nan")}}}}
    with pytest.raises(InvalidDesiredState) as caught:
        load_desired(data, Positions(), filename=FILE)
    assert caught.value.errors == [
        f"{FILE}:1:1: apps.web.env.A: a number that is not finite (inf, nan): quote the text you mean",
        f"{FILE}:1:1: apps.web.env.B: a number that is not finite (inf, nan): quote the text you mean",
    ]


def test_yaml_1_1_booleans_are_read_as_the_file_declares() -> None:
    text = one_app("env: {A: yes, B: on}")
    assert load(text).apps["web"].env == {"A": "yes", "B": "on"}
    assert load("%YAML 1.1\n---\n" + text).apps["web"].env == {"A": "true", "B": "true"}


# -- issue 7: durations and ports have bounds -----------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "at_limit", "over", "expected"),
    [
        ("stop_timeout", "1h", "61m", "'61m' is longer than 1h, the most stop_timeout may be"),
        ("stop_timeout", "1h", "1000000000h", "'1000000000h' is longer than 1h, the most stop_timeout may be"),
        ("stable_after", "720h", "721h", "'721h' is longer than 720h, the most stable_after may be"),
        ("health.interval", "1h", "3601s", "'3601s' is longer than 1h, the most interval may be"),
        ("health.interval", "1ms", "0s", "'0s' is shorter than 1ms, the least interval may be"),
        ("health.timeout", "24h", "25h", "'25h' is longer than 24h, the most timeout may be"),
        ("health.healthy_for", "24h", "1441m", "'1441m' is longer than 24h, the most healthy_for may be"),
    ],
)
def test_every_duration_has_a_bound(field: str, at_limit: str, over: str, expected: str) -> None:
    def line(value: str) -> str:
        return f"health: {{{field.split('.')[1]}: {value}}}" if "." in field else f"{field}: {value}"

    load(one_app(line(at_limit)))
    [error] = errors_of(one_app(line(over)))
    assert error.endswith(f" apps.web.{field}: {expected}"), error


def test_a_duration_of_400_digits_is_refused_cleanly() -> None:
    assert errors_of(one_app(f"stop_timeout: {'9' * 400}h")) == [
        f"{FILE}:5:19: apps.web.stop_timeout: '{'9' * 60}…' (401 characters) is too long to be a duration"
    ]


@pytest.mark.parametrize("value", ["\u0661\u0660s", "1\u0660s"])  # Arabic-Indic digits: `\\d` would take them
def test_a_duration_takes_ascii_digits_only(value: str) -> None:
    assert errors_of(one_app(f"stop_timeout: {value}")) == [
        f"{FILE}:5:19: apps.web.stop_timeout: {value!r} is not a duration: use 500ms, 30s, 10m or 1h"
    ]


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("256.1.1.1:8080:80", "'256.1.1.1' is not an IP address (IPv4 parts are 0-255)"),
        ("1.2.3.999:8080:80", "'1.2.3.999' is not an IP address (IPv4 parts are 0-255)"),
        ("[1::2::3]:8080:80", "'[1::2::3]' is not an IP address (IPv4 parts are 0-255)"),
        ("\u0661\u0662:80", "'\u0661\u0662:80' is not [IP:]HOST:CONTAINER[/udp]"),
    ],
)
def test_a_port_with_a_bad_address_is_refused(port: str, expected: str) -> None:
    assert errors_of(one_app(f'ports: ["{port}"]')) == [f"{FILE}:5:13: apps.web.ports[0]: {expected}"]


def test_a_tcp_probe_port_out_of_range_is_refused() -> None:
    assert errors_of(one_app("health: {tcp: 'h:99999'}")) == [
        f"{FILE}:5:19: apps.web.health.tcp: port 99999 is out of range 1-65535"
    ]
