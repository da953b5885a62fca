"""Webhooks judged without I/O (core.webhooks), the listener's app driven directly and over sockets, the agent's health.

No engine: a hook's proof, event and branch decide what happens; a flood is rate-limited per source with
bounded memory; the app answers 401/404/405/413/429 as documented and never echoes the secret; /healthz
turns 503 when the loop's last pass is too old or a pass runs too long. Over real sockets on 127.0.0.1:
HEAD, a body of exactly 1 MiB and one byte more, a signed body nested too deeply, and /healthz answering
while hundreds of connections send nothing or trickle (the figures are bench/listener_load.py's).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.listener import MAX_BODY, AgentHealth, Listener
from reconciler.agent.loop import Agent, AgentSettings
from reconciler.converge.run import Settings
from reconciler.core.webhooks import HookVerdict, Provider, RateLimit, judge
from reconciler.telemetry.log import EventLog
from reconciler.telemetry.metrics import Metrics
from tests.support.hostile import Hostile, probe

SECRET = b"hook-secret"
PUSH = json.dumps({"ref": "refs/heads/main"}).encode()


def proof(provider: Provider, body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {
        Provider.GITHUB: {"x-github-event": "push", "x-hub-signature-256": f"sha256={digest}"},
        Provider.GITEA: {"x-gitea-event": "push", "x-gitea-signature": digest},
        Provider.GITLAB: {"x-gitlab-event": "Push Hook", "x-gitlab-token": secret.decode()},
    }[provider]


@pytest.mark.parametrize("provider", list(Provider))
def test_an_authentic_push_to_the_followed_branch_is_a_push(provider: Provider) -> None:
    answer = judge(provider, proof(provider, PUSH), PUSH, SECRET, "refs/heads/main")
    assert (answer.verdict, answer.status, answer.ref) == (HookVerdict.PUSH, 202, "refs/heads/main")


@pytest.mark.parametrize("provider", list(Provider))
def test_a_wrong_or_missing_proof_is_unauthorized_and_the_body_is_not_read(provider: Provider) -> None:
    wrong = judge(provider, proof(provider, PUSH, b"other"), PUSH, SECRET, "refs/heads/main")
    missing = judge(provider, {}, b"not json at all", SECRET, "refs/heads/main")
    for answer in (wrong, missing):
        assert (answer.verdict, answer.status) == (HookVerdict.UNAUTHORIZED, 401)
        assert SECRET.decode() not in answer.reason and "other" not in answer.reason
    assert judge(provider, proof(provider, PUSH), PUSH, b"", None).verdict is HookVerdict.UNAUTHORIZED  # no secret


def test_other_branches_events_and_bodies() -> None:
    other = json.dumps({"ref": "refs/heads/feature"}).encode()
    answer = judge(Provider.GITHUB, proof(Provider.GITHUB, other), other, SECRET, "refs/heads/main")
    assert (answer.verdict, answer.status) == (HookVerdict.IGNORED, 202) and "refs/heads/feature" in answer.reason
    # Following the default branch (no name to check): any push wakes the agent.
    assert judge(Provider.GITHUB, proof(Provider.GITHUB, other), other, SECRET, None).verdict is HookVerdict.PUSH
    ping = {**proof(Provider.GITHUB, PUSH), "x-github-event": "ping"}
    assert judge(Provider.GITHUB, ping, PUSH, SECRET, "refs/heads/main").verdict is HookVerdict.IGNORED
    for body in (b"[1, 2]", b"{not json", json.dumps({"no": "ref"}).encode()):
        answer = judge(Provider.GITEA, proof(Provider.GITEA, body), body, SECRET, "refs/heads/main")
        assert (answer.verdict, answer.status) == (HookVerdict.BAD, 400), body


def test_the_rate_limit_is_per_source_refills_and_forgets_the_oldest() -> None:
    limit = RateLimit(rate=10.0, burst=5.0, max_sources=3)
    assert [limit.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limit.allow("b", 0.0)  # another source has its own bucket
    assert not limit.allow("a", 0.05) and limit.allow("a", 0.2)  # refilled at 10 a second
    for source in ("c", "d", "e"):
        limit.allow(source, 1.0)
    assert len(limit._buckets) == 3  # bounded, whatever a flood of addresses does


def call(listener: Listener, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, dict[str, Any]]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "REMOTE_ADDR": headers.pop("remote", "10.0.0.1"),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        **{"HTTP_" + key.upper(): value for key, value in headers.items()},
    }
    answered: list[str] = []
    chunks: Iterable[bytes] = listener.app(environ, lambda status, headers: answered.append(status))
    data = b"".join(chunks)
    status = int(answered[0].split()[0])
    return status, json.loads(data) if data.startswith(b"{") else {"text": data.decode()}


def a_listener(*, secret: bytes = SECRET, alive: bool = True) -> tuple[Listener, list[str], list[str]]:
    pushes: list[str] = []
    refused: list[str] = []
    listener = Listener(
        "127.0.0.1:0",
        metrics=Metrics(),
        health=lambda: AgentHealth(alive, 12.0, "the last pass ended 12s ago"),
        on_push=lambda: pushes.append("push"),
        on_refused=lambda key, message: refused.append(message) if message else None,
        secret=secret,
        followed="refs/heads/main",
        clock=lambda: 0.0,
    )
    return listener, pushes, refused


def headers_of(provider: Provider, body: bytes) -> dict[str, str]:
    return {key.replace("-", "_"): value for key, value in proof(provider, body).items()}


def test_the_app_answers_hooks_metrics_and_health() -> None:
    listener, pushes, refused = a_listener()
    assert call(listener, "POST", "/hooks/github", PUSH, **headers_of(Provider.GITHUB, PUSH))[0] == 202
    assert pushes == ["push"]
    status, body = call(listener, "POST", "/hooks/github", PUSH, x_hub_signature_256="sha256=00")
    assert body["result"] == "unauthorized"
    assert status == 401 and len(refused) == 1 and "not fetched" in refused[0] and SECRET.decode() not in refused[0]
    assert call(listener, "GET", "/hooks/github")[0] == 405
    assert call(listener, "POST", "/hooks/bitbucket", PUSH)[0] == 404
    status, text = call(listener, "GET", "/metrics")
    assert status == 200 and 'reconciler_webhooks_total{provider="github",result="push"} 1.0' in text["text"]
    assert call(listener, "GET", "/healthz") == (200, {"status": "ok", "last_pass_age_seconds": 12.0,
                                                      "detail": "the last pass ended 12s ago"})  # fmt: skip
    stale, _, _ = a_listener(alive=False)
    assert call(stale, "GET", "/healthz")[0] == 503


def test_without_a_secret_hooks_are_off_and_a_flood_is_429_and_a_big_body_413() -> None:
    off, pushes, _ = a_listener(secret=b"")
    assert call(off, "POST", "/hooks/github", PUSH, **headers_of(Provider.GITHUB, PUSH))[0] == 404
    assert pushes == []
    listener, pushes, _ = a_listener()
    statuses = [call(listener, "POST", "/hooks/gitea", PUSH, **headers_of(Provider.GITEA, PUSH))[0] for _ in range(50)]
    assert statuses.count(202) == 20 and statuses.count(429) == 30  # the burst, then nothing until it refills
    assert len(pushes) == 20
    assert call(listener, "POST", "/hooks/gitea", PUSH, remote="10.0.0.2", **headers_of(Provider.GITEA, PUSH))[0] == 202
    big = b"x" * (MAX_BODY + 1)
    assert call(listener, "POST", "/hooks/gitea", big, remote="10.0.0.3")[0] == 413


def test_the_agent_is_alive_while_its_passes_are_recent(tmp_path: Path) -> None:
    agent = Agent(AgentSettings(settings=Settings(state_dir=tmp_path), interval=60.0), EventLog(stream=io.StringIO()))
    assert agent.health().alive and agent.health().last_pass_age is None  # just started
    now = agent.started_at
    agent.pass_started, agent.pass_ended = now - 200.0, now - 190.0
    agent.loop_at = now - 185.0
    assert not agent.health().alive  # the loop has not gone round for over 3 intervals: it is stuck
    agent.loop_at = now
    assert agent.health().alive  # waiting (for a writable state directory, say) is alive
    agent.pass_ended = None
    agent.pass_started = now
    assert agent.health().alive and "running" in agent.health().detail
    agent.pass_started = now - 1000.0
    assert not agent.health().alive  # past the default cap of 900 s
    agent.pass_cap = 2000.0  # a file whose gates are long
    assert agent.health().alive


def test_a_signed_body_nested_too_deeply_is_a_bad_request() -> None:
    body = b"[" * 100_000
    answer = judge(Provider.GITHUB, proof(Provider.GITHUB, body), body, SECRET, "refs/heads/main")
    assert (answer.verdict, answer.status, answer.reason) == (
        HookVerdict.BAD,
        400,
        "the body is JSON nested too deeply",
    )


@contextmanager
def serving(**kwargs: Any) -> Iterator[tuple[Listener, list[str], list[str]]]:
    listener, pushes, refused = a_listener(**kwargs)
    listener.start()
    try:
        yield listener, pushes, refused
    finally:
        listener.stop()


def send(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, {key.lower(): value for key, value in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_head_of_healthz_and_metrics_answers_as_get_without_a_body() -> None:
    with serving() as (listener, _, _):
        for path in ("/healthz", "/metrics"):
            status, headers, body = send(listener.port, "GET", path)
            head_status, head_headers, head_body = send(listener.port, "HEAD", path)
            assert (head_status, head_body) == (status, b"") and status == 200, (path, head_status, head_body)
            assert head_headers["content-type"] == headers["content-type"]
            if path == "/healthz":  # /metrics may count one more request between the two
                assert head_headers["content-length"] == headers["content-length"] == str(len(body))


def padded_push(size: int) -> bytes:
    start = b'{"ref": "refs/heads/main", "pad": "'
    return start + b"x" * (size - len(start) - 2) + b'"}'


def test_a_body_of_exactly_1_mib_is_read_and_one_byte_more_is_413() -> None:
    with serving() as (listener, pushes, _):
        body = padded_push(MAX_BODY)
        assert len(body) == MAX_BODY
        status, _, answer = send(listener.port, "POST", "/hooks/github", body, headers_of_http(Provider.GITHUB, body))
        assert status == 202 and pushes == ["push"], answer
        body = padded_push(MAX_BODY + 1)
        status, headers, answer = send(
            listener.port, "POST", "/hooks/github", body, headers_of_http(Provider.GITHUB, body)
        )
        assert status == 413 and json.loads(answer)["result"] == "too-large", answer
        assert headers["connection"] == "close" and pushes == ["push"]
        assert probe("127.0.0.1", listener.port)[0] == 200  # the listener goes on


def headers_of_http(provider: Provider, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", **proof(provider, body)}


def test_a_signed_body_nested_too_deeply_is_400_and_one_line_without_a_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with serving() as (listener, pushes, refused):
        body = b"[" * 100_000
        for _ in range(2):
            status, _, answer = send(listener.port, "POST", "/hooks/gitea", body, headers_of_http(Provider.GITEA, body))
            assert status == 400 and json.loads(answer)["reason"] == "the body is JSON nested too deeply", answer
    assert pushes == [] and len(refused) == 2  # the agent says it once per provider (EventLog.once)
    assert refused[0] == "a gitea hook from 127.0.0.1: the body is JSON nested too deeply; not fetched"
    assert "Traceback" not in capfd.readouterr().err


def test_a_bug_in_the_app_is_500_and_one_line_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    listener, _, _ = a_listener()
    listener.health = lambda: 1 / 0  # type: ignore[assignment,return-value]
    listener.start()
    try:
        status, _, answer = send(listener.port, "GET", "/healthz")
        assert status == 500 and json.loads(answer)["reason"] == "internal error: ZeroDivisionError"
        assert probe("127.0.0.1", listener.port, "GET", "/metrics")[0] == 200
    finally:
        listener.stop()
    lines = [(record.getMessage(), record.exc_info) for record in caplog.records]
    assert lines == [("listener: GET /healthz: internal error: ZeroDivisionError: division by zero", None)], lines


def test_healthz_answers_while_hundreds_of_connections_send_nothing_or_trickle() -> None:
    with serving() as (listener, _, _), Hostile("127.0.0.1", listener.port, idle=300, slow=50, seconds=60) as hostile:
        assert hostile.open_now == 350
        statuses = [probe("127.0.0.1", listener.port, timeout=20)[0] for _ in range(5)]
        assert statuses == [200] * 5, statuses
        head = probe("127.0.0.1", listener.port, "HEAD", timeout=20)[0]
        assert head == 200
        assert hostile.refused == 0  # every connection was taken: none waited in the backlog
