"""The one container swap: a stopped container takes over an app's name, the one that had it is kept.

Guarantees:
- ``swap_in`` ends with ``incoming`` under the app's name and started, and ``current`` (when there is
  one) stopped under ``keep_as``. ``current`` is stopped before anything is renamed or started, so two
  containers of the app never hold its host ports at once.
- ``keep_as`` may be the name ``incoming`` holds (break-glass: ``APP.prev`` comes back and what ran
  becomes ``APP.prev``): ``current`` then waits under ``APP.swap`` until that name is free.
- ``drop`` (the older kept container that ``keep_as`` will replace) is removed while ``current``
  stops, off the time the app answers nothing; a failed removal goes to ``log`` and the rename that
  needs its name then fails.
- Only the containers passed in are touched; whether they may be (ours, or adopted) is the caller's
  decision, as everywhere in the shell.
- Each step is announced to ``step`` before it runs (``stop-old``, ``keep-old``, ``rename-new``,
  ``start-new``), so tests can stop the process at any of them.
- A failed step raises its ``ReconcileError``. With ``undo``, every container is first put back
  under the name it had (by id) and ``current`` is started again if it ran; without it, the caller
  rolls back its own way (a deploy keeps the new release as ``APP.failed`` and gates the old one).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from reconciler.adapters.protocols import DockerEngine
from reconciler.core.model import DEFAULT_STOP_TIMEOUT, ObservedContainer
from reconciler.errors import ReconcileError

PARKED = ".swap"  # + app: where ``current`` waits while ``incoming`` still holds ``keep_as``


def _nothing(_: str) -> None:
    pass


def swap_in(
    engine: DockerEngine,
    app: str,
    incoming: str,
    current: ObservedContainer | None,
    *,
    incoming_name: str,
    keep_as: str,
    drop: ObservedContainer | None = None,
    step: Callable[[str], None] = _nothing,
    log: Callable[[str], None] = _nothing,
    undo: bool = False,
) -> None:
    """Run the stopped container ``incoming`` (id; named ``incoming_name`` now) as ``app``; keep
    ``current`` stopped as ``keep_as``. ``drop`` only with a ``current``: without one, the kept
    container is what a failure falls back to."""
    parked = keep_as == incoming_name
    try:
        if current is not None:
            step("stop-old")  # before the removal of ``drop`` too: a kill here leaves every container as it was
            remover = _remove_meanwhile(engine, drop, log) if drop is not None else None
            if current.running:
                engine.stop(current.id, current.name, current.stop_timeout)
            step("keep-old")
            if remover is not None:
                remover.join()
            engine.rename(current.id, app + PARKED if parked else keep_as)
        if incoming_name != app:
            step("rename-new")
            engine.rename(incoming, app)
        step("start-new")
        engine.start(incoming, app)
        if current is not None and parked:
            engine.rename(current.id, keep_as)
    except ReconcileError:
        if undo:
            _put_back(engine, app, incoming, incoming_name, current)
        raise


def _remove_meanwhile(
    engine: DockerEngine, container: ObservedContainer, log: Callable[[str], None]
) -> threading.Thread:
    def remove() -> None:
        try:
            engine.remove(container.id, container.name)
        except ReconcileError as exc:
            log(f"could not remove {container.name}: {exc}")

    thread = threading.Thread(target=remove, daemon=True)
    thread.start()
    return thread


def _put_back(
    engine: DockerEngine, app: str, incoming: str, incoming_name: str, current: ObservedContainer | None
) -> None:
    """Every container under the name it had, ``current`` running again if it ran. Each step is tried
    whatever became of the one before: where the swap stopped is not known for sure."""
    with contextlib.suppress(ReconcileError):
        engine.stop(incoming, app, DEFAULT_STOP_TIMEOUT)
    if incoming_name != app:
        with contextlib.suppress(ReconcileError):
            engine.rename(incoming, incoming_name)
    if current is not None:
        with contextlib.suppress(ReconcileError):
            engine.rename(current.id, current.name)
        if current.running:
            with contextlib.suppress(ReconcileError):
                engine.start(current.id, current.name)
