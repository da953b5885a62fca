"""A stack on the real engine, through the command line (issue 20): apps that reach each other by name on
the instance's networks, start in ``depends_on`` order, run their release command before the new release
serves, read file secrets copied in with their owner and mode; a failed dependency holds its dependents, a
failing release command keeps the old release serving (through the proxy under load: no failed request), a
SIGKILL inside a release command is cleaned up and the command run again, every container option is what
``docker inspect`` shows, and a Compose file imported with ``reconcile import compose`` converges.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import AppNames, ImageFactory, free_port
from tests.support.agent import World
from tests.support.cli import cli_env
from tests.support.cli import test_instance as instance_of_this_test
from tests.support.routed import Routed, RoutedApp
from tests.support.state import Site, app_yaml, body, cli, desired, must_inspect, output, show
from tests.test_zero_downtime import first_v1, load_on

pytestmark = pytest.mark.docker

GATE = "{exec: [wget, -qO-, http://127.0.0.1:8000/health], interval: 200ms, timeout: 10s, healthy_for: 300ms}"
# api answers /cgi-bin/db with what db answers on /: it reaches db by its name, on the backend network.
API_COMMAND = (
    "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nwget -qO- http://{db}:8000/\\n' > /www/cgi-bin/db"
    " && chmod +x /www/cgi-bin/db && exec httpd -f -p 8000 -h /www"
)


def network_of(name: str) -> str:
    base = f"reconciler-{instance_of_this_test()}"
    return base if name == "default" else f"{base}_{name}"


def execute(site: Site, container: str, *argv: str) -> tuple[int, str]:
    """Run ``argv`` in the container (``docker exec``: the SDK's exec_run loses a short process's output now and
    then): its exit code and output."""
    done = subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True, timeout=30)
    return done.returncode, (done.stdout + done.stderr).strip()


def stack(site: Site, names: AppNames, *, db_version: str = "db") -> tuple[str, str, str, int, str]:
    db, api, web, backend = names("db"), names("api"), names("web"), names("back")
    port = free_port()
    site.commit(stack_text(site, db, api, web, port, backend, db_version=db_version))
    return db, api, web, port, backend


def stack_text(site: Site, db: str, api: str, web: str, port: int, backend: str, *, db_version: str = "db") -> str:
    return f"""networks:
  {backend}: {{internal: true}}
apps:
  {web}:
    image: {site.web()}
    version: web
    ports: ["127.0.0.1:{port}:8000"]
    depends_on: {{{api}: healthy}}
    init: true
    stop_timeout: 1s
    health: {{exec: [sh, -c, "wget -qO- http://{api}:8000/cgi-bin/db | grep -q db-body"], interval: 200ms,
              timeout: 10s, healthy_for: 300ms}}
  {api}:
    image: {site.web()}
    version: api
    networks: [default, {backend}]
    depends_on: [{db}]
    command: [sh, -c, "{API_COMMAND.format(db=db)}"]
    init: true
    stop_timeout: 1s
    health: {GATE}
  {db}:
    image: {site.web()}
    version: {db_version}
    networks: [{backend}]
    init: true
    stop_timeout: 1s
    health: {GATE}
