"""The agent's one HTTP listener (off unless ``--listen``): ``/metrics``, ``/healthz`` and push webhooks.

Guarantees:
- Served by tornado's HTTP server on an event loop in a thread of its own, on the address the user
  names: an open connection costs a socket, never a thread, so clients that hold connections do not
  stop others from being answered. The answers are made by ``THREADS`` threads (a connection holds
  one only while its request runs).
- What a client can hold is bounded: a request head must arrive whole within ``HEAD_TIMEOUT`` of the
  connection's start or of its previous answer (idle and trickling clients alike are closed then), a
  body within ``BODY_TIMEOUT``; a body is at most ``MAX_BODY`` (1 MiB, exactly 1 MiB included; larger
  is ``413`` before it is read), and the bodies held at once are at most ``BODY_BUDGET`` (past it,
  ``503``). At most ``MAX_CONNECTIONS`` connections are open (fewer when the process may open few
  files), at most ``PER_ADDRESS`` from one address: a new connection past either bound closes the
  oldest one (of that address, for the second) that is not running a request, so a newcomer is served
  (it is closed only when every other connection runs a request) and a flood from one address pushes
  out its own connections first.
- ``POST /hooks/{github,gitlab,gitea}`` is judged by ``core.webhooks``: an authentic push to the
  followed branch calls ``on_push`` (the agent wakes, fetches and runs a pass; many pushes while a
  pass runs give one more pass, never a queue); other hooks are acknowledged. A wrong or missing
  proof is ``401``, an authentic hook whose body cannot be read ``400``; an authentic pull request event
  (``core.webhooks.PullEvent``) goes to ``on_pull`` (the agent records it for its preview: ``503`` when the
  state directory cannot take it); each is logged once per
  provider until the source or the reason changes, or a good hook comes; a source past its rate is
  ``429`` (hooks that fail the proof are counted apart from good ones). Without a secret the hooks
  answer ``404``: a hook is never trusted unsigned.
- ``GET /metrics`` is the Prometheus text format; ``GET /healthz`` is ``200`` while the agent's loop
  is alive, its last pass is recent and passes do not keep failing, ``503`` otherwise, with the age of
  the last pass in its JSON. ``HEAD`` of either answers as ``GET`` does, without the body (load
  balancers probe with it).
- A request that fails inside the listener is ``500`` and one line on stderr, never a traceback there; given
  ``crashed`` (the agent's crash files), the traceback is kept by it and the line says where.
- Nothing it answers or logs holds the secret or the signature a client sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import resource
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from tornado import gen, httputil, iostream, netutil
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from reconciler.core.webhooks import HookVerdict, Provider, PullEvent, RateLimit, judge
from reconciler.errors import ReconcileError, UserError
from reconciler.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from reconciler.agent.dashboard import Dashboard, Hub

MAX_BODY = 1024 * 1024
HEAD_TIMEOUT = 5.0  # seconds for a whole request head: from the connection (or the last answer) on
BODY_TIMEOUT = 10.0  # seconds for a whole body
BODY_BUDGET = 32 * MAX_BODY  # bytes of bodies held at once, announced by Content-Length (chunked: MAX_BODY)
MAX_CONNECTIONS = 2048
PER_ADDRESS = 1024
THREADS = 4
_FILES_KEPT = 256  # files the rest of the agent may open (journal, git, docker): not for connections
KEEPALIVE = 15.0  # seconds between an event stream's keep-alive comments
_LINGER = 2.0  # seconds a refused body is read and dropped, so that the client reads the answer, not a reset

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentHealth:
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
        health: Callable[[], AgentHealth],
        on_push: Callable[[], None],
        on_refused: Callable[[str, str], None],
        secret: bytes = b"",
        followed: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        crashed: Callable[[BaseException], str] | None = None,
        dashboard: Dashboard | None = None,
        on_pull: Callable[[PullEvent], None] | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UserError(f"--listen {address!r}: give HOST:PORT (a port 0-65535), e.g. 127.0.0.1:9400")
        self.host, self.port = host.strip("[]"), int(port)
        self.metrics, self.health, self.on_push, self.on_refused = metrics, health, on_push, on_refused
        self.secret, self.followed, self.clock = secret, followed, clock
        self.crashed = crashed  # keeps a bug's traceback and says where (the agent's crash files)
        self.dashboard = dashboard  # the pages, their actions and /events (``agent.dashboard``)
        self.on_pull = on_pull  # a pull request's event: recorded for its preview (None: acknowledged only)
        self.limit = RateLimit()
        self._limit_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        # tornado logs a malformed request or a closed client at INFO or WARNING: not lines of the agent's log.
        for name in ("tornado.access", "tornado.application", "tornado.general"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            sockets = netutil.bind_sockets(self.port, address=self.host, backlog=1024)
        except (OSError, ValueError) as exc:  # ValueError: an address the resolver cannot read
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UserError(f"--listen {self.host}:{self.port}: cannot listen there ({reason})") from None
        self.port = int(sockets[0].getsockname()[1])
        self._pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="listener")
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        cap = MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(16, min(MAX_CONNECTIONS, soft - _FILES_KEPT))
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sockets, cap, ready), name="listener", daemon=True)
        self._thread.start()
        ready.wait()

    def _serve(self, sockets: list[socket.socket], cap: int, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_one_line)  # asyncio's default prints a traceback
        self._loop = loop
        room = _Room(cap, min(PER_ADDRESS, cap))
        server = _Server(
            _Exchanges(self, room),
            idle_connection_timeout=HEAD_TIMEOUT,  # tornado's deadline for a whole request head
            body_timeout=BODY_TIMEOUT,
            max_body_size=MAX_BODY,
            max_header_size=64 * 1024,
        )
        server.room = room
        server.add_sockets(sockets)
        ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            loop.run_until_complete(_close_all(server))
            pending = asyncio.all_tasks(loop)  # event streams wait on their queues: ended, not left pending
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop = self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """The app's answer to one request, on one of the listener's threads: never raises."""
        answered: list[tuple[str, list[tuple[str, str]]]] = []
        try:
            body = b"".join(self.app(environ, lambda status, headers: answered.append((status, headers))))
            return answered[0][0], answered[0][1], body
        except Exception as exc:  # a bug: one line, and the client is told
            what = f"{environ.get('REQUEST_METHOD')} {str(environ.get('PATH_INFO'))[:64]}"
            said = (what, type(exc).__name__, str(exc)[:200])
            if self.crashed is not None:  # the traceback is kept apart (the agent's crash files): the line says where
                _log.error("listener: %s: internal error: %s: %s (%s)", *said, self.crashed(exc))
            else:
                _log.error("listener: %s: internal error: %s: %s", *said)
            data = (json.dumps({"result": "error", "reason": f"internal error: {type(exc).__name__}"}) + "\n").encode()
            return (
                "500 Internal Server Error",
                [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
                data,
            )

    # -- the WSGI app --------------------------------------------------------------------------------

    def app(self, environ: Mapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = str(environ.get("PATH_INFO", "")), str(environ.get("REQUEST_METHOD", ""))
        if path == "/metrics" and method in ("GET", "HEAD"):  # the server drops a HEAD's body
            return _answer(start_response, 200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/healthz" and method in ("GET", "HEAD"):
            return self._healthz(start_response)
        if path.startswith("/hooks/"):
            try:
                provider = Provider(path.removeprefix("/hooks/"))
            except ValueError:
                return _json(start_response, 404, {"result": "not-found", "reason": "no such hook"})
            if method != "POST":
                return _json(start_response, 405, {"result": "method", "reason": "hooks are POSTed"})
            return self._hook(provider, environ, start_response)
        if self.dashboard is not None:
            answered = self.dashboard.answer(method, path, environ)
            if answered is not None:
                status, headers, body = answered
                headers = [*headers, ("Content-Length", str(len(body)))]
                start_response(f"{status} {_REASONS.get(status, 'Status')}", headers)
                return [body]
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
        trusted = answer.verdict is not HookVerdict.UNAUTHORIZED
        with self._limit_lock:
            allowed = self.limit.allow(("" if trusted else "unproven ") + source, self.clock())
        if not allowed:
            self.metrics.webhooks.labels(str(provider), "rate-limited").inc()
            return _json(start_response, 429, {"result": "rate-limited", "reason": "too many hooks; slow down"})
        self.metrics.webhooks.labels(str(provider), str(answer.verdict)).inc()
        if answer.verdict in (HookVerdict.UNAUTHORIZED, HookVerdict.BAD):
            self.on_refused(str(provider), f"a {provider} hook from {source}: {answer.reason}; not fetched")
        else:
            self.on_refused(str(provider), "")  # a good one: the next bad one is said again
            if answer.verdict is HookVerdict.PUSH:
                self.on_push()
            if answer.verdict is HookVerdict.PULL and answer.pull is not None and self.on_pull is not None:
                try:
                    self.on_pull(answer.pull)
                except ReconcileError as exc:  # the state directory: the forge is told, and may send it again
                    return _json(start_response, 503, {"result": "not-recorded", "reason": str(exc)[:300]})
        return _answer(start_response, answer.status, answer.body, "application/json")


def _json(start_response: StartResponse, status: int, body: Mapping[str, Any]) -> Iterable[bytes]:
    return _answer(start_response, status, (json.dumps(body) + "\n").encode(), "application/json")


_REASONS = {
    200: "OK", 202: "Accepted", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed",
    413: "Payload Too Large", 429: "Too Many Requests", 503: "Service Unavailable",
}  # fmt: skip


def _answer(start_response: StartResponse, status: int, body: bytes, content_type: str) -> Iterable[bytes]:
    start_response(
        f"{status} {_REASONS.get(status, 'Status')}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


# -- the server ------------------------------------------------------------------------------------------


class _Room:
    """The open connections, oldest first, and which of them run a request (those are never pushed out)."""

    def __init__(self, cap: int, per_address: int) -> None:
        self.cap, self.per_address = cap, per_address
        self.open: OrderedDict[iostream.IOStream, str] = OrderedDict()
        self.per: Counter[str] = Counter()
        self.busy: set[iostream.IOStream] = set()
        self.held = 0  # bytes of bodies announced by the requests being read or run

    def admit(self, stream: iostream.IOStream, host: str) -> bool:
        """Make room for a new connection from ``host``: False (and it is closed) when nothing can go."""
        if self.per[host] >= self.per_address:
            room = self._push_out(lambda other: other == host)
        elif len(self.open) >= self.cap:
            room = self._push_out(lambda other: True)
        else:
            room = True
        if not room:
            stream.close()
            return False
        self.open[stream] = host
        self.per[host] += 1
        return True

    def _push_out(self, which: Callable[[str], bool]) -> bool:
        for stream, host in self.open.items():
            if stream not in self.busy and which(host):
                self.forget(stream)
                stream.close()
                return True
        return False

    def forget(self, stream: iostream.IOStream) -> None:
        host = self.open.pop(stream, None)
        if host is not None:
            self.per[host] -= 1
            if not self.per[host]:
                del self.per[host]
        self.busy.discard(stream)


class _Server(HTTPServer):
    room: _Room

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if self.room.admit(stream, str(address[0])):
            super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        self.room.forget(cast(HTTP1ServerConnection, server_conn).stream)
        super().on_close(server_conn)


async def _close_all(server: _Server) -> None:
    for stream in list(server.room.open):
        stream.close()
    await server.close_all_connections()


class _Exchanges(httputil.HTTPServerConnectionDelegate):
    def __init__(self, listener: Listener, room: _Room) -> None:
        self.listener, self.room = listener, room

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        stream = cast(HTTP1ServerConnection, server_conn).stream
        return _Exchange(self.listener, self.room, cast(HTTP1Connection, request_conn), stream)


class _Exchange(httputil.HTTPMessageDelegate):
    """One request: its head checked before its body is read, its answer made on the listener's threads."""

    def __init__(self, listener: Listener, room: _Room, conn: HTTP1Connection, stream: iostream.IOStream) -> None:
        self.listener, self.room, self.conn, self.stream = listener, room, conn, stream
        self.host = room.open.get(stream, "?")
        self.chunks: list[bytes] = []
        self.reserved = 0
        self.start_line: httputil.RequestStartLine | None = None
        self.headers = httputil.HTTPHeaders()

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> None:
        self.start_line, self.headers = cast(httputil.RequestStartLine, start_line), headers
        length = headers.get("Content-Length", "")
        size = int(length) if length.isdigit() else MAX_BODY if "Transfer-Encoding" in headers else 0
        if size > MAX_BODY:
            self._refuse(413, {"result": "too-large", "reason": "a hook is at most 1 MiB"})
        elif self.room.held + size > BODY_BUDGET:
            self._refuse(503, {"result": "busy", "reason": "too many bodies at once; try again"})
        else:
            self.room.held += size
            self.reserved = size

    def data_received(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def finish(self) -> None:
        self.room.busy.add(self.stream)
        IOLoop.current().spawn_callback(self._run)

    def on_connection_close(self) -> None:
        self._release()

    async def _run(self) -> None:
        assert self.start_line is not None
        headers = self.headers
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.start_line.method,
            "PATH_INFO": self.start_line.path.partition("?")[0],
            "REMOTE_ADDR": self.host,
            "CONTENT_LENGTH": str(sum(len(chunk) for chunk in self.chunks)),
            "wsgi.input": BytesIO(b"".join(self.chunks)),
            **{"HTTP_" + key.replace("-", "_").upper(): value for key, value in headers.get_all()},
        }
        self.chunks = []
        pool = self.listener._pool
        dashboard = self.listener.dashboard
        if dashboard is not None and environ["PATH_INFO"] == "/events" and self.start_line.method == "GET":
            await self._stream(dashboard.hub)
            return
        try:
            if pool is None:
                return
            status_line, answer_headers, body = await IOLoop.current().run_in_executor(
                pool, self.listener.call, environ
            )
            status, _, reason = status_line.partition(" ")
            head = httputil.HTTPHeaders()
            for key, value in answer_headers:
                head.add(key, value)
            head["Server"] = "reconciler"
            chunk = None if self.start_line.method == "HEAD" else body
            await self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", int(status), reason), head, chunk)
            self.conn.finish()
        except (iostream.StreamClosedError, RuntimeError):  # the client left, or the pool was shut at stop
            self.conn.close()
        finally:
            self._release()
            self.room.busy.discard(self.stream)

    async def _stream(self, hub: Hub) -> None:
        """``/events``: the dashboard's server-sent events, for as long as the client reads them. The connection
        is not busy meanwhile: a newcomer may push it out, as it would an idle one."""
        self.room.busy.discard(self.stream)
        self._release()
        queue = hub.subscribe()
        head = httputil.HTTPHeaders({"Server": "reconciler", "Cache-Control": "no-store"})
        try:
            if queue is None:
                body = b'{"result": "busy", "reason": "too many event streams open"}\n'
                head.update({"Content-Type": "application/json", "Content-Length": str(len(body))})
                await self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", 503, "Service Unavailable"), head,
                                              body)  # fmt: skip
                self.conn.finish()
                return
            head["Content-Type"] = "text/event-stream; charset=utf-8"
            await self.conn.write_headers(httputil.ResponseStartLine("HTTP/1.1", 200, "OK"), head, b": open\n\n")
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    chunk = b": keep-alive\n\n"
                if chunk is None:  # the listener stops
                    break
                await self.conn.write(chunk)
            self.conn.finish()
        except (iostream.StreamClosedError, RuntimeError):
            self.conn.close()
        finally:
            if queue is not None:
                hub.unsubscribe(queue)

    def _release(self) -> None:
        self.room.held -= self.reserved
        self.reserved = 0

    def _refuse(self, status: int, body: Mapping[str, Any]) -> None:
        """Answer now, without reading the body, then read and drop what the client still sends for a
        moment: closing on unread data would reset the connection and lose the answer on its way."""
        data = (json.dumps(body) + "\n").encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\nServer: reconciler\r\n\r\n"
        )
        stream = self.conn.detach()
        IOLoop.current().spawn_callback(_linger, stream, head.encode() + data, self.room, self.host)


async def _linger(stream: iostream.IOStream, answer: bytes, room: _Room, host: str) -> None:
    room.open[stream] = host  # still counted while it lingers (the server forgot it when it was detached)
    room.per[host] += 1
    try:
        await stream.write(answer)
        stream.socket.shutdown(socket.SHUT_WR)
        deadline = IOLoop.current().time() + _LINGER
        dropped = 0
        while dropped < 16 * MAX_BODY:
            chunk = await gen.with_timeout(deadline, stream.read_bytes(65536, partial=True))
            dropped += len(chunk)
    except (iostream.StreamClosedError, OSError, TimeoutError):
        pass
    finally:
        stream.close()
        room.forget(stream)


def _one_line(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    error = context.get("exception")
    what = f"{type(error).__name__}: {str(error)[:200]}" if error is not None else ""
    _log.error("listener: internal error: %s", what or str(context.get("message", ""))[:200])
