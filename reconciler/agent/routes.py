"""The route follower: between the agent's passes, a routed service's route follows its tasks.

Guarantees:
- Every ``FOLLOW`` seconds, while the last file converged to routes a service: a task Swarm replaced (a
  crash, a node gone) serves within seconds, not at the next pass.
- Only while no pass holds the engine, here (``busy``) or in another process (the state directory's lock);
  a look never waits for either.
- Any trouble is left to the next pass, which reports it; each change of the proxy is said
  (``proxy.changed``) under the commit being followed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from reconciler.adapters.protocols import DockerEngine
from reconciler.core.model import DesiredState
from reconciler.deploy.proxy import Proxy
from reconciler.errors import ReconcileError
from reconciler.state.lock import locked

FOLLOW = 2.0  # seconds between looks at a routed service's tasks between passes


def follow_routes(
    stop: threading.Event,
    *,
    state_dir: Path,
    busy: threading.Lock,
    following: Callable[[], tuple[DesiredState | None, DockerEngine | None]],
    changed: Callable[[str], None],
) -> None:
    """Until ``stop``: every ``FOLLOW`` seconds, the proxy follows the tasks of what ``following()`` routes."""
    while not stop.wait(FOLLOW):
        desired, engine = following()
        if desired is None or engine is None or not busy.acquire(blocking=False):
            continue
        try:
            with locked(state_dir):
                proxy = Proxy(engine, state_dir)
                for change in proxy.follow(desired, engine.observe()):
                    changed(change)
        except ReconcileError:  # the next pass meets it again, and says it
            pass
        finally:
            busy.release()
