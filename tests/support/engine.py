"""The Docker engine in tests: connecting, the run prefix, and removing what a test run made.

Guarantees:
- `connect()` returns a client whose engine answered a ping, or raises `EngineUnavailable` with
  a message that says how to start one. It never returns a client to a dead engine.
- Every name a test run creates (image, container, volume) starts with the run prefix
  (`rt` + 6 hex digits), and every image built by the fixtures carries the label
  `RUN_LABEL=<prefix>` (containers inherit it). Cleanup removes only things that match the
  prefix or carry that label with this run's value, so it never touches anything else on the
  engine, not even another test run going on at the same time.
- Cleanup never raises: each removal is tried on its own, failures are collected and returned.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import docker
import docker.errors

# Label put on every image the fixtures build; containers created from them inherit it.
RUN_LABEL = "tests.reconciler.run"
# The label the product puts on containers it manages.
MANAGED_LABEL = "io.reconciler.managed"
# Container names the product uses for one app.
APP_CONTAINER_SUFFIXES = ("", ".prev", ".next")

_WORD = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class EngineUnavailable(RuntimeError):
    """No Docker engine answered."""


def new_run_prefix() -> str:
    """`rt` + 6 lowercase hex digits: valid at the start of image, container and volume names."""
    return "rt" + secrets.token_hex(3)


def connect(timeout: int = 120) -> Any:
    """`docker.from_env()` and a ping, or EngineUnavailable."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        raise EngineUnavailable(
            "No Docker engine answered "
            f"({type(exc).__name__}: {exc}). Tests need a real one: start it with "
            "`bash scripts/setup-host` (or `dockerd >/tmp/dockerd.log 2>&1 &`) and check `docker info`."
        ) from exc
    return client


def _has_prefix(name: str, prefix: str) -> bool:
    return name.lstrip("/").startswith(prefix)


def _tag_is_ours(tag: str, prefix: str, registry_hosts: Iterable[str]) -> bool:
    if tag.startswith(prefix):
        return True
    for host in registry_hosts:
        if tag.startswith(host + "/"):
            return True
    # "<registry host>/<prefix>..." pushed anywhere.
    first, _, rest = tag.partition("/")
    return bool(rest) and ("." in first or ":" in first or first == "localhost") and rest.startswith(prefix)


def _remove(what: str, remove: Callable[..., object], *args: Any, **kwargs: Any) -> list[str]:
    """`remove(*args, **kwargs)`: no failure when it worked or `what` was gone already, else `WHAT: error`."""
    try:
        remove(*args, **kwargs)
    except docker.errors.NotFound:
        pass
    except Exception as exc:
        return [f"{what}: {exc}"]
    return []


def remove_containers(client: Any, names: Iterable[str]) -> list[str]:
    """Force-remove the containers with exactly these names (missing ones are fine)."""
    errors: list[str] = []
    for name in names:
        errors += _remove(f"container {name}", client.api.remove_container, name, force=True, v=True)
    return errors


