"""The agent's one HTTP listener (off unless ``--listen``): ``/metrics``, ``/healthz`` and push webhooks.

Guarantees:
- Served by waitress (a production WSGI server) on the address the user names, in its own threads:
  a request body is at most ``MAX_BODY`` (1 MiB; larger is ``413`` before it is read), a connection
  that sends nothing for ``IDLE_TIMEOUT`` is closed within a second more, at most ``MAX_CONNECTIONS``
  are open at once, and ``THREADS`` handle requests (a connection holds a thread only while its
  request runs). A client that trickles bytes can hold a connection: on a public address, put a proxy
  in front.
- ``POST /hooks/{github,gitlab,gitea}`` is judged by ``core.webhooks``: an authentic push to the
  followed branch calls ``on_push`` (the agent wakes, fetches and runs a pass; many pushes while a
  pass runs give one more pass, never a queue); other hooks are acknowledged. A wrong or missing
  proof is ``401`` and logged once per provider until the source or the reason changes, or a good hook
  comes; a source past its rate is ``429`` (hooks that fail the proof are counted apart from good
  ones). Without a secret the hooks answer ``404``: a hook is never trusted unsigned.
- ``GET /metrics`` is the Prometheus text format; ``GET /healthz`` is ``200`` while the agent's loop
  is alive, its last pass is recent and passes do not keep failing, ``503`` otherwise, with the age of
  the last pass in its JSON.
- Nothing it answers or logs holds the secret or the signature a client sent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from waitress.server import create_server

from reconciler.core.webhooks import Provider, RateLimit, Verdict, judge
from reconciler.errors import UserError
from reconciler.shell.metrics import Metrics

MAX_BODY = 1024 * 1024
IDLE_TIMEOUT = 10  # seconds a connection may sit idle (also a client that never finishes its headers)
MAX_CONNECTIONS = 64
THREADS = 4

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Health:
    alive: bool
    last_pass_age: float | None  # seconds; None before the first pass ended
    detail: str
    failing: bool = False  # alive, but its passes keep failing (``Agent.health``): 503 "failing"


class Listener:
    """See the module docstring. ``start`` binds (a ``UserError`` names an address it cannot bind)."""

    def __init__(
        self,
        address: str,
        *,
        metrics: Metrics,
        health: Callable[[], Health],
        on_push: Callable[[], None],
        on_refused: Callable[[str, str], None],
        secret: bytes = b"",
        followed: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UserError(f"--listen {address!r}: give HOST:PORT (a port 0-65535), e.g. 127.0.0.1:9400")
        self.host, self.port = host.strip("[]"), int(port)
        self.metrics, self.health, self.on_push, self.on_refused = metrics, health, on_push, on_refused
        self.secret, self.followed, self.clock = secret, followed, clock
        self.limit = RateLimit()
        self._limit_lock = threading.Lock()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        # waitress says "Task queue depth is N" when its threads are busy: not a line of the agent's log.
        logging.getLogger("waitress").setLevel(logging.ERROR)
        try:
            self._server = create_server(
                self.app,
                host=self.host,
                port=self.port,
                threads=THREADS,
                connection_limit=MAX_CONNECTIONS,
                channel_timeout=IDLE_TIMEOUT,
                max_request_body_size=MAX_BODY,
                max_request_header_size=64 * 1024,
                cleanup_interval=1,  # idle channels are looked for every second, not every 30
                ident="reconciler",
                clear_untrusted_proxy_headers=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: an address waitress cannot read
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UserError(f"--listen {self.host}:{self.port}: cannot listen there ({reason})") from None
        self.port = int(self._server.effective_port)
        self._thread = threading.Thread(target=self._serve, name="listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        server = self._server
        try:
            server.run()
        except (OSError, ValueError):
            if not self._stopping:
                raise  # a listener that dies while the agent runs is a bug to see, not to hide

    def stop(self) -> None:
        if self._server is not None:
            self._stopping = True
            self._server.task_dispatcher.shutdown(timeout=1)
            self._server.close()
            self._server = None

    # -- the WSGI app --------------------------------------------------------------------------------

    def app(self, environ: Mapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = str(environ.get("PATH_INFO", "")), str(environ.get("REQUEST_METHOD", ""))
        if path == "/metrics" and method == "GET":
            return _answer(start_response, 200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/healthz" and method == "GET":
            return self._healthz(start_response)
        if path.startswith("/hooks/"):
            try:
                provider = Provider(path.removeprefix("/hooks/"))
            except ValueError:
                return _json(start_response, 404, {"result": "not-found", "reason": "no such hook"})
            if method != "POST":
                return _json(start_response, 405, {"result": "method", "reason": "hooks are POSTed"})
            return self._hook(provider, environ, start_response)
        return _json(start_response, 404, {"result": "not-found", "reason": f"nothing at {path[:64]}"})

    def _healthz(self, start_response: StartResponse) -> Iterable[bytes]:
        health = self.health()
        age = None if health.last_pass_age is None else round(health.last_pass_age, 3)
        status = "ok" if health.alive else "failing" if health.failing else "stale"
        body = {"status": status, "last_pass_age_seconds": age, "detail": health.detail}
        return _json(start_response, 200 if health.alive else 503, body)

    def _hook(self, provider: Provider, environ: Mapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not self.secret:
            return _json(start_response, 404, {"result": "off", "reason": "webhooks need --webhook-secret-file"})
        source = str(environ.get("REMOTE_ADDR", "?"))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            return _json(start_response, 413, {"result": "too-large", "reason": "a hook is at most 1 MiB"})
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        headers = {
            key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")
        }
        answer = judge(provider, headers, body, self.secret, self.followed)
        # The proof first, then the rate: hooks that fail it have a bucket of their own, so that a stranger
        # behind the same address (a TLS proxy in front) cannot use up the real sender's.
        trusted = answer.verdict is not Verdict.UNAUTHORIZED
        with self._limit_lock:
            allowed = self.limit.allow(("" if trusted else "unproven ") + source, self.clock())
        if not allowed:
            self.metrics.webhooks.labels(str(provider), "rate-limited").inc()
            return _json(start_response, 429, {"result": "rate-limited", "reason": "too many hooks; slow down"})
        self.metrics.webhooks.labels(str(provider), str(answer.verdict)).inc()
        if not trusted:
            self.on_refused(str(provider), f"a {provider} hook from {source}: {answer.reason}; not fetched")
        else:
            self.on_refused(str(provider), "")  # a good one: the next bad one is said again
            if answer.verdict is Verdict.PUSH:
                self.on_push()
        return _answer(start_response, answer.status, answer.body, "application/json")


def _json(start_response: StartResponse, status: int, body: Mapping[str, Any]) -> Iterable[bytes]:
    return _answer(start_response, status, (json.dumps(body) + "\n").encode(), "application/json")


_REASONS = {
    200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    413: "Payload Too Large", 429: "Too Many Requests", 503: "Service Unavailable",
}  # fmt: skip


def _answer(start_response: StartResponse, status: int, body: bytes, content_type: str) -> Iterable[bytes]:
    start_response(
        f"{status} {_REASONS.get(status, 'Status')}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]
