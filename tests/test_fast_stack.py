"""A stack against the in-memory engine: start order (``depends_on``), a dependency that fails holds its
dependents, release commands (run before anything of the app changes; a failing one leaves the old release
serving, its output kept with secrets masked; a stale ``APP.release`` is removed and the command run again),
file secrets (copied in with owner and mode; changed contents redeploy, named only), networks and aliases,
and a job (``restart: "no"``) whose exit 0 passes its gate and is not started again.

The real planner, ``Applier`` and journal; only the engine is in memory, and no test sleeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.converge.run import parse_desired, resolve, secret_digest
from reconciler.core.model import DesiredState
from reconciler.core.plan import ActionKind, plan
from reconciler.core.report import Outcome, Result
from reconciler.core.stack import docker_network
from reconciler.deploy import networks
from reconciler.state.journal import JournalResult
from tests.support.fake_host import FakeHost

GATE = "health: {exec: [check], interval: 1s, timeout: 10s, healthy_for: 2s}"


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    host = FakeHost(tmp_path / "state")
    for app in ("db", "api", "web", "cache", "migrate"):
        for version in ("v1", "v2"):
            host.engine.publish(f"example/{app}:{version}")
    return host


def commit(host: FakeHost, text: str) -> DesiredState:
    host.commits += 1
    return parse_desired(text.encode(), "desired-state.yaml", f"{host.commits:040x}")


def apply(host: FakeHost, desired: DesiredState, **options: object) -> list[Outcome]:
    networks.ensure(host.engine, desired)
    observed = host.engine.observe()
    secrets = {
        app: {s.target: secret_digest(host.engine, desired, app, s) for s in spec.secrets}
        for app, spec in desired.apps.items()
    }
    the_plan = plan(desired, resolve(host.engine, desired), observed, secret_hashes=secrets)
    return host.applier(**options).apply(the_plan, observed)


def by_app(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.app: o for o in outcomes if o.kind in (ActionKind.CREATE, ActionKind.REPLACE)}


CHAIN = f"""
apps:
  web:
    image: example/web
    version: v1
    depends_on: [api]
    {GATE}
  api:
    image: example/api
    version: v1
    depends_on: {{db: healthy}}
    {GATE}
  db:
    image: example/db
    version: v1
    {GATE}
  cache:
    image: example/cache
    version: v1
    {GATE}
"""


@pytest.mark.parametrize("parallel", [1, 4])
def test_a_depends_on_chain_deploys_in_order_whatever_the_parallelism(host: FakeHost, parallel: int) -> None:
    outcomes = apply(host, commit(host, CHAIN), parallel=parallel)

    assert {app: o.result for app, o in by_app(outcomes).items()} == dict.fromkeys(
        ("web", "api", "db", "cache"), Result.APPLIED
    )
    creates = [c.removeprefix("create ") for c in host.engine.calls if c.startswith("create ")]
    # Each app is created only after the one it depends on passed its gate (it was started before).
    assert creates.index("db.next") < creates.index("api.next") < creates.index("web.next")
    gates = [app for app, step in host.steps if step == "gate"]
    assert gates.index("db") < gates.index("api") < gates.index("web")


def test_a_failed_dependency_holds_its_dependents_and_says_so(host: FakeHost) -> None:
    host.engine.publish("example/db:v1", healthy=False)

    outcomes = by_app(apply(host, commit(host, CHAIN), parallel=4))

    assert outcomes["db"].result is Result.FAILED
    assert (outcomes["api"].result, outcomes["api"].message.split(":")[0]) == (Result.SKIPPED, "waiting for db")
    assert (outcomes["web"].result, outcomes["web"].message.split(":")[0]) == (Result.SKIPPED, "waiting for api")
    assert outcomes["cache"].result is Result.APPLIED  # independent: deployed as ever
    assert "api" not in host.engine.names() and "web" not in host.engine.names()
    assert "api: not deployed, waiting for db" in "\n".join(host.lines)


def test_a_dependency_that_already_runs_healthy_lets_its_dependent_go(host: FakeHost) -> None:
    apply(host, commit(host, CHAIN))
    changed = CHAIN.replace("image: example/web\n    version: v1", "image: example/web\n    version: v2")

    outcomes = by_app(apply(host, commit(host, changed)))

    assert list(outcomes) == ["web"] and outcomes["web"].result is Result.APPLIED


RELEASE = f"""
apps:
  web:
    image: example/web
    version: VERSION
    env: {{DATABASE_PASSWORD: hunter2-very-secret}}
    release: {{command: [/app/manage, migrate], timeout: 30s}}
    {GATE}
