"""Replicated apps (``replicas:``) as Swarm services, on a real two-node swarm (``tests/support/swarm.py``).

A manager and a worker, each a ``dockerd`` in a network namespace of its own, joined over veth pairs;
the images are loaded on both nodes; each task publishes its port in host mode on its node, reached
from here at the node's address. The real CLI and agent drive the manager through its socket
(``--docker-host``), reading a real bare repository. Covered: create, dry-run drift, scale, a good and
a bad rolling update (put back to the spec before), prune, a conflict with a service that is not ours
until it is adopted, a commit of two services that goes back whole when one fails, a worker that
stops mid-rollout (the gate names it; status shows the node down), a rollout cut short by a crash, a
change made by hand to fields of the file (drift, put back), promote / history / rollback to stable,
and a routed service of 4 replicas behind the real HAProxy: balanced over its tasks, rolled out under
load without a failed request. Run apart from the parallel suite: it starts engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from docker.types import ConfigReference, ContainerSpec, EndpointSpec, SecretReference, ServiceMode, TaskTemplate

from reconciler.adapters.docker import Engine
from reconciler.deploy.proxy import Proxy
from tests.support import ImageFactory, http_get
from tests.support.agent import AgentProcess, agent_args
from tests.support.cli import cli_env, run_cli
from tests.support.gitrepo import GitRemote
from tests.support.load import Load, bodies, failed, summary
from tests.support.state import show
from tests.support.swarm import Swarm, start_swarm, stop_swarm

pytestmark = [pytest.mark.docker, pytest.mark.apart]

FILE = "desired-state.yaml"


@pytest.fixture(scope="module")
def swarm(docker_client: Any, run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    started = start_swarm(run_prefix, 1, tmp_path_factory.mktemp("swarm"))
    try:
        yield started
    finally:
        problems = stop_swarm(started)
        assert not problems, problems


@pytest.fixture(scope="module")
def repo(swarm: Swarm, images: ImageFactory) -> str:
    """The image repository: v1, v2 (answer /health) and bad (exits at start), on both nodes."""
    refs = [images.build("svcweb", tag) for tag in ("v1", "v2")]
    refs.append(images.build("svcweb", "bad", exit_at_start=True))
    for ref in refs:
        swarm.load_image(ref)
    return refs[0].rpartition(":")[0]


def service_yaml(name: str, repo: str, version: str, replicas: int, port: int, extra: str = "") -> str:
    return (
        f"  {name}:\n    image: {repo}\n    version: {version}\n    replicas: {replicas}\n"
        f'    ports: ["{port}:8000"]\n    init: true\n    stop_timeout: 1s\n'
        "    health: {http: /health, interval: 200ms, healthy_for: 1s, timeout: 15s}\n" + extra
    )


def proxy_yaml(swarm: Swarm, haproxy_image: str, port: int) -> str:
    """A ``proxy:`` listening on the manager's address (the image loaded on the nodes)."""
    swarm.load_image(haproxy_image)
    repo, _, tag = haproxy_image.rpartition(":")
    return f'proxy:\n  listen: ["{swarm.manager.address}:{port}"]\n  image: {repo}\n  version: "{tag}"\n'


@dataclass
class Site:
    swarm: Swarm
    repo: str
    remote: GitRemote
    state: Path
    instance: str
    names: list[str] = field(default_factory=list)

    def commit(self, *apps: str, message: str = "change") -> str:
        return self.remote.commit_file(FILE, "apps:\n" + "".join(apps) if apps else "apps: {}\n", message)

    def reconcile(self, *args: str, env: dict[str, str] | None = None) -> Any:
        return run_cli(
            "--repo", self.remote.url, "--state-dir", self.state, "--docker-host", self.swarm.manager.host,
            *args, env={"RECONCILE_INSTANCE": self.instance, **(env or {})}, timeout=180,
        )  # fmt: skip

    def service(self, name: str) -> dict[str, Any] | None:
        found = [s for s in self.swarm.manager.client.api.services() if s["Spec"]["Name"] == name]
        return found[0] if found else None

    def running(self, name: str) -> list[str]:
        """The bodies the service's running tasks answer with, one per task, from each node."""
        bodies = []
        for node, port in self.swarm.task_endpoints(name):
            status, text = http_get(node.url(port), timeout=2.0)
            bodies.append(text if status == 200 else f"HTTP {status}")
        return sorted(bodies)


