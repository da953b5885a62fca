"""The agent's dashboard in a real browser (Debian's Chromium, through selenium), against a real agent, real
containers and real git pushes.

What a user sees: the overview lists every app, failing first; an app's page its history and the versions
to go back to; a deploy shows up live (the event, then the row) without a reload; the pages read whole with
JavaScript off; a refused commit is said with its FILE:LINE:COL; a planted env value is in no page and in no
event streamed. With a token: the login (a wrong token refused; the cookie HttpOnly and SameSite=Strict),
each action from the page (suspend, resume, retry, break glass, a rollback commit), each one a `ui.action`
event; a post without the CSRF token changes nothing. Without a token: no form, no login, no action.
"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.agent import World, wait_body
from tests.support.chromium import browser, wait_css, wait_text, wait_until
from tests.support.net import free_port, http_get

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class Stream:
    """`GET /events` read on a thread of its own: what the dashboard streamed, as bytes."""

    def __init__(self, port: int) -> None:
        self.data = bytearray()
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", "/events")
        self.response = self.connection.getresponse()
        assert self.response.status == 200 and self.response.getheader("Content-Type", "").startswith(
            "text/event-stream"
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.response.read1(65536):
                self.data += chunk
        except (OSError, AttributeError, ValueError):  # closed by ``close`` (http.client drops its file then)
            pass

    def close(self) -> None:
        self.connection.close()


def answer(port: int, path: str, body: str, cookie: str) -> tuple[int, dict[str, str], str]:
    """A form post as another client would send it, the session's cookie whatever the body: status, headers, page."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def post(port: int, path: str, body: str, cookie: str) -> int:
    return answer(port, path, body, cookie)[0]


def steady(read: Callable[[], T]) -> T:
    """``read()`` of the page, read again when the live page replaced what it held (a pass ended meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            return read()
        except StaleElementReferenceException:
            continue
    raise AssertionError("the page kept changing under the read")


def row_cell(driver: Any, app: str, cell: str) -> str:
    return str(driver.find_element("css selector", f"tr#app-{app} td.{cell}").text)


def submit(driver: Any, selector: str) -> None:
    """Click the form's button, found again if the live page replaced it (a pass ended) between find and click."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(20):
        try:
            driver.find_element("css selector", f"{selector} button[type=submit]").click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector}: its button kept being replaced")


