"""The agent image (issue 13): the repository's Dockerfile, built here, runs the agent against this engine.

- The base is a Debian bookworm made here with debootstrap (tests/support/baseimage.py: no image can
  be pulled on these machines), once per machine. The build context is the checkout's files with the
  repository's own .dockerignore, a wheelhouse of the dependencies (these build containers cannot
  verify PyPI's TLS certificate), and secrets planted where a careless build would pick them up: a
  deploy key in `.ssh/` and inside the package folder, a registry login in `.docker/config.json` and
  `.env`, a journal in `state/`. Every layer of the image (`docker save`), its history and its
  config are then searched for them.
- The agent runs in a container as the README's compose example runs it: the engine's socket
  mounted, the state directory a named volume, host networking (the app's health probe targets a
  published port on 127.0.0.1), the deploy repository (a bare repository of the test) mounted at
  its own path, configured by RECONCILE_* variables, under the test's own instance. It deploys a
  good release, rolls a broken one back, reaps an orphan as PID 1 should, exits 0 on `docker stop`
  leaving the app running, and a new container on the same volume still has the journal: it holds
  the failed release back rather than trying it again, and `reconcile history` shows both deploys.
- One test builds the image and runs it all: under pytest-xdist two tests sharing a module fixture
  would each build it on their own worker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from ruamel.yaml import YAML

from reconciler.version import __version__
from tests.support import RUN_LABEL
from tests.support.agent import LogLine, World, wait_body
from tests.support.baseimage import (
    BaseImageError,
    add_wheelhouse,
    base_image,
    build_agent_image,
    copy_sources,
    image_size,
    source_commit,
)
from tests.support.cli import test_instance as instance_of_this_test

ROOT = Path(__file__).resolve().parent.parent
STATE = "/var/lib/reconciler"
MAX_ADDED_BYTES = 80_000_000  # what the Dockerfile may add over its base (issue 13)


# -- the Dockerfile, the .dockerignore and the compose example, as text ---------------------------------------------


def test_the_dockerfile_takes_its_base_as_an_argument_and_runs_the_agent_under_an_init() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()]
    assert "ARG BASE=python:3.11-slim" in lines
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${BASE} AS build", "FROM ${BASE}"]
    assert 'ENTRYPOINT ["tini", "--", "reconcile"]' in lines and 'CMD ["agent"]' in lines
    assert f'VOLUME ["{STATE}"]' in lines


def test_the_dockerignore_lets_in_only_the_sources() -> None:
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*", "an allow-list: whatever lies in the checkout stays out unless named"
    assert {"**/.ssh", "**/*.key", "**/.env", "**/.docker"} <= set(rules)


def test_the_compose_example_mounts_the_socket_keeps_state_at_its_host_path_and_reads_the_key_from_a_secret() -> None:
    compose = YAML(typ="safe").load((ROOT / "examples" / "agent" / "compose.yaml").read_text(encoding="utf-8"))
    agent = compose["services"]["agent"]
    assert agent["network_mode"] == "host"
    assert agent["restart"] == "unless-stopped"
    assert "/var/run/docker.sock:/var/run/docker.sock" in agent["volumes"]
    # The host's folder at the same path: the engine bind-mounts SOPS file secrets from host paths under it.
    assert f"{STATE}:{STATE}" in agent["volumes"]
    assert agent["secrets"] == ["deploy_key"]
    assert compose["secrets"]["deploy_key"] == {"file": "./deploy_key"}
    assert "/run/secrets/deploy_key" in agent["environment"]["GIT_SSH_COMMAND"]
    assert agent["environment"]["RECONCILE_REPO"].startswith("git@")
    assert agent["stop_grace_period"] == "60s"


# -- the image, built and run -----------------------------------------------------------------------------------------


@dataclass
class Planted:
    """Secrets put in the build context; none may be found in the image."""

    token: str = field(default_factory=lambda: "planted-" + secrets.token_hex(16))

    def plant(self, context: Path) -> None:
        key = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{self.token}\n-----END OPENSSH PRIVATE KEY-----\n"
        login = base64.b64encode(f"deploy:{self.token}".encode()).decode()
        files = {
            ".ssh/id_ed25519": key,
            "deploy_key": key,
            f"reconciler/{self.token}.key": key,
            "reconciler/adapters/.ssh/id_rsa": key,
            ".docker/config.json": json.dumps({"auths": {"registry.example.com": {"auth": login}}}),
            ".env": f"REGISTRY_PASSWORD={self.token}\n",
            "reconciler/.env": f"REGISTRY_PASSWORD={self.token}\n",
            "state/journal.db": f"SQLite format 3\0{self.token}",
        }
        for name, text in files.items():
            path = context / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o600)

    def found_in_layers(self, client: Any, ref: str, scratch: Path) -> list[str]:
        """Every place in `ref`'s layers (each file's name and bytes), history and config that holds the token."""
        needle = self.token.encode()
        saved = scratch / "image.tar"
        with saved.open("wb") as out:
            for chunk in client.api.get_image(ref):
                out.write(chunk)
        found: list[str] = []
        with tarfile.open(saved) as image:
            for member in image.getmembers():
                if not member.isfile():
                    continue
                blob = image.extractfile(member)
                assert blob is not None
                if member.name.endswith("layer.tar"):
                    with tarfile.open(fileobj=blob) as layer:
                        for entry in layer:
                            if needle in entry.name.encode():
                                found.append(f"{member.name}: {entry.name}")
                            elif entry.isfile():
                                content = layer.extractfile(entry)
                                if content is not None and needle in content.read():
                                    found.append(f"{member.name}: {entry.name}")
                elif needle in blob.read():
                    found.append(member.name)  # the image's config, or the manifest
        history = json.dumps(client.api.history(ref)) + json.dumps(client.api.inspect_image(ref))
        if self.token in history:
            found.append("docker history / inspect")
        return found


def socket_path() -> str:
    """The engine's unix socket on this host, to mount into the agent's container."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return "/var/run/docker.sock"
    if not host.startswith("unix://"):
        pytest.fail(f"DOCKER_HOST={host}: the agent container needs the engine's unix socket to mount", pytrace=False)
    return host.removeprefix("unix://")