"""


def test_a_release_command_runs_in_a_throwaway_container_before_the_new_release_is_made(host: FakeHost) -> None:
    apply(host, commit(host, RELEASE.replace("VERSION", "v1")))
    host.engine.calls.clear()
    host.steps.clear()

    [outcome] = by_app(apply(host, commit(host, RELEASE.replace("VERSION", "v2")))).values()

    assert outcome.result is Result.APPLIED
    calls = host.engine.calls
    assert calls.index("create web.release") < calls.index("start web.release") < calls.index("create web.next")
    assert "web.release" not in host.engine.names()  # removed once it ended
    job_steps = [step for app, step in host.steps if app == "web"]
    assert job_steps[:3] == ["pull", "release", "create"]


def test_a_failing_release_command_keeps_the_old_release_and_its_output_masked(host: FakeHost) -> None:
    apply(host, commit(host, RELEASE.replace("VERSION", "v1")))
    bad = host.engine.publish("example/web:v2")
    bad.job_exits, bad.job_output = 3, "applying 0042\nerror: password hunter2-very-secret refused\n"

    [outcome] = by_app(apply(host, commit(host, RELEASE.replace("VERSION", "v2")))).values()

    assert outcome.result is Result.FAILED
    assert "release command /app/manage migrate exited 3" in outcome.message
    assert "password" in outcome.message and "hunter2-very-secret" not in outcome.message
    assert host.version_of("web") == "v1" and host.running("web")
    assert "web.next" not in host.engine.names() and "web.release" not in host.engine.names()
    row = host.journal.last("web")
    assert row is not None and row.result is JournalResult.FAILED
    assert "exited 3" in row.message and "hunter2-very-secret" not in row.message


def test_a_release_command_cut_short_is_cleaned_up_and_run_again(host: FakeHost) -> None:
    apply(host, commit(host, RELEASE.replace("VERSION", "v1")))
    desired = commit(host, RELEASE.replace("VERSION", "v2"))

    class Killed(BaseException):
        pass

    def die(app: str, step: str) -> None:
        if step == "release":
            raise Killed

    networks.ensure(host.engine, desired)
    observed = host.engine.observe()
    dying = host.applier()
    dying.on_step = die
    with pytest.raises(Killed):
        dying.apply(plan(desired, resolve(host.engine, desired), observed), observed)
    # As a SIGKILL inside the command would leave it: APP.release exists (here, made by hand).
    target = next(a.target for a in plan(desired, resolve(host.engine, desired), observed).actions if a.target)
    host.engine.create(target, "web.release", env={}, job=["/app/manage", "migrate"])

    host.applier().verify_unfinished(host.engine.observe(), desired.apps)
    outcomes = apply(host, desired)

    cleanup = [o for o in outcomes if o.container == "web.release"]
    assert [o.result for o in cleanup] == [Result.APPLIED]
    assert by_app(outcomes)["web"].result is Result.APPLIED and host.version_of("web") == "v2"
    assert "web.release" not in host.engine.names()


SECRET = """
apps:
  db:
    image: example/db
    version: v1
    secrets:
      - {{source: {source}, target: db_password, mode: "0440", uid: 999, gid: 998}}
    health: {{exec: [check], interval: 1s, timeout: 10s, healthy_for: 2s}}
"""


def test_a_secret_is_copied_in_with_its_mode_and_owner_and_a_new_content_redeploys_by_name(
    host: FakeHost, tmp_path: Path
) -> None:
    source = tmp_path / "db_password"
    source.write_text("correct horse battery staple\n")
    desired = commit(host, SECRET.format(source=source))

    apply(host, desired)

    assert host.running("db").secrets == {"db_password": (b"correct horse battery staple\n", "0440", 999, 998)}
    labels = str(host.running("db").labels)
    assert "correct horse" not in labels
    source.write_text("a new password, rotated\n")
    observed = host.engine.observe()
    digest = host.engine.files.secret_digest("db", "db_password", str(source))
    the_plan = plan(desired, resolve(host.engine, desired), observed, secret_hashes={"db": {"db_password": digest}})
    [action] = the_plan.actions
    assert [str(change) for change in action.reasons] == ["secret db_password: as deployed -> contents changed"]
    assert by_app(apply(host, desired))["db"].result is Result.APPLIED
    assert host.running("db").secrets["db_password"][0] == b"a new password, rotated\n"


NETWORKS = """
networks:
  backend: {internal: true}
apps:
  db:
    image: example/db
    version: v1
    networks: {backend: {aliases: [postgres]}}
  web:
    image: example/web
    version: v1
    networks: [default, backend]