def test_the_overview_an_app_live_updates_javascript_off_a_refused_commit_and_no_secret(
    world: World, tmp_path: Path
) -> None:
    planted = f"s3cr3t-{secrets.token_hex(8)}"
    web = world.app("web")
    web.env = {"PLANTED_SECRET": planted}
    bad = world.app("bad", tags=("v1",))
    world.images.build(bad.name, "broken", healthy=False)
    other = world.app("db", tags=("v1",))
    world.commit_apps("v1 of everything")
    port = free_port()
    agent = world.agent("--listen", f"127.0.0.1:{port}", env={"RECONCILE_PASS_DONE": "1"})
    for app in (web, bad, other):
        agent.wait_for("deploy.succeeded", app=app.name, timeout=60)
    world.set(bad.name, "broken")
    agent.wait_for("deploy.held", app=bad.name, timeout=60)
    base = f"http://127.0.0.1:{port}"

    stream = Stream(port)
    try:
        with browser() as driver:
            driver.get(base + "/")
            rows = steady(lambda: [(r.get_attribute("data-app"), r.get_attribute("data-state"))
                                   for r in driver.find_elements("css selector", "table#apps tbody tr")])  # fmt: skip
            assert rows[0] == (bad.name, "failing"), rows  # failing first
            assert sorted(app for app, _ in rows) == sorted([web.name, bad.name, other.name])
            assert steady(lambda: (row_cell(driver, web.name, "running"), row_cell(driver, bad.name, "desired"))) == (
                "v1", "broken")  # fmt: skip
            assert not driver.find_elements("css selector", "form"), "read-only: no form"
            wait_until(driver, lambda: driver.find_element("tag name", "body").get_attribute("data-live") == "on",
                       "the event stream open")  # fmt: skip
            shot = ROOT / "docs" / "dashboard.png" if os.environ.get("RECONCILE_SCREENSHOT") else tmp_path / "o.png"
            shot.parent.mkdir(exist_ok=True)
            assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # Live: a deploy's event, then its row, without a reload of the page.
            driver.execute_script("window.stillThisPage = true")
            world.set(web.name, "v2")
            wait_css(driver, f'#live li[data-event="deploy.succeeded"][data-app="{web.name}"]', timeout=30)
            wait_text(driver, f"tr#app-{web.name} td.running", "v2", timeout=15)
            assert driver.execute_script("return window.stillThisPage") is True

            driver.get(f"{base}/apps/{web.name}")
            changes = steady(lambda: [h.text for h in driver.find_elements("css selector", "tr.deploy td.change")])
            assert changes[:2] == ["v1 → v2", "- → v1"], changes
            versions = steady(lambda: [li.get_attribute("data-version") for li in
                                       driver.find_elements("css selector", "#versions li")])  # fmt: skip
            assert versions == ["v1"], versions
            assert driver.find_elements("css selector", "table.gate tr.sample")  # v2's gate, heard by the agent
            driver.get(f"{base}/apps/{bad.name}")
            assert "broken" in driver.find_element("id", "held").text
            assert driver.find_element("css selector", 'tr.deploy[data-result="rolled-back"]')

        with browser(javascript=False) as driver:  # the pages are whole without a script
            driver.get(base + "/")
            assert row_cell(driver, web.name, "running") == "v2"
            assert driver.find_element("tag name", "body").get_attribute("data-live") == "off"
            driver.get(f"{base}/apps/{web.name}")
            assert len(driver.find_elements("css selector", "table#history tr.deploy")) >= 2
            assert http_get(base + "/login")[0] == 404
            actions = ("/login", "/logout", "/actions/suspend", "/actions/resume", f"/apps/{web.name}/retry",
                       f"/apps/{web.name}/break-glass", f"/apps/{web.name}/rollback")  # fmt: skip
            assert {path: post(port, path, "csrf=x&version=v1&token=x", "") for path in actions} == dict.fromkeys(
                actions, 404
            )

        # A commit that cannot be applied: said on the overview and the pending change, with its place.
        world.remote.write("desired-state.yaml", world.desired_text().replace("    init: true", "    init: maybe", 1))
        world.remote.git("commit", "-qam", "a typo")
        world.remote.push()
        agent.wait_for("desired.invalid", timeout=30)
        with browser() as driver:
            driver.get(base + "/pending")
            refused = wait_text(driver, "#refused", "desired-state.yaml:", timeout=15)
            assert re.search(r"desired-state\.yaml:\d+:\d+", refused) and "init" in refused, refused

        pages = [http_get(base + path)[1] for path in ("/", "/pending", f"/apps/{web.name}", f"/apps/{bad.name}")]
    finally:
        stream.close()
    streamed = bytes(stream.data).decode()
    assert f'"app": "{web.name}"' in streamed and "deploy.succeeded" in streamed, streamed[-2000:]
    for text in (*pages, streamed):
        assert planted not in text
    assert planted not in agent.log()
    world.remote.git("revert", "--no-edit", "HEAD")  # the clone's next commit starts from a valid file


def login(driver: Any, base: str, token: str) -> None:
    driver.get(base + "/login")
    driver.find_element("css selector", "#login input[name=token]").send_keys(token)
    submit(driver, "#login")
    wait_css(driver, "form.action[data-action=logout]")


