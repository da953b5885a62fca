"""Fixtures over real parts: the Docker engine, images, registries, git repositories.

Nothing here fakes anything (DESIGN.md, "Tests"; the in-memory engine for the fast tests is
`tests/support/fake_engine.py`, used only where a test asks for it):

- `docker_client` (session): a client to the local engine. No engine: the test FAILS, it never
  skips. At session end it removes everything this run made (see `run_prefix`).
- `run_prefix` (session): "rt" + 6 hex digits; every image, container and volume name a test
  makes starts with it.
- `images` (session): `ImageFactory`, `images.build(repo, tag, *, body=tag, healthy=True,
  exit_at_start=False, port=8000, env=None, docker_healthcheck=False) -> "repo:tag"`.
- `registry` / `auth_registry` (session): `Registry` processes on 127.0.0.1 (no auth /
  htpasswd auth).
- `git_remote` (function): `GitRemote`, a bare repo `remote.git` on `main` and a clone.
- `git_http` (function): `GitHttp` (tests/support/githttp.py), that remote over HTTP behind basic auth
  (`git_http.url("remote.git")` holds user and password).
- `app_names` (function): `AppNames`, `app_names("web") -> "<prefix>-web-<n>"`; removes
  `{app}`, `{app}.prev`, `{app}.next` after the test.
- `site` (function): `Site` (tests/support/state.py), the test's git remote, a state directory
  `tmp_path / "state"`, the engine and the images, for tests of the command line.
- `haproxy_image` (session): "repo:tag" of an HAProxy image built from this machine's haproxy.
- `routed` (function): `Routed` (tests/support/routed.py) over `world`: a `proxy:` on a free loopback
  port, apps added with `routed.app()`; the proxy container and its network are removed after the test.
- `engines` (module): three more real `dockerd`s (`ExtraEngine`, tests/support/engines.py), each its own
  data root, socket and bridge, for a module's fleet tests; stopped, and all they made removed, after it.
- `sshd` (session): `Sshd` (tests/support/sshd.py), a real OpenSSH server on 127.0.0.1 whose sessions
  reach this engine: `sshd.url` is an `ssh://` engine address, `sshd.client_env()` the client's env.
- `world` (function): `World` (tests/support/agent.py), the same parts as `site` plus `app_names`
  (as `world.names`), `tmp_path` (as `world.tmp`), the apps the test adds with `world.app()` and
  the agents it starts; they are all stopped before `app_names` removes the containers, and their
  logs must then be clean.

Tests that use the engine get the `docker` marker automatically (`-m "not docker"` skips them).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from tests.support import (
    AppNames,
    EngineUnavailable,
    GitRemote,
    ImageFactory,
    Registry,
    RegistryError,
    cleanup_run,
    connect,
)
from tests.support.agent import World, open_world
from tests.support.engine import new_run_prefix
from tests.support.engines import ExtraEngine, start_engines, stop_engines
from tests.support.githttp import GitHttp
from tests.support.haproxy import build_haproxy_image
from tests.support.images import BusyboxMissing, find_static_busybox
from tests.support.routed import Routed
from tests.support.sshd import Sshd, SshdError
from tests.support.state import Site

# In CI the property tests draw the same examples every run, so that a landing never hangs on a rare
# draw; run locally, they keep exploring (and a failure found there becomes a test of its own).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

_ENGINE_FIXTURES = {"docker_client", "images", "registry", "auth_registry", "app_names", "haproxy_image"}
_registry_hosts: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _ENGINE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def run_prefix() -> str:
    return new_run_prefix()


@pytest.fixture(scope="session")
def docker_client(run_prefix: str) -> Iterator[Any]:
    try:
        client = connect()
    except EngineUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield client
    finally:
        errors = cleanup_run(client, run_prefix, registry_hosts=_registry_hosts)
        if errors:
            print(f"\n[conftest] cleanup of run {run_prefix} left:\n  " + "\n  ".join(errors), file=sys.stderr)
        client.close()


@pytest.fixture(scope="session")
def images(docker_client: Any, run_prefix: str) -> ImageFactory:
    try:
        find_static_busybox()
    except BusyboxMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return ImageFactory(docker_client, run_prefix)


def _start_registry(registry: Registry) -> Iterator[Registry]:
    try:
        registry.start()
    except RegistryError as exc:
        pytest.fail(str(exc), pytrace=False)
    _registry_hosts.append(registry.host)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def registry(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _start_registry(Registry(docker_client, tmp_path_factory.mktemp("registry")))


@pytest.fixture(scope="session")
def auth_registry(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from _start_registry(
        Registry(
            docker_client,
            tmp_path_factory.mktemp("auth-registry"),
            username="reconciler",
            password=secrets.token_hex(12),
        )
    )


@pytest.fixture
def git_remote(tmp_path: Path) -> GitRemote:
    return GitRemote(tmp_path / "git")


@pytest.fixture
def git_http(git_remote: GitRemote) -> Iterator[GitHttp]:
    """The test's git remote over HTTP with basic auth (user ``alice``, a password of its own): ``remote.git``."""
    server = GitHttp(git_remote.bare_path.parent, "alice", "pw-" + secrets.token_hex(10))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_names(docker_client: Any, run_prefix: str) -> Iterator[AppNames]:
    names = AppNames(docker_client, run_prefix)
    try:
        yield names
    finally:
        errors = names.cleanup()
        if errors:
            print("\n[conftest] app cleanup left:\n  " + "\n  ".join(errors), file=sys.stderr)


@pytest.fixture
def site(git_remote: GitRemote, tmp_path: Path, docker_client: Any, images: ImageFactory) -> Site:
    return Site(remote=git_remote, state=tmp_path / "state", client=docker_client, images=images)


@pytest.fixture(scope="session")
def haproxy_image(docker_client: Any, run_prefix: str) -> str:
    return build_haproxy_image(docker_client, run_prefix)


@pytest.fixture
def routed(world: World, haproxy_image: str) -> Iterator[Routed]:
    proxied = Routed(world, haproxy_image)
    try:
        yield proxied
    finally:
        world.close()  # the agents first: none may bring the proxy back
        proxied.close()


@pytest.fixture
def world(
    git_remote: GitRemote, tmp_path: Path, docker_client: Any, images: ImageFactory, app_names: AppNames
) -> Iterator[World]:
    # Requests app_names so that every agent is stopped before the apps' containers are removed.
    with open_world(git_remote, tmp_path / "state", docker_client, images, app_names, tmp_path) as opened:
        yield opened


@pytest.fixture(scope="session")
def sshd(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    try:
        server.start()
    except SshdError as exc:
        pytest.fail(f"cannot run the ssh:// tests without a working sshd: {exc}", pytrace=False)
    try:
        engine_id = docker_client.info()["ID"]
        if server.engine_id != engine_id:
            pytest.fail(
                f"`docker info` through ssh reached engine {server.engine_id}, not the tests' engine {engine_id}",
                pytrace=False,
            )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def engines(
    docker_client: Any, run_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ExtraEngine]]:
    """Three more real dockerds for a module's fleet tests (tests/support/engines.py), stopped after it."""
    started = start_engines(run_prefix, 3, tmp_path_factory.mktemp("engines"))
    try:
        yield started
    finally:
        problems = stop_engines(started)
        assert not problems, problems
