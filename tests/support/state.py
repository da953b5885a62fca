"""What the end-to-end tests write into git, and how they look at the engine, the apps and the CLI.

One copy of each helper, for tests/test_converge.py, tests/test_cli_errors.py, tests/test_agent.py,
tests/test_agent_engine_restart.py and tests/test_release.py.

Guarantees:
- `app_yaml` returns one app entry of desired-state.yaml (`FILE`), indented under `apps:`: the
  image, version, `ports: ["127.0.0.1:PORT:8000"]`, `init: true` and `stop_timeout: 2s` (busybox
  as PID 1 ignores SIGTERM), then `env` when given, then an HTTP gate on
  GET http://127.0.0.1:PORT/health probed every 200ms, passing after `healthy_for` of good probes
  and failing after `timeout`, then `stable_after` when given. The text depends only on the
  arguments; `desired(*apps)` joins entries into a whole file (`apps: {}` when there are none).
- `inspect` is `docker inspect NAME` as a dict, or None when there is no such container;
  `must_inspect` fails the test instead of returning None. `names_of(client, APP)` is every
  container named APP or APP.<something>, as `docker ps -a` shows them.
- `body(port)` waits up to `timeout` seconds for the app on 127.0.0.1:PORT to answer 200 at / and
  returns what it served; it fails the test after that.
- `cli(*args)` runs `reconcile ARGS` through `run_cli` (tests/support/cli.py: the test's own
  environment and instance, never raises for an exit code) and fails the test when stdout or
  stderr holds any of `forbidden` (by default a Python traceback). `show(result)` is the exit code
  and both streams, for assertion messages; `output(result)` is stdout then stderr. `STRICT` is a
  `forbidden` that also refuses the CLI's last-resort "internal error" message (an unexpected
  exception).
- `files_holding(root, *secrets)` is every file under a state directory that holds one of them;
  `open_to_others(root)` is what in it its group or other users may read, write or enter.
- `Site` is one test's world for the command line: a git remote with a clone, a state directory,
  the engine client and the images. Its commands read the bare remote unless told another `repo`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from .cli import run_cli
from .gitrepo import GitRemote
from .images import ImageFactory
from .net import wait_http

FILE = "desired-state.yaml"

# A gate that passes after 500ms of good probes keeps a deploy around a second; a release that never
# becomes healthy fails after the gate's timeout (tests of failing releases pass a shorter one).
HEALTH_TIMEOUT = "10s"


# -- desired-state.yaml ----------------------------------------------------------------------------


def app_yaml(
    name: str,
    image: str,
    version: str,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    timeout: str = HEALTH_TIMEOUT,
    healthy_for: str = "500ms",
    stable_after: str | None = None,
    comment: str | None = None,
) -> str:
    """One app entry of desired-state.yaml, indented under `apps:`, gated on GET /health.

    `comment` goes at the end of the app's first line (`  NAME:   # COMMENT`).
    """
    lines = [
        f"  {name}:" + (f"   # {comment}" if comment is not None else ""),
        f"    image: {image}",
        f"    version: {version}",
        f'    ports: ["127.0.0.1:{port}:8000"]',
        "    init: true",
        "    stop_timeout: 2s",
    ]
    if env:
        lines.append("    env:")
        lines += [f"      {key}: {json.dumps(value)}" for key, value in env.items()]
    lines += [
        "    health:",
        f"      http: http://127.0.0.1:{port}/health",
        "      interval: 200ms",
        f"      timeout: {timeout}",
        f"      healthy_for: {healthy_for}",
    ]
    if stable_after is not None:
        lines.append(f"    stable_after: {stable_after}")
    return "\n".join(lines) + "\n"


def desired(*apps: str) -> str:
    return "apps:\n" + "".join(apps) if apps else "apps: {}\n"


# -- the engine -------------------------------------------------------------------------------------


def inspect(client: Any, name: str) -> dict[str, Any] | None:
    """`docker inspect NAME`, or None when there is no such container."""
    try:
        return dict(client.api.inspect_container(name))
    except docker.errors.NotFound:
        return None


def must_inspect(client: Any, name: str) -> dict[str, Any]:
    info = inspect(client, name)
    assert info is not None, f"container {name} does not exist; containers: {container_names(client)}"
    return info


def is_running(info: Mapping[str, Any] | None) -> bool:
    return info is not None and bool(info["State"]["Running"])


def labels(info: Mapping[str, Any]) -> dict[str, str]:
    return dict(info["Config"]["Labels"] or {})


def container_names(client: Any) -> list[str]:
    return sorted(n.lstrip("/") for c in client.api.containers(all=True) for n in c.get("Names") or [])


def names_of(client: Any, app: str) -> set[str]:
    """Every container named APP or APP.<something> (what `docker ps -a` shows for the app)."""
    return {n for n in container_names(client) if n == app or n.startswith(app + ".")}


# -- the apps ---------------------------------------------------------------------------------------


def body(port: int, timeout: float = 5.0) -> str:
    """What the app on `port` serves at / (waits up to `timeout` seconds for it to answer)."""
    return wait_http(f"http://127.0.0.1:{port}/", timeout)


# -- the command line -------------------------------------------------------------------------------

# What a command must never print: a traceback, nor the CLI's last-resort message for an unexpected exception.
STRICT = ("Traceback", "internal error")


def show(result: subprocess.CompletedProcess[str]) -> str:
    """For assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def cli(
    *args: str | Path,
    cwd: str | Path | None = None,
    env: Mapping[str, str | None] | None = None,
    forbidden: Iterable[str] = ("Traceback",),
) -> subprocess.CompletedProcess[str]:
    """`reconcile ARGS`; whatever happens, the user never sees a Python traceback (or `forbidden`)."""
    result = run_cli(*args, cwd=cwd, env=env)
    for stream in (result.stdout, result.stderr):
        for text in forbidden:
            assert text not in stream, f"{text!r} in the output of reconcile {args}:\n{show(result)}"
    return result