"""


def test_apps_join_their_networks_with_their_aliases_and_unused_networks_are_pruned(host: FakeHost) -> None:
    desired = commit(host, NETWORKS)

    assert networks.ensure(host.engine, desired) == ["network backend (reconciler_backend): created"]
    apply(host, desired)

    backend = docker_network("default", "backend")
    assert host.engine.networks[backend].internal is True
    assert set(host.running("web").networks) == {"reconciler", backend}
    assert set(host.running("db").networks) == {backend}
    assert host.running("db").aliases == {backend: ("postgres",)}
    # The file drops backend: db moves to default, and the network goes once nothing is on it.
    moved = commit(host, "apps:\n  db: {image: example/db, version: v1}\n  web: {image: example/web, version: v1}\n")
    assert networks.prune(host.engine, moved) == [
        f"network backend ({backend}): not in the file; left while db, web use it"
    ]
    apply(host, moved)
    for name in ("db.prev", "web.prev"):
        host.engine.remove(host.engine.container(name).id, name)
    assert networks.prune(host.engine, moved) == [f"network backend ({backend}): removed (not in the file)"]
    assert backend not in host.engine.networks


JOB = """
apps:
  migrate:
    image: example/migrate
    version: v1
    restart: "no"
  web:
    image: example/web
    version: v1
    depends_on: {migrate: completed}
"""


def test_a_job_passes_its_gate_by_exiting_0_and_is_not_started_again(host: FakeHost) -> None:
    host.engine.publish("example/migrate:v1", exits=0)
    desired = commit(host, JOB)

    outcomes = by_app(apply(host, desired, parallel=4))

    assert outcomes["migrate"].result is Result.APPLIED and outcomes["web"].result is Result.APPLIED
    assert host.engine.container("migrate").state == "exited"
    again = plan(desired, resolve(host.engine, desired), host.engine.observe())
    assert again.in_sync, again.actions


def test_a_job_that_fails_holds_the_app_waiting_for_it(host: FakeHost) -> None:
    host.engine.publish("example/migrate:v1", exits=1)

    outcomes = by_app(apply(host, commit(host, JOB), parallel=4))

    assert outcomes["migrate"].result is Result.FAILED
    assert outcomes["web"].result is Result.SKIPPED and outcomes["web"].message.startswith("waiting for migrate")


def test_a_failed_release_command_is_held_by_the_agent_and_never_run_again_for_that_commit(host: FakeHost) -> None:
    from tests.test_fast_holdback import agent_pass

    apply(host, commit(host, RELEASE.replace("VERSION", "v1")))
    host.engine.publish("example/web:v2").job_exits = 1
    desired = commit(host, RELEASE.replace("VERSION", "v2"))

    _, outcomes, _ = agent_pass(host, desired)
    assert [o.result for o in outcomes] == [Result.FAILED]
    [failure] = host.journal.failures()
    assert failure.culprit and "exited 1" in failure.reason
    host.engine.calls.clear()

    kept, outcomes, _ = agent_pass(host, desired)

    assert outcomes == [] and not [a for a in kept.actions if a.target is not None]
    assert "create web.release" not in host.engine.calls  # the command is not run again in a loop
    assert host.version_of("web") == "v1"


def test_in_the_agent_a_failed_dependency_takes_the_whole_commit_back(host: FakeHost) -> None:
    apply(host, commit(host, CHAIN))
    broken = CHAIN.replace("example/db\n    version: v1", "example/db\n    version: v2").replace(
        "example/cache\n    version: v1", "example/cache\n    version: v2"
    )
    host.engine.publish("example/db:v2", healthy=False)
    desired = commit(host, broken)
    networks.ensure(host.engine, desired)
    observed = host.engine.observe()

    outcomes = by_app(host.applier(parallel=4).apply(plan(desired, resolve(host.engine, desired), observed), observed,
                                                    atomic=True))  # fmt: skip

    assert outcomes["db"].result in (Result.ROLLED_BACK, Result.FAILED)
    assert outcomes["cache"].result is Result.ROLLED_BACK  # deployed, then taken back with its commit
    assert {app: host.version_of(app) for app in ("db", "cache", "api", "web")} == dict.fromkeys(
        ("db", "cache", "api", "web"), "v1"
    )


def test_a_dependency_placed_on_another_host_of_a_fleet_is_that_hosts_to_order(host: FakeHost) -> None:
    from reconciler.converge.run import place

    fleet = commit(
        host,
        f"""
hosts:
  web-1: {{labels: {{role: web}}}}
  db-1: {{labels: {{role: db}}}}
apps:
  db:
    image: example/db
    version: v1
    on: [db-1]
    {GATE}
  web:
    image: example/web
    version: v1
    on: [web-1]
    depends_on: [db]
    {GATE}
""",
    )

    outcomes = by_app(apply(host, place(fleet, "web-1")))

    assert list(outcomes) == ["web"] and outcomes["web"].result is Result.APPLIED
