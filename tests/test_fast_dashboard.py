"""The dashboard's logic without an engine: its rows and their order, the versions to go back to, and what its
answers do with sessions, CSRF and a read-only agent (the board given in-process; the real agent and a real
browser are tests/test_dashboard.py's)."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.agent.dashboard import Dashboard, Facts
from reconciler.converge.run import Settings
from reconciler.core import dashboard as view
from reconciler.core.canary import FLAG, Rollout
from reconciler.core.failures import Failure
from reconciler.core.status import AppStatus, DeployRecord, Status
from reconciler.state.journal import SUSPENDED, Entry, Journal, JournalResult
from reconciler.telemetry import scrub
from reconciler.telemetry.log import EventLog

TOKEN = b"0123456789abcdef0123"


def record(version: str, result: str) -> DeployRecord:
    return DeployRecord(revision="a" * 40, version=version, result=result, at=1.0, message="")


def app(name: str, **fields: Any) -> AppStatus:
    given: dict[str, Any] = {"desired": "v2", "running": "v2", "state": "running", "health": "healthy", "in_sync": True}
    return AppStatus(app=name, **{**given, **fields})


def test_failing_apps_come_first_then_drifting_then_the_rest_each_by_name() -> None:
    status = Status(
        file="desired-state.yaml",
        apps=(
            app("alpha", hosts=("shop.test",)),
            app("beta", in_sync=False),
            app("gamma", last_attempted=record("v3", "rolled-back")),
            app("delta", health="unhealthy: the container exited with code 1"),
            app(
                "omega",
                held=Failure(app="omega", version="v3", revision="b" * 40, spec_hash="h", reason="gate", culprit=True),
            ),
            app("zeta", desired=None, health="running (no longer in the file)", in_sync=False),
        ),
        routes=("cert shop.test: expires 2027-02-01, renews 2027-01-02", "cert other.test: expires 2027-03-01"),
    )
    rows = view.rows(status)
    assert [(row.app, row.state) for row in rows] == [
        ("delta", "failing"), ("gamma", "failing"), ("omega", "failing"),
        ("beta", "drift"), ("zeta", "drift"), ("alpha", "ok"),
    ]  # fmt: skip
    alpha = rows[-1]
    assert alpha.route == "shop.test" and alpha.certs == ("cert shop.test: expires 2027-02-01, renews 2027-01-02",)
    assert rows[2].held == "gate" and rows[4].desired == "(not in the file)"


def deploy(to: str, result: str, frm: str = "") -> Entry:
    return Entry(id=1, started_at=10.0, finished_at=12.5, revision="c" * 40, author="ann <ann@example.com>",
                 app="web", action="update", from_version=frm, to_version=to, from_image="", to_image="",
                 spec_hash="h", result=JournalResult(result), message="")  # fmt: skip


def test_history_and_the_versions_to_go_back_to() -> None:
    entries = [deploy("v4", "rolled-back", "v3"), deploy("v3", "succeeded", "v2"), deploy("v2", "succeeded", "v1"),
               deploy("v3", "succeeded", "v1"), deploy("v1", "succeeded")]  # fmt: skip
    assert view.back_to(entries, current="v3") == ["v2", "v1"]  # newest first, once each, never v4 (it failed)
    first = view.history(entries)[0]
    assert (first.change, first.result, first.took, first.commit) == ("v3 → v4", "rolled-back", "2.5s", "c" * 8)


class Planted:
    """A status whose journal message carries a value the scrubber knows as a secret."""

    secret = "s3cr3t-planted-value"

    def __call__(self, settings: Settings) -> Status:
        return Status(
            file="desired-state.yaml",
            revision="d" * 40,
            apps=(app("web", health=f"unhealthy: its log says {self.secret}"),),
        )


@pytest.fixture
def planted() -> Iterator[Planted]:
    scrub.remember([Planted.secret])
    try:
        yield Planted()
    finally:
        scrub.forget()


def board(
    tmp_path: Path, collect: Callable[[Settings], Status], *, token: bytes = TOKEN
) -> tuple[Dashboard, io.StringIO]:
    stream = io.StringIO()
    facts = Facts("test", "web-1", "refs/heads/main", "d" * 40, "d" * 40, "", time.time(), None)
    settings = Settings(repo=str(tmp_path / "repo"), state_dir=tmp_path / "state")
    dash = Dashboard(settings, "refs/heads/main", lambda: facts, EventLog(stream=stream), token=token, collect=collect)
    return dash, stream


def request(
    dash: Dashboard, method: str, path: str, body: str = "", cookie: str = "", origin: str = "http://dash.test:9400"
) -> tuple[int, dict[str, str], str]:
    data = body.encode()
    environ = {"wsgi.input": io.BytesIO(data), "CONTENT_LENGTH": str(len(data)), "HTTP_COOKIE": cookie,
               "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "dash.test:9400", "HTTP_ORIGIN": origin}  # fmt: skip
    answered = dash.answer(method, path, environ)
    if answered is None:
        return 404, {}, ""
    status, headers, text = answered
    return status, dict(headers), text.decode()


def login(dash: Dashboard) -> tuple[str, str]:
    status, headers, _ = request(dash, "POST", "/login", "token=" + TOKEN.decode())
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    pair = cookie.split(";")[0]
    _, _, page = request(dash, "GET", "/", cookie=pair)
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return pair, found.group(1)


def test_read_only_without_a_token_no_form_no_login_no_action(tmp_path: Path, planted: Planted) -> None:
    dash, _ = board(tmp_path, planted, token=b"")
    status, headers, page = request(dash, "GET", "/")
    assert status == 200 and 'data-app="web"' in page and "<form" not in page and "/login" not in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert request(dash, "GET", "/login")[0] == 404
    assert request(dash, "POST", "/actions/suspend", "csrf=x")[0] == 404


def test_a_page_never_carries_a_planted_secret(tmp_path: Path, planted: Planted) -> None:
    dash, _ = board(tmp_path, planted)
    for path in ("/", "/pending"):
        status, _, page = request(dash, "GET", path)
        assert status == 200 and planted.secret not in page
    page = request(dash, "GET", "/")[2]
    assert 'data-state="failing"' in page and "unhealthy: its log says" in page  # the line is there, masked


def test_actions_need_a_session_and_its_csrf_token_and_are_said_as_events(tmp_path: Path, planted: Planted) -> None:
    dash, log = board(tmp_path, planted)
    status, _, page = request(dash, "POST", "/login", "token=wrong")
    assert status == 401 and 'id="flash"' in page and TOKEN.decode() not in page
    assert request(dash, "POST", "/actions/suspend", "csrf=x&reason=r")[0] == 403  # no session
    cookie, csrf = login(dash)
    status, _, page = request(dash, "POST", "/actions/suspend", "csrf=wrong&reason=r", cookie=cookie)
    assert status == 403 and "CSRF" in page
    assert not (tmp_path / "state" / "journal.db").exists()  # nothing was done

    status, headers, _ = request(dash, "POST", "/actions/suspend", f"csrf={csrf}&reason=window", cookie=cookie)
    assert status == 303 and headers["Location"] == "/"
    journal = Journal(tmp_path / "state")
    try:
        assert "window" in (journal.flag(SUSPENDED) or "")
    finally:
        journal.close()
    _, _, page = request(dash, "GET", "/", cookie=cookie)
    assert 'id="flash"' in page and "suspended: window" in page
    said = [line for line in log.getvalue().splitlines() if "ui.action" in line]
    assert len(said) == 2 and "logged in" in said[0] and "suspended: window" in said[1]
    assert cookie.split("=", 1)[1] not in log.getvalue()  # the session's cookie is never said

    status, headers, page = request(dash, "POST", "/apps/web/rollback", f"csrf={csrf}&version=v1", cookie=cookie)
    _, _, page = request(dash, "GET", "/apps/web", cookie=cookie)
    assert 'role="alert"' in page and "rollback refused" in page  # no repository there: refused, said


def test_events_reach_the_recent_list_scrubbed_and_pass_done_does_not(tmp_path: Path, planted: Planted) -> None:
    dash, _ = board(tmp_path, planted, token=b"")
    dash.events.listeners.append(dash.on_event)
    from reconciler.core.events import Event

    dash.events.emit(Event.DEPLOY_FAILED, f"web: v2 failed: {planted.secret}", app="web")
    dash.events.emit(Event.PASS_DONE, "a pass ended")
    page = request(dash, "GET", "/")[2]
    assert 'data-event="deploy.failed" data-app="web"' in page and "pass.done" not in page
    assert planted.secret not in page


def test_a_post_from_another_site_is_refused_even_with_the_session_and_its_token(
    tmp_path: Path, planted: Planted
) -> None:
    dash, _ = board(tmp_path, planted)
    cookie, csrf = login(dash)
    status, _, page = request(dash, "POST", "/actions/suspend", f"csrf={csrf}&reason=r", cookie, "https://evil.test")
    assert status == 403 and "Cross-origin" in page
    assert not (tmp_path / "state" / "journal.db").exists()


def test_wrong_tokens_from_one_address_are_throttled(tmp_path: Path, planted: Planted) -> None:
    dash, _ = board(tmp_path, planted)
    statuses = [request(dash, "POST", "/login", "token=nope")[0] for _ in range(11)]
    assert statuses == [401] * 10 + [429]
    assert request(dash, "POST", "/login", "token=" + TOKEN.decode())[0] == 429  # even the right one, for now


def test_a_page_asked_for_while_the_board_is_taken_gets_the_last_one_at_once(tmp_path: Path) -> None:
    import threading

    gate, taken = threading.Event(), []

    def slow(settings: Settings) -> Status:
        taken.append(1)
        if len(taken) > 1:
            gate.wait(10)  # the second taking hangs until the test lets it go
        return Status(file="desired-state.yaml", apps=(app(f"web{len(taken)}"),))

    dash, _ = board(tmp_path, slow)
    assert 'data-app="web1"' in request(dash, "GET", "/")[2]
    dash._viewed = time.monotonic()
    dash.passed()  # the refresher takes the board again, and hangs in it
    deadline = time.monotonic() + 5
    while len(taken) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(taken) == 2 and not gate.is_set()
    page = request(dash, "GET", "/")[2]  # answered while the new board hangs in its taking
    assert 'data-app="web1"' in page
    gate.set()
    while 'data-app="web2"' not in request(dash, "GET", "/")[2] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 'data-app="web2"' in request(dash, "GET", "/")[2]


class Rolling:
    """A status whose routes say that web's rollout is under way (as ``core.canary.lines`` words it)."""

    def __call__(self, settings: Settings) -> Status:
        return Status(
            file="desired-state.yaml",
            revision="d" * 40,
            apps=(app("web"), app("api")),
            routes=(
                "route * / -> web v1 (10.0.0.2:8000)",
                "rollout web v1 -> v2: step 2/3, 25% of requests to v2, 75% to v1; judged at 12:40:05Z",
                "  step 1 (5%): passed: 412 answers, 5xx 0.2%, avg 14 ms (the old v1: 5xx 0.1%, avg 12 ms); ok",
                "cert shop.test: expires 2027-02-01, renews 2027-01-02",
            ),
        )