@dataclass(frozen=True)
class Built:
    image: str
    base: str
    planted: Planted


@pytest.fixture
def built(docker_client: Any, run_prefix: str, tmp_path: Path) -> Iterator[Built]:
    """The agent image of this checkout on the test base, secrets planted in its context; removed after the test."""
    try:
        base = base_image(docker_client)
    except BaseImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    planted = Planted()
    context = copy_sources(tmp_path / "context")
    add_wheelhouse(context)
    planted.plant(context)
    refs = build_agent_image(
        docker_client,
        context,
        f"{run_prefix}/reconciler-agent:test",
        base=base,
        commit=source_commit(),
        labels={RUN_LABEL: run_prefix},
    )
    try:
        yield Built(image=refs[-1], base=base, planted=planted)
    finally:
        for ref in reversed(refs):
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_image(ref, force=True)


class AgentContainer:
    """`docker run` of the agent image, as examples/agent/compose.yaml runs it; its log as `LogLine`s."""

    def __init__(self, client: Any, image: str, name: str, *, prefix: str, volume: str, repo: str) -> None:
        self.client = client
        self.name = name
        self.container = client.containers.run(
            image,
            name=name,
            detach=True,
            network_mode="host",
            environment={
                "RECONCILE_REPO": repo,
                "RECONCILE_BRANCH": "main",
                "RECONCILE_INTERVAL": "60s",
                "RECONCILE_INSTANCE": instance_of_this_test(),
            },
            volumes={
                socket_path(): {"bind": "/var/run/docker.sock", "mode": "rw"},
                volume: {"bind": STATE, "mode": "rw"},
                repo: {"bind": repo, "mode": "rw"},
            },
            labels={RUN_LABEL: prefix},
        )

    def lines(self) -> list[LogLine]:
        raw = self.client.api.logs(self.name, stdout=False, stderr=True).decode(errors="replace")
        return [LogLine.parse(line) for line in raw.splitlines()]

    def log(self) -> str:
        return str(self.client.api.logs(self.name).decode(errors="replace"))

    def mark(self) -> int:
        """A position in the log, to wait only for what comes after it."""
        return len(self.lines())

    def wait_for(self, event: str, *words: str, app: str | None = None, since: int = 0, timeout: float = 30) -> LogLine:
        """The first line of `event` (about `app`, with `words`) at or after `since`; waits up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines()[since:]:
                if line.event == event and app in (None, line.app) and line.mentions(*words):
                    return line
            state = self.client.api.inspect_container(self.name)["State"]
            assert state["Running"], f"the agent's container exited ({state['ExitCode']}) before {event}\n{self.log()}"
            assert time.monotonic() < deadline, f"no {event} {words} within {timeout}s\n{self.log()}"
            time.sleep(0.1)

    def exec(self, *argv: str) -> tuple[int, str]:
        code, out = self.container.exec_run(list(argv), demux=False)
        return int(code), out.decode(errors="replace")

    def stop(self) -> tuple[int, float]:
        """`docker stop`: the exit code, and how long it took."""
        started = time.monotonic()
        self.client.api.stop(self.name, timeout=30)
        took = time.monotonic() - started
        return int(self.client.api.inspect_container(self.name)["State"]["ExitCode"]), took


@pytest.fixture
def agents(world: World) -> Iterator[list[AgentContainer]]:
    """The agent containers a test starts; removed before `world` removes the apps' containers (they would heal)."""
    started: list[AgentContainer] = []
    try:
        yield started
    finally:
        for agent in started:
            with contextlib.suppress(docker.errors.NotFound):
                world.client.api.remove_container(agent.name, force=True)


