"""The agent's dashboard, served by its listener (``agent.listener``): the overview, an app, the pending
change, a live event stream, and (with ``--ui-token-file``) actions.

Guarantees:
- Pages are rendered on the server (jinja2, autoescaped, from templates in the package): they read whole with
  JavaScript off. The one script and style sheet are files of the package; nothing is loaded from elsewhere
  (``Content-Security-Policy: default-src 'self'``).
- What a page shows comes from the board: ``reconcile status``'s records (``ops.status.collect``, with the
  dry-run of the branch tip) taken after each pass while somebody looks (a page asked for within ``WATCHED``
  seconds, or an open event stream), and at the next page asked for otherwise: an agent nobody looks at does
  no more work than one without a dashboard. Every string of a page and of the stream is scrubbed
  (``telemetry.scrub``) on its way out, on top of the records holding no env value.
- An app's page adds what the agent heard of its releases' gates (the samples, kept in memory for the last
  ``GATED`` releases) and the last ``LOG_LINES`` of its failed release's log, scrubbed.
- ``/events`` is a server-sent event stream: each agent event (``event: agent``, scrubbed as the log is) as
  it is said, and ``event: board`` when the board was taken again. At most ``MAX_STREAMS`` are open at once.
- Without a token the dashboard is read-only: no form, and ``/login`` and every action answer 404. With one,
  a browser that posts the token to ``/login`` gets a session cookie (``HttpOnly``, ``SameSite=Strict``,
  random, kept in memory for ``SESSION_TTL``); an action needs that cookie and the session's CSRF token in its
  form, else ``403`` and nothing is done; so is a post whose ``Origin`` is another site. The token is compared
  in constant time and never shown; after ``LOGIN_TRIES`` wrong ones from an address in ``LOGIN_WINDOW``
  seconds, its logins are ``429`` until the window moves on.
- Actions: suspend, resume, retry a held release, promote or abort a rollout under way (``reconcile rollout``),
  break-glass ``rollback --local``, and a rollback as the commit
  ``reconcile rollback APP --to V`` writes, on the followed branch of a local repository, signed where that
  repository signs its commits; where that commit cannot be made (a URL, a branch that is not the repository's
  HEAD, signed commits required of a repository that does not sign), the page says why instead of offering it.
  Each action is one ``ui.action`` event naming the session and what was done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import http.cookies
import json
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from reconciler.adapters.git import is_url
from reconciler.adapters.protocols import DockerEngine
from reconciler.converge.run import Settings
from reconciler.core import dashboard as view
from reconciler.core.events import Event
from reconciler.core.health import Sample
from reconciler.core.model import Role, container_name
from reconciler.core.status import Status
from reconciler.errors import ReconcileError
from reconciler.telemetry import scrub
from reconciler.telemetry.log import EventLog

WATCHED = 300.0  # seconds after a page was asked for during which the board is taken again after each pass
MAX_STREAMS = 64
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 64
RECENT = 30  # agent events the overview lists before the stream adds to them
GATED = 64  # containers whose gate samples are kept (the newest), at most ``SAMPLES`` each
SAMPLES = 40
LOG_LINES = 30  # of a failed release's log, on its app's page
LOGIN_TRIES, LOGIN_WINDOW = 10, 60.0  # wrong tokens from one address in that many seconds, then 429
COOKIE = "reconciler_session"
HERE = Path(__file__).parent
STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
HEADERS = [
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]  # fmt: skip

Answer = tuple[int, list[tuple[str, str]], bytes]


@dataclass(frozen=True)
class Facts:
    """What the agent knows of itself, for the overview's header."""

    instance: str
    host: str  # this host's name (in a fleet's ``hosts:``)
    ref: str
    applied: str  # the commit last converged to, or ""
    attempted: str  # the tip last read, or ""
    signer: str  # the key that signed it (``--require-signed-by``), or ""
    last_pass: float | None  # epoch seconds
    next_pass: float | None


@dataclass
class Session:
    csrf: str
    who: str  # ``session XXXXXX``: what events say of it, never the cookie
    until: float
    flash: tuple[str, bool] | None = None  # (what to say, whether it is an error) on the next page