def test_an_app_page_shows_its_rollout_and_promote_or_abort_is_journaled(tmp_path: Path) -> None:
    dash, log = board(tmp_path, Rolling())
    journal = Journal(tmp_path / "state")
    record = Rollout("web", 7, "d" * 40, "h2", "c2", "v1", "v2", started=1000.0, since=1000.0)
    journal.set_flag(FLAG + "web", record.to_json())
    journal.close()
    cookie, csrf = login(dash)
    _, _, page = request(dash, "GET", "/apps/web", cookie=cookie)
    section = page[page.index('id="rollout"') :]
    assert "step 2/3, 25% of requests to v2, 75% to v1" in section and "step 1 (5%): passed: 412 answers" in section
    assert 'data-action="promote"' in section and 'data-action="abort"' in section
    assert 'id="rollout"' not in request(dash, "GET", "/apps/api", cookie=cookie)[2]
    status, headers, _ = request(dash, "POST", "/apps/web/abort", f"csrf={csrf}", cookie=cookie)
    assert status == 303 and headers["Location"] == "/apps/web"
    journal = Journal(tmp_path / "state")
    try:
        assert Rollout.from_json(journal.flag(FLAG + "web") or "").asked == "abort"
    finally:
        journal.close()
    assert "web: abort of its rollout v1 -> v2 asked" in log.getvalue()
    status, _, _ = request(dash, "POST", "/apps/api/promote", f"csrf={csrf}", cookie=cookie)
    _, _, page = request(dash, "GET", "/apps/api", cookie=cookie)
    assert "promote refused: api: no rollout under way" in page