"""


def test_a_three_app_stack_reaches_each_other_by_name_in_order_and_on_its_networks_only(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    for tag, text in (("db", "db-body"), ("api", "api-body"), ("web", "web-body")):
        images.build("web", tag, body=text)
    db, api, web, port, backend = stack(site, app_names)

    result = site.converge()

    # web's own gate reached db by name, through api: the whole chain came up, each after the one it needs.
    assert [line.split()[:3] for line in output(result).splitlines()[:3]] == [
        ["applied", "create", name] for name in sorted((db, api, web))
    ], output(result)
    started = [must_inspect(site.client, name)["State"]["StartedAt"] for name in (db, api, web)]
    assert started == sorted(started), started
    assert body(port) == "web-body"
    assert execute(site, web, "wget", "-qO-", f"http://{api}:8000/cgi-bin/db") == (0, "db-body")
    # web is not on the backend network: db's name does not even resolve there.
    assert execute(site, web, "wget", "-qO-", "-T", "2", f"http://{db}:8000/")[0] != 0
    assert set(must_inspect(site.client, db)["NetworkSettings"]["Networks"]) == {network_of(backend)}
    assert set(must_inspect(site.client, api)["NetworkSettings"]["Networks"]) == {
        network_of("default"),
        network_of(backend),
    }
    made = site.client.networks.get(network_of(backend)).attrs
    assert made["Internal"] is True and made["Labels"]["io.reconciler.network"] == backend
    dry = site.dry_run()
    assert dry.returncode == 0, show(dry)
    status = output(cli("status", "--repo", site.repo, "--state-dir", site.state))
    assert f"    stack: needs {db} (healthy); networks default, {backend}" in status, status
    # The file drops the network: it stays while the kept releases (stopped) are on it, so that a rollback
    # to one of them can start it.
    moved = stack_text(site, db, api, web, port, backend).replace(f"networks:\n  {backend}: {{internal: true}}\n", "")
    moved = moved.replace(f"networks: [default, {backend}]", "networks: [default]").replace(
        f"networks: [{backend}]", "networks: [default]"
    )
    site.commit(moved)
    result = site.converge()
    assert f"network {backend} ({network_of(backend)}): not in the file; left while {api}.prev, {db}.prev use it" in (
        output(result)
    ), output(result)
    assert execute(site, web, "wget", "-qO-", f"http://{api}:8000/cgi-bin/db") == (0, "db-body")


def test_a_failed_dependency_holds_its_dependents(site: Site, images: ImageFactory, app_names: AppNames) -> None:
    images.build("web", "db-broken", body="db-body", healthy=False)
    for tag in ("api", "web"):
        images.build("web", tag)
    db, api, web, _, _ = stack(site, app_names, db_version="db-broken")

    result = site.reconcile()

    assert result.returncode == 1, show(result)
    said = output(result)
    assert f"waiting for {db}" in said and f"waiting for {api}" in said, said
    assert not {api, web} & present(site)


def release_app(site: Site, app: str, version: str, port: int, command: str) -> str:
    return f"""apps:
  {app}:
    image: {site.web()}
    version: {version}
    ports: ["127.0.0.1:{port}:8000"]
    volumes: ["{app}-data:/data"]
    env: {{DB_PASSWORD: s3cret-of-the-release-{app}}}
    release: {{command: [sh, -c, "{command}"], timeout: 30s}}
    command: [sh, -c, "cp /data/schema /www/schema 2>/dev/null; exec httpd -f -p 8000 -h /www"]
    init: true
    stop_timeout: 1s
    health: {GATE}
"""


MIGRATE = "echo migrated-for-$(cat /www/index.html) > /data/schema"


def test_a_release_command_migrates_before_the_release_serves_and_a_failing_one_keeps_the_old(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    for tag in ("v1", "v2", "v3"):
        images.build("web", tag)
    app, port = app_names("web"), free_port()
    site.commit(release_app(site, app, "v1", port, MIGRATE))
    site.converge()
    assert body_of(port, "/schema") == "migrated-for-v1"
    site.commit(release_app(site, app, "v2", port, MIGRATE))
    site.converge()
    assert body_of(port, "/schema") == "migrated-for-v2"  # the new release found its migration done at start

    failing = "echo applying 0042; echo password $DB_PASSWORD refused; exit 4"
    site.commit(release_app(site, app, "v3", port, failing))
    result = site.reconcile()

    assert result.returncode == 1, show(result)
    said = output(result)
    assert "release command sh -c echo applying 0042" in said and "exited 4" in said, said
    assert "password *** refused" in said or "password" not in said.split("exited 4")[1], said
    assert f"s3cret-of-the-release-{app}" not in said
    assert body(port) == "v2" and body_of(port, "/schema") == "migrated-for-v2"
    history = cli("history", "--state-dir", site.state)
    assert "exited 4" in output(history) and f"s3cret-of-the-release-{app}" not in output(history)
    status = cli("status", "--repo", site.repo, "--state-dir", site.state)
    assert "last attempted: v3" in output(status) and "exited 4: applying 0042" in output(status), output(status)
    assert f"s3cret-of-the-release-{app}" not in output(status)
    assert not present(site) & {f"{app}.release", f"{app}.next"}


def body_of(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return bytes(answer.read()).decode().strip()


def test_a_sigkill_inside_a_release_command_is_cleaned_up_and_the_command_runs_again(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    for tag in ("v1", "v2"):
        images.build("web", tag)
    app, port = app_names("web"), free_port()
    site.commit(release_app(site, app, "v1", port, MIGRATE))
    site.converge()
    once = "if [ -f /data/once ]; then echo migrated-again > /data/schema; exit 0; fi; touch /data/once; sleep 60"
    site.commit(release_app(site, app, "v2", port, once))
    env = cli_env()
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--repo", site.repo, "--state-dir", str(site.state)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _running(site, f"{app}.release"):
            time.sleep(0.1)
        assert _running(site, f"{app}.release"), "the release command never started"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    assert body(port) == "v1"  # nothing of the app changed

    result = site.converge()

    assert f"{app}.release" in output(result) and "interrupted" in output(result), output(result)
    assert body(port) == "v2" and body_of(port, "/schema") == "migrated-again"
    assert f"{app}.release" not in present(site)


def _running(site: Site, name: str) -> bool:
    return name in present(site, running=True)


def present(site: Site, *, running: bool = False) -> set[str]:
    """The names of the engine's containers (one listing: no inspect of each, which races a removal)."""
    rows = site.client.api.containers(all=not running)
    return {str(name).lstrip("/") for row in rows for name in row.get("Names") or ()}


