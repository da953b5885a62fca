"""A release command: run once per new release, in a throwaway container of the new image.

Guarantees:
- The container is ``APP.release``: the new image, the app's env, env_file, secrets, volumes and networks
  (under its own name, never the app's alias), no ports, no restart. It is created, started and waited for
  at most the command's ``timeout``; then it is removed whatever happened (killed first when it still runs).
- Exit 0 within the timeout: done. Otherwise ``ReleaseFailed``, whose message says the exit code (or the
  timeout) and the last ``TAIL`` lines of its output, every secret the process knows of masked (``scrub``).
- Once ``interrupted()`` says so (a newer commit, a shutdown), the command is killed and removed and
  ``ReleaseAbandoned`` is raised: a pending verdict, not a failed release.
- A container the engine refuses to create or start is the engine's ``ContainerError`` (a failure at the
  release step); an engine that stops answering is ``EngineUnavailable`` (an outage): the container it may
  leave is a stale ``APP.release`` that the next plan removes before it runs the command again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from reconciler.adapters.protocols import DockerEngine
from reconciler.core.model import Role, container_name
from reconciler.core.plan import Target
from reconciler.core.stack import SecretSpec
from reconciler.errors import ContainerError, EngineUnavailable, UserError
from reconciler.telemetry import scrub

TAIL = 10  # lines of a failed command's output kept in the journal and shown
FIRST_LOOK = 0.02  # seconds: a quick command is seen done at once; a long one costs few looks (at most 0.25 s)


class ReleaseFailed(UserError):
    """The release command exited non-zero or ran past its timeout."""


class ReleaseAbandoned(UserError):
    """The release command was stopped for a newer commit or a shutdown."""


def run_release(
    engine: DockerEngine,
    target: Target,
    *,
    env: Mapping[str, str],
    networks: Mapping[str, Sequence[str]],
    secrets: Sequence[tuple[SecretSpec, bytes]],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    interrupted: Callable[[], bool] = lambda: False,
    files_dir: Path | None = None,
) -> float:
    """Run ``target``'s release command to its end; the seconds it ran. Raises as the module says."""
    release = target.spec.release
    assert release is not None
    name = container_name(target.app, Role.RELEASE)
    started = clock()
    job = engine.create(
        target, name, env=env, networks=networks, secrets=secrets, job=release.command, files_dir=files_dir
    )
    try:
        engine.start(job, name)
        deadline = clock() + release.timeout
        pause = FIRST_LOOK
        while True:
            found = engine.inspect(job)
            if found is None:
                raise ContainerError(f"{name} was removed while the release command ran")
            if not found.running and not found.restarting:
                break
            if interrupted():
                raise ReleaseAbandoned("the release command was stopped for a newer commit or a shutdown")
            if clock() >= deadline:
                raise ReleaseFailed(
                    f"release command still running after {release.timeout:g}s: killed{_tail(engine, job)}"
                )
            sleep(min(pause, max(deadline - clock(), 0.0)))
            pause = min(pause * 2, 0.25)
        if found.exit_code != 0:
            said = f"release command {' '.join(release.command)} exited {found.exit_code}"
            raise ReleaseFailed(f"{said}{_tail(engine, job)}")
        return clock() - started
    finally:
        # Removed whatever happened (force: one that still runs is killed); an engine that went away leaves it
        # to the next plan, which removes a stale APP.release first.
        with contextlib.suppress(EngineUnavailable, ContainerError):
            engine.remove(job, name)


def _tail(engine: DockerEngine, job: str) -> str:
    """``: LAST LINES`` of the command's output, secrets masked, as one line; "" when it said nothing."""
    try:
        text = engine.logs(job, tail=TAIL)
    except (EngineUnavailable, ContainerError):
        return ""
    lines = [line.strip() for line in scrub.scrub(text).splitlines() if line.strip()]
    return f": {' | '.join(lines[-TAIL:])}" if lines else ""
