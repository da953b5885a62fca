"""`--policy` holds by real paths: a symlink under an allowed folder that leads out of it is refused at
apply time (issue 18, item 5).

The drill of the issue, on the real engine: commit 1 runs an app with a rw bind of an allowed folder
whose command makes a symlink there to a folder outside (a temporary folder holding a planted file,
never /etc); commit 2 binds through that symlink. The one-shot refuses commit 2 whole (exit 1, one line
naming the place, the host path and where it leads), the agent does not deploy it either, and the
planted file is never mounted. An env_file that is a link out of the allowed folders is refused; links
that stay inside them work as before. Fast tests below hold the pure check of real paths, the checks
just before a create (``Engine.held_binds``) and the confined read of env_files (``EnvFiles``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.adapters.docker import Engine
from reconciler.adapters.envfile import EnvFiles
from reconciler.converge.run import parse_desired
from reconciler.core import guard
from reconciler.core.desired import dotted
from reconciler.core.model import HostLimits
from reconciler.errors import EnvFileError
from tests.support import AppNames, ImageFactory, free_port
from tests.support.agent import AgentProcess, agent_args
from tests.support.sshd import Sshd
from tests.support.state import Site, app_yaml, body, desired, must_inspect, output, show

PLANTED = "planted-secret-of-the-host"
FILE = "desired-state.yaml"


@pytest.fixture
def host(tmp_path: Path) -> SimpleNamespace:
    """An allowed folder, a folder outside it holding a planted file, and a policy allowing the first."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "shadow").write_text(PLANTED)
    (outside / "secret.env").write_text(f"TOKEN={PLANTED}\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f'volumes: ["{allowed}/"]\nenv_files: ["{allowed}/"]\n')
    return SimpleNamespace(allowed=allowed, outside=outside, policy=policy)


def containers_named(client: Any, name: str) -> list[str]:
    return [n for row in client.api.containers(all=True) for n in row["Names"] if n.lstrip("/").startswith(name)]


# -- on the real engine ---------------------------------------------------------------------------------


@pytest.mark.docker
def test_a_bind_through_a_symlink_a_container_made_is_refused_at_apply_time(
    site: Site, images: ImageFactory, app_names: AppNames, host: SimpleNamespace
) -> None:
    images.build("web", "v1")
    maker, reader = app_names("maker"), app_names("reader")
    maker_port, reader_port = free_port(), free_port()
    make = app_yaml(maker, site.web(), "v1", maker_port) + (
        f'    volumes: ["{host.allowed}/data:/www/data"]\n'
        f'    command: ["sh", "-c", "ln -sfn {host.outside} /www/data/esc && exec httpd -f -p 8000 -h /www"]\n'
    )
    site.commit(desired(make), "commit 1: an app that can write in the allowed folder")
    site.converge("--policy", host.policy)
    assert os.readlink(host.allowed / "data" / "esc") == str(host.outside)  # the container made it

    read = app_yaml(reader, site.web(), "v1", reader_port) + f'    volumes: ["{host.allowed}/data/esc:/www/leak:ro"]\n'
    site.commit(desired(make + read), "commit 2: bind through the link and publish it")
    said = (
        f"{FILE}: apps.{reader}.volumes[0]: {host.allowed}/data/esc leads through a symlink to {host.outside}"
        f" on the engine's host, which is not under an allowed host path (policy volumes: {host.allowed}/)"
    )
    preview = site.dry_run("--policy", host.policy)
    assert preview.returncode == 1 and said in preview.stdout, show(preview)

    result = site.reconcile("--policy", host.policy)

    assert result.returncode == 1, show(result)
    assert result.stderr.strip() == f"error: {said}", show(result)
    assert "Traceback" not in output(result) and PLANTED not in output(result)
    assert containers_named(site.client, reader) == []  # nothing of commit 2 was applied
    assert body(maker_port) == "v1"

    # The agent does not deploy it either: said once, as an error of the app; the file is never mounted.
    agent = AgentProcess(agent_args(site.repo, site.state, interval="1s", extra=("--policy", str(host.policy))))
    try:
        agent.start()
        said_once = agent.wait_for("app.error", app=reader, timeout=60)
        assert f"{host.allowed}/data/esc leads through a symlink to {host.outside}" in said_once.message, agent.log()
        assert containers_named(site.client, reader) == [], agent.log()
        agent.assert_clean_log()
    finally:
        agent.stop(timeout=20)


@pytest.mark.docker
def test_links_inside_the_allowed_folders_work_and_an_env_file_linked_out_is_refused(
    site: Site, images: ImageFactory, app_names: AppNames, host: SimpleNamespace
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    (host.allowed / "pages").mkdir()
    (host.allowed / "pages" / "index.html").write_text("inside")
    (host.allowed / "link").symlink_to(host.allowed / "pages")
    (host.allowed / "real.env").write_text("GREETING=hello\n")
    (host.allowed / "ok.env").symlink_to(host.allowed / "real.env")
    (host.allowed / "app.env").symlink_to(host.outside / "secret.env")
    plain = app_yaml(app, site.web(), "v1", port) + f'    volumes: ["{host.allowed}/link:/www/inside:ro"]\n'

    site.commit(desired(plain + f"    env_file: {host.allowed}/ok.env\n"))
    site.converge("--policy", host.policy)
    assert body(port) == "v1"
    assert "GREETING=hello" in must_inspect(site.client, app)["Config"]["Env"]
    # The engine was given the real path that was checked, not the link.
    binds = must_inspect(site.client, app)["HostConfig"]["Binds"]
    assert binds == [f"{host.allowed}/pages:/www/inside:ro"], binds

    site.commit(desired(plain + f"    env_file: {host.allowed}/app.env\n"))
    result = site.reconcile("--policy", host.policy)

    assert result.returncode == 1, show(result)
    said = (
        f"error: {FILE}: apps.{app}.env_file: {host.allowed}/app.env leads through a symlink to"
        f" {host.outside}/secret.env on the engine's host, which is not under an allowed host path"
        f" (policy env_files: {host.allowed}/)"
    )
    assert result.stderr.strip() == said, show(result)
    assert PLANTED not in output(result)
    assert "GREETING=hello" in must_inspect(site.client, app)["Config"]["Env"]  # the running release stays


@pytest.mark.docker
def test_through_an_ssh_engine_the_real_paths_are_those_of_the_engines_host(
    site: Site, images: ImageFactory, app_names: AppNames, host: SimpleNamespace, sshd: Sshd
) -> None:
    images.build("web", "v1")
    app, port = app_names("web"), free_port()
    (host.allowed / "real.env").write_text("GREETING=hello\n")
    (host.allowed / "ok.env").symlink_to(host.allowed / "real.env")
    (host.allowed / "data" / "esc").symlink_to(host.outside)
    plain = app_yaml(app, site.web(), "v1", port) + f"    env_file: {host.allowed}/ok.env\n"
    ssh = ("--docker-host", sshd.url, "--policy", str(host.policy))
    site.commit(desired(plain))
    deployed = site.reconcile(*ssh, env=sshd.client_env())
    assert deployed.returncode == 0, show(deployed)
    assert "GREETING=hello" in must_inspect(site.client, app)["Config"]["Env"]

    site.commit(desired(plain + f'    volumes: ["{host.allowed}/data/esc:/www/leak:ro"]\n'))
    refused = site.reconcile(*ssh, env=sshd.client_env())
    assert refused.returncode == 1, show(refused)
    assert f"{host.allowed}/data/esc leads through a symlink to {host.outside} on the engine's host" in refused.stderr
    assert "/www/leak" not in json.dumps(must_inspect(site.client, app)["HostConfig"]["Binds"])


# -- the pure check of real paths -------------------------------------------------------------------------


def limited(text: str, **limits: tuple[str, ...]) -> Any:
    return parse_desired(text.encode(), FILE, "").model_copy(update={"limits": HostLimits(**limits)})


DESIRED = """\
apps:
  web:
    image: myrepo/web
    version: v1
    env_file: /srv/ok/web.env
    volumes: ["/srv/ok/data/esc:/www/leak:ro", "/srv/ok/in:/in", "/srv/ok/data/up/../x:/x", "data:/d"]
proxy:
  tls: {certs: /srv/ok/certs}
"""


def test_real_paths_are_held_to_the_folders_and_to_their_own_real_paths() -> None:
    state = limited(DESIRED, volumes=("/srv/ok",), env_files=("/srv/ok/",))
    assert guard.to_resolve(state) == [
        "/srv/ok/data/esc", "/srv/ok/in", "/srv/ok/data/up/../x", "/srv/ok/web.env", "/srv/ok/certs",
        "/srv/ok", "/srv/ok/",
    ]  # fmt: skip
    real = {
        "/srv/ok/data/esc": "/etc",  # a link a container made
        "/srv/ok/in": "/srv/disk/in",  # under the real path of the allowed folder: the server's own link
        "/srv/ok/data/up/../x": "/x",  # `..` after the link it follows
        "/srv/ok/web.env": "/srv/ok/web.env",
        "/srv/ok/certs": "/root/certs",
        "/srv/ok": "/srv/disk",
        "/srv/ok/": "/srv/disk",
    }
    found = {dotted(v.path): v.message for v in guard.real_violations(state, real)}
    allows = "which is not under an allowed host path (policy volumes: /srv/ok)"
    assert found == {
        "apps.web.volumes[0]": f"/srv/ok/data/esc leads through a symlink to /etc on the engine's host, {allows}",
        "apps.web.volumes[2]": f"/srv/ok/data/up/../x leads through a symlink to /x on the engine's host, {allows}",
        "proxy.tls.certs": f"/srv/ok/certs leads through a symlink to /root/certs on the engine's host, {allows}",
    }
    assert guard.real_binds(state.apps["web"].volumes, real) == [
        "/etc:/www/leak:ro", "/srv/disk/in:/in", "/x:/x", "data:/d",
    ]  # fmt: skip


def test_a_real_path_that_cannot_be_told_or_bound_is_refused() -> None:
    state = limited(DESIRED, volumes=("/srv/ok",))
    unknown = {path: None for path in guard.to_resolve(state)}
    found = guard.real_violations(state, unknown, unknown="the engine's host cannot be asked")
    assert len(found) == 4  # three binds and the certs; env_files are not limited
    assert found[0].message == (
        "/srv/ok/data/esc: its real path on the engine's host cannot be checked (the engine's host cannot be asked)"
    )
    colon = {**{path: path for path in guard.to_resolve(state)}, "/srv/ok/in": "/srv/ok/a:/etc"}
    (violation,) = guard.real_violations(state, colon)
    assert violation.message == "/srv/ok/in leads to /srv/ok/a:/etc on the engine's host: a ':' cannot be bound"


def test_without_a_policy_of_host_paths_nothing_is_resolved() -> None:
    state = parse_desired(DESIRED.encode(), FILE, "")
    assert guard.to_resolve(state) == [] and guard.real_violations(state, {}) == []
    assert guard.limits_of(guard.ServerPolicy(images=("myrepo/",))) is None


# -- just before the create, and the env_file read ------------------------------------------------------------


def local_engine() -> Engine:
    return Engine(SimpleNamespace(api=None), "unix:///var/run/docker.sock")


def test_the_binds_of_a_create_are_checked_again_and_given_as_real_paths(host: SimpleNamespace) -> None:
    (host.allowed / "pages").mkdir()
    (host.allowed / "link").symlink_to(host.allowed / "pages")
    (host.allowed / "esc").symlink_to(host.outside)
    limits = HostLimits(volumes=(f"{host.allowed}/",))
    engine = local_engine()
    assert engine.held_binds("web.next", [f"{host.allowed}/link:/a:ro", "data:/d"], limits) == [
        f"{host.allowed}/pages:/a:ro", "data:/d",
    ]  # fmt: skip
    with pytest.raises(guard.PolicyViolation) as refused:
        engine.held_binds("web.next", [f"{host.allowed}/esc/x:/a"], limits)
    assert str(refused.value) == (
        f"web.next: {host.allowed}/esc/x leads through a symlink to {host.outside}/x on the engine's host,"
        f" which is not under an allowed host path (policy volumes: {host.allowed}/)"
    )
    assert engine.held_binds("web.next", [f"{host.allowed}/esc:/a"], None) == [f"{host.allowed}/esc:/a"]


def test_a_tcp_engines_host_cannot_be_asked_so_its_binds_are_refused(host: SimpleNamespace) -> None:
    engine = Engine(SimpleNamespace(api=None), "tcp://10.0.0.5:2376")
    with pytest.raises(guard.PolicyViolation) as refused:
        engine.held_binds("web.next", [f"{host.allowed}/data:/a"], HostLimits(volumes=(str(host.allowed),)))
    assert "its real path on the engine's host cannot be checked" in str(refused.value)
    assert "use ssh://" in str(refused.value)


def test_an_env_file_is_read_only_when_the_file_opened_stays_in_the_allowed_folders(host: SimpleNamespace) -> None:
    (host.allowed / "real.env").write_text("GREETING=hello\n")
    (host.allowed / "ok.env").symlink_to(host.allowed / "real.env")
    (host.allowed / "app.env").symlink_to(host.outside / "secret.env")
    files = EnvFiles()
    files.allowed = (f"{host.allowed}/",)
    assert files.read(f"{host.allowed}/ok.env") == {"GREETING": "hello"}
    with pytest.raises(EnvFileError) as refused:
        files.read(f"{host.allowed}/app.env")
    assert str(refused.value) == (
        f"env_file {host.allowed}/app.env leads through a symlink to {host.outside}/secret.env, which is not under"
        f" an allowed host path (policy env_files: {host.allowed}/); not read"
    )
    assert PLANTED not in json.dumps(str(refused.value))
    assert files.digest(f"{host.allowed}/app.env") is None
    files.allowed = None  # no policy of env_files: a link is followed, as before
    assert files.read(f"{host.allowed}/app.env") == {"TOKEN": PLANTED}