def test_a_secret_is_copied_in_with_its_mode_and_owner_redeploys_on_change_and_is_never_printed(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    source = tmp_path / "db_password"
    source.write_text("first-secret-value-123\n")
    source.chmod(0o644)
    text = f"""apps:
  {app}:
    image: {site.web()}
    version: v1
    ports: ["127.0.0.1:{port}:8000"]
    read_only: true
    secrets:
      - {{source: {source}, target: db_password, mode: "0440", uid: 999, gid: 998}}
    init: true
    stop_timeout: 1s
    health: {GATE}
"""
    site.commit(text)
    first = site.converge()

    assert execute(site, app, "stat", "-c", "%a %u %g", "/run/secrets/db_password") == (0, "440 999 998")
    assert execute(site, app, "cat", "/run/secrets/db_password") == (0, "first-secret-value-123")
    source.write_text("rotated-secret-value-456\n")
    dry = site.dry_run()
    assert dry.returncode == 2 and "secret db_password: as deployed -> contents changed" in output(dry), show(dry)
    second = site.converge()
    assert execute(site, app, "cat", "/run/secrets/db_password") == (0, "rotated-secret-value-456")
    said = "\n".join(
        output(r)
        for r in (first, dry, second, site.history(), cli("status", "--repo", site.repo, "--state-dir", site.state))
    )
    labels = str(must_inspect(site.client, app)["Config"]["Labels"])
    journal = (site.state / "journal.db").read_bytes().decode(errors="replace")
    for secret in ("first-secret-value-123", "rotated-secret-value-456"):
        assert secret not in said and secret not in labels and secret not in journal


def test_every_container_option_is_what_docker_inspect_shows(
    site: Site, images: ImageFactory, app_names: AppNames
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    site.commit(f"""apps:
  {app}:
    image: {site.web()}
    version: v1
    ports: ["127.0.0.1:{port}:8000"]
    user: "1000:1000"
    entrypoint: [/bin/httpd, -f, -p, "8000"]
    command: [-h, /www]
    working_dir: /www
    hostname: shop-web
    extra_hosts: ["db.internal:10.1.2.3"]
    labels: {{team: shop}}
    stop_signal: SIGINT
    cap_drop: [ALL]
    cap_add: [NET_BIND_SERVICE]
    read_only: true
    tmpfs: ["/var/cache/shop:size=64m"]
    sysctls: {{net.core.somaxconn: "1024"}}
    ulimits: {{nofile: {{soft: 4096, hard: 8192}}}}
    shm_size: 64m
    memory: 256m
    cpus: 1.5
    pids_limit: 200
    logging: {{driver: json-file, options: {{max-size: 10m, max-file: "3"}}}}
    security_opt: [no-new-privileges]
    stop_timeout: 1s
    health: {GATE}
""")
    site.converge()

    info: dict[str, Any] = must_inspect(site.client, app)
    config, host = info["Config"], info["HostConfig"]
    assert (config["User"], config["Entrypoint"], config["Cmd"]) == ("1000:1000", ["/bin/httpd", "-f", "-p", "8000"],
                                                                    ["-h", "/www"])  # fmt: skip
    assert (config["WorkingDir"], config["Hostname"], config["StopSignal"]) == ("/www", "shop-web", "SIGINT")
    assert config["Labels"]["team"] == "shop"
    assert host["ExtraHosts"] == ["db.internal:10.1.2.3"]
    assert (host["CapDrop"], host["CapAdd"], host["ReadonlyRootfs"]) == (["ALL"], ["NET_BIND_SERVICE"], True)
    assert host["Tmpfs"] == {"/var/cache/shop": "size=64m"}
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 8192}]
    assert (host["ShmSize"], host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (
        64 * 1024**2, 256 * 1024**2, 1_500_000_000, 200,
    )  # fmt: skip
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert body(port) == "v1"  # and it serves, as that user, on a read-only root
    dry = site.dry_run()
    assert dry.returncode == 0, show(dry)


@dataclass
class ReleasingApp(RoutedApp):
    """A routed app with a release command."""

    command: str = "true"

    def yaml(self) -> str:
        return super().yaml() + f'    release: {{command: [sh, -c, "{self.command}"], timeout: 20s}}\n'


def test_a_failing_release_command_of_a_routed_app_keeps_the_old_release_serving_under_load(
    routed: Routed,
) -> None:
    plain = routed.app("web", tags=("v1", "v2"))
    web = routed.world.apps[plain.name] = ReleasingApp(plain.name, plain.image, plain.port, "v1")
    first_v1(routed, web)
    web.command = "sleep 0.5; echo migration 0042 failed; exit 2"

    with load_on(routed) as hits:
        routed.world.set(web.name, "v2")
        result = routed.world.server()

    assert result.returncode == 1, show(result)
    assert "exited 2: migration 0042 failed" in output(result), show(result)
    assert hits and all(hit.error == "" and hit.status == 200 for hit in hits), hits[:5]
    assert {hit.body for hit in hits} == {f"{web.name} v1"}


def test_a_compose_stack_imported_with_reconcile_import_compose_converges(
    site: Site, images: ImageFactory, app_names: AppNames, tmp_path: Path
) -> None:
    images.build("web", "db", body="db-body")
    images.build("web", "front", body="front-body")
    db, web, back, port = app_names("db"), app_names("web"), app_names("back"), free_port()
    (tmp_path / "pw.txt").write_text("imported-secret-789\n")
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(f"""services:
  {db}:
    image: {site.web()}:db
    init: true
    networks: [{back}]
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8000/health"]
      interval: 200ms
      retries: 20
  {web}:
    image: {site.web()}:front
    init: true
    stop_grace_period: 1s
    ports: ["127.0.0.1:{port}:8000"]
    depends_on:
      {db}: {{condition: service_healthy}}
    networks: [default, {back}]
    secrets: [pw]
    healthcheck:
      test: wget -qO- http://{db}:8000/ | grep -q db-body
      interval: 200ms
secrets:
  pw: {{file: ./pw.txt}}
networks:
  {back}: {{internal: true}}
""")
    written = tmp_path / "desired-state.yaml"

    imported = cli("import", "compose", compose, "-o", written)

    assert imported.returncode == 0, show(imported)
    site.commit(written.read_text())
    result = site.converge()
    assert "imported-secret-789" not in output(imported) + output(result)
    assert body(port) == "front-body"
    assert execute(site, web, "wget", "-qO-", f"http://{db}:8000/") == (0, "db-body")
    assert execute(site, web, "cat", "/run/secrets/pw") == (0, "imported-secret-789")
    assert execute(site, web, "stat", "-c", "%a", "/run/secrets/pw") == (0, "444")  # compose's default mode


def test_the_agent_deploys_a_stack_in_order_and_a_failed_dependency_takes_the_whole_commit_back(
    world: World, images: ImageFactory, app_names: AppNames
) -> None:
    for tag in ("v1", "v2"):
        images.build("web", tag)
    images.build("web", "v2-broken", healthy=False)
    db, web, db_port, web_port = app_names("db"), app_names("web"), free_port(), free_port()

    def text(db_version: str, web_version: str) -> str:
        return desired(
            app_yaml(db, world.web(), db_version, db_port, timeout="2s"),
            app_yaml(web, world.web(), web_version, web_port, timeout="2s") + f"    depends_on: [{db}]\n",
        )

    world.commit(text("v1", "v1"), "a stack")
    agent = world.agent()
    agent.wait_for("deploy.succeeded", app=web, timeout=30)
    started = [must_inspect(world.client, name)["State"]["StartedAt"] for name in (db, web)]
    assert started == sorted(started), started  # db first: web waited for its gate

    mark = agent.mark()
    world.commit(text("v2-broken", "v2"), "db broken")
    agent.wait_for("deploy.rolled-back", app=db, since=mark, timeout=30)
    waiting = agent.wait_for("app.waiting", app=web, since=mark, timeout=15)
    assert f"waiting for {db}: " in waiting.message, waiting.raw
    assert body(db_port) == "v1" and body(web_port) == "v1"
    assert not agent.events("deploy.succeeded", since=mark), agent.log()
    assert not agent.events("pass.crashed"), agent.log()
