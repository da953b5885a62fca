"""``reconcile previews``: the pull requests on record and their previews; one taken off by hand.

Guarantees: ``listed`` is read-only (no lock, nothing changed; the file is parsed, no secret is opened, and a
file that cannot be read still lists the record). ``remove`` changes only the record (``state.previews``), then
wakes the agent on the state directory (SIGHUP), whose pass prunes the preview like any app gone from the
file; without an agent, the next ``reconcile`` does. A pull request pushed to again gets its preview back.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.adapters.docker import connect
from reconciler.converge.run import Settings, read_desired
from reconciler.converge.sealed import Mode
from reconciler.core.model import DesiredState
from reconciler.core.previews import OpenPull, PreviewRow, rows
from reconciler.errors import ReconcileError
from reconciler.ops.controls import wake_agent
from reconciler.state import previews


def listed(settings: Settings) -> tuple[list[PreviewRow], str]:
    """The rows, and why the file could not be read ("" when it could)."""
    desired: DesiredState | None = None
    problem = ""
    try:
        desired = read_desired(settings, sops=Mode.PARSE)
    except ReconcileError as exc:
        problem = str(exc)
    running: list[str] = []
    if desired is not None and desired.previewed is not None and desired.previewed.of:
        engine = connect(settings.docker_host, instance=settings.instance)
        observed = engine.observe()
        running = [app for app in desired.previewed.of if (found := observed.ours(app)) is not None and found.running]
    return rows(desired, previews.load(settings.state_dir), running), problem


def remove(*, state_dir: Path, number: int) -> tuple[OpenPull | None, int | None]:
    """Pull request ``number`` off the record; what it was (None: not on record) and the agent woken (its pid)."""
    gone = previews.remove(state_dir, number)
    return gone, wake_agent(state_dir) if gone is not None else None
