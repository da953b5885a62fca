"""The docker boundary: ``Engine.inspect`` and its ``Inspected`` record, NotFound apart from engine
errors, port bindings, and the one container swap (``deploy.swap.swap_in``) on a real engine.

Everything runs against the real engine and registry, except two tests: an engine cannot be made to
answer 500 on demand, so that answer is a real ``docker.errors.APIError`` raised by a stand-in API.
"""

from __future__ import annotations

import json
import time
from typing import Any

import docker.errors
import pytest
import requests
from docker.utils import convert_port_bindings
from docker.utils.ports import build_port_bindings

from reconciler.adapters.docker import (
    INSTANCE,
    LABEL,
    MANAGED,
    Engine,
    connect,
    inspected_from,
    port_bindings,
)
from reconciler.core.model import DEFAULT_HEALTH, Role, container_name
from reconciler.deploy.prober import Prober
from reconciler.deploy.swap import swap_in
from reconciler.errors import ContainerError, ImageError
from reconciler.ops.controls import resume, suspend
from reconciler.state.journal import BREAK_GLASS, SUSPENDED, Journal
from tests.support import AppNames, ImageFactory, Registry

# -- pure --------------------------------------------------------------------------------------------


def inspect_json(**state: Any) -> dict[str, Any]:
    return {
        "Id": "c0ffee",
        "Name": "/web",
        "Image": "sha256:" + "1" * 64,
        "RestartCount": 2,
        "State": {
            "Running": True,
            "Restarting": False,
            "Paused": False,
            "ExitCode": 0,
            "Error": "",
            "StartedAt": "2024-01-01T10:00:00.123456789Z",
            "Health": {"Status": "healthy"},
            **state,
        },
        "Config": {"Image": "team/web:v1", "Labels": {MANAGED: "true", INSTANCE: "blue"}, "StopTimeout": 3},
    }


def test_inspected_reads_dockers_nanosecond_start_time_and_its_fields() -> None:
    found = inspected_from(inspect_json(), instance="blue")
    assert (found.id, found.name, found.image, found.restart_count, found.health) == (
        "c0ffee", "web", "team/web:v1", 2, "healthy",
    )  # fmt: skip
    assert found.running and not found.restarting and not found.paused
    assert found.started_at == pytest.approx(1704103200.123456)
    assert found.ours and found.stop_timeout == 3.0


def test_inspected_of_a_container_that_never_started_or_is_not_ours() -> None:
    never = inspect_json(Running=False, StartedAt="0001-01-01T00:00:00Z", ExitCode=127, Error="no such file")
    found = inspected_from(never, instance="green")
    assert found.started_at == 0.0 and not found.running
    assert (found.exit_code, found.error) == (127, "no such file")
    assert not found.ours  # another instance's
    del never["Config"]["StopTimeout"]
    del never["State"]["Health"]
    found = inspected_from(never)
    assert found.stop_timeout == 10.0 and found.health == ""


@pytest.mark.parametrize(
    "ports",
    [
        ["8000:8000"],
        ["127.0.0.1:8080:80"],
        ["[::1]:8080:80"],
        ["[::1]:8080:80/udp", "53:53/udp"],
        ["127.0.0.1:8080:80", "127.0.0.1:8081:80", "9090:80/udp"],
        ["8000"],
    ],
)
def test_port_bindings_are_the_sdks_for_every_form_it_reads(ports: list[str]) -> None:
    assert convert_port_bindings(port_bindings(ports)) == convert_port_bindings(build_port_bindings(ports))


def test_port_bindings_also_read_an_address_without_a_host_port() -> None:
    with pytest.raises(ValueError):
        build_port_bindings(["127.0.0.1:8000"])  # why ours stays
    assert convert_port_bindings(port_bindings(["127.0.0.1:8000", "[::1]:8000"])) == {
        "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}, {"HostIp": "::1", "HostPort": ""}]
    }


class _Api:
    """Stands in for the SDK's APIClient: every inspect gets the engine's 500."""

    def inspect_container(self, container: str) -> Any:
        response = requests.Response()
        response.status_code = 500
        raise docker.errors.APIError("server error", response=response, explanation="lock timeout")


class _Client:
    api = _Api()


def test_an_engine_error_on_inspect_is_an_error_not_a_gone_container() -> None:
    with pytest.raises(ContainerError, match="lock timeout"):
        Engine(_Client(), "unix:///nowhere").inspect("web")


def test_a_gate_sample_of_a_refused_inspect_is_a_stopped_container_with_the_engines_reason(tmp_path: Any) -> None:
    sample = Prober(Engine(_Client(), "unix:///nowhere")).sample("web", DEFAULT_HEALTH)
    assert not sample.running
    assert "lock timeout" in sample.detail


def test_suspend_and_resume_set_and_clear_the_flags(tmp_path: Any) -> None:
    suspend(state_dir=tmp_path, reason="incident 42")
    journal = Journal(tmp_path)
    try:
        assert journal.flag(SUSPENDED) == "incident 42"
        journal.set_flag(f"{BREAK_GLASS}web", "v1")
    finally:
        journal.close()
    resume(state_dir=tmp_path)
    journal = Journal(tmp_path)
    try:
        assert journal.flag(SUSPENDED) is None and journal.flags(BREAK_GLASS) == {}
    finally:
        journal.close()


