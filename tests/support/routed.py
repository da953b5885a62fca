"""Routed apps behind the real HAProxy container, for tests of start-first deploys.

Guarantees:
- `Routed` wraps a `World`: its desired state holds a `proxy:` on a free loopback port (the HAProxy
  image that `tests/support/haproxy.py` builds) and the world's apps; `routed.app(...)` adds an app
  served through it (`route:`, no host port), gated on `GET /health` asked of the container itself.
- Each release's image answers `/` with its own body (`web-3 v2`...), so a test can tell which release
  answered every request of a load (`tests/support/load.py`).
- `close()` removes the test's proxy container and its network (the apps go with `app_names`).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from .agent import App, World
from .cli import test_instance
from .net import free_port, http_request


@dataclass
class RoutedApp(App):
    """An app of a `Routed` world: what it writes under `apps:`."""

    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    drain: str = "300ms"
    keep_warm: str | None = None
    healthy_for: str = "300ms"
    timeout: str = "3s"
    rollout: str = ""  # the `rollout:` mapping's YAML, inline, when set

    def yaml(self) -> str:
        lines = [
            f"  {self.name}:",
            f"    image: {self.image}",
            f"    version: {self.version}",
            "    init: true",
            "    stop_timeout: 2s",
            "    route:",
            f"      port: {self.port}",
            f"      drain: {self.drain}",
        ]
        if self.hosts:
            lines.append(f"      hosts: [{', '.join(json.dumps(host) for host in self.hosts)}]")
        if self.path_prefix != "/":
            lines.append(f"      path_prefix: {self.path_prefix}")
        if self.keep_warm is not None:
            lines.append(f"      keep_warm: {self.keep_warm}")
        lines += [
            "    health:",
            "      http: /health",
            "      interval: 100ms",
            f"      timeout: {self.timeout}",
            f"      healthy_for: {self.healthy_for}",
        ]
        if self.stable_after is not None:
            lines.append(f"    stable_after: {self.stable_after}")
        if self.rollout:
            lines.append(f"    rollout: {self.rollout}")
        return "\n".join(lines) + "\n"


@dataclass
class Routed:
    world: World
    image: str  # "repo:tag" of the HAProxy image
    port: int = field(default_factory=free_port)
    tls: str = ""  # the `tls:` mapping's YAML, inline, when set
    tls_port: int | None = None  # a second listen address, on this port (for TLS beside plain HTTP)

    def __post_init__(self) -> None:
        self.world.header = self.proxy_yaml

    @property
    def instance(self) -> str:
        return test_instance()

    @property
    def container(self) -> str:
        return f"reconciler-proxy-{self.instance}"

    @property
    def network(self) -> str:
        return f"reconciler-{self.instance}"

    def proxy_yaml(self) -> str:
        repo, _, tag = self.image.rpartition(":")
        listen = [f'"127.0.0.1:{port}"' for port in (self.port, self.tls_port) if port is not None]
        lines = ["proxy:", f"  listen: [{', '.join(listen)}]", f"  image: {repo}", f'  version: "{tag}"']
        if self.tls:
            lines.append(f"  tls: {self.tls}")
        return "\n".join(lines) + "\n"

    def app(
        self,
        word: str = "web",
        *,
        tags: tuple[str, ...] = ("v1", "v2"),
        broken: tuple[str, ...] = (),
        exits: tuple[str, ...] = (),
        dies: tuple[str, ...] = (),
        dies_after: float = 3.0,
        faulty: dict[str, tuple[float, float]] | None = None,
        version: str = "v1",
        **route: Any,
    ) -> RoutedApp:
        """A routed app; `broken` tags answer `/` but 404 on `/health`, `exits` tags exit 1 at start, `dies`
        tags serve `dies_after` seconds, then exit 3 (Docker restarts them, and they die again); `faulty`
        tags answer `/cgi-bin/app` with a 500 for a share of requests, after a delay: {tag: (share, delay)}."""
        name = self.world.names(word)
        images = self.world.images
        for tag in tags:
            images.build(name, tag, body=f"{name} {tag}")
        for tag in broken:
            images.build(name, tag, body=f"{name} {tag}", healthy=False)
        for tag in exits:
            images.build(name, tag, exit_at_start=True)
        for tag in dies:
            images.build(name, tag, body=f"{name} {tag}", dies_after=dies_after)
        for tag, (share, delay) in (faulty or {}).items():
            images.build(name, tag, body=f"{name} {tag}", faults=share, delay=delay)
        app = RoutedApp(name, images.repo(name), 8000, version, **route)
        self.world.apps[name] = app
        return app

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def container_of(self, name: str) -> dict[str, Any] | None:
        """`docker inspect` of a container, or None."""
        try:
            data: dict[str, Any] = self.world.client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        return data

    def get(self, path: str = "/", *, host: str | None = None) -> tuple[int, str]:
        """One request through the proxy: (status, body); (0, reason) when nothing answers."""
        try:
            answer = http_request(self.url(path), headers={"Host": host} if host else None, timeout=2.0)
        except OSError as exc:
            return 0, f"{type(exc).__name__}: {exc}"
        return answer.status, answer.body

    def wait_serving(self, body: str, *, host: str | None = None, timeout: float = 20.0) -> None:
        """Until the proxy answers `/` with `body`."""
        deadline = time.monotonic() + timeout
        last = (0, "")
        while time.monotonic() < deadline:
            last = self.get(host=host)
            if last == (200, body):
                return
            time.sleep(0.05)
        raise AssertionError(f"the proxy did not serve {body!r} within {timeout}s (last: {last})")

    def close(self) -> None:
        """The proxy, the test's containers on its network (all of them are this test's), the network."""
        client = self.world.client
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(self.container, force=True)
        try:
            attached = client.api.inspect_network(self.network).get("Containers") or {}
        except docker.errors.NotFound:
            return
        for container in attached:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(container, force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_network(self.network)
