"""The checked-in JSON Schema is what the models generate, and the repo's own desired-state.yaml is valid."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core import model, schema
from reconciler.core.desired import load_desired
from reconciler.core.fields import DURATION_LIMITS, DURATION_PATTERN, parse_duration

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / schema.SCHEMA_PATH
DESIRED_FILE = ROOT / "desired-state.yaml"
REGENERATE = "reconcile schema > schemas/desired-state.schema.json"


def checked_in_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return data


def test_checked_in_schema_is_what_the_models_generate() -> None:
    rendered = schema.render()
    assert SCHEMA_FILE.read_bytes() == rendered.encode("utf-8"), (
        f"{schema.SCHEMA_PATH} is out of date with reconciler/core/model.py; regenerate it with: {REGENERATE}"
    )


def test_render_is_deterministic_json_with_a_trailing_newline() -> None:
    first, second = schema.render(), schema.render()
    assert first == second
    assert first.endswith("}\n") and not first.endswith("\n\n")
    data = json.loads(first)
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert data["$id"].endswith("/desired-state.schema.json")
    assert json.dumps(data, indent=2, sort_keys=True) + "\n" == first


def test_the_schema_is_as_strict_as_the_models() -> None:
    data = checked_in_schema()
    app, probe = data["$defs"]["AppSpec"], data["$defs"]["HealthSpec"]
    route, proxy, tls = (data["$defs"][name] for name in ("RouteSpec", "ProxySpec", "TlsSpec"))
    assert data["required"] == ["apps"]
    for node in (data, app, probe, route, proxy, tls):
        assert node["additionalProperties"] is False
    assert set(data["properties"]) == {"apps", "proxy", "hosts", "networks", "previews"}
    assert set(route["properties"]) == {"hosts", "path_prefix", "port", "drain", "keep_warm", "shared_volumes"}
    assert route["required"] == ["port"]
    assert set(proxy["properties"]) == {"listen", "image", "version", "tls"}
    assert set(tls["properties"]) == {"certs", "ports", "acme", "redirect", "hsts"}
    assert set(data["$defs"]["AcmeSpec"]["properties"]) == {"email", "directory", "ca_file"}
    assert data["$defs"]["AcmeSpec"]["required"] == ["email"]
    assert app["required"] == ["image", "version"]
    assert set(app["properties"]) == {
        "image",
        "version",
        "ports",
        "env",
        "env_file",
        "volumes",
        "command",
        "restart",
        "init",
        "stop_timeout",
        "health",
        "route",
        "stable_after",
        "on",
        "canary",
        "replicas",
        "update",
        "rollout",
        *model.CONTAINER_ONLY,
        "depends_on",
        "release",
    }
    assert set(probe["properties"]) == {"http", "tcp", "exec", "docker", "interval", "timeout", "healthy_for"}
    rollout, analysis = data["$defs"]["RolloutSpec"], data["$defs"]["AnalysisSpec"]
    assert rollout["additionalProperties"] is False and analysis["additionalProperties"] is False
    assert set(rollout["properties"]) == {"steps", "analysis", "sticky"} and rollout["required"] == ["steps"]
    assert set(analysis["properties"]) == {"max_5xx_ratio", "max_avg_ms", "min_requests", "on_no_traffic"}
    durations = [app["properties"][k] for k in ("stop_timeout", "stable_after")]
    durations += [probe["properties"][k] for k in ("interval", "timeout", "healthy_for")]
    assert all(d["type"] == "string" and d["pattern"] == DURATION_PATTERN for d in durations)


def test_every_duration_in_the_schema_states_its_bounds() -> None:
    # A JSON Schema pattern cannot say "at most 1h" for a string: the description says it, as the
    # models enforce it (an editor shows it beside the field).
    data = checked_in_schema()
    app, probe = data["$defs"]["AppSpec"]["properties"], data["$defs"]["HealthSpec"]["properties"]
    route, update = data["$defs"]["RouteSpec"]["properties"], data["$defs"]["UpdateSpec"]["properties"]
    release = data["$defs"]["ReleaseSpec"]["properties"]
    step = data["$defs"]["RolloutStep"]["properties"]
    described = {
        name: (
            release["timeout"]
            if name == "release"
            else app.get(name) or probe.get(name) or route.get(name) or step.get(name) or update[name]
        )["description"]
        for name in DURATION_LIMITS
    }
    assert described == {
        "stop_timeout": "SIGTERM, then SIGKILL after this long; at most 1h",
        "interval": "time between probes; 1ms to 1h",
        "timeout": "not healthy by then: the deploy failed; at most 24h",
        "healthy_for": "must stay healthy this long to count as good; at most 24h",
        "stable_after": "healthy this long after a deploy: promoted to stable; at most 720h",
        "drain": "in-flight requests of the old release finish; at most 1h",
        "keep_warm": "the previous release stays running, out of rotation, this long (a rollback is then a switch);"
        " default: the app's stable_after; 0s stops it after drain; at most 720h",
        "delay": "between batches; at most 1h",
        "release": "killed past this: the deploy failed; 1s to 24h",
        "pause": "how long the step lasts before its traffic is judged; 1s to 24h",
    }


def _properties(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield f"{path}.{key}", value
        for key, value in node.items():
            yield from _properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _properties(value, f"{path}[{index}]")


def test_schema_defaults_are_values_the_file_accepts() -> None:
    # Editors offer a property's "default" when completing; a duration default of 10.0 would be written
    # as `stop_timeout: 10.0`, which the tool refuses ("a duration needs a unit").
    wrong = []
    for where, prop in _properties(checked_in_schema()):
        if "pattern" in prop and "default" in prop:
            default = prop["default"]
            if not (isinstance(default, str) and re.match(prop["pattern"], default)):
                wrong.append(f"{where}: default {default!r} does not match {prop['pattern']}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "text", ["500ms", "30s", "10m", "1h", "1.5h", "0s", "10 s", "10", "1d", "s", "\u0661s", "1.s", ".5s"]
)
def test_schema_duration_pattern_and_the_parser_agree(text: str) -> None:
    try:
        parse_duration(text)
    except ValueError:
        accepted = False
    else:
        accepted = True
    assert bool(re.match(DURATION_PATTERN, text)) == accepted, (
        f"{text!r}: the tool {'accepts' if accepted else 'refuses'} it, the schema does the opposite"
    )


def test_repo_desired_state_loads() -> None:
    text = DESIRED_FILE.read_text(encoding="utf-8")
    data, positions = parse_yaml(text, filename="desired-state.yaml")
    desired = load_desired(data, positions, filename="desired-state.yaml")
    assert list(desired.apps) == ["demo"]
    demo = desired.apps["demo"]
    assert demo.image == "reconciler-demo/web"
    assert demo.gate.probe == "http"
    assert text.startswith("# yaml-language-server: $schema=schemas/desired-state.schema.json")


def test_repo_desired_state_validates_against_the_json_schema() -> None:
    # `jsonschema` is not a dev dependency yet; once it is, this runs.
    jsonschema = pytest.importorskip("jsonschema")
    data, _ = parse_yaml(DESIRED_FILE.read_text(encoding="utf-8"), filename="desired-state.yaml")
    validator = jsonschema.Draft202012Validator(checked_in_schema())
    validator.check_schema(checked_in_schema())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, "\n".join(errors)
