"""Pull mode through ``stable``: the canary host promotes and publishes, the rest of the fleet follows.

Two more real engines (``tests/support/engines.py``) are two hosts of one committed file; a real
registry on loopback holds the images; each host runs its own ``reconcile agent --host NAME`` on its
engine, against the real bare repository. The app is ``version: stable`` with ``canary: {on: [canary],
version: v2}``: the canary host runs v2 and, healthy for ``stable_after``, promotes it and pushes
``IMAGE:stable`` (``--publish-stable``); the follower runs the registry's ``stable`` (v1 at first) and
moves to v2 at its next pass, with no new commit. Run apart from the parallel suite (``scripts/test``):
it starts engines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.support import ImageFactory
from tests.support.agent import AgentProcess, agent_args
from tests.support.cli import run_cli
from tests.support.engine import AppNames
from tests.support.engines import ExtraEngine
from tests.support.gitrepo import GitRemote, run_git
from tests.support.net import http_get
from tests.support.registry import Registry
from tests.support.state import show

pytestmark = [pytest.mark.docker, pytest.mark.apart]

FILE = "desired-state.yaml"


def fleet_file(canary: ExtraEngine, follower: ExtraEngine, name: str, image: str) -> str:
    # Each host publishes port 8000 on a loopback port of its engine's choosing (two engines share this
    # machine); so the gate is asked inside the container, as a real host's would be of its own port.
    return f"""\
hosts:
  canary: {{engine: "{canary.host}", labels: {{role: web}}}}
  follower: {{engine: "{follower.host}", labels: {{role: web}}}}
apps:
  {name}:
    image: {image}
    version: stable
    on: {{role: web}}
    ports: ["127.0.0.1:8000"]
    init: true
    stop_timeout: 1s
    health:
      exec: [wget, -q, -O, /dev/null, "http://127.0.0.1:8000/health"]
      interval: 200ms
      timeout: 10s
      healthy_for: 300ms
    stable_after: 2s
    canary:
      on: [canary]
      version: v2
"""


def serves(engine: ExtraEngine, app: str) -> str:
    """What ``app``'s container on ``engine`` answers at / on its published port ("" when it does not)."""
    try:
        port = engine.client.api.port(app, 8000)[0]["HostPort"]
        status, text = http_get(f"http://127.0.0.1:{port}/", timeout=1.0)
    except Exception:
        return ""
    return text if status == 200 else ""


