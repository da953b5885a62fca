"""Push mode over real engines: ``reconcile --all-hosts --rollout canary,*`` from one workstation.

Four hosts: three more ``dockerd`` processes on this machine reached as ``unix://`` engines
(``tests/support/engines.py``), and this machine's own engine reached as ``ssh://root@127.0.0.1``
through the suite's real sshd. Each test commits to a real bare repository and runs the real CLI, then
reads each engine to see what runs where. Covered: groups converge in order; a release that fails on
the canary leaves every later host untouched; a host of a group that fails takes the group's others
back; an engine stopped mid-rollout stops it; a host added to and removed from the file; a rollback
commit that ``status --all-hosts`` shows host by host; Ctrl-C mid-rollout. Run apart from the parallel suite (it starts
engines).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import AppNames, ImageFactory
from tests.support.cli import cli_env, run_cli
from tests.support.engines import ExtraEngine, load_image
from tests.support.gitrepo import GitRemote
from tests.support.sshd import Sshd
from tests.support.state import inspect, labels, show

pytestmark = [pytest.mark.docker, pytest.mark.apart]

FILE = "desired-state.yaml"
VERSION_LABEL = "io.reconciler.version"


@dataclass
class Fleet:
    """One committed fleet file and the CLI that pushes it; ``clients`` reach each host's engine."""

    remote: GitRemote
    state: Path
    env: dict[str, str | None]
    addresses: dict[str, str]  # host -> engine address, as the file gives it
    clients: dict[str, Any]  # host -> docker client, to see what runs there
    app: str
    repo: str  # the image repository

    def commit(self, version: str, *, hosts: list[str] | None = None, labels: dict[str, str] | None = None) -> str:
        chosen = hosts if hosts is not None else sorted(self.addresses)
        text = "hosts:\n" + "".join(
            f'  {host}: {{engine: "{self.addresses[host]}", labels: {{role: web{self._extra(host, labels)}}}}}\n'
            for host in chosen
        )
        text += (
            f"apps:\n  {self.app}:\n    image: {self.repo}\n    version: {version}\n    init: true\n"
            "    stop_timeout: 1s\n    on: {role: web}\n"
            "    health: {interval: 100ms, healthy_for: 1s, timeout: 10s}\n"
        )
        return self.remote.commit_file(FILE, text, f"{self.app} {version}")

    @staticmethod
    def _extra(host: str, labels: dict[str, str] | None) -> str:
        value = (labels or {}).get(host)
        return f", {value}" if value else ""

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return run_cli("--repo", self.remote.url, "--state-dir", self.state, *args, env=self.env, timeout=300)

    def push(self, rollout: str = "*") -> tuple[int, dict[str, dict[str, Any]], subprocess.CompletedProcess[str]]:
        result = self.cli("--all-hosts", "--rollout", rollout, "-o", "json")
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"no JSON report:\n{show(result)}")
        return result.returncode, {host["host"]: host for host in report["hosts"]}, result

    def push_during_e1_gate(
        self, act: Callable[[subprocess.Popen[str]], object], *, timeout: float
    ) -> tuple[int, str, str]:
        """``--all-hosts --rollout e1,* -o json`` in the background; ``act`` on it once group 1 (e1) is under
        way (its new release exists); then its exit code, stdout and stderr."""
        first = self.runs("e1")
        assert first is not None
        push = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--repo", self.remote.url, "--state-dir", str(self.state),
             "--all-hosts", "--rollout", "e1,*", "-o", "json"],
            env=cli_env(self.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while (self.runs("e1") or first) == first and push.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            act(push)
            out, err = push.communicate(timeout=timeout)
        finally:
            if push.poll() is None:
                push.kill()
        return push.returncode, out, err

    def runs(self, host: str) -> tuple[str, str] | None:
        """(version, container id) of the app on ``host``, if it runs there."""
        info = inspect(self.clients[host], self.app)
        if info is None or not info["State"]["Running"]:
            return None
        return labels(info).get(VERSION_LABEL, ""), str(info["Id"])

    def versions(self) -> dict[str, str | None]:
        return {host: (self.runs(host) or (None, ""))[0] for host in sorted(self.clients)}


@pytest.fixture
def fleet(
    engines: list[ExtraEngine],
    docker_client: Any,
    sshd: Sshd,
    images: ImageFactory,
    app_names: AppNames,
    tmp_path: Path,
    run_prefix: str,
) -> Iterator[Fleet]:
    app = app_names("push")
    refs = [images.build("fleetpush", tag) for tag in ("v1", "v2", "v3")]
    refs.append(images.build("fleetpush", "bad", exit_at_start=True))
    for engine in engines:
        for ref in refs:
            load_image(docker_client, engine, ref)
    repo = refs[0].rpartition(":")[0]
    addresses = {f"e{index}": engine.host for index, engine in enumerate(engines, start=1)}
    clients: dict[str, Any] = {f"e{index}": engine.client for index, engine in enumerate(engines, start=1)}
    addresses["m"], clients["m"] = sshd.url, docker_client  # this machine's engine, through ssh
    env: dict[str, str | None] = {**sshd.client_env(), "RECONCILE_INSTANCE": f"{run_prefix}-{app}"}
    yield Fleet(GitRemote(tmp_path / "git"), tmp_path / "state", env, addresses, clients, app, repo)
    for host, client in clients.items():
        if host != "m":  # app_names removes it from this machine's engine
            for name in (app, f"{app}.prev", f"{app}.next", f"{app}.failed"):
                if inspect(client, name) is not None:
                    client.api.remove_container(name, force=True)


def states(hosts: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {host: found["state"] for host, found in hosts.items()}


def test_a_rollout_goes_group_by_group_and_stops_where_a_release_fails(fleet: Fleet) -> None:
    canary = {"e1": 'canary: "true"'}
    fleet.commit("v1", labels=canary)
    typo = fleet.cli("--all-hosts", "--rollout", "cnaary,*")
    assert typo.returncode == 1, show(typo)
    assert typo.stderr.strip() == "error: --rollout: 'cnaary' is no host and no label of a host; did you mean 'canary'?"
    assert fleet.versions() == {"e1": None, "e2": None, "e3": None, "m": None}  # nothing was changed
    preview = fleet.cli("--dry-run", "--all-hosts", "--rollout", "canary,*")
    assert preview.returncode == 2 and "rollout canary,*: 1. e1; 2. e2, e3, m" in preview.stdout, show(preview)

    code, hosts, result = fleet.push("canary,*")
    assert code == 0, show(result)
    assert states(hosts) == {"e1": "converged", "e2": "converged", "e3": "converged", "m": "converged"}, show(result)
    assert [hosts[h]["group"] for h in ("e1", "e2", "e3", "m")] == [1, 2, 2, 2]
    assert fleet.versions() == {"e1": "v1", "e2": "v1", "e3": "v1", "m": "v1"}
    assert all(hosts[h]["runs"][0]["version"] == "v1" for h in hosts), hosts
    before = {host: fleet.runs(host) for host in ("e2", "e3", "m")}

    # A release that dies at start: the canary's gate fails, it goes back, and no later host is touched.
    fleet.commit("bad", labels=canary)
    code, hosts, result = fleet.push("canary,*")
    assert code == 1, show(result)
    assert states(hosts) == {"e1": "failed", "e2": "not started", "e3": "not started", "m": "not started"}
    assert [o["result"] for o in hosts["e1"]["outcomes"]] == ["rolled-back"], hosts["e1"]
    assert fleet.versions() == {"e1": "v1", "e2": "v1", "e3": "v1", "m": "v1"}
    assert {host: fleet.runs(host) for host in ("e2", "e3", "m")} == before  # the very same containers

    # In text: one block per host, what it runs, and a tally.
    text = fleet.cli("--all-hosts", "--rollout", "canary,*")
    assert text.returncode == 1, show(text)
    assert "== e1 (group 1, unix://" in text.stdout and "== m (group 2, ssh://" in text.stdout, show(text)
    assert f"runs: {fleet.app} v1" in text.stdout, show(text)
    assert text.stdout.splitlines()[-1] == "fleet: 1 failed, 3 not started", show(text)
    assert "group 1/2: e1" in text.stderr, show(text)


def test_a_host_that_fails_takes_its_group_back_and_later_groups_are_left_alone(
    fleet: Fleet, docker_client: Any
) -> None:
    fleet.commit("v1")
    assert fleet.push()[0] == 0
    # v3 is a good release everywhere but on e2, where the tag names the release that dies at start.
    fleet.clients["e2"].api.tag(f"{fleet.repo}:bad", fleet.repo, "v3", force=True)
    fleet.commit("v3")

    code, hosts, result = fleet.push("e1+e2,*")

    assert code == 1, show(result)
    assert states(hosts) == {"e1": "rolled back", "e2": "failed", "e3": "not started", "m": "not started"}
    assert "rolled back with the rest of group 1: e2 failed" in hosts["e1"]["outcomes"][0]["message"], hosts
    assert fleet.versions() == {"e1": "v1", "e2": "v1", "e3": "v1", "m": "v1"}
    assert [app["version"] for app in hosts["e1"]["runs"]] == ["v1"], hosts["e1"]


def test_an_engine_stopped_mid_rollout_stops_it_and_its_group_goes_back(
    fleet: Fleet, engines: list[ExtraEngine]
) -> None:
    fleet.commit("v1")
    assert fleet.push()[0] == 0
    fleet.commit("v2")
    try:
        code, out, err = fleet.push_during_e1_gate(lambda push: engines[2].stop(wait=False), timeout=240)
    finally:
        engines[2].start()
    assert code == 1, f"{out}\n{err}"
    hosts = {host["host"]: host for host in json.loads(out)["hosts"]}
    assert states(hosts) == {"e1": "converged", "e2": "rolled back", "e3": "unreachable", "m": "rolled back"}, out
    assert hosts["e3"]["error"] and hosts["e3"]["runs"] is None, hosts["e3"]
    assert {host: fleet.versions()[host] for host in ("e1", "e2", "m")} == {"e1": "v2", "e2": "v1", "m": "v1"}


def test_a_host_added_to_the_file_is_converged_and_a_removed_one_is_left_as_it_is(fleet: Fleet) -> None:
    fleet.commit("v1", hosts=["e1", "e2"])
    code, hosts, result = fleet.push()
    assert code == 0 and sorted(hosts) == ["e1", "e2"], show(result)
    assert fleet.versions() == {"e1": "v1", "e2": "v1", "e3": None, "m": None}

    fleet.commit("v1", hosts=["e1", "e2", "e3"])
    preview = fleet.cli("--dry-run", "--all-hosts", "-o", "json")
    assert preview.returncode == 2, show(preview)
    drift = {h["host"]: [a["action"] for a in h["plan"]["actions"]] for h in json.loads(preview.stdout)["hosts"]}
    assert drift == {"e1": [], "e2": [], "e3": ["create"]}, drift
    code, hosts, result = fleet.push()
    assert code == 0 and states(hosts) == {"e1": "in sync", "e2": "in sync", "e3": "converged"}, show(result)

    # e2 leaves the file: a push no longer reaches it, and what runs there is left alone.
    kept = fleet.runs("e2")
    fleet.commit("v2", hosts=["e1", "e3"])
    code, hosts, result = fleet.push()
    assert code == 0 and states(hosts) == {"e1": "converged", "e3": "converged"}, show(result)
    assert fleet.runs("e2") == kept
    table = fleet.cli("status", "--all-hosts")
    assert [row.split()[0] for row in table.stdout.splitlines()[1:-1]] == ["e1", "e3"], show(table)


def test_a_rollback_commit_and_which_hosts_have_converged_to_it(fleet: Fleet) -> None:
    canary = {"e1": 'canary: "true"'}
    fleet.commit("v1", labels=canary)
    fleet.commit("v2", labels=canary)
    assert fleet.push()[0] == 0
    assert set(fleet.versions().values()) == {"v2"}

    back = run_cli("--repo", fleet.remote.clone_path, "rollback", fleet.app, "--to", "v1", "--push", env=fleet.env)
    assert back.returncode == 0, show(back)
    code, hosts, _ = fleet.push("canary")  # only the canary, for now
    assert code == 0 and states(hosts)["e1"] == "converged" and states(hosts)["e2"] == "not in the rollout"

    table = fleet.cli("status", "--all-hosts", "-o", "json")
    assert table.returncode == 0, show(table)
    found = {h["host"]: h for h in json.loads(table.stdout)["hosts"]}
    assert {host: h["apps"][0]["in_sync"] for host, h in found.items()} == {
        "e1": True, "e2": False, "e3": False, "m": False
    }, found  # fmt: skip
    assert {host: (h["apps"][0]["version"], h["apps"][0]["desired"]) for host, h in found.items()}["e2"] == ("v2", "v1")
    text = fleet.cli("status", "--all-hosts")
    assert "1 of 4 hosts run what" in text.stdout, show(text)


def test_ctrl_c_stops_a_rollout_where_it_is_and_the_next_push_finishes_it(fleet: Fleet) -> None:
    fleet.commit("v1")
    code, _, first = fleet.push()
    assert code == 0, show(first)
    fleet.commit("v2")
    # What Ctrl-C sends, during e1's gate (1 s of health).
    code, out, err = fleet.push_during_e1_gate(lambda push: push.send_signal(signal.SIGINT), timeout=120)
    assert code == 1, f"{out}\n{err}"
    hosts = {host["host"]: host for host in json.loads(out)["hosts"]}
    assert states(hosts) == {"e1": "interrupted", "e2": "not started", "e3": "not started", "m": "not started"}
    assert fleet.versions() == {"e1": "v2", "e2": "v1", "e3": "v1", "m": "v1"}  # e1's release was not judged

    code, hosts, result = fleet.push("e1,*")  # judges e1's release, then goes on
    assert code == 0 and states(hosts) == {"e1": "converged", "e2": "converged", "e3": "converged",
                                           "m": "converged"}, show(result)  # fmt: skip
    assert [(o["result"], o["message"]) for o in hosts["e1"]["outcomes"]] == [("applied", "v2")], hosts["e1"]
    assert set(fleet.versions().values()) == {"v2"}