def running(client: Any, name: str) -> bool:
    return bool(client.api.inspect_container(name)["State"]["Running"])


def run_once(client: Any, image: str, prefix: str, *argv: str) -> tuple[int, str]:
    """`docker run --rm IMAGE ARGV`: the exit code and what it printed."""
    container = client.containers.run(image, list(argv), detach=True, labels={RUN_LABEL: prefix})
    try:
        code = int(container.wait(timeout=60)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


def test_the_agent_image_deploys_rolls_back_stops_cleanly_and_keeps_its_journal(
    built: Built, world: World, agents: list[AgentContainer], tmp_path: Path
) -> None:
    client = world.client
    image = built.image

    # Nothing planted in the build context reached a layer, the history or the config.
    found = built.planted.found_in_layers(client, image, tmp_path)
    assert not found, f"a secret planted in the build context is in the image: {found}"
    added = image_size(client, image) - image_size(client, built.base)
    assert added <= MAX_ADDED_BYTES, f"the Dockerfile adds {added / 1e6:.1f} MB over its base"

    web = world.app("web", tags=("v1",))
    world.images.build(web.name, "broken", healthy=False)
    first = world.commit_apps("v1")
    name = world.names("agent")
    volume = f"{name}-state"  # removed with the agent's name by app_names

    commit = source_commit()
    code, out = run_once(client, image, world.names.prefix, "--version")
    short = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    assert code == 0 and out.strip() == f"reconcile {__version__} (commit {short})", out

    agent = AgentContainer(client, image, name, prefix=world.names.prefix, volume=volume, repo=world.repo)
    agents.append(agent)
    agent.wait_for("agent.started", f"following refs/heads/main of {world.repo}", timeout=20)
    agent.wait_for("deploy.succeeded", "v1", app=web.name, timeout=30)
    wait_body(web.port, "v1", 10)

    # A broken release (its /health answers 404) is rolled back to v1 by the agent in the container.
    mark = agent.mark()
    broken = world.commit_apps("broken", {web.name: "broken"})
    rolled = agent.wait_for("deploy.rolled-back", app=web.name, since=mark, timeout=40)
    assert rolled.commit == broken[:8] and "broken" in rolled.message, rolled.raw
    wait_body(web.port, "v1", 10)

    # PID 1 reaps what is orphaned in the container (a detached `git gc` would be): no zombie stays.
    code, out = agent.exec("sh", "-c", "sleep 0.2 & exit 0")
    assert code == 0, out
    time.sleep(1.0)
    code, out = agent.exec("sh", "-c", "grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status || true")
    assert out.strip() == "", f"zombies in the agent's container: {out}"

    # `docker stop`: exit 0, promptly, and the app keeps running.
    code, took = agent.stop()
    assert code == 0, agent.log()
    assert took < 10, f"docker stop took {took:.1f}s: SIGTERM did not reach the agent\n{agent.log()}"
    assert agent.lines()[-1].event == "agent.stopped", agent.log()
    assert running(client, web.name)
    wait_body(web.port, "v1", 2)

    # A new container on the same volume: the journal is still there.
    client.api.remove_container(name)
    again = AgentContainer(client, image, name, prefix=world.names.prefix, volume=volume, repo=world.repo)
    agents.append(again)
    again.wait_for("agent.started", timeout=20)
    held = again.wait_for("deploy.held", app=web.name, timeout=20)
    assert "broken" in held.message, held.raw
    code, out = again.exec("reconcile", "history", "--app", web.name, "-o", "json")
    assert code == 0, out
    rows = [(row["revision"][:8], row["to_version"], row["result"]) for row in json.loads(out)]
    assert rows == [(broken[:8], "broken", "rolled-back"), (first[:8], "v1", "succeeded")], rows
    assert not [line for line in again.lines() if line.event.startswith("deploy.") and line.event != "deploy.held"]
    code, _ = again.stop()
    assert code == 0, again.log()
    wait_body(web.port, "v1", 2)