def cleanup_run(client: Any, prefix: str, *, registry_hosts: Iterable[str] = ()) -> list[str]:
    """Remove what the run `prefix` made: containers, volumes, images. Returns the failures.

    - containers whose name starts with `prefix` (the product's `{app}`, `{app}.prev`,
      `{app}.next` and managed ones included), and containers labelled `RUN_LABEL=prefix`;
    - volumes whose name starts with `prefix`;
    - images labelled `RUN_LABEL=prefix` (by id, all their tags and pulled copies);
      and tags that start with `prefix` or with one of `registry_hosts` + "/" (untagged only).
    """
    hosts = list(registry_hosts)
    errors: list[str] = []

    try:
        containers = client.api.containers(all=True)
    except Exception as exc:
        return [f"listing containers: {exc}"]
    doomed: list[str] = []
    for info in containers:
        names = [n.lstrip("/") for n in info.get("Names") or []]
        labels = info.get("Labels") or {}
        if any(_has_prefix(n, prefix) for n in names) or labels.get(RUN_LABEL) == prefix:
            doomed.append(info["Id"])
    errors += remove_containers(client, doomed)

    try:
        volumes = client.api.volumes().get("Volumes") or []
    except Exception as exc:
        errors.append(f"listing volumes: {exc}")
        volumes = []
    for volume in volumes:
        name = volume.get("Name", "")
        if _has_prefix(name, prefix):
            errors += _remove(f"volume {name}", client.api.remove_volume, name, force=True)

    try:
        labelled = client.api.images(all=True, filters={"label": f"{RUN_LABEL}={prefix}"})
    except Exception as exc:
        errors.append(f"listing images: {exc}")
        labelled = []
    for info in labelled:
        errors += _remove(f"image {info['Id']}", client.api.remove_image, info["Id"], force=True)

    try:
        images = client.api.images()
    except Exception as exc:
        errors.append(f"listing images: {exc}")
        images = []
    for info in images:
        for tag in info.get("RepoTags") or []:
            if tag != "<none>:<none>" and _tag_is_ours(tag, prefix, hosts):
                errors += _remove(f"image {tag}", client.api.remove_image, tag, force=True)
    return errors


class AppNames:
    """Fresh app names for one test, and removal of the containers the product makes for them.

    `names("web")` -> "<prefix>-web-<n>" (n counts across the session, so no two tests share a
    name). `cleanup()` force-removes `{app}`, `{app}.prev`, `{app}.next` (and any other
    `{app}.*`), volumes named `{app}` or `{app}-*` and networks whose name holds `{app}` (a network of that
    name in the file, or the default network of an instance named after it), for every name handed out.
    """

    _counter = itertools.count(1)

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.names: list[str] = []

    def __call__(self, word: str = "app") -> str:
        if not _WORD.match(word):
            raise ValueError(f"app word must be lowercase letters, digits and single '-': {word!r}")
        name = f"{self.prefix}-{word}-{next(self._counter)}"
        self.names.append(name)
        return name

    def container_names(self, app: str) -> list[str]:
        return [app + suffix for suffix in APP_CONTAINER_SUFFIXES]

    def cleanup(self) -> list[str]:
        errors: list[str] = []
        for app in self.names:
            names = set(self.container_names(app))
            try:
                for info in self.client.api.containers(all=True, filters={"name": app}):
                    for n in info.get("Names") or []:
                        n = n.lstrip("/")
                        if n.startswith(app + "."):
                            names.add(n)
            except Exception as exc:
                errors.append(f"listing containers for {app}: {exc}")
            errors += remove_containers(self.client, sorted(names))
            try:
                volumes = self.client.api.volumes().get("Volumes") or []
            except Exception as exc:
                errors.append(f"listing volumes: {exc}")
                volumes = []
            for volume in volumes:
                vname = volume.get("Name", "")
                if vname == app or vname.startswith(app + "-"):
                    errors += _remove(f"volume {vname}", self.client.api.remove_volume, vname, force=True)
        return errors + self._networks()

    def _networks(self) -> list[str]:
        """Once every container of the test is gone: remove the networks of the test's own instance, and those
        whose name holds one of its app names (a network of that name in the file, an instance named after an
        app). Docker has room for about 30 bridge networks: one left per test would soon refuse the next."""
        from .cli import test_instance

        own = f"reconciler-{test_instance()}"
        errors: list[str] = []
        try:
            networks = self.client.api.networks()
        except Exception as exc:
            return [f"listing networks: {exc}"]
        for network in networks:
            name = str(network.get("Name", ""))
            if name == own or name.startswith(own + "_") or any(app in name for app in self.names):
                try:
                    self.client.api.remove_network(network["Id"])
                except docker.errors.APIError as exc:
                    if exc.status_code not in (404, 403, 409):  # gone, or still in use by what another fixture keeps
                        errors.append(f"network {name}: {exc}")
        return errors
