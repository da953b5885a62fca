"""One Docker host in memory for the fast tests: the in-memory engine, a clock that moves when waited on, the real
journal in a temporary state directory, and passes that plan and apply a commit as the pass does.

Guarantees: ``deploy`` reads the file text as a commit is read (``converge.run.parse_desired``), resolves
and plans with the real functions (``converge.run.resolve``, ``core.plan.plan``) and applies with the real
``Applier``; only the engine is in memory. A fake host never sleeps: its health gates run on ``clock``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.converge.run import parse_desired, resolve
from reconciler.core.model import DesiredState
from reconciler.core.plan import Plan, plan
from reconciler.core.report import Outcome
from reconciler.core.stack import DEFAULT_NETWORK, docker_network
from reconciler.deploy.applier import Applier
from reconciler.state.journal import Journal
from tests.support.fake_engine import FakeClock, FakeContainer, FakeEngine

HEALTH = "{exec: [check], interval: 1s, timeout: 10s, healthy_for: 2s}"


def file_of(versions: Mapping[str, str]) -> str:
    """A desired-state.yaml of one app per entry (``APP: VERSION``), each on its own host port, exec-gated."""
    lines = ["apps:"]
    for number, (app, version) in enumerate(sorted(versions.items())):
        lines += [
            f"  {app}:",
            f"    image: example/{app}",
            f"    version: {version}",
            f'    ports: ["{8080 + number}:80"]',
            f"    health: {HEALTH}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class FakeHost:
    state_dir: Path
    clock: FakeClock = field(default_factory=FakeClock)
    engine: FakeEngine = field(init=False)
    journal: Journal = field(init=False)
    steps: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    commits: int = 0

    def __post_init__(self) -> None:
        self.engine = FakeEngine(clock=self.clock)
        # What a pass makes before its deploys (``deploy.networks.ensure``): the apps' default network.
        self.engine.ensure_network(docker_network(self.engine.instance, DEFAULT_NETWORK))
        self.journal = Journal(self.state_dir)

    def applier(self, **options: object) -> Applier:
        """A new ``Applier`` on this host, as a new process of ``reconcile`` builds one."""
        return Applier(
            self.engine,
            self.journal,
            clock=self.clock,
            sleep=self.clock.sleep,
            wall=self.clock,
            on_step=lambda app, step: self.steps.append((app, step)),
            log=self.lines.append,
            **options,  # type: ignore[arg-type]
        )

    def commit(self, versions: Mapping[str, str]) -> DesiredState:
        """The file of a new commit that pins ``versions``."""
        self.commits += 1
        return parse_desired(file_of(versions).encode(), "desired-state.yaml", f"{self.commits:040x}")

    def plan(self, desired: DesiredState) -> Plan:
        return plan(desired, resolve(self.engine, desired), self.engine.observe())

    def deploy(
        self, versions: Mapping[str, str], *, atomic: bool = False, applier: Applier | None = None
    ) -> list[Outcome]:
        """One pass of a new commit that pins ``versions``: plan against the engine and apply."""
        desired = self.commit(versions)
        observed = self.engine.observe()
        the_plan = plan(desired, resolve(self.engine, desired), observed)
        return (applier or self.applier()).apply(the_plan, observed, atomic=atomic)

    def running(self, name: str) -> FakeContainer:
        """The container of that name, which must be running."""
        found = self.engine.container(name)
        assert found.state == "running", f"{name} is {found.state}: {self.engine.names()}"
        return found

    def version_of(self, name: str) -> str:
        """The version a container of ours runs, read as the planner reads it (its labels, via observe)."""
        found = self.engine.observe().named(name)
        assert found is not None, f"no {name}: {self.engine.names()}"
        return found.version
