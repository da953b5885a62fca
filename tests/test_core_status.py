"""`reconcile status` as records (core.status) and as a person reads them (core.report.status_lines): the JSON
of `Status.as_dict` keeps its keys, their order and its values; no engine, no journal."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError

import pytest

from reconciler.core.failures import Failure
from reconciler.core.report import status_lines
from reconciler.core.status import AppStatus, DeployRecord, Status

COMMIT = "c0ffee0000000000000000000000000000000000"
AT = 1_700_000_000.5  # 2023-11-14 22:13:20Z

FAILED = Failure(app="web", spec_hash="h2", revision=COMMIT, version="v2", reason="health 404", culprit=True)
COMPANION = Failure(app="web", spec_hash="h3", revision=COMMIT, version="v3", reason="rolled back with it",
                    culprit=False)  # fmt: skip


def a_status() -> Status:
    web = AppStatus(
        app="web", desired="v2", running="v1", state="running", health="healthy", in_sync=False,
        last_applied=DeployRecord(revision=COMMIT, version="v1", result="succeeded", at=AT, message="ok"),
        last_attempted=DeployRecord(revision=COMMIT, version="v2", result="rolled-back", at=AT, message="gate"),
        stable="v1", held=FAILED, failed=(FAILED, COMPANION),
    )  # fmt: skip
    gone = AppStatus(app="old", desired=None, running=None, state="missing", health="missing", in_sync=True)
    return Status(
        file="desired-state.yaml", revision=COMMIT, agent_pid=42, suspended="by hand",
        break_glass=(("web", "v1"), ("api", "v0")), apps=(gone, web),
        routes=("route * / -> web v1 (172.18.0.3:8000), 2 in flight",), proxy=("start the proxy again",),
    )  # fmt: skip


def test_as_dict_is_the_json_of_reconcile_status() -> None:
    data = a_status().as_dict()
    assert list(data) == [
        "revision", "file", "desired_error", "refused", "journal_error", "agent_pid", "suspended", "break_glass",
        "apps", "routes", "proxy",
    ]  # fmt: skip
    assert data["routes"] == ["route * / -> web v1 (172.18.0.3:8000), 2 in flight"]
    assert data["proxy"] == ["start the proxy again"]
    assert data["break_glass"] == {"web": "v1", "api": "v0"} and list(data["break_glass"]) == ["web", "api"]
    assert data["apps"][0] == {
        "app": "old", "desired": None, "running": None, "state": "missing", "health": "missing", "in_sync": True,
        "last_applied": None, "last_attempted": None, "stable": None, "held": None, "tasks": [], "stack": None,
        "failed": [],
    }  # fmt: skip
    web = data["apps"][1]
    assert list(web) == [
        "app", "desired", "running", "state", "health", "in_sync", "last_applied", "last_attempted", "stable",
        "held", "tasks", "stack", "failed",
    ]  # fmt: skip
    assert web["last_applied"] == {"commit": "c0ffee00", "version": "v1", "result": "succeeded", "at": AT,
                                   "message": "ok"}  # fmt: skip
    assert web["last_attempted"]["result"] == "rolled-back"
    assert web["held"] == "health 404"
    assert web["failed"] == [
        {"version": "v2", "commit": "c0ffee00", "reason": "health 404", "culprit": True},
        {"version": "v3", "commit": "c0ffee00", "reason": "rolled back with it", "culprit": False},
    ]
    assert json.loads(json.dumps(data)) == data


def test_a_status_that_read_nothing_says_why() -> None:
    data = Status(file="f.yaml", desired_error="no such directory", journal_error="corrupt").as_dict()
    assert data == {
        "revision": None, "file": "f.yaml", "desired_error": "no such directory", "refused": None,
        "journal_error": "corrupt",
        "agent_pid": None, "suspended": None, "break_glass": {}, "apps": [], "routes": [], "proxy": [],
    }  # fmt: skip
    assert status_lines(Status(file="f.yaml", desired_error="no such directory")) == [
        "f.yaml @ ?; no agent running",
        "!! desired state unreadable: no such directory",
    ]


def test_status_lines_read_the_records() -> None:
    lines = status_lines(a_status())
    assert lines[0] == "desired-state.yaml @ c0ffee00; agent running (pid 42)"
    assert lines[1] == "!! SUSPENDED: by hand — the agent changes nothing until `reconcile resume`"
    assert lines[2].startswith("!! the host differs from git: api runs v0 by a local rollback.")  # sorted
    assert "`reconcile rollback web --to v1 --push`" in lines[3]
    assert lines[4:] == [
        "old: desired -, running - (missing, missing), in sync, stable -",
        "web: desired v2, running v1 (running, healthy), DRIFT, stable v1",
        "    last applied: v1 @ c0ffee00 succeeded 2023-11-14 22:13:20Z",
        "    last attempted: v2 @ c0ffee00 rolled-back 2023-11-14 22:13:20Z",
        "    held back: health 404 (`reconcile retry web` to try again)",
        "    failed: v2 @ c0ffee00: health 404",
        "    rolled back with its commit: v3 @ c0ffee00: rolled back with it",
        "route * / -> web v1 (172.18.0.3:8000), 2 in flight",
        "proxy: start the proxy again",
    ]


def test_the_records_are_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        a_status().apps[0].in_sync = False  # type: ignore[misc]


def test_an_apps_place_in_a_stack_is_one_line_of_names() -> None:
    from reconciler.core.model import AppSpec
    from reconciler.core.status import StackLine

    spec = AppSpec.model_validate({
        "image": "shop", "version": "v1", "networks": ["default", "backend"], "depends_on": {"db": "healthy"},
        "release": {"command": ["/app/manage", "migrate"]},
        "secrets": [{"source": "/etc/shop/pw", "target": "db_password"}],
    })  # fmt: skip
    line = StackLine.of(spec)
    assert line is not None
    assert line.said() == (
        "needs db (healthy); networks backend, default; release command /app/manage migrate; secrets db_password"
    )
    assert StackLine.of(AppSpec.model_validate({"image": "shop", "version": "v1"})) is None