def wait_serves(engine: ExtraEngine, app: str, expected: str, agent: AgentProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while serves(engine, app) != expected:
        assert time.monotonic() < deadline, f"{engine.name}: not {expected!r} within {timeout}s\n{agent.log()}"
        time.sleep(0.1)


def image_digests(engine: ExtraEngine, app: str) -> tuple[str, list[str]]:
    """The image id of ``app``'s container on ``engine``, and the registry digests that image carries there."""
    image_id = engine.client.api.inspect_container(app)["Image"]
    return image_id, list(engine.client.api.inspect_image(image_id).get("RepoDigests") or [])


def test_the_fleet_follows_what_the_canary_promotes_and_publishes(
    engines: list[ExtraEngine],
    registry: Registry,
    images: ImageFactory,
    app_names: AppNames,
    tmp_path: Path,
) -> None:
    canary, follower = engines[:2]
    name = app_names("canary")
    image = f"{registry.host}/{name}"
    v1 = images.build(name, "v1")
    registry.push(v1, name, "v1")
    registry.push(v1, name, "stable")  # what an earlier promotion published
    registry.push(images.build(name, "v2"), name, "v2")
    v1_digest, v2_digest = registry.manifest_digest(name, "v1"), registry.manifest_digest(name, "v2")
    assert registry.manifest_digest(name, "stable") == v1_digest != v2_digest
    remote = GitRemote(tmp_path / "git")
    remote.commit_file(FILE, fleet_file(canary, follower, name, image), "web follows stable; v2 is the canary")
    repo = remote.url

    # Before any agent: the follower's engine has no image at all; stable is the registry's, to pull.
    before = run_cli("--repo", repo, "--state-dir", tmp_path / "look", "--host", "follower",
                     "--docker-host", follower.host, "--dry-run")  # fmt: skip
    assert before.returncode == 2, show(before)
    assert f"stable {image}:stable (to pull)" in before.stdout, show(before)

    agents: list[AgentProcess] = []

    def start(host: str, engine: ExtraEngine, *extra: str) -> AgentProcess:
        args = agent_args(repo, tmp_path / host, interval="1s",
                          extra=("--host", host, "--docker-host", engine.host, *extra))  # fmt: skip
        agent = AgentProcess(args, state_dir=tmp_path / host)
        agents.append(agent)
        agent.start()
        agent.wait_for("agent.started", timeout=30)
        return agent

    try:
        leader = start("canary", canary, "--publish-stable")
        tail = start("follower", follower)

        # The canary host runs the candidate; the follower the registry's stable, v1.
        leader.wait_for("deploy.succeeded", app=name, timeout=60)
        wait_serves(canary, name, "v2", leader, timeout=10)
        tail.wait_for("deploy.succeeded", app=name, timeout=60)
        wait_serves(follower, name, "v1", tail, timeout=10)
        assert f"{image}@{v1_digest}" in image_digests(follower, name)[1]

        # Healthy for stable_after on the canary host: promoted, and IMAGE:stable pushed to the registry.
        following = tail.mark()
        promoted = leader.wait_for("stable.promoted", "v2", app=name, timeout=30)
        assert f"{name} v2 is stable ({image}:stable)" in promoted.raw, leader.log()
        time.sleep(0.5)  # what could not be published is logged right after the promotion
        assert not leader.events("stable.unpublished"), leader.log()
        assert registry.manifest_digest(name, "stable") == v2_digest

        # The follower's next pass pulls the new stable and deploys it, gated, without any commit.
        moved = tail.wait_for("deploy.succeeded", app=name, since=following, timeout=30)
        assert moved.at - promoted.at < 10, tail.log()
        wait_serves(follower, name, "v2", tail, timeout=10)
        follower_image, follower_digests = image_digests(follower, name)
        assert follower_image == image_digests(canary, name)[0]
        assert f"{image}@{v2_digest}" in follower_digests
        assert run_git("--git-dir", repo, "rev-list", "--count", "main") == "1"
        assert not tail.events("deploy.failed") and not tail.events("deploy.rolled-back"), tail.log()
        assert not tail.events("stable.promoted"), tail.log()  # only the canary decides what is stable

        # The fleet seen from one place: each host's version, both on the one image the registry holds.
        status = run_cli("--repo", repo, "--state-dir", tmp_path / "look", "status", "--all-hosts", "-o", "json")
        assert status.returncode == 0, show(status)
        running = {host["host"]: host["apps"] for host in json.loads(status.stdout)["hosts"]}
        assert [(a["app"], a["version"], a["digest"]) for a in running["canary"]] == [(name, "v2", v2_digest)]
        assert [(a["app"], a["version"], a["digest"]) for a in running["follower"]] == [(name, "stable", v2_digest)]

        # Stable published again (back to v1, by hand): while the follower's agent is away, a preview of
        # the fleet shows it would replace what it runs with the registry's stable; the canary is in line.
        tail.stop()
        registry.push(v1, name, "stable")
        preview = run_cli("--repo", repo, "--state-dir", tmp_path / "look", "--dry-run", "--all-hosts", "-o", "json")
        assert preview.returncode == 2, show(preview)
        plans = {host["host"]: host["plan"] for host in json.loads(preview.stdout)["hosts"]}
        assert plans["canary"]["in_sync"], plans
        assert [a["action"] for a in plans["follower"]["actions"]] == ["replace"], plans
        text = run_cli("--repo", repo, "--state-dir", tmp_path / "look", "--host", "follower",
                       "--docker-host", follower.host, "--dry-run")  # fmt: skip
        assert text.returncode == 2 and f"-> stable {image}:stable (to pull)" in text.stdout, show(text)
    finally:
        for agent in agents:
            agent.stop(timeout=20)
            print(agent.log())
    for agent in agents:
        agent.assert_clean_log()
