"""core.plan.port_waits: which deploys of a pass wait for another app to free a host port. Pure."""

from __future__ import annotations

from reconciler.core.model import AppSpec, ObservedContainer, ObservedState
from reconciler.core.plan import Action, ActionKind, Plan, Resolution, Target, port_waits


def target(app: str, *ports: str) -> Target:
    spec = AppSpec.model_validate({"image": f"team/{app}", "version": "v2", "ports": list(ports)})
    return Target(app, spec, Resolution(ref=f"team/{app}:v2"), {}, "rev")


def running(app: str, *ports: str, state: str = "running") -> ObservedContainer:
    return ObservedContainer(
        id=f"id-{app}", name=app, state=state, image_id="sha256:1", managed=True, app=app,
        fingerprint={"ports": sorted(ports)},
    )  # fmt: skip


def replace(app: str, *ports: str) -> Action:
    return Action(ActionKind.REPLACE, app, app, target=target(app, *ports))


def test_two_apps_that_swap_host_ports_each_wait_for_the_other() -> None:
    observed = ObservedState(containers=(running("a", "8001:8000"), running("b", "127.0.0.1:8002:8000")))
    plan = Plan("rev", (replace("a", "8002:8000"), replace("b", "127.0.0.1:8001:8000")))
    assert port_waits(plan, observed) == {"a": frozenset({"b"}), "b": frozenset({"a"})}


def test_a_new_app_on_the_port_of_an_app_the_commit_removes_waits_for_its_removal() -> None:
    observed = ObservedState(containers=(running("old", "8001:8000"),))
    plan = Plan("rev", (Action(ActionKind.CREATE, "new", "new", target=target("new", "8001:8000")),
                        Action(ActionKind.REMOVE, "old", "old")))  # fmt: skip
    assert port_waits(plan, observed) == {"new": frozenset({"old"})}


def test_no_wait_for_its_own_port_another_protocol_a_stopped_holder_or_one_the_plan_leaves_running() -> None:
    observed = ObservedState(
        containers=(
            running("a", "8001:8000"),
            running("b", "8002:8000/udp"),
            running("c", "8003:8000", state="exited"),
            running("d", "8004:8000"),
        )
    )
    plan = Plan("rev", (replace("a", "8001:8000", "8002:8000"), replace("b", "9000:8000/udp"),
                        replace("c", "9001:8000"), replace("e", "8003:8000", "8004:8000")))  # fmt: skip
    # a keeps its own port and takes b's port in tcp (b holds it in udp); c does not run; d is not replaced.
    assert port_waits(plan, observed) == {}
