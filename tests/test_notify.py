"""``--notify``: the agent's notable events reach apprise targets, off the deploy path (issue 10, item 5).

Real HTTP through loopback, no Docker: a receiver (``http.server``) that records what is POSTed to it,
can refuse (500) or hold a request without answering; a port that accepts connections and never
reads them; and a server that answers one byte at a time, which no socket timeout ends.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import apprise
import pytest

from reconciler.core.events import Event
from reconciler.errors import UserError
from reconciler.telemetry import scrub
from reconciler.telemetry.notify import NOTIFIED, NOTIFIED_NAMES, Notifier, quiet_apprise

TOKEN = "xoxb-S3cretT0kenInTheUrl"
PASSWORD = "hunter2-notify-password"


class Receiver:
    """An HTTP server on 127.0.0.1 that records the JSON of each POST; ``status`` is what it answers,
    ``hold()`` makes it keep each request without answering until ``release()``."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.status = 200
        self.cond = threading.Condition()
        self.go = threading.Event()
        self.go.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.go.wait(10)
                with receiver.cond:
                    status = receiver.status
                    if status < 300:
                        receiver.bodies.append(json.loads(data))
                        receiver.paths.append(self.path)
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def hold(self) -> None:
        self.go.clear()

    def release(self) -> None:
        self.go.set()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.bodies) >= count, timeout)
            return list(self.bodies)

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """A port that accepts connections (the kernel's backlog) and never reads nor answers them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def url(self, path: str = "hook") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self.sock.close()


class Trickle:
    """A server that reads the request, then answers one byte every ``every`` seconds, forever."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._feed, args=(conn,), daemon=True).start()

    def _feed(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                    if self.stop.wait(self.every):
                        return
                    conn.send(bytes([byte]))
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    server = Trickle()
    yield server
    server.close()


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def notifiers() -> Iterator[Callable[..., Notifier]]:
    made: list[Notifier] = []

    def make(urls: list[str], log: Callable[[str], None], **options: Any) -> Notifier:
        notifier = Notifier(urls, log=log, **options)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close(0.5)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_failed_deploy_arrives_with_its_app_and_message(
    receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([receiver.url("hooks/deploys")], lines.append, timeout=1.0)
    message = "web v2 failed its gate: exited 1 (rolled back to v1)"
    notify(Event.DEPLOY_FAILED, message, {"app": "web", "commit": "abc12345"})
    [body] = receiver.wait_for(1)
    assert body["title"] == "reconciler: deploy.failed web"
    assert body["message"].splitlines() == [message, "commit=abc12345"]
    assert body["type"] == "failure"
    assert receiver.paths == ["/hooks/deploys"]
    assert wait_until(lambda: notify.sent == 1)
    assert (notify.failed, notify.dropped, lines) == (0, 0, [])


def test_recoveries_and_promotions_are_good_news(
    receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([receiver.url()], lines.append, timeout=1.0)
    notify(Event.ENGINE_RECOVERED, "the Docker engine answers again", {})
    notify(Event.DEPLOY_HELD, "web v3 held: v3 failed before", {"app": "web"})
    first, second = receiver.wait_for(2)
    assert (first["title"], first["type"]) == ("reconciler: engine.recovered", "success")
    assert (second["title"], second["type"]) == ("reconciler: deploy.held web", "warning")


def test_only_the_notable_events_are_sent(
    receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    assert {
        Event.DEPLOY_FAILED,
        Event.DEPLOY_ROLLED_BACK,
        Event.DEPLOY_HELD,
        Event.STABLE_PROMOTED,
        Event.DRIFT_FOUND,
        Event.REMOTE_UNREACHABLE,
        Event.REMOTE_RECOVERED,
        Event.ENGINE_UNREACHABLE,
        Event.ENGINE_RECOVERED,
    } <= NOTIFIED
    assert {"commit.unsigned", "commit.bad-signature"} <= NOTIFIED_NAMES
    assert not {Event.DEPLOY_SUCCEEDED, Event.DRIFT_HEALING, Event.COMMIT_SEEN} & NOTIFIED
    notify = notifiers([receiver.url()], lines.append, timeout=1.0)
    for event in Event:
        if event not in NOTIFIED:
            notify(event, f"{event.value} happened", {"app": "web"})
    notify("commit.unsigned", "def45678 is not signed: not deployed", {"commit": "def45678"})
    [body] = receiver.wait_for(1)
    time.sleep(0.2)  # anything sent before the last one would have arrived first, on one queue
    assert [b["title"] for b in receiver.bodies] == ["reconciler: commit.unsigned"]
    assert body["message"].startswith("def45678 is not signed")
    assert notify.sent == 1


def test_the_body_is_scrubbed_again(receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]) -> None:
    scrub.remember(["notify-env-secret-value"], keys=["API_KEY"])
    notify = notifiers([receiver.url()], lines.append, timeout=1.0)
    notify(
        Event.DEPLOY_FAILED,
        "web: probe http://u:pw-in-url@web/health said API_KEY=abc notify-env-secret-value",
        {"app": "web", "detail": "notify-env-secret-value"},
    )
    [body] = receiver.wait_for(1)
    text = json.dumps(body)
    assert "notify-env-secret-value" not in text
    assert "pw-in-url" not in text
    assert "API_KEY=***" in text


def test_a_hanging_target_delays_neither_the_caller_nor_a_healthy_target(
    silent: Silent, receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([silent.url(), receiver.url()], lines.append, timeout=0.5, queue_size=5)
    started = time.monotonic()
    durations = []
    for n in range(50):  # both queues overflow: the silent target takes half a second per send
        before = time.perf_counter()
        notify(Event.DEPLOY_FAILED, f"failure {n}", {"app": f"app{n}"})
        durations.append(time.perf_counter() - before)
    assert max(durations) < 0.05, max(durations)
    assert receiver.wait_for(1, timeout=0.5), "the healthy target waited for the hanging one"
    assert time.monotonic() - started < 0.5
    assert notify.dropped > 0
    assert wait_until(lambda: lines != [], timeout=3.0)
    time.sleep(0.7)  # one more send to the silent target times out: still one line
    assert lines == ["notify: target 1 (json) failed: timed out after 0.5s"]
    assert notify.failed >= 2


def test_a_failing_target_is_logged_once_and_its_recovery_once(
    receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([receiver.url()], lines.append, timeout=1.0)
    receiver.status = 500
    for n in range(4):
        notify(Event.REMOTE_UNREACHABLE, f"outage {n}", {})
    assert wait_until(lambda: notify.failed == 4)
    assert lines == ["notify: target 1 (json) failed: not delivered (refused or unreachable)"]
    receiver.status = 200
    notify(Event.REMOTE_RECOVERED, "the remote answers again", {})
    notify(Event.REMOTE_UNREACHABLE, "again", {})
    receiver.wait_for(2)
    assert wait_until(lambda: notify.sent == 2)
    assert lines[1:] == ["notify: target 1 (json) recovered"]


def test_a_target_that_hangs_then_answers_again_recovers(
    receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([receiver.url()], lines.append, timeout=0.3)
    receiver.hold()
    for n in range(3):
        notify(Event.ENGINE_UNREACHABLE, f"no engine {n}", {})
    assert wait_until(lambda: notify.failed == 3)
    assert lines == ["notify: target 1 (json) failed: timed out after 0.3s"]
    receiver.release()
    notify(Event.ENGINE_RECOVERED, "the engine answers again", {})
    assert wait_until(lambda: notify.sent == 1)
    assert lines == ["notify: target 1 (json) failed: timed out after 0.3s", "notify: target 1 (json) recovered"]
    assert wait_until(lambda: "the engine answers again" in [b["message"] for b in receiver.bodies])


def test_what_bounds_a_hanging_server(trickle: Trickle, lines: list[str], notifiers: Callable[..., Notifier]) -> None:
    """apprise's socket timeouts (``rto``) end a server that never answers, not one that answers a
    byte at a time; the notifier's own thread, waited for ``timeout``, ends both."""
    quiet_apprise()
    plain = apprise.Apprise(asset=apprise.AppriseAsset(service_timeout=0, async_mode=False))
    plain.add(f"json://127.0.0.1:{trickle.port}/hook?rto=0.3&cto=0.3")
    send = threading.Thread(target=lambda: plain.notify(body="b", title="t"), daemon=True)
    send.start()
    send.join(1.5)
    assert send.is_alive(), "rto=0.3 ended a server that answers a byte every 0.1 s"

    notify = notifiers([f"json://127.0.0.1:{trickle.port}/hook"], lines.append, timeout=0.3)
    started = time.monotonic()
    notify(Event.DEPLOY_FAILED, "web failed", {"app": "web"})
    assert wait_until(lambda: notify.failed == 1, timeout=2.0)
    assert time.monotonic() - started < 0.6
    assert lines == ["notify: target 1 (json) failed: timed out after 0.3s"]


def test_a_silent_port_is_bounded_by_the_timeout(
    silent: Silent, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([silent.url()], lines.append, timeout=0.3)
    started = time.monotonic()
    notify(Event.DEPLOY_FAILED, "web failed", {"app": "web"})
    assert wait_until(lambda: notify.failed == 1, timeout=2.0)
    assert 0.25 < time.monotonic() - started < 0.6


def test_a_url_with_tokens_is_never_written(
    lines: list[str],
    notifiers: Callable[..., Notifier],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # apprise logs its POST URL at DEBUG: none of it may reach a handler
    url = f"json://bot:{PASSWORD}@127.0.0.1:{closed_port()}/hooks/{TOKEN}"
    notify = notifiers([url], lines.append, timeout=1.0)
    notify(Event.DEPLOY_FAILED, "web failed", {"app": "web"})
    assert wait_until(lambda: notify.failed == 1)
    assert lines == ["notify: target 1 (json) failed: not delivered (refused or unreachable)"]
    assert notify.targets == ["target 1 (json)"]
    with pytest.raises(UserError) as refused:
        Notifier([url, f"slakc://bot:{PASSWORD}@T000/B000/{TOKEN}"], log=lines.append)
    out, err = capfd.readouterr()
    written = "\n".join([*lines, str(refused.value), caplog.text, out, err, repr(notify.targets)])
    for secret in (TOKEN, PASSWORD, "hooks/"):
        assert secret not in written
    assert not [record for record in caplog.records if record.name.startswith("apprise")]


def test_a_line_that_quotes_a_notify_url_shows_only_its_scheme(
    lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    slack = "slack://T0TOKENA/B0TOKENB/xoxbTokenInTheSlackUrl"
    hook = f"json://bot:{PASSWORD}@127.0.0.1:{closed_port()}/hooks/path"
    notifiers([slack, hook], lines.append, timeout=1.0)
    said = scrub.scrub(f"error: something quoted {slack} and {hook}; and {PASSWORD} alone")
    assert said == "error: something quoted slack://*** and json://***; and *** alone"


def test_apprise_never_writes_to_stderr_even_with_logging_configured() -> None:
    """In a process of its own with a DEBUG handler on stderr (apprise logs its POST URL at DEBUG)."""
    url = f"json://bot:{PASSWORD}@127.0.0.1:{closed_port()}/hooks/{TOKEN}"
    program = f"""
import logging, sys, time
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from reconciler.telemetry.notify import Notifier
lines = []
notify = Notifier([{url!r}], log=lines.append, timeout=1.0)
notify("deploy.failed", "web failed", {{"app": "web"}})
deadline = time.monotonic() + 5
while notify.failed == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
notify.close(1.0)
print("\\n".join(lines))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.splitlines() == ["notify: target 1 (json) failed: not delivered (refused or unreachable)"]
    assert "apprise" not in done.stderr
    for secret in (TOKEN, PASSWORD):
        assert secret not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("url", "error"),
    [
        (f"slakc://T000/B000/{TOKEN}", "--notify 2: 'slakc://…' is not a notification URL apprise knows"),
        (f"{TOKEN}@hooks.example.com", "--notify 2: not a notification URL (SCHEME://…, e.g. slack://…"),
        (f"discord://{TOKEN}", "--notify 2: 'discord://…' is not a URL apprise can use (check its parts)"),
    ],
)
def test_a_url_apprise_cannot_use_is_a_user_error_naming_only_its_scheme(
    url: str, error: str, receiver: Receiver, lines: list[str]
) -> None:
    with pytest.raises(UserError) as refused:
        Notifier([receiver.url(), url], log=lines.append)
    assert str(refused.value).startswith(error)
    assert TOKEN not in str(refused.value)


def test_common_urls_are_accepted(lines: list[str], notifiers: Callable[..., Notifier]) -> None:
    notify = notifiers(
        ["slack://T000/B000/XXXX", "mailto://ops@example.com", "json://host:8080/path"], lines.append, timeout=1.0
    )
    assert notify.targets == ["target 1 (slack)", "target 2 (mailto)", "target 3 (json)"]


def test_close_returns_within_its_timeout_with_a_hanging_target(silent: Silent, lines: list[str]) -> None:
    notify = Notifier([silent.url()], log=lines.append, timeout=5.0)
    for n in range(3):
        notify(Event.DEPLOY_FAILED, f"failure {n}", {"app": "web"})
    time.sleep(0.1)  # the first send is on the wire
    started = time.monotonic()
    notify.close(timeout=0.3)
    assert time.monotonic() - started < 0.4
    notify(Event.DEPLOY_FAILED, "after close", {"app": "web"})  # ignored, never raises


def test_a_call_never_raises(receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]) -> None:
    class Unprintable:
        def __format__(self, spec: str) -> str:
            raise RuntimeError("no")

    notify = notifiers([receiver.url()], lines.append, timeout=1.0)
    notify(Event.DEPLOY_FAILED, "web failed", {"app": "web", "odd": Unprintable()})
    notify(Event.DEPLOY_FAILED, None, {})  # type: ignore[arg-type]
    notify(object(), "no event", {})  # type: ignore[arg-type]
    assert notify.dropped == 0


def test_a_deploy_that_succeeds_after_trouble_is_notified_as_recovered(
    receiver: Receiver, lines: list[str], notifiers: Callable[..., Notifier]
) -> None:
    notify = notifiers([receiver.url("hooks")], lines.append, timeout=1.0)
    notify(Event.DEPLOY_SUCCEEDED, "web: v1", {"app": "web"})  # a plain deploy: nothing to tell
    notify(Event.DEPLOY_ROLLED_BACK, "web: v2 failed; rolled back to v1", {"app": "web"})
    notify(Event.DEPLOY_SUCCEEDED, "web: v1 -> v3", {"app": "web"})
    notify(Event.DEPLOY_SUCCEEDED, "web: v3 -> v4", {"app": "web"})  # recovered already: nothing
    bodies = receiver.wait_for(2)
    assert [body["title"] for body in bodies] == [
        "reconciler: deploy.rolled-back web",
        "reconciler: deploy.recovered web",
    ]
    assert bodies[1]["type"] == "success"
    assert not wait_until(lambda: len(receiver.bodies) > 2, timeout=0.5)