@pytest.fixture
def site(swarm: Swarm, repo: str, tmp_path: Path, run_prefix: str) -> Iterator[Site]:
    made = Site(swarm, repo, GitRemote(tmp_path / "git"), tmp_path / "state", f"{run_prefix}-{tmp_path.name[-12:]}")
    yield made
    api = swarm.manager.client.api
    for service in api.services():
        if service["Spec"]["Name"] in made.names:
            api.remove_service(service["ID"])


def name(site: Site, app: str) -> str:
    made = f"{site.instance[:8]}-{app}-{len(site.names)}"
    site.names.append(made)
    return made


def wait_running(site: Site, app: str, expected: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := site.running(app)) != expected:
        assert time.monotonic() < deadline, f"{app}: tasks answer {found}, not {expected}"
        time.sleep(0.2)


def test_a_service_is_created_scaled_rolled_out_and_pruned_from_the_file(site: Site) -> None:
    api = name(site, "api")
    site.commit(service_yaml(api, site.repo, "v1", 2, 18101))

    preview = site.reconcile("--dry-run")
    assert preview.returncode == 2 and f"+ create   {api}" in preview.stdout, show(preview)
    created = site.reconcile()
    assert created.returncode == 0 and f"applied     create   {api}" in created.stdout, show(created)
    wait_running(site, api, ["v1", "v1"])  # one task on each node: the host port holds one per node
    assert site.reconcile("--dry-run").returncode == 0

    # Scaled by hand (`docker service scale`): drift, and the next pass puts the file's count back.
    service = site.service(api)
    assert service is not None
    site.swarm.manager.client.api.update_service(
        service["ID"], service["Version"]["Index"], fetch_current_spec=True, mode=ServiceMode("replicated", replicas=1)
    )
    preview = site.reconcile("--dry-run")
    assert preview.returncode == 2 and "replicas: 1 -> 2" in preview.stdout, show(preview)
    assert site.reconcile().returncode == 0
    wait_running(site, api, ["v1", "v1"])

    site.commit(service_yaml(api, site.repo, "v1", 1, 18101))
    preview = site.reconcile("--dry-run")
    assert preview.returncode == 2 and "replicas: 2 -> 1" in preview.stdout, show(preview)
    assert site.reconcile().returncode == 0
    wait_running(site, api, ["v1"])

    site.commit(service_yaml(api, site.repo, "v2", 2, 18101))
    rolled = site.reconcile()
    assert rolled.returncode == 0 and "v1 -> v2" in rolled.stdout, show(rolled)
    assert site.running(api) == ["v2", "v2"]  # the gate passed only once every task ran the new spec
    service = site.service(api)
    assert service is not None and service["Spec"]["Labels"]["io.reconciler.version"] == "v2"

    site.commit(message="no apps")
    pruned = site.reconcile()
    assert pruned.returncode == 0 and f"applied     remove   {api}" in pruned.stdout, show(pruned)
    assert site.service(api) is None
    history = site.reconcile("history", "-o", "json")
    assert [(e["action"], e["to_version"], e["result"]) for e in json.loads(history.stdout)][::-1] == [
        ("create", "v1", "succeeded"), ("replace", "v1", "succeeded"), ("replace", "v1", "succeeded"),
        ("replace", "v2", "succeeded"), ("remove", "", "succeeded"),
    ]  # fmt: skip


