"""Pull-request previews in process: the agent's listener takes the forges' hooks (``tests/data/previews``) into
the state directory's record, and passes against the in-memory engine make, update and remove the preview apps
of that record, with the real planner, the pass's preview rule and the real ``Applier``; no test sleeps.

What a user sees is asserted: which containers run and at which version, that the app a preview is made from
is never touched, what the agent's log says (once), and the record's mode.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
import os
import stat
import time
import unittest.mock
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.agent.loop import Agent, AgentSettings
from reconciler.converge.run import Settings, parse_desired, previewed, resolve
from reconciler.core.events import Event
from reconciler.core.holdback import Notice, Say
from reconciler.core.model import DesiredState
from reconciler.core.plan import ActionKind, plan
from reconciler.core.previews import deferred, preview_rule
from reconciler.core.proxy import Server, proxy_network
from reconciler.core.report import Outcome, Result
from reconciler.state import previews as record
from reconciler.telemetry.log import EventLog
from tests.support.fake_host import FakeHost

DATA = Path(__file__).parent / "data" / "previews"
SECRET = b"fast-previews-secret"
SHA1 = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
SHA2 = "e5bd3914e2e596debea16f433f57875b5b90bcd6"
HEALTH = "{exec: [check], interval: 1s, timeout: 10s, healthy_for: 2s}"

FILE = f"""\
proxy: {{listen: ["127.0.0.1:18080"]}}
apps:
  web:
    image: example/web
    version: v1
    env: {{LOG_LEVEL: info}}
    route: {{hosts: [shop.example.com], port: 8000}}
    health: {HEALTH}
previews:
  web:
    host: "pr-{{number}}.preview.example.com"
    version: "pr-{{number}}"
    env: {{FEATURE_FLAGS: all}}
    max: 2
    ttl: 2h
