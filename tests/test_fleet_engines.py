"""A fleet over real engines: three more ``dockerd`` processes on this machine, one file, one view.

Each host of the file is an engine of its own (``tests/support/engines.py``: its own data root, socket,
bridge and containerd). A host's one-shot ``reconcile --host NAME`` deploys its apps on its engine;
``--dry-run --all-hosts`` then shows which host drifts, and ``status --all-hosts`` what runs where,
read from each engine's labels. An engine that is stopped is reported as not read, within the host
timeout, and holds up no other host. Run apart from the parallel suite (``scripts/test``), as the
engine-restart tests are: it starts and stops engines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import ImageFactory
from tests.support.cli import run_cli
from tests.support.engines import ExtraEngine, load_image
from tests.support.gitrepo import GitRemote
from tests.support.state import show

pytestmark = [pytest.mark.docker, pytest.mark.apart]

FILE = "desired-state.yaml"


def fleet_file(engines: list[ExtraEngine], image: str, version: str) -> str:
    repo, _, _ = image.rpartition(":")
    hosts = "".join(
        f'  e{index}: {{engine: "{engine.host}", labels: {{role: {"web" if index < 3 else "jobs"}}}}}\n'
        for index, engine in enumerate(engines, start=1)
    )
    return (
        f"hosts:\n{hosts}apps:\n"
        f"  fleetweb:\n    image: {repo}\n    version: {version}\n    init: true\n    stop_timeout: 1s\n"
        "    on: {role: web}\n    health: {interval: 100ms, healthy_for: 300ms}\n"
    )


def test_preview_and_status_of_every_host_from_one_place(
    engines: list[ExtraEngine], docker_client: Any, images: ImageFactory, tmp_path: Path, run_prefix: str
) -> None:
    ref = images.build("fleetweb", "v1")
    for engine in engines:
        load_image(docker_client, engine, ref)
    remote = GitRemote(tmp_path / "git")
    remote.commit_file(FILE, fleet_file(engines, ref, "v1"), "a fleet of three")
    instance = {"RECONCILE_INSTANCE": f"{run_prefix}-fleet"}
    common = ["--repo", remote.url]
    # Host e1 converges; e2 not yet; e3 runs no app of the file (it is a jobs host).
    first = run_cli(
        *common, "--state-dir", tmp_path / "e1", "--host", "e1", "--docker-host", engines[0].host, env=instance
    )
    assert first.returncode == 0, show(first)

    preview = run_cli(*common, "--dry-run", "--all-hosts", "-o", "json", env=instance)
    assert preview.returncode == 2, show(preview)  # e2 drifts
    hosts = {host["host"]: host for host in json.loads(preview.stdout)["hosts"]}
    assert hosts["e1"]["plan"]["in_sync"] and hosts["e3"]["plan"]["in_sync"], hosts
    assert [a["action"] for a in hosts["e2"]["plan"]["actions"]] == ["create"], hosts["e2"]

    second = run_cli(
        *common, "--state-dir", tmp_path / "e2", "--host", "e2", "--docker-host", engines[1].host, env=instance
    )
    assert second.returncode == 0, show(second)
    preview = run_cli(*common, "--dry-run", "--all-hosts", env=instance)
    assert preview.returncode == 0, show(preview)
    assert "== e1 (" in preview.stdout and "== e3 (" in preview.stdout, show(preview)

    table = run_cli(*common, "status", "--all-hosts", env=instance)
    assert table.returncode == 0, show(table)
    *rows, summary = [line.split() for line in table.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[2], row[3]) for row in rows] == [("e1", "fleetweb", "v1", "v1"),
                                                                  ("e2", "fleetweb", "v1", "v1")]  # fmt: skip
    assert " ".join(summary).startswith("3 of 3 hosts run what desired-state.yaml @ "), show(table)

    # An engine that does not answer: reported within the host timeout, the others still read.
    engines[1].stop(wait=False)
    try:
        began = time.monotonic()
        status = run_cli(*common, "status", "--all-hosts", "--host-timeout", "3", "-o", "json", env=instance)
        took = time.monotonic() - began
        assert status.returncode == 1, show(status)
        found = {host["host"]: host for host in json.loads(status.stdout)["hosts"]}
        assert found["e2"]["error"] and found["e1"]["apps"][0]["version"] == "v1", found
        assert took < 3 + 0.5 + 2.0, took  # its timeout, the half second the issue allows, a process start
    finally:
        engines[1].start()