def test_a_rollout_that_fails_is_put_back_to_the_spec_before(site: Site) -> None:
    api = name(site, "api")
    site.commit(service_yaml(api, site.repo, "v1", 2, 18102))
    assert site.reconcile().returncode == 0
    before = site.service(api)
    assert before is not None

    site.commit(service_yaml(api, site.repo, "bad", 2, 18102))
    failed = site.reconcile()

    assert failed.returncode == 1, show(failed)
    assert f"rolled-back replace  {api}" in failed.stdout and "a task of it failed" in failed.stdout, show(failed)
    assert "rolled back to v1" in failed.stdout, show(failed)
    wait_running(site, api, ["v1", "v1"])
    after = site.service(api)
    assert after is not None and after["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].endswith(":v1")
    assert after["Spec"]["Labels"] == before["Spec"]["Labels"]  # the very spec it had, labels and all


def test_a_service_of_someone_else_is_a_conflict_until_adopted_and_keeps_its_secret_and_config(
    site: Site, swarm: Swarm
) -> None:
    api = name(site, "api")
    client = swarm.manager.client
    secret = client.secrets.create(name=f"{api}-token", data=b"not-for-logs")
    config = client.configs.create(name=f"{api}-conf", data=b"mode=calm")
    try:
        client.api.create_service(
            TaskTemplate(ContainerSpec(
                f"{site.repo}:v1", init=True, secrets=[SecretReference(secret.id, secret.name)],
                configs=[ConfigReference(config.id, config.name)],
            )),
            name=api, mode=ServiceMode("replicated", replicas=1),
            endpoint_spec=EndpointSpec(ports={18103: (8000, "tcp", "host")}),
        )  # fmt: skip
        site.commit(service_yaml(api, site.repo, "v2", 2, 18103))

        refused = site.reconcile()
        assert refused.returncode == 1 and "was not created by reconciler" in refused.stdout, show(refused)
        service = site.service(api)
        assert service is not None and "io.reconciler.managed" not in (service["Spec"].get("Labels") or {})

        adopted = site.reconcile("--adopt")
        assert adopted.returncode == 0, show(adopted)
        wait_running(site, api, ["v2", "v2"])
        service = site.service(api)
        assert service is not None and service["Spec"]["Labels"]["io.reconciler.app"] == api
        # What the file cannot say is kept: the tasks still get their secret and their config.
        container = service["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert [s["SecretName"] for s in container["Secrets"]] == [secret.name], container
        assert [c["ConfigName"] for c in container["Configs"]] == [config.name], container
        assert site.reconcile("--dry-run").returncode == 0  # and it is no drift
    finally:
        for found in client.api.services(filters={"name": api}):
            client.api.remove_service(found["ID"])
        deadline = time.monotonic() + 30
        for made in (secret, config):
            while True:  # one that a task still holds cannot be removed yet
                try:
                    made.remove()
                    break
                except docker.errors.APIError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)


def test_a_commit_of_two_services_goes_back_whole_when_one_fails(site: Site, tmp_path: Path) -> None:
    good, broken = name(site, "a"), name(site, "b")
    site.commit(service_yaml(good, site.repo, "v1", 2, 18104), service_yaml(broken, site.repo, "v1", 2, 18105))
    agent = AgentProcess(
        agent_args(site.remote.url, site.state, interval="1s", extra=("--docker-host", site.swarm.manager.host)),
        state_dir=site.state, env={"RECONCILE_INSTANCE": site.instance},
    )  # fmt: skip
    agent.start()
    try:
        for app in (good, broken):
            agent.wait_for("deploy.succeeded", app=app, timeout=60)
        mark = agent.mark()
        site.commit(service_yaml(good, site.repo, "v2", 2, 18104), service_yaml(broken, site.repo, "bad", 2, 18105))
        agent.wait_for("deploy.rolled-back", app=good, since=mark, timeout=90)
        agent.wait_for("deploy.rolled-back", app=broken, since=mark, timeout=90)
        wait_running(site, good, ["v1", "v1"])
        wait_running(site, broken, ["v1", "v1"])
        held = agent.wait_for("deploy.held", app=broken, since=mark, timeout=30)
        assert "bad" in held.raw, agent.log()
    finally:
        agent.stop(timeout=30)
    agent.assert_clean_log()


def test_a_node_stopped_mid_rollout_is_named_and_status_shows_it_down(site: Site, swarm: Swarm) -> None:
    api = name(site, "api")
    probe = '    health: {exec: [wget, -q, -O, /dev/null, "http://127.0.0.1:8000/health"], interval: 200ms,'
    body = (
        f"  {api}:\n    image: {site.repo}\n    version: VERSION\n    replicas: 2\n    init: true\n"
        f"    stop_timeout: 1s\n    update: {{parallelism: 1, delay: 1s}}\n{probe} healthy_for: 1s, timeout: 15s}}\n"
    )  # no published port: the slot of a node that goes away can be placed on the other one
    site.commit(body.replace("VERSION", "v1"))
    assert site.reconcile().returncode == 0
    site.commit(body.replace("VERSION", "v2"))
    rollout = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", site.remote.url, "--state-dir", str(site.state),
         "--docker-host", swarm.manager.host],
        env=cli_env({"RECONCILE_INSTANCE": site.instance}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (state := ((site.service(api) or {}).get("UpdateStatus") or {}).get("State")) != "updating":
            assert time.monotonic() < deadline and rollout.poll() is None, state
            time.sleep(0.05)
        swarm.stop_node(1)  # the worker, with the task Swarm's rollout is waiting for
        out, err = rollout.communicate(timeout=150)
        status = site.reconcile("status")
        assert f"node {swarm.workers[0].hostname} is down" in status.stdout, show(status)
        # Two endings, as Swarm has it: the worker's slot is placed on the manager and the rollout goes on;
        # or Swarm's updater waits for the task it had just given the worker, and the gate ends at its
        # timeout, naming the node, with the service back on the spec before. Never a hang, never silence.
        if rollout.returncode == 0:
            assert f"applied     replace  {api}" in out, out
            assert f"{api}: desired v2, running v2 (running, healthy)" in status.stdout, show(status)
        else:
            assert rollout.returncode == 1, f"{out}\n{err}"
            assert f"node {swarm.workers[0].hostname} is down, and the rollout waits for its task" in out, out
            assert "rolled back to v1" in out and f"{api}: desired v2, running v1" in status.stdout, show(status)
    finally:
        if rollout.poll() is None:
            rollout.kill()
        swarm.start_node(1)


def test_a_rollout_cut_short_by_a_crash_is_judged_by_the_next_pass(site: Site) -> None:
    api = name(site, "api")
    site.commit(service_yaml(api, site.repo, "v1", 2, 18106))
    assert site.reconcile().returncode == 0

    # SIGKILL as the gate starts: Swarm rolls v2 out, and no verdict was written.
    site.commit(service_yaml(api, site.repo, "v2", 2, 18106))
    killed = site.reconcile(env={"RECONCILE_KILL_AT": f"{api}:gate"})
    assert killed.returncode == -9, show(killed)
    judged = site.reconcile()
    assert judged.returncode == 0 and f"applied     replace  {api} @ " in judged.stdout, show(judged)
    assert site.reconcile("--dry-run").returncode == 0
    wait_running(site, api, ["v2", "v2"])

    # The same with a release that dies: the next pass's verdict puts v2's spec back.
    site.commit(service_yaml(api, site.repo, "bad", 2, 18106))
    killed = site.reconcile(env={"RECONCILE_KILL_AT": f"{api}:gate"})
    assert killed.returncode == -9, show(killed)
    judged = site.reconcile()
    assert judged.returncode == 1, show(judged)
    assert f"rolled-back replace  {api}" in judged.stdout and "rolled back to v2" in judged.stdout, show(judged)
    wait_running(site, api, ["v2", "v2"])
    history = json.loads(site.reconcile("history", "-o", "json").stdout)
    # The verdict of the row the crash left, then this pass's own try of the same commit (the one-shot holds
    # nothing back; an agent would hold it), then v2's verified rollout.
    assert [(e["to_version"], e["result"]) for e in history[:3]] == [
        ("bad", "rolled-back"), ("bad", "rolled-back"), ("v2", "succeeded")
    ]  # fmt: skip
    assert history[1]["message"].startswith("a task of it failed"), history[1]


def test_a_routed_service_is_balanced_over_its_tasks_and_rolls_out_under_load_without_a_failed_request(
    site: Site, swarm: Swarm, haproxy_image: str
) -> None:
    api = name(site, "api")
    port = 18110
    proxy = proxy_yaml(swarm, haproxy_image, port)
    body = (
        f"  {api}:\n    image: {site.repo}\n    version: VERSION\n    replicas: 4\n    init: true\n"
        "    stop_timeout: 1s\n    update: {parallelism: 1, delay: 0s, order: start-first}\n"
        "    route: {port: 8000}\n    health: {http: /health, interval: 200ms, healthy_for: 1s, timeout: 15s}\n"
    )
    try:
        site.remote.commit_file(FILE, proxy + "apps:\n" + body.replace("VERSION", "v1"), "routed")
        created = site.reconcile()
        assert created.returncode == 0, show(created)
        status = site.reconcile("status")
        assert f"route * / -> 4 tasks of {api} v1 (" in status.stdout, show(status)

        load = Load(port, host=str(swarm.manager.address), threads=3, keepalive_threads=2, rate=50).start()
        try:
            time.sleep(1.0)
            site.remote.commit_file(FILE, proxy + "apps:\n" + body.replace("VERSION", "v2"), "v2")
            rolled = site.reconcile()
        finally:
            hits = load.stop()
        assert rolled.returncode == 0 and "v1 -> v2" in rolled.stdout, show(rolled)
        assert not failed(hits), summary(hits)
        answered = bodies(hits)
        assert answered["v1"] > 0 and answered["v2"] > 0, summary(hits)
        # Every task took its share: the proxy's counters, one server per task.
        # Balanced: a burst after the rollout reaches each of the four tasks of v2 (the proxy's counters).
        haproxy = Proxy(Engine(swarm.manager.client, swarm.manager.host, instance=site.instance), site.state)

        def served() -> dict[str, int]:  # an UP server's address -> its requests so far (show stat)
            header, *lines = haproxy.ask("show stat -1 4 -1").splitlines()
            rows = [dict(zip(header.lstrip("# ").split(","), line.split(","), strict=False)) for line in lines]
            return {r["addr"]: int(r["stot"]) for r in rows if r.get("pxname") == f"be_{api}" and r["status"] == "UP"}

        before = served()
        for _ in range(40):
            assert http_get(swarm.manager.url(port), timeout=2.0) == (200, "v2")
        after = served()
        assert len(after) == 4 and all(after[task] > before.get(task, 0) for task in after), (before, after)
        status = site.reconcile("status")
        assert f"route * / -> 4 tasks of {api} v2 (" in status.stdout, show(status)
    finally:
        site.commit(message="no apps, no proxy")
        site.reconcile()


def test_a_change_made_by_hand_to_a_field_of_the_file_is_drift_and_is_put_back(site: Site, swarm: Swarm) -> None:
    api = name(site, "api")
    extra = "    env: {MODE: calm}\n    update: {parallelism: 1, delay: 1s}\n    on: {zone: any}\n"
    site.commit(service_yaml(api, site.repo, "v1", 1, 18107, extra).replace("    on: {zone: any}\n", ""))
    assert site.reconcile().returncode == 0
    assert site.reconcile("--dry-run").returncode == 0  # read back as deployed: in sync

    changed = subprocess.run(
        ["docker", "-H", swarm.manager.host, "service", "update", "--detach", "--env-add", "MODE=loud",
         "--update-parallelism", "2", "--constraint-add", "node.role==manager", "--stop-grace-period", "3s",
         "--publish-add", "published=18108,target=8001,mode=host", api],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    preview = site.reconcile("--dry-run")
    assert preview.returncode == 2, show(preview)
    for said in ("env: keys -> changed MODE", "update: [2, 1.0, stop-first] -> [1, 1.0, stop-first]",
                 "placement: [node.role==manager] -> []", "stop_timeout: 3.0 -> 1.0",
                 "ports: [18107:8000, 18108:8001] -> [18107:8000]"):  # fmt: skip
        assert said in preview.stdout, show(preview)
    assert "loud" not in preview.stdout + preview.stderr  # env values are never printed

    put_back = site.reconcile()
    assert put_back.returncode == 0, show(put_back)
    assert site.reconcile("--dry-run").returncode == 0
    service = site.service(api)
    assert service is not None
    assert "MODE=calm" in service["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    assert not (service["Spec"]["TaskTemplate"].get("Placement") or {}).get("Constraints")


def test_promote_history_and_rollback_to_stable_work_for_a_service(site: Site, swarm: Swarm) -> None:
    api = name(site, "api")
    site.commit(service_yaml(api, site.repo, "v1", 2, 18109))
    assert site.reconcile().returncode == 0
    promoted = site.reconcile("promote", api)
    assert promoted.returncode == 0 and f"{api}: v1 (" in promoted.stdout and "is stable" in promoted.stdout, show(
        promoted
    )
    images = swarm.manager.client.images
    assert images.get(f"{site.repo}:stable").id == images.get(f"{site.repo}:v1").id

    site.commit(service_yaml(api, site.repo, "v2", 2, 18109))
    assert site.reconcile().returncode == 0
    listed = site.reconcile("rollback", api)
    assert listed.returncode == 0 and "v1" in listed.stdout and "v2" in listed.stdout, show(listed)
    back = site.reconcile("rollback", api, "--to", "stable")  # a commit in the bare repository itself
    assert back.returncode == 0, show(back)
    applied = site.reconcile()
    assert applied.returncode == 0 and f"{api}" in applied.stdout, show(applied)
    wait_running(site, api, ["v1", "v1"])
    history = json.loads(site.reconcile("history", "--app", api, "-o", "json").stdout)
    assert [(e["from_version"], e["to_version"], e["result"]) for e in history] == [
        ("v2", "v1", "succeeded"), ("v1", "v2", "succeeded"), ("", "v1", "succeeded")
    ], history  # fmt: skip


def test_the_agent_tells_a_node_that_goes_down_and_comes_back_and_leaves_the_rescheduling_to_swarm(
    site: Site, swarm: Swarm
) -> None:
    api = name(site, "api")
    probe = '    health: {exec: [wget, -q, -O, /dev/null, "http://127.0.0.1:8000/health"], interval: 200ms,'
    site.commit(
        f"  {api}:\n    image: {site.repo}\n    version: v1\n    replicas: 2\n    init: true\n"
        f"    stop_timeout: 1s\n{probe} healthy_for: 1s, timeout: 15s}}\n"
    )  # no published port: Swarm may place the worker's slot on the manager
    agent = AgentProcess(
        agent_args(site.remote.url, site.state, interval="1s", extra=("--docker-host", swarm.manager.host)),
        state_dir=site.state, env={"RECONCILE_INSTANCE": site.instance},
    )  # fmt: skip
    agent.start()
    worker = swarm.workers[0].hostname
    try:
        agent.wait_for("deploy.succeeded", app=api, timeout=60)
        before = site.service(api)
        assert before is not None
        mark = agent.mark()
        swarm.stop_node(1)
        down = agent.wait_for("node.down", since=mark, timeout=60)
        assert f"swarm node {worker} is down" in down.raw, agent.log()
        swarm.start_node(1)
        agent.wait_for("node.recovered", since=mark, timeout=60)
        after = site.service(api)
        # The agent did not fight Swarm: no deploy, and the service's spec is the one it deployed.
        assert after is not None
        assert after["Spec"] == before["Spec"], (before["Spec"], after["Spec"])
        assert not [line for line in agent.lines[mark:] if line.event.startswith("deploy.")], agent.log()
    finally:
        if not swarm.workers[0].answers():
            swarm.start_node(1)
        agent.stop(timeout=30)
    agent.assert_clean_log()


def test_between_passes_the_agent_routes_to_the_task_that_swarm_put_in_place_of_a_dead_one(
    site: Site, swarm: Swarm, haproxy_image: str
) -> None:
    api = name(site, "api")
    proxy = proxy_yaml(swarm, haproxy_image, 18111)
    site.remote.commit_file(
        FILE,
        proxy + f"apps:\n  {api}:\n    image: {site.repo}\n    version: v1\n    replicas: 2\n    init: true\n"
        "    stop_timeout: 1s\n    route: {port: 8000}\n"
        "    health: {http: /health, interval: 200ms, healthy_for: 1s, timeout: 15s}\n",
        "routed",
    )
    agent = AgentProcess(
        agent_args(site.remote.url, site.state, interval="600s", extra=("--docker-host", swarm.manager.host)),
        state_dir=site.state, env={"RECONCILE_INSTANCE": site.instance},
    )  # fmt: skip
    haproxy = Proxy(Engine(swarm.manager.client, swarm.manager.host, instance=site.instance), site.state)

    def routed_to() -> list[str]:
        return sorted(slot.address for slot in haproxy.slots(api) if slot.enabled)

    def running() -> list[str]:
        return sorted(f"{node.address}:{port}" for node, port in swarm.task_endpoints(api))

    def wait_routed(what: str) -> list[str]:
        deadline = time.monotonic() + 30
        while (now := running()) != routed_to() or len(now) != 2:
            assert time.monotonic() < deadline, f"{what}: routed to {routed_to()}, tasks at {now}\n{agent.log()}"
            time.sleep(0.2)
        return now

    agent.start()
    try:
        agent.wait_for("deploy.succeeded", app=api, timeout=90)
        before = wait_routed("after the deploy")
        mark = agent.mark()
        # A task's container dies: Swarm puts a new task in its place, on a host port of its own.
        task = next(t for t in swarm.manager.client.api.tasks(filters={"service": api, "desired-state": "running"}))
        node = swarm.node_by_id(task["NodeID"])
        node.client.api.kill(task["Status"]["ContainerStatus"]["ContainerID"])

        def running_tasks() -> set[str]:
            listed = swarm.manager.client.api.tasks(filters={"service": api, "desired-state": "running"})
            return {t["ID"] for t in listed if t["Status"]["State"] == "running"}

        deadline = time.monotonic() + 30
        while task["ID"] in (ids := running_tasks()) or len(ids) < 2:
            assert time.monotonic() < deadline, "Swarm did not replace the task"
            time.sleep(0.2)
        wait_routed("after Swarm replaced a task")
        # No pass ran (the interval is 10 minutes): the agent's follower moved the route (out, then in).
        agent.wait_for("proxy.changed", since=mark, timeout=10)
        assert before and not [
            line for line in agent.lines[mark:] if line.event in ("commit.seen", "deploy.succeeded")
        ], agent.log()
        assert http_get(swarm.manager.url(18111), timeout=2.0) == (200, "v1")
    finally:
        agent.stop(timeout=30)
        site.commit(message="no apps, no proxy")
        site.reconcile()
    agent.assert_clean_log()


def test_a_service_runs_its_release_command_once_per_rollout_and_a_failing_one_rolls_nothing_out(
    site: Site, tmp_path: Path
) -> None:
    api = name(site, "api")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    release = f'    volumes: ["{out}:/out"]\n    release: {{command: [sh, -c, "echo ran-$$RELEASE >> /out/log"]}}\n'
    release = release.replace("$$RELEASE", "once")
    site.commit(service_yaml(api, site.repo, "v1", 2, 18109, release))
    assert site.reconcile().returncode == 0
    site.commit(service_yaml(api, site.repo, "v2", 2, 18109, release))
    rolled = site.reconcile()
    assert rolled.returncode == 0 and "v1 -> v2" in rolled.stdout, show(rolled)
    assert (out / "log").read_text().splitlines() == ["ran-once", "ran-once"]  # v1, then v2: once each, not per task

    failing = release.replace("echo ran-once >> /out/log", "echo migration failed; exit 5")
    site.commit(service_yaml(api, site.repo, "v1", 2, 18109, failing))
    failed = site.reconcile()

    assert failed.returncode == 1 and "exited 5: migration failed" in failed.stdout, show(failed)
    wait_running(site, api, ["v2", "v2"])  # nothing rolled out
    assert site.swarm.manager.client.api.containers(all=True, filters={"name": f"{api}.release"}) == []