"""


# -- the listener ------------------------------------------------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Agent, int, list[tuple[str, str]]]]:
    said: list[tuple[str, str]] = []
    events = EventLog(fmt="json", stream=io.StringIO())
    events.listeners.append(lambda event, message, fields: said.append((str(event), message)))
    settings = Settings(state_dir=tmp_path / "state", instance="fast-previews")
    config = AgentSettings(settings=settings, listen="127.0.0.1:0", webhook_secret=SECRET)
    agent = Agent(config=config, events=events)
    listener = agent._listen()
    assert listener is not None
    try:
        yield agent, listener.port, said
    finally:
        listener.stop()


def woken(agent: Agent) -> bool:
    waker = agent.wakes.waker
    try:
        return bool(os.read(waker._read, 4096))
    except BlockingIOError:
        return False


def send(port: int, provider: str, name: str, *, secret: bytes = SECRET) -> tuple[int, dict[str, str]]:
    body = (DATA / name).read_bytes()
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    headers = {
        "github": {"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": "sha256=" + digest},
        "gitea": {"X-Gitea-Event": "pull_request", "X-Gitea-Signature": digest},
        "gitlab": {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": secret.decode()},
    }[provider]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", f"/hooks/{provider}", body=body, headers={"Content-Type": "application/json", **headers})
    answer = connection.getresponse()
    status, text = answer.status, answer.read().decode()
    connection.close()
    return status, json.loads(text)


@pytest.mark.parametrize(
    ("provider", "opened", "pushed", "closed"),
    [
        ("github", "github-opened.json", "github-synchronize.json", "github-closed-merged.json"),
        ("gitea", "gitea-opened.json", "gitea-synchronized.json", "gitea-closed.json"),
        ("gitlab", "gitlab-open.json", "gitlab-update.json", "gitlab-merge.json"),
    ],
)
def test_each_forges_hooks_open_update_and_close_the_record_and_say_so_once(
    agent: tuple[Agent, int, list[tuple[str, str]]], provider: str, opened: str, pushed: str, closed: str
) -> None:
    the_agent, port, said = agent
    state_dir = the_agent.config.settings.state_dir
    assert send(port, provider, opened) == (
        202,
        {"result": "pull-request", "reason": "pull request #7 opened: recorded"},
    )
    assert woken(the_agent)  # a pass at once
    [pull] = record.load(state_dir)
    assert (pull.number, pull.head_sha, pull.fork, pull.provider) == (7, SHA1, False, provider)
    assert stat.S_IMODE((state_dir / record.RECORD).stat().st_mode) == 0o600
    send(port, provider, opened)  # the forge sends it again (a redelivery): nothing new to say
    send(port, provider, pushed)
    send(port, provider, pushed)
    [pull] = record.load(state_dir)
    assert pull.head_sha == SHA2
    send(port, provider, closed)
    assert record.load(state_dir) == []
    merged = " (merged)" if provider != "gitea" else ""
    assert [line for line in said if line[0].startswith("preview.")] == [
        ("preview.opened", "pull request #7 opened"),
        ("preview.updated", "pull request #7 updated"),
        ("preview.closed", f"pull request #7 closed{merged}"),
    ]


def test_a_hook_with_a_bad_signature_records_nothing_and_is_said_once(
    agent: tuple[Agent, int, list[tuple[str, str]]],
) -> None:
    the_agent, port, said = agent
    for _ in range(2):
        status, body = send(port, "github", "github-opened.json", secret=b"a-guess")
        assert (status, body["result"]) == (401, "unauthorized")
    assert record.load(the_agent.config.settings.state_dir) == []
    assert not woken(the_agent)
    assert [event for event, _ in said] == ["webhook.refused"]


def test_a_fork_is_recorded_and_said_as_one(agent: tuple[Agent, int, list[tuple[str, str]]]) -> None:
    the_agent, port, said = agent
    send(port, "github", "github-opened-fork.json")
    [pull] = record.load(the_agent.config.settings.state_dir)
    assert pull.fork
    assert said[-1] == ("preview.opened", "pull request #8 opened (from a fork: previewed only with forks: true)")


# -- passes against the in-memory engine ---------------------------------------------------------------------------


class StubProxy:
    """The proxy as the applier uses it for a routed app: the switches it is asked for, nothing warm cooling."""

    def __init__(self) -> None:
        self.cooling: set[str] = set()
        self.switches: list[tuple[str, str]] = []

    def switch(self, app: str, server: Server | None) -> None:
        self.switches.append((app, server.container if server is not None else ""))

    def pool(self, app: str, members: object) -> None:
        raise AssertionError("no routed service here")


class Host:
    """A fake host and the state directory's record, with passes as the agent runs them (atomic, the rule first)."""

    def __init__(self, tmp_path: Path, text: str = FILE) -> None:
        self.host = FakeHost(tmp_path / "state")
        self.text = text
        self.now = time.time()
        self.notices: list[Notice] = []
        self.proxy = StubProxy()
        self.host.engine.ensure_network(proxy_network(self.host.engine.instance))
        for ref in ("example/web:v1", "example/web:pr-7", "example/web:pr-9", "example/web:pr-11"):
            self.host.engine.publish(ref)

    def hook(self, name: str, *, after: float = 0.0) -> None:
        from reconciler.core.webhooks import Provider, judge

        body = (DATA / name).read_bytes()
        headers = {"x-github-event": "pull_request",
                   "x-hub-signature-256": "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()}  # fmt: skip
        answer = judge(Provider.GITHUB, headers, body, SECRET, None)
        assert answer.pull is not None
        record.record(self.host.state_dir, answer.pull, self.now + after)

    def open(self, number: int, *, sha: str = SHA1, at: float = 0.0) -> None:
        from reconciler.core.webhooks import Provider, PullAction, PullEvent

        record.record(self.host.state_dir, PullEvent(Provider.GITHUB, PullAction.OPENED, number, sha, False), at)

    def desired(self) -> DesiredState:
        desired = parse_desired(self.text.encode(), "desired-state.yaml", "a" * 40)
        return previewed(desired, self.host.state_dir)

    def run(self) -> list[Outcome]:
        """One pass: every preview deploys alone, so the pass is run again while one waits (as the agent does)."""
        done: list[Outcome] = []
        for _ in range(10):
            desired = self.desired()
            observed = self.host.engine.observe()
            the_plan = plan(desired, resolve(self.host.engine, desired), observed)
            kept, notices = preview_rule(desired, alone=True)(the_plan, observed)
            self.notices += notices
            done += self.host.applier(proxy=self.proxy).apply(kept, observed, atomic=True)
            if not deferred(desired, the_plan, kept):
                return done
        raise AssertionError("the passes never settled")

    def said(self, event: Event) -> list[str]:
        return [n.message for n in self.notices if n.event is event and n.say is Say.ONCE]


def test_a_pull_request_gets_its_preview_a_push_updates_it_and_a_close_removes_it(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.run()
    web = host.host.running("web")
    host.hook("github-opened.json")

    [made] = host.run()
    assert (made.app, made.kind, made.result) == ("web-pr-7", ActionKind.CREATE, Result.APPLIED)
    assert host.host.version_of("web-pr-7") == "pr-7"
    preview = host.host.running("web-pr-7")
    assert preview.image.ref == "example/web:pr-7"
    assert (preview.env["FEATURE_FLAGS"], preview.env["LOG_LEVEL"], preview.env["PREVIEW_SHA"]) == ("all", "info", SHA1)

    host.hook("github-synchronize.json", after=60)  # CI pushed pr-7 again, for the new head
    [updated] = host.run()
    assert (updated.app, updated.kind, updated.result) == ("web-pr-7", ActionKind.REPLACE, Result.APPLIED)
    assert host.host.running("web-pr-7").env["PREVIEW_SHA"] == SHA2

    host.hook("github-closed-merged.json", after=120)
    outcomes = host.run()  # the preview and the release it kept warm
    assert {(o.app, o.kind, o.result) for o in outcomes} == {("web-pr-7", ActionKind.REMOVE, Result.APPLIED)}
    assert not any(name.startswith("web-pr-7") for name in host.host.engine.names())
    assert host.host.running("web").id == web.id  # the app it was made from was never touched


def test_max_refuses_the_newest_and_makes_it_when_one_closes(tmp_path: Path) -> None:
    host = Host(tmp_path)  # max: 2
    host.run()
    host.open(7, at=host.now)
    host.open(9, at=host.now + 1)
    host.open(11, at=host.now + 2)
    outcomes = host.run()
    assert sorted(o.app for o in outcomes if o.result is Result.APPLIED) == ["web-pr-7", "web-pr-9"]
    assert "web-pr-11" not in host.host.engine.names()
    assert set(host.said(Event.PREVIEW_REFUSED)) == {
        "web-pr-11: not made: web has 2 previews already (max); it is made when one of them closes"
    }
    record.remove(host.host.state_dir, 7)  # `reconcile previews remove 7`
    outcomes = host.run()
    assert sorted((o.app, o.kind) for o in outcomes) == [
        ("web-pr-11", ActionKind.CREATE), ("web-pr-7", ActionKind.REMOVE),
    ]  # fmt: skip


def test_a_preview_not_updated_within_its_ttl_is_removed_and_said(tmp_path: Path) -> None:
    host = Host(tmp_path)  # ttl: 2h
    host.run()
    host.open(7, at=host.now - 3600)
    assert [o.app for o in host.run()] == ["web-pr-7"]
    host.open(9, at=host.now - 3 * 3600)
    host.now += 2 * 3600  # no push to #7 since: its ttl ends
    with unittest.mock.patch("reconciler.converge.run.time.time", return_value=host.now):
        outcomes = host.run()
    assert {(o.app, o.kind) for o in outcomes} == {("web-pr-7", ActionKind.REMOVE)}
    assert set(host.said(Event.PREVIEW_EXPIRED)) == {  # #9 was too old to be made at all
        "web-pr-7: removed: pull request #7 was not updated for 2h (ttl); a push to it brings it back",
        "web-pr-9: removed: pull request #9 was not updated for 2h (ttl); a push to it brings it back",
    }


def test_a_preview_whose_image_does_not_exist_is_held_and_the_app_deploys(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.open(404, at=host.now)  # CI has not pushed example/web:pr-404
    host.text = FILE.replace("version: v1", "version: v2", 1)
    host.host.engine.publish("example/web:v2")
    outcomes = host.run()
    assert [(o.app, o.kind, o.result) for o in outcomes] == [("web", ActionKind.CREATE, Result.APPLIED)]
    assert host.host.version_of("web") == "v2"
    [held] = {n.message for n in host.notices if n.event is Event.PREVIEW_HELD}
    assert held.startswith("web-pr-404: held: ") and "example/web:pr-404" in held
    host.host.engine.publish("example/web:pr-404")  # CI pushed it
    host.notices.clear()
    [made] = host.run()
    assert (made.app, made.result) == ("web-pr-404", Result.APPLIED)
    assert Notice.clear("preview:held:web-pr-404") in host.notices  # said again if it comes back


def test_a_preview_that_fails_its_gate_takes_nothing_else_back(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.run()
    host.host.engine.publish("example/web:pr-7", healthy=False)
    host.host.engine.publish("example/web:v2")
    host.open(7, at=host.now)
    host.text = FILE.replace("version: v1", "version: v2", 1)  # a commit lands in the same pass
    outcomes = host.run()
    assert [(o.app, o.result) for o in outcomes] == [("web", Result.APPLIED), ("web-pr-7", Result.FAILED)]
    assert host.host.version_of("web") == "v2"  # the preview went alone, after it: web was not taken back