class Hub:
    """The open event streams (queues on the listener's event loop) and the agent's recent events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[asyncio.Queue[bytes | None], asyncio.AbstractEventLoop] = {}
        self._recent: deque[dict[str, str]] = deque(maxlen=RECENT)

    def said(self, item: dict[str, str]) -> None:
        with self._lock:
            self._recent.appendleft(item)

    def recent(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._recent)

    def subscribe(self) -> asyncio.Queue[bytes | None] | None:
        """A queue for a new stream, on the running loop; None when ``MAX_STREAMS`` are open."""
        with self._lock:
            if len(self._streams) >= MAX_STREAMS:
                return None
            queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=256)
            self._streams[queue] = asyncio.get_running_loop()
            return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        with self._lock:
            self._streams.pop(queue, None)

    @property
    def watching(self) -> bool:
        with self._lock:
            return bool(self._streams)

    def publish(self, kind: str, data: Mapping[str, Any]) -> None:
        chunk = f"event: {kind}\ndata: {scrub.scrub(json.dumps(data))}\n\n".encode()
        with self._lock:
            streams = list(self._streams.items())
        for queue, loop in streams:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the listener stopped
                loop.call_soon_threadsafe(_offer, queue, chunk)

    def close(self) -> None:
        with self._lock:
            streams = list(self._streams.items())
        for queue, loop in streams:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_offer, queue, None)


def _offer(queue: asyncio.Queue[bytes | None], chunk: bytes | None) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # a client that reads nothing misses events, never stalls us
        queue.put_nowait(chunk)


@dataclass(frozen=True)
class Heard:
    """One sample of a gate, as the app page shows it."""

    after: float  # seconds since its gate started
    running: bool
    probe_ok: bool
    restarts: int
    detail: str


@dataclass
class Board:
    status: Status
    at: float


@dataclass
class Dashboard:
    """See the module docstring. ``facts`` and ``settings`` are the agent's; ``token`` empty: read-only."""

    settings: Settings
    ref: str
    facts: Callable[[], Facts]
    events: EventLog
    token: bytes = field(default=b"", repr=False)
    hub: Hub = field(default_factory=Hub)
    sessions: dict[str, Session] = field(default_factory=dict)
    collect: Callable[[Settings], Status] | None = None  # ops.status.collect; given by tests
    engine: Callable[[], DockerEngine | None] = lambda: None  # the agent's, for a failed release's log
    # container id -> its last gate: when it started, its samples
    gates: OrderedDict[str, tuple[float, deque[Heard]]] = field(default_factory=OrderedDict)
    _board: Board | None = None
    _stale: bool = True
    _viewed: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)  # one taking of the board at a time
    _wanted: threading.Event = field(default_factory=threading.Event)  # a pass ended: take the board again
    _refresher: threading.Thread | None = None
    _failed_logins: dict[str, deque[float]] = field(default_factory=dict)  # address -> when its wrong tokens came
    _sessions_lock: threading.Lock = field(default_factory=threading.Lock)
    _templates: Any = None

    # -- the agent's side --------------------------------------------------------------------------

    def on_event(self, event: Event, message: str, fields: Mapping[str, Any]) -> None:
        """An ``EventLog`` listener: the stream and the recent list get each event (already scrubbed)."""
        if event is Event.PASS_DONE:
            return  # a fact for tests, every pass: not news for a person
        said = {
            "time": time.strftime("%H:%M:%S", time.localtime()),
            "event": event.value,
            "app": str(fields.get("app") or ""),
            "message": message,
        }
        self.hub.said(said)
        self.hub.publish("agent", said)

    def sampled(self, container_id: str, started_at: float, sample: Sample) -> None:
        """A deploy's gate (started at ``started_at``) took ``sample`` of ``container_id`` (``Applier.on_sample``,
        from its threads): a container's last gate is kept, a rollback's gate of it replaces its deploy's."""
        heard = Heard(sample.at - started_at, sample.running, sample.probe_ok, sample.restarts, sample.detail)
        with self._sessions_lock:
            gate = self.gates.get(container_id)
            if gate is None or gate[0] != started_at:
                gate = self.gates[container_id] = (started_at, deque(maxlen=SAMPLES))
            gate[1].append(heard)
            self.gates.move_to_end(container_id)
            while len(self.gates) > GATED:
                self.gates.popitem(last=False)

    def _releases(self, app: str) -> tuple[list[tuple[str, list[Heard]]], str]:
        """The gate samples of the app's running and failed releases (those heard), and the failed one's log."""
        engine = self.engine()
        if engine is None:
            return [], ""
        gated: list[tuple[str, list[Heard]]] = []
        log = ""
        with contextlib.suppress(ReconcileError):
            for role, said in ((Role.CURRENT, "running release"), (Role.FAILED, "failed release")):
                found = engine.inspect(container_name(app, role))
                if found is None or not found.ours:
                    continue
                with self._sessions_lock:
                    heard = list(self.gates.get(found.id, (0.0, ()))[1])
                if heard:
                    gated.append((f"{said} ({found.image})", heard))
                if role is Role.FAILED:
                    log = engine.logs(found.id, tail=LOG_LINES)
        return gated, scrub.scrub(log)

    def passed(self) -> None:
        """A pass ended: the board is taken again now if somebody looks (by one thread: passes that end while
        it is being taken make one more taking, not a queue), else at the next page."""
        self._stale = True
        if self.hub.watching or time.monotonic() - self._viewed < WATCHED:
            with self._sessions_lock:
                if self._refresher is None:
                    self._refresher = threading.Thread(target=self._refreshing, name="dashboard-board", daemon=True)
                    self._refresher.start()
            self._wanted.set()

    def _refreshing(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            with contextlib.suppress(ReconcileError):
                self.board(force=True)
                self.hub.publish("board", {"at": time.time()})

    def board(self, *, force: bool = False) -> Board:
        """The board: taken again when ``force``d or stale, except that a page asked for while it is being
        taken gets the last one at once (it is seconds old; the stream says when the new one is there)."""
        current = self._board
        if current is not None and not force and (not self._stale or self._lock.locked()):
            return current
        with self._lock:
            if self._board is None or force or self._stale:
                self._stale = False
                self._board = self._take()
            return self._board

    def _take(self) -> Board:
        from reconciler.ops.status import collect

        return Board((self.collect or collect)(dataclasses.replace(self.settings, ref=self.ref)), time.time())

    # -- requests ----------------------------------------------------------------------------------

    def answer(self, method: str, path: str, environ: Mapping[str, Any]) -> Answer | None:
        """The answer to a dashboard request, or None when ``path`` is not the dashboard's."""
        if path.startswith("/static/") and method in ("GET", "HEAD"):
            name = path.removeprefix("/static/")
            if name not in STATIC:
                return None
            return (
                200,
                [("Content-Type", STATIC[name]), ("Cache-Control", "max-age=300")],
                (HERE / "static" / name).read_bytes(),
            )
        session = self._session(environ)
        if method in ("GET", "HEAD"):
            if path == "/":
                return self._page("overview.html", session, page="/")
            if path == "/pending":
                return self._page("pending.html", session, page="/pending")
            if path.startswith("/apps/") and path.count("/") == 2:
                return self._app(path.removeprefix("/apps/"), session)
            if path == "/login":
                return self._login_form(session, status=200) if self.token else None
            return None
        if method != "POST":
            return None
        if not _same_origin(environ):
            return self._message(403, "Cross-origin post refused: the form was not sent by this dashboard.")
        form = _form(environ)
        if path == "/login":
            return self._login(form, environ) if self.token else None
        action, app = _action_of(path)
        if action is None or not self.token:
            return None
        if session is None:
            return self._message(403, "Log in first: actions need a session (/login).")
        if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
            return self._message(403, "CSRF token missing or wrong: the form was not sent by this dashboard.")
        return self._act(action, app, form, session)

    def _session(self, environ: Mapping[str, Any]) -> Session | None:
        if not self.token:
            return None
        jar = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            jar.load(str(environ.get("HTTP_COOKIE", "")))
        morsel = jar.get(COOKIE)
        if morsel is None:
            return None
        with self._sessions_lock:
            session = self.sessions.get(morsel.value)
            if session is not None and session.until < time.time():
                del self.sessions[morsel.value]
                return None
            return session

    def _login(self, form: Mapping[str, str], environ: Mapping[str, Any]) -> Answer:
        address, now = str(environ.get("REMOTE_ADDR", "?")), time.monotonic()
        with self._sessions_lock:
            failed = self._failed_logins.setdefault(address, deque(maxlen=LOGIN_TRIES))
            while failed and failed[0] < now - LOGIN_WINDOW:
                failed.popleft()
            if len(failed) >= LOGIN_TRIES:
                return self._message(429, f"Too many wrong tokens from {address}: wait a minute.")
        if not hmac.compare_digest(form.get("token", "").strip().encode(), self.token):
            with self._sessions_lock:
                failed.append(now)
            return self._login_form(None, status=401, flash="Wrong token.")
        key = secrets.token_urlsafe(32)
        who = "session " + hashlib.sha256(key.encode()).hexdigest()[:6]
        with self._sessions_lock:
            if len(self.sessions) >= MAX_SESSIONS:  # the oldest goes
                del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].until)]
            self.sessions[key] = Session(csrf=secrets.token_urlsafe(32), who=who, until=time.time() + SESSION_TTL)
        self.events.emit(Event.UI_ACTION, f"{who} ({environ.get('REMOTE_ADDR', '?')}): logged in")
        cookie = f"{COOKIE}={key}; HttpOnly; SameSite=Strict; Path=/; Max-Age={int(SESSION_TTL)}"
        return 303, [("Location", "/"), ("Set-Cookie", cookie)], b""

    def _act(self, action: str, app: str | None, form: Mapping[str, str], session: Session) -> Answer:
        from reconciler.ops import controls

        back = f"/apps/{app}" if app else "/"
        state_dir = self.settings.state_dir
        try:
            if action == "logout":
                with self._sessions_lock:
                    self.sessions = {k: s for k, s in self.sessions.items() if s is not session}
                self.events.emit(Event.UI_ACTION, f"{session.who}: logged out")
                expired = f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
                return 303, [("Location", "/"), ("Set-Cookie", expired)], b""
            if action == "suspend":
                reason = form.get("reason", "").strip()[:200] or "suspended from the dashboard"
                controls.suspend(state_dir=state_dir, reason=f"{reason} ({session.who})")
                done = f"suspended: {reason}"
            elif action == "resume":
                controls.resume(state_dir=state_dir)
                done = "resumed: the agent converges to git again"
            elif action == "retry" and app is not None:
                controls.retry(state_dir=state_dir, app=app)
                done = f"{app}: its failed release is tried again at the next pass"
            elif action == "break-glass" and app is not None:
                from reconciler.ops.breakglass import swap_back

                what, version = swap_back(self.settings, app)
                done = (f"break-glass: {what}. git does not know it: the agent is suspended until you commit"
                        f" {app} at {version} (reconcile rollback {app} --to {version}) and resume")  # fmt: skip
            elif action == "rollback" and app is not None:
                done = self._rollback(app, form.get("version", ""))
            elif action in ("promote", "abort") and app is not None:
                record, _ = controls.rollout(state_dir=state_dir, app=app, what=action)
                went = f"{record.from_version} -> {record.to_version}"
                done = f"{app}: {action} of its rollout {went} asked; a pass does it now"
            else:
                return self._message(404, "No such action.")
        except ReconcileError as exc:
            self.events.emit(Event.UI_ACTION, f"{session.who}: {action} {app or ''} refused: {exc}".replace("  ", " "),
                             app=app or "")  # fmt: skip
            return self._flash(session, f"{action} refused: {exc}", error=True, back=back)
        self.events.emit(Event.UI_ACTION, f"{session.who}: {done}", app=app or "")
        with contextlib.suppress(ReconcileError):
            self.board(force=True)  # the page it goes back to shows what the action did, not the board before it
        return self._flash(session, done, error=False, back=back)

    def rollback_off(self) -> str:
        """Why the dashboard does not offer a rollback commit here, or "" when it does."""
        if is_url(self.settings.repo):
            return ("the agent follows a URL, which it does not push to: roll back from a clone with"
                    " `reconcile rollback APP --to VERSION`")  # fmt: skip
        if self.settings.require_signed_by and not self._signs():
            return (f"this agent requires signed commits, and {self.settings.repo} does not sign the commits made"
                    " in it (git config commit.gpgsign true, with gpg.format and user.signingkey there)")  # fmt: skip
        return ""

    def _signs(self) -> bool:
        from reconciler.adapters.git import open_source

        try:
            source = open_source(self.settings.repo, state_dir=self.settings.state_dir, fetch=False)
        except ReconcileError:
            return False
        try:
            return source.signs()
        finally:
            source.close()

    def _rollback(self, app: str, version: str) -> str:
        from reconciler.ops.rollback import open_for_writing, rollback

        if why := self.rollback_off():
            raise _Refused(why)
        if not version:
            raise _Refused("no version given")
        source = open_for_writing(repo=self.settings.repo, file=self.settings.file, policy=self.settings.policy,
                                  signed_by=self.settings.require_signed_by)  # fmt: skip
        try:
            branch = source.branch()
            if self.ref not in ("HEAD", f"refs/heads/{branch}"):
                raise _Refused(f"the agent follows {self.ref}, and {self.settings.repo}'s HEAD is {branch}:"
                               " roll back from a clone with `reconcile rollback`")  # fmt: skip
            committed = rollback(source=source, settings=self.settings, app=app, to=version, push=False, branch=None)
        finally:
            source.close()
        return f"committed {committed.written.revision[:8]} on {branch}: {committed.message}"

    # -- rendering ---------------------------------------------------------------------------------

    def _env(self) -> Any:
        if self._templates is None:
            import jinja2

            self._templates = jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                autoescape=True,
                finalize=lambda value: scrub.scrub(value) if isinstance(value, str) else value,
                trim_blocks=True,
                lstrip_blocks=True,
            )
        return self._templates

    def _render(self, template: str, status: int, session: Session | None, **values: Any) -> Answer:
        flash = None
        if session is not None and session.flash is not None:
            flash, session.flash = session.flash, None
        text = self._env().get_template(template).render(
            session=session, actions=bool(self.token), flash=flash, facts=self.facts(), now=time.time(),
            clock=_clock, **values,
        )  # fmt: skip
        return status, [("Content-Type", "text/html; charset=utf-8"), *HEADERS], text.encode()

    def _page(self, template: str, session: Session | None, *, page: str) -> Answer:
        self._viewed = time.monotonic()
        board = self.board()
        status = board.status
        return self._render(
            template, 200, session, page=page, board=board, st=status, rows=view.rows(status),
            recent=self.hub.recent(), suspended=status.suspended,
            refused=status.refused or status.desired_error,
        )  # fmt: skip

    def _app(self, name: str, session: Session | None) -> Answer:
        from reconciler.ops.controls import history
        from reconciler.state.journal import Journal

        self._viewed = time.monotonic()
        board = self.board()
        found = next((app for app in board.status.apps if app.app == name), None)
        if found is None:
            return self._message(404, f"No app {name!r} on this host.")
        entries = history(state_dir=self.settings.state_dir, app=name, limit=50) if (
            self.settings.state_dir / "journal.db").exists() else []  # fmt: skip
        journal = Journal(self.settings.state_dir, create=False) if entries else None
        try:
            promoted = journal.stable(name) if journal is not None else None
        finally:
            if journal is not None:
                journal.close()
        row = next(row for row in view.rows(board.status) if row.app == name)
        gated, failed_log = self._releases(name)
        return self._render(
            "app.html", 200, session, page=f"/apps/{name}", board=board, app=found, row=row, gated=gated,
            failed_log=failed_log,
            deploys=view.history(entries), versions=view.back_to(entries, found.desired), promoted=promoted,
            rollback_off=self.rollback_off(), refused=board.status.refused or board.status.desired_error,
            suspended=board.status.suspended, rollout=view.rollout_of(board.status, name),
        )  # fmt: skip

    def _login_form(self, session: Session | None, *, status: int, flash: str = "") -> Answer:
        return self._render("login.html", status, session, page="/login", said=flash, refused=None, suspended=None)

    def _message(self, status: int, text: str) -> Answer:
        return self._render("message.html", status, None, page="", said=text, refused=None, suspended=None)

    def _flash(self, session: Session, text: str, *, error: bool, back: str) -> Answer:
        session.flash = (text, error)
        return 303, [("Location", back)], b""


class _Refused(ReconcileError):
    """An action the dashboard will not do here: said in the page, as a refusal."""


def _form(environ: Mapping[str, Any]) -> dict[str, str]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[0] for key, values in parsed.items()}


def _same_origin(environ: Mapping[str, Any]) -> bool:
    """A post whose ``Origin`` (browsers send it with every post) names another host than the one asked is
    another site's: refused before the cookie or the CSRF token are even looked at."""
    origin = str(environ.get("HTTP_ORIGIN", ""))
    if not origin or origin == "null":
        return True  # not a browser's cross-site post (curl, or a privacy setting): the CSRF token decides
    return origin.partition("://")[2] == str(environ.get("HTTP_HOST", ""))


def _action_of(path: str) -> tuple[str | None, str | None]:
    """(action, app) of an action's path: ``/actions/suspend``, ``/apps/web/rollback``, ``/logout``."""
    if path == "/logout":
        return "logout", None
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "actions" and parts[1] in ("suspend", "resume"):
        return parts[1], None
    if len(parts) == 3 and parts[0] == "apps" and parts[2] in ("retry", "break-glass", "rollback", "promote", "abort"):
        return parts[2], parts[1]
    return None, None


def _clock(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"