def test_actions_from_the_browser_need_the_login_and_the_csrf_token(world: World) -> None:
    token = secrets.token_hex(16)
    token_file = world.tmp / "ui.token"
    token_file.write_text(token + "\n")
    web = world.app("web")
    world.commit_apps("v1")
    port = free_port()
    agent = world.agent("--listen", f"127.0.0.1:{port}", "--ui-token-file", str(token_file))
    agent.wait_for("deploy.succeeded", app=web.name, timeout=60)
    world.set(web.name, "v2")
    agent.wait_for("deploy.succeeded", "v2", app=web.name, timeout=60)
    base = f"http://127.0.0.1:{port}"

    with browser() as driver:
        driver.get(base + "/")
        assert not driver.find_elements("css selector", "form.action")
        driver.get(base + "/login")
        driver.find_element("css selector", "#login input[name=token]").send_keys("not-the-token")
        submit(driver, "#login")
        assert "Wrong token" in wait_css(driver, "#flash").text
        status, _, page = answer(port, "/login", "token=not-the-token", "")
        assert status == 401 and 'id="flash"' in page and "Wrong token" in page, (status, page[-1500:])
        login(driver, base, token)
        [cookie] = [c for c in driver.get_cookies() if c["name"] == "reconciler_session"]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
        session = f"reconciler_session={cookie['value']}"

        # CSRF: the session's cookie without the form's token is refused, and nothing changes.
        status, _, page = answer(port, "/actions/suspend", "reason=forged", session)
        assert status == 403 and "CSRF" in page, (status, page[-1500:])
        assert post(port, "/actions/suspend", "csrf=forged&reason=forged", session) == 403
        assert "suspended" not in world.status_text().lower()
        head = world.remote_log()[0]
        assert post(port, f"/apps/{web.name}/rollback", "csrf=forged&version=v1", session) == 403
        assert post(port, f"/apps/{web.name}/rollback", "version=v1", session) == 403
        assert world.remote_log()[0] == head, "a forged rollback made no commit"
        status, _, page = answer(port, "/actions/suspend", "reason=forged", "")  # no session at all
        assert status == 403 and "log in" in page.lower(), (status, page[-1500:])

        driver.find_element("css selector", "form[data-action=suspend] input[name=reason]").send_keys("db migration")
        submit(driver, "form[data-action=suspend]")
        assert "db migration" in wait_css(driver, "#suspended").text
        assert "suspended: db migration" in wait_css(driver, "#flash").text
        assert "db migration" in world.status_text()
        submit(driver, "form[data-action=resume]")
        wait_css(driver, "form[data-action=suspend]")
        assert not driver.find_elements("id", "suspended")

        # A rollback as a commit on the followed branch: the agent then deploys it.
        driver.get(f"{base}/apps/{web.name}")
        submit(driver, 'li[data-version="v1"] form[data-action=rollback]')
        flash = wait_css(driver, "#flash").text
        assert "committed" in flash and f"rollback {web.name} v2 -> v1" in flash, flash
        assert world.remote_log()[0][2] == f"rollback {web.name} v2 -> v1"
        agent.wait_for("deploy.succeeded", "v1", app=web.name, since=0, timeout=60)
        wait_body(web.port, "v1", timeout=30, agent=agent)

        # Break glass: the kept previous release (v2) back now, the agent suspended until git says so.
        driver.get(f"{base}/apps/{web.name}")
        submit(driver, "form[data-action=break-glass]")
        assert "break-glass" in wait_css(driver, "#flash").text
        wait_body(web.port, "v2", timeout=30, agent=agent)
        wait_text(driver, "#suspended", "break-glass")
        driver.get(base + "/")
        submit(driver, "form[data-action=resume]")
        wait_body(web.port, "v1", timeout=30, agent=agent)  # git still says v1

        # A held release, retried from its page.
        world.images.build(web.name, "broken", healthy=False)
        world.remote.git("pull", "-q", "--ff-only", "origin", "main")  # the dashboard's commit is on the remote
        world.set(web.name, "broken")
        agent.wait_for("deploy.held", app=web.name, timeout=60)
        driver.get(f"{base}/apps/{web.name}")
        mark = agent.mark()
        submit(driver, "form[data-action=retry]")
        assert "tried again" in wait_css(driver, "#flash").text
        agent.wait_for("deploy.rolled-back", app=web.name, since=mark, timeout=60)  # it was: and failed again

        submit(driver, "form[data-action=logout]")
        wait_css(driver, "#login-link")
    assert post(port, "/actions/resume", "csrf=x", session) == 403  # the session is gone

    said = [line.message for line in agent.events("ui.action")]
    for what in ("logged in", "suspended: db migration", "resumed", "committed", "break-glass", "tried again",
                 "logged out"):  # fmt: skip
        assert any(what in line for line in said), (what, said)
    assert all(line.startswith("session ") for line in said), said
    assert token not in agent.log() and cookie["value"] not in agent.log()