@dataclass
class Site:
    """One test's world: a git remote with a clone, a state directory, the engine, the images."""

    remote: GitRemote
    state: Path
    client: Any
    images: ImageFactory

    @property
    def repo(self) -> str:
        return self.remote.url

    def web(self) -> str:
        """The repository of the test web images (built with `images.build("web", TAG)`)."""
        return self.images.repo("web")

    def commit(self, text: str, message: str = "update desired state") -> str:
        """Commit `text` as desired-state.yaml and push it; return the commit's sha."""
        return self.remote.commit_file(FILE, text, message)

    def reconcile(
        self, *args: str | Path, repo: str | None = None, env: Mapping[str, str | None] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return cli("--repo", repo or self.repo, "--state-dir", self.state, *args, env=env)

    def converge(self, *args: str | Path, repo: str | None = None) -> subprocess.CompletedProcess[str]:
        """`reconcile`, which must succeed."""
        result = self.reconcile(*args, repo=repo)
        assert result.returncode == 0, show(result)
        return result

    def dry_run(
        self, *args: str | Path, repo: str | None = None, env: Mapping[str, str | None] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.reconcile("--dry-run", *args, repo=repo, env=env)

    def history(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`reconcile history`, which must succeed."""
        result = cli("history", "--state-dir", self.state, *args)
        assert result.returncode == 0, show(result)
        return result


# -- the state directory ----------------------------------------------------------------------------


def files_holding(root: Path, *secrets: str) -> list[str]:
    """Every file under `root` (the state directory) that holds one of `secrets`, as `path: secret`."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.is_socket():
            data = path.read_bytes()
            found += [f"{path}: {secret}" for secret in secrets if secret.encode() in data]
    return found


def open_to_others(root: Path) -> list[str]:
    """`root` and everything under it that its group or other users may read, write or enter."""
    return [f"{path}: {path.stat().st_mode & 0o777:o}" for path in [root, *sorted(root.rglob("*"))]
            if not path.is_symlink() and path.stat().st_mode & 0o077]  # fmt: skip
