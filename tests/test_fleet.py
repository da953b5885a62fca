"""A fleet from one file (``hosts:``, ``on:``): validation at FILE:LINE:COL, placement, and a host's pass.

The pure part places apps on hosts by name or labels and names every selector that places nothing. The
end-to-end part runs two hosts' passes of one committed file against the real engine (each host its own
``--instance``, as each server would run its own agent): each deploys exactly its own apps.
"""

from __future__ import annotations

import socket

import pytest

from reconciler.converge.run import parse_desired
from reconciler.core import rollout
from reconciler.core.fleet import hosts_of, placed
from reconciler.core.model import HostSpec
from reconciler.errors import InvalidDesiredState
from tests.support.agent import World, wait_body
from tests.support.cli import run_cli
from tests.support.gitrepo import GitRemote
from tests.support.state import app_yaml, show

FILE = "desired-state.yaml"
HOSTS = """\
hosts:
  web-1: {engine: "ssh://deploy@web-1", labels: {role: web, canary: true}}
  web-2: {engine: "ssh://deploy@web-2", labels: {role: web}}
  jobs-1: {labels: {role: worker}}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(InvalidDesiredState) as caught:
        parse_desired(text.encode(), FILE, "")
    return caught.value.errors


def test_apps_are_placed_by_labels_by_name_or_everywhere() -> None:
    desired = parse_desired(
        (
            HOSTS + "apps:\n"
            "  web: {image: x/web, version: v1, on: {role: web}}\n"
            "  canary-only: {image: x/web, version: v1, on: {role: web, canary: true}}\n"
            "  worker: {image: x/worker, version: v1, on: [jobs-1]}\n"
            "  exporter: {image: x/exporter, version: v1}\n"
        ).encode(),
        FILE,
        "",
    )
    assert desired.hosts is not None
    assert hosts_of(desired.apps["web"], desired.hosts) == ["web-1", "web-2"]
    assert hosts_of(desired.apps["canary-only"], desired.hosts) == ["web-1"]  # `canary: true` is the text "true"
    assert hosts_of(desired.apps["exporter"], desired.hosts) == ["jobs-1", "web-1", "web-2"]
    assert sorted(placed(desired, "web-2").apps) == ["exporter", "web"]
    assert sorted(placed(desired, "jobs-1").apps) == ["exporter", "worker"]
    assert placed(desired, "jobs-1").host == "jobs-1"


def test_a_selector_that_places_nothing_is_an_error_at_its_place() -> None:
    assert errors(
        HOSTS + "apps:\n"
        "  worker: {image: x/worker, version: v1, on: [jobs-2]}\n"
        "  db: {image: x/db, version: v1, on: {role: db}}\n"
        "  none: {image: x/db, version: v1, on: []}\n"
    ) == [
        f"{FILE}:6:47: apps.worker.on[0]: no host 'jobs-2' is declared in hosts; did you mean 'jobs-1'?",
        f"{FILE}:7:38: apps.db.on: no host has the labels role=db: the app would run nowhere",
        f"{FILE}:8:40: apps.none.on: an empty on: places the app on no host; leave on: out for every host",
    ]
    assert errors("apps:\n  web: {image: x/web, version: v1, on: [web-1]}\n") == [
        f"{FILE}:2:40: apps.web.on: on: places the app on hosts: declare them in a top-level hosts:"
    ]
    assert errors("hosts:\n  Web_1: {}\napps: {}\n")[0].startswith(f"{FILE}:2:3: hosts: host name 'Web_1'")
    assert "did you mean 'labels'" in errors("hosts:\n  web-1: {lables: {a: b}}\napps: {}\n")[0]


@pytest.mark.docker
def test_each_host_deploys_only_its_apps_from_one_file(world: World) -> None:
    web, worker = world.app("web"), world.app("worker")
    text = (
        "hosts:\n  web-1: {labels: {role: web}}\n  jobs-1: {labels: {role: worker}}\napps:\n"
        + app_yaml(web.name, web.image, "v1", web.port).replace(
            "    init: true\n", "    init: true\n    on: {role: web}\n"
        )
        + app_yaml(worker.name, worker.image, "v1", worker.port).replace(
            "    init: true\n", "    init: true\n    on: [jobs-1]\n"
        )
    )
    world.remote.commit_file(FILE, text, "a fleet")
    base = ["--repo", world.repo, "--state-dir"]
    first = run_cli(*base, world.tmp / "web-1", "--host", "web-1", "--instance", f"{web.name}-host")
    assert first.returncode == 0, show(first)
    wait_body(web.port, "v1", timeout=10)
    assert world.client.api.containers(all=True, filters={"name": f"^/{worker.name}$"}) == []
    dry = run_cli(*base, world.tmp / "jobs-1", "--host", "jobs-1", "--instance", f"{worker.name}-host",
                  "--dry-run")  # fmt: skip
    assert dry.returncode == 2 and worker.name in dry.stdout and web.name not in dry.stdout, show(dry)
    second = run_cli(*base, world.tmp / "jobs-1", "--host", "jobs-1", "--instance", f"{worker.name}-host")
    assert second.returncode == 0, show(second)
    wait_body(worker.port, "v1", timeout=10)
    # A name the file does not declare, and this machine's own name by default: one clear line each.
    wrong = run_cli(*base, world.tmp / "x", "--host", "web-3", "--dry-run")
    assert wrong.returncode == 1 and "--host web-3, which desired-state.yaml does not declare in hosts" in wrong.stderr
    assert "did you mean 'web-1'?" in wrong.stderr and "Traceback" not in wrong.stderr, show(wrong)
    default = run_cli(*base, world.tmp / "x", "--dry-run")
    assert default.returncode == 1 and f"this machine is {socket.gethostname()!r}" in default.stderr, show(default)


def test_a_host_that_hangs_is_reported_and_holds_up_no_other() -> None:
    import threading
    import time

    from reconciler.core.fleet import Unanswered
    from reconciler.errors import EngineUnavailable
    from reconciler.ops.fleet import ask_each

    release = threading.Event()

    def ask(host: str) -> str:
        if host == "b-hangs":
            release.wait(10)
        if host == "c-down":
            raise EngineUnavailable("Docker engine at ssh://c does not answer")
        return f"{host} answered"

    began = time.monotonic()
    answers = ask_each(["a", "b-hangs", "c-down", "d"], ask, parallel=1, timeout=0.3)
    took = time.monotonic() - began
    release.set()
    assert answers == {
        "a": "a answered",
        "b-hangs": Unanswered("did not answer within 0.3s"),
        "c-down": Unanswered("Docker engine at ssh://c does not answer"),
        "d": "d answered",
    }
    assert took < 2.0, took  # one slot, and the hung host gave it up at its timeout


# -- the order of a push rollout ----------------------------------------------------------------------


def fleet_hosts() -> dict[str, HostSpec]:
    desired = parse_desired((HOSTS + "apps: {}\n").encode(), FILE, "")
    assert desired.hosts is not None
    return dict(desired.hosts)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("canary,*", [["web-1"], ["jobs-1", "web-2"]]),
        ("*", [["jobs-1", "web-1", "web-2"]]),
        ("web-2,role=web,*", [["web-2"], ["web-1"], ["jobs-1"]]),
        ("jobs-1+canary, web-2", [["jobs-1", "web-1"], ["web-2"]]),  # web-2 only: web-1 is in group 1 already
        ("canary", [["web-1"]]),  # hosts no group names are not part of it
        ("canary,*,*", [["web-1"], ["jobs-1", "web-2"]]),  # a * with no host left is dropped
        ("web-1,web-1+web-2", [["web-1"], ["web-2"]]),  # a host is in the first group that names it
    ],
)
def test_a_rollout_is_groups_of_hosts_by_name_label_or_the_rest(spec: str, expected: list[list[str]]) -> None:
    assert rollout.groups(spec, fleet_hosts()) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("wbe-1,*", "'wbe-1' is no host and no label of a host; did you mean 'web-1'?"),
        ("role=db", "no host has the label role=db"),
        ("role", "no host has the label role=true (role is web, worker)"),
        ("*,canary", "'canary' selects only hosts of earlier groups: it would be no group"),
        ("cnaary", "'cnaary' is no host and no label of a host; did you mean 'canary'?"),
        ("db-9", "'db-9' is no host and no label of a host; hosts: jobs-1, web-1, web-2"),
        ("canary,,*", "has an empty group"),
        ("=web", "is not a host, KEY=VALUE, KEY or *"),
    ],
)
def test_a_rollout_term_that_selects_no_host_is_refused_by_name(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match="--rollout: ") as caught:
        rollout.groups(spec, fleet_hosts())
    assert message in str(caught.value)


def test_rollout_without_all_hosts_is_refused_before_anything_is_read() -> None:
    result = run_cli("--repo", "/nonexistent", "--rollout", "canary,*")
    assert result.returncode == 1, show(result)
    assert result.stderr.strip() == "--rollout pushes to the file's hosts: give --all-hosts too", show(result)


def test_validate_reads_a_fleet_file_on_a_machine_that_is_none_of_its_hosts(git_remote: GitRemote) -> None:
    git_remote.commit_file(FILE, HOSTS + "apps:\n  web: {image: x/web, version: v1, on: {role: web}}\n", "fleet")
    assert socket.gethostname() not in ("web-1", "web-2", "jobs-1")

    result = run_cli("--repo", git_remote.url, "validate")

    assert result.returncode == 0 and result.stdout.strip().endswith(": valid, 1 app"), show(result)
    one_host = run_cli("--repo", git_remote.url, "--host", "jobs-1", "validate")
    assert one_host.returncode == 0 and one_host.stdout.strip().endswith(": valid, 0 apps"), show(one_host)