# -- on the engine -----------------------------------------------------------------------------------


@pytest.fixture
def engine(docker_client: Any, run_prefix: str) -> Engine:
    return connect(instance=f"{run_prefix}-boundary")


@pytest.fixture
def image(images: ImageFactory, run_prefix: str) -> str:
    return images.build(f"{run_prefix}-boundary", "v1")


def make(
    client: Any, engine: Engine, image: str, name: str, *, app: str, started: bool, command: list[str] | None = None
) -> str:
    """A container labelled as ours (for this engine's instance), stopped in one second. A ``command``
    is run without docker's init, so that a missing program fails the start itself."""
    labels = {
        MANAGED: "true",
        INSTANCE: engine.instance,
        f"{LABEL}.app": app,
        f"{LABEL}.version": name.rpartition(".")[2] if "." in name else "current",
        f"{LABEL}.fingerprint": json.dumps({"stop_timeout": 1.0}),
    }
    host_config = client.api.create_host_config(init=command is None)
    made = client.api.create_container(
        image, command=command, name=name, labels=labels, host_config=host_config, stop_timeout=1
    )
    if started:
        client.api.start(made["Id"])
    return str(made["Id"])


def where(engine: Engine, container_id: str) -> tuple[str, bool]:
    found = engine.inspect(container_id)
    assert found is not None
    return found.name, found.running


def test_inspect_of_a_running_container_and_of_none(engine: Engine, docker_client: Any, image: str,
                                                    app_names: AppNames) -> None:  # fmt: skip
    app = app_names("inspect")
    before = time.time()
    made = make(docker_client, engine, image, app, app=app, started=True)
    found = engine.inspect(app)
    assert found is not None
    assert (found.id, found.name, found.running, found.ours, found.image) == (made, app, True, True, image)
    assert before - 2 <= found.started_at <= time.time() + 2
    assert found.stop_timeout == 1.0
    assert engine.started_at(made) == found.started_at
    assert engine.inspect(app + ".gone") is None
    assert engine.started_at(app + ".gone") == 0.0


def test_removing_a_container_that_is_gone_is_no_error(engine: Engine, app_names: AppNames) -> None:
    engine.remove(app_names("gone") + ".never", "never")


def test_a_tag_missing_from_its_registry_is_an_image_error(engine: Engine, registry: Registry, run_prefix: str) -> None:
    with pytest.raises(ImageError, match="does not exist in its registry"):
        engine.registry_digest(f"{registry.host}/{run_prefix}-boundary-nothing:v9")


def test_swap_in_keeps_the_running_one_as_prev_and_drops_the_older_one(
    engine: Engine, docker_client: Any, image: str, app_names: AppNames
) -> None:
    app = app_names("swap")
    prev, nxt = container_name(app, Role.PREVIOUS), container_name(app, Role.NEXT)
    older = make(docker_client, engine, image, prev, app=app, started=False)
    running = make(docker_client, engine, image, app, app=app, started=True)
    new = make(docker_client, engine, image, nxt, app=app, started=False)
    observed = engine.observe()
    current, kept = observed.named(app), observed.named(prev)
    assert current is not None and current.managed and kept is not None and kept.managed
    steps: list[str] = []
    swap_in(engine, app, new, current, incoming_name=nxt, keep_as=prev, drop=kept, step=steps.append)
    assert steps == ["stop-old", "keep-old", "rename-new", "start-new"]
    assert where(engine, new) == (app, True)
    assert where(engine, running) == (prev, False)
    assert engine.inspect(older) is None


def test_swap_in_of_the_kept_one_trades_places_with_the_running_one(
    engine: Engine, docker_client: Any, image: str, app_names: AppNames
) -> None:
    app = app_names("glass")
    prev = container_name(app, Role.PREVIOUS)
    kept = make(docker_client, engine, image, prev, app=app, started=False)
    running = make(docker_client, engine, image, app, app=app, started=True)
    current = engine.observe().named(app)
    swap_in(engine, app, kept, current, incoming_name=prev, keep_as=prev, undo=True)
    assert where(engine, kept) == (app, True)
    assert where(engine, running) == (prev, False)


def test_a_swap_that_fails_with_undo_puts_every_container_back(
    engine: Engine, docker_client: Any, image: str, app_names: AppNames
) -> None:
    app = app_names("undo")
    prev = container_name(app, Role.PREVIOUS)
    broken = make(docker_client, engine, image, prev, app=app, started=False, command=["/no/such/program"])
    running = make(docker_client, engine, image, app, app=app, started=True)
    current = engine.observe().named(app)
    with pytest.raises(ContainerError, match="start"):
        swap_in(engine, app, broken, current, incoming_name=prev, keep_as=prev, undo=True)
    assert where(engine, running) == (app, True)
    assert where(engine, broken) == (prev, False)
