"""A container removed by hand (``docker rm -f``) while a pass starts it is no verdict on its release.

Fast: the engine is a stub that refuses the start with "No such container" and then lists nothing, as the
real one does for a container removed between the pass's listing and its start; the journal is real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.core.model import AppSpec, ObservedContainer, ObservedState, Role
from reconciler.core.plan import Action, ActionKind, Change, Plan, Resolution, Target
from reconciler.core.report import Result
from reconciler.deploy.applier import Applier
from reconciler.errors import ContainerError
from reconciler.state.journal import Journal, JournalResult


class RemovedEngine:
    """An engine on which the container was removed just after the pass listed it."""

    instance = "default"

    def start(self, container_id: str, name: str) -> None:
        raise ContainerError(f"start {name}: 404 Client Error: Not Found (No such container: {container_id})")

    def inspect(self, container: str) -> Any:
        return None


def test_a_container_removed_while_the_pass_starts_it_is_no_failed_deploy(tmp_path: Path) -> None:
    spec = AppSpec.model_validate({"image": "team/web", "version": "v1"})
    web = ObservedContainer(
        id="id-web", name="web", state="exited", image_id="sha256:" + "1" * 64, managed=True, app="web",
        role=Role.CURRENT, version="v1",
    )  # fmt: skip
    target = Target("web", spec, Resolution("team/web:v1"), {}, "abc12345")
    action = Action(ActionKind.START, "web", "web", (Change("state", "exited", "running"),), target)
    (tmp_path / "state").mkdir()
    journal = Journal(tmp_path / "state")
    try:
        applier = Applier(RemovedEngine(), journal)  # type: ignore[arg-type]
        (outcome,) = applier.apply(Plan("abc12345", (action,)), ObservedState(containers=(web,)))
        assert outcome.result is Result.SUPERSEDED and not outcome.release_failed
        assert outcome.message == "web was removed while this pass started it; the next pass deploys it again"
        row = journal.last("web")
        assert row is not None and row.result is JournalResult.INTERRUPTED
    finally:
        journal.close()
