"""``reconcile agent --notify URL``: the agent's notable events, sent to apprise targets, off the deploy path.

Guarantees:
- Only the events in ``NOTIFIED`` (a deploy failed, rolled back or held; a release promoted to stable;
  drift seen with self-heal off; the remote or the engine unreachable and recovered; a commit refused by
  its signature; a host's certificate that could not be had, and had again; an action from the dashboard)
  are sent, and only when the agent emits them: the agent logs each condition once (``EventLog.once``), so
  a notification is sent on a change, never every pass.
- ``Notifier(...)`` is the call the agent makes for every event it emits: it never blocks and never
  raises. Each target has its own daemon thread and its own bounded queue; a full queue drops its
  oldest notification (counted in ``dropped``), so a target that hangs or fails delays neither a
  deploy nor the other targets.
- Each send is bounded: it runs on a daemon thread waited for ``timeout`` (+ ``GRACE``) seconds, which
  bounds any target (also a server that answers a byte at a time, which no socket timeout ends) and
  never holds the process at its exit; the sockets of HTTP targets (apprise's ``cto``/``rto``) time out
  at ``timeout``, so that a server that never answers ends the send itself. At most one send per target
  is left running.
- A target that fails is logged once ("notify: target 2 (json) failed: timed out after 10s") until
  it accepts a notification again, which is logged once ("recovered").
- A notification URL holds tokens: none is ever written. Lines and errors name a target by its place
  on the command line and its scheme; apprise's own log (which quotes URLs) is silenced and kept off the
  process's handlers; titles and bodies are scrubbed (``scrub``) again on their way out. Each URL is a
  secret to ``scrub`` from the start, all of it after its scheme (and its password alone), so any line
  of this process that would quote one shows ``slack://***`` (``state.private.masked_url``: the same mask as
  the lock's owner file).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import traceback
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.core.events import Event
from reconciler.errors import UserError
from reconciler.telemetry.scrub import redact_url, remember, scrub, scrub_fields

if TYPE_CHECKING:  # imported when a Notifier is made, after its log is silenced (it logs as it loads)
    import apprise


NOTIFIED: frozenset[Event] = frozenset(
    {
        Event.DEPLOY_FAILED,
        Event.DEPLOY_ROLLED_BACK,
        Event.DEPLOY_HELD,
        Event.STABLE_PROMOTED,
        Event.DRIFT_FOUND,
        Event.REMOTE_UNREACHABLE,
        Event.REMOTE_RECOVERED,
        Event.ENGINE_UNREACHABLE,
        Event.ENGINE_RECOVERED,
        Event.NODE_DOWN,
        Event.NODE_RECOVERED,
        Event.COMMIT_UNSIGNED,  # commits refused by their signature
        Event.COMMIT_BAD_SIGNATURE,
        Event.CERT_FAILED,  # a host's certificate could not be had (once), and had again
        Event.CERT_RECOVERED,
        Event.UI_ACTION,  # who did what from the dashboard
    }
)
RECOVERED = "deploy.recovered"  # a notification's name (not a log line): a deploy that succeeds after trouble
# what ``Notifier`` compares an event's name with: the members above, and the recovery it names itself
NOTIFIED_NAMES: frozenset[str] = frozenset(event.value for event in NOTIFIED) | {RECOVERED}
_TROUBLE = frozenset({Event.DEPLOY_FAILED.value, Event.DEPLOY_ROLLED_BACK.value, Event.DEPLOY_HELD.value})
_GOOD = frozenset({Event.REMOTE_RECOVERED.value, Event.ENGINE_RECOVERED.value, Event.NODE_RECOVERED.value,
                   Event.STABLE_PROMOTED.value, Event.CERT_RECOVERED.value, RECOVERED})  # fmt: skip
_WARNING = frozenset({Event.DEPLOY_HELD.value, Event.DRIFT_FOUND.value, Event.CERT_FAILED.value,
                      Event.UI_ACTION.value})  # fmt: skip

_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]{0,31})://")
_APPRISE_LOGGER = "apprise"
_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.response", "urllib3.util.retry")
_THREAD_PREFIX = "notify-"
GRACE = 0.1  # seconds a send is waited for beyond its timeout, so that its own socket timeout ends it first


@dataclass(frozen=True)
class Notification:
    title: str
    body: str
    kind: str  # apprise's NotifyType: success, warning, failure


def notification(event: Event | str, message: str, fields: Mapping[str, Any]) -> Notification:
    """What is sent for an event: title ``reconciler: EVENT APP``, the message, then the other fields."""
    name = str(event)
    clean = scrub_fields(fields)
    app = clean.get("app")
    title = f"reconciler: {name}" + (f" {app}" if app else "")
    extra = " ".join(f"{key}={value}" for key, value in clean.items() if key != "app" and value not in (None, ""))
    body = scrub(message) or name
    if extra:
        body = f"{body}\n{extra}"
    if name in _GOOD:
        kind = "success"
    elif name in _WARNING:
        kind = "warning"
    else:
        kind = "failure"
    return Notification(title=scrub(title), body=body, kind=kind)


def quiet_apprise() -> None:
    """Silence apprise's log (its lines name URLs, hosts, paths, some of them tokens): no line of it is
    made, and none would reach the handlers of the process (stderr). The notifier reports each target
    itself, by its place and scheme. Process-wide, as apprise's logger is."""
    logger = logging.getLogger(_APPRISE_LOGGER)
    logger.setLevel(logging.CRITICAL + 10)
    logger.propagate = False
    for name in _HTTP_LOGGERS:  # urllib3 logs each request's path at DEBUG: not the notifier's
        http = logging.getLogger(name)
        if not any(isinstance(f, _NotOurSends) for f in http.filters):
            http.addFilter(_NotOurSends())


class _NotOurSends(logging.Filter):
    """Drops the records logged on the notifier's threads (their requests carry a target's tokens)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith(_THREAD_PREFIX)


def remember_urls(urls: Sequence[str]) -> None:
    """Make ``scrub`` mask each URL whole after its scheme, and its password wherever it appears alone."""
    secrets: list[str] = []
    for url in urls:
        found = _SCHEME.match(url)
        rest = url[found.end() :] if found else url.strip()
        # Also as it is once its password is masked (``scrub`` may mask that first): the rest goes too.
        secrets += [rest, redact_url(url)[found.end() :] if found else rest]
        userinfo = rest.split("/", 1)[0].rpartition("@")[0]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            secrets += [password, urllib.parse.unquote(password)]
    remember(secrets)


def scheme_of(url: str) -> str | None:
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else None


def _seconds(value: float) -> str:
    return f"{value:g}s"


class _Target:
    """One ``--notify`` URL: its apprise object, its queue, its thread, and whether it is failing."""

    def __init__(self, index: int, scheme: str, sender: apprise.Apprise, *, owner: Notifier, queue_size: int) -> None:
        self.index = index
        self.scheme = scheme
        self.sender = sender
        self.owner = owner
        self.queue: deque[Notification] = deque()
        self.queue_size = queue_size
        self.cond = threading.Condition()
        self.failing = False
        self.hung: threading.Thread | None = None  # a send given up on that has not returned yet
        self.thread = threading.Thread(target=self._run, name=f"{_THREAD_PREFIX}{index}", daemon=True)

    @property
    def name(self) -> str:
        return f"target {self.index} ({self.scheme})"

    def put(self, item: Notification) -> None:
        with self.cond:
            if self.owner._closing:
                return
            while len(self.queue) >= self.queue_size:
                self.queue.popleft()
                self.owner._count("dropped")
            self.queue.append(item)
            self.cond.notify()

    def _next(self) -> Notification | None:
        with self.cond:
            while True:
                stop_at = self.owner._stop_at
                if stop_at is not None and (not self.queue or time.monotonic() >= stop_at):
                    return None
                if self.queue:
                    return self.queue.popleft()
                self.cond.wait()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            problem = self._send(item)
            if problem is None:
                self.owner._count("sent")
                if self.failing:
                    self.failing = False
                    self.owner._log(f"notify: {self.name} recovered", recovered=True)
            else:
                self.owner._count("failed")
                if not self.failing:
                    self.failing = True
                    self.owner._log(f"notify: {self.name} failed: {problem}")

    def _send(self, item: Notification) -> str | None:
        """None when the target took ``item`` in time, else why not: never its URL nor apprise's own words
        (they may quote it).

        The send runs on a daemon thread of its own, waited for ``timeout`` (and ``GRACE``) seconds: that
        bounds any target, also one that answers a byte at a time or a name that does not resolve (which
        socket timeouts never end), and a send given up on never holds the process at its exit. The
        sockets of an HTTP target time out at ``timeout`` (``_load``), so that a server that never answers
        ends the send itself, just before. At most one send per target is left running: while it has not
        returned, the next sends wait for it, within their own time, rather than start another.
        """
        timeout = self.owner.timeout
        deadline = time.monotonic() + timeout + GRACE
        timed_out = f"timed out after {_seconds(timeout)}"
        if self.hung is not None:
            self.hung.join(max(0.0, deadline - time.monotonic()))
            if self.hung.is_alive():
                return timed_out
            self.hung = None
        outcome: list[str | None] = []

        def send() -> None:
            import apprise

            started = time.monotonic()
            try:
                with self.sender.notify(body=item.body, title=item.title, notify_type=item.kind) as result:
                    ok = result.status == apprise.AppriseResultStatus.SUCCESS
            except Exception as exc:  # a bug in a plugin fails this send, not the thread
                outcome.append(f"apprise raised {type(exc).__name__}")
                return
            if ok:
                outcome.append(None)
            elif time.monotonic() - started >= timeout:  # its socket timed out
                outcome.append(timed_out)
            else:
                outcome.append("not delivered (refused or unreachable)")

        worker = threading.Thread(target=send, name=f"{_THREAD_PREFIX}{self.index}-send", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            self.hung = worker
            return timed_out
        return outcome[0] if outcome else "not delivered"


class Notifier:
    """Sends the events in ``NOTIFIED`` to every ``--notify`` target, each on its own daemon thread."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        log: Callable[[str], None],
        recovered: Callable[[str], None] | None = None,
        timeout: float = 10.0,
        queue_size: int = 100,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        remember_urls(urls)
        quiet_apprise()
        import apprise

        self.timeout = float(timeout)
        self._logger = log
        self._recovered = recovered  # a target that delivers again after failing; else said through ``log``
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "dropped": 0}
        self._closing = False
        self._troubled: set[str] = set()  # apps whose last deploy failed, was rolled back or held
        self._stop_at: float | None = None
        asset = apprise.AppriseAsset(
            # the send runs on a thread of ours, bounded by ``timeout`` (``_Target._send``): apprise's own
            # deadline would leave its thread in its executor, which the interpreter waits for at exit
            service_timeout=0,
            async_mode=False,
            storage_mode="memory",  # no cache files written for the plugins that keep some
            secure_logging=True,
        )
        loaded = [_load(index, url, asset, self.timeout) for index, url in enumerate(urls, start=1)]
        self._targets = [
            _Target(index, scheme, sender, owner=self, queue_size=max(1, queue_size))
            for index, (scheme, sender) in enumerate(loaded, start=1)
        ]
        for target in self._targets:
            target.thread.start()

    def __call__(self, event: Event | str, message: str, fields: Mapping[str, Any]) -> None:
        """Queue a notification of ``event`` for every target when it is one of ``NOTIFIED``; never
        blocks, never raises (a bug here is printed with its traceback: the agent's log line stands)."""
        try:
            name, app = str(event), str(fields.get("app") or "")
            if app and name in _TROUBLE:
                self._troubled.add(app)
            elif app and name == Event.DEPLOY_SUCCEEDED.value and app in self._troubled:
                # A deploy that succeeds after a failure, a rollback or a hold: the app recovered.
                self._troubled.discard(app)
                event = RECOVERED
            if str(event) not in NOTIFIED_NAMES or not self._targets or self._closing:
                return
            item = notification(event, message, fields)
            for target in self._targets:
                target.put(item)
        except Exception:  # a notification is never worth failing the agent's log line; the bug is kept
            traceback.print_exc(file=sys.stderr)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads: what is queued is still sent until ``timeout``, then given up. Returns
        within ``timeout`` (a thread still waiting on a target is a daemon and ends with the process)."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._closing = True
        self._stop_at = deadline
        for target in self._targets:
            with target.cond:
                target.cond.notify_all()
        for target in self._targets:
            target.thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def targets(self) -> list[str]:
        """``target N (scheme)`` for each URL, in order: what may be shown of them."""
        return [target.name for target in self._targets]

    @property
    def sent(self) -> int:
        return self._counts["sent"]

    @property
    def failed(self) -> int:
        return self._counts["failed"]

    @property
    def dropped(self) -> int:
        return self._counts["dropped"]

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _log(self, line: str, *, recovered: bool = False) -> None:
        said = self._recovered if recovered and self._recovered is not None else self._logger
        try:
            said(scrub(line))
        except Exception:  # a target's thread outlives a bug in what it reports to; the bug is kept
            traceback.print_exc(file=sys.stderr)


def _load(index: int, url: str, asset: apprise.AppriseAsset, timeout: float) -> tuple[str, apprise.Apprise]:
    """The apprise object of one ``--notify`` URL and the scheme to name it by; a ``UserError`` that
    names only its place and scheme for a URL apprise cannot use."""
    import apprise
    from apprise.manager_plugins import NotificationManager

    scheme = scheme_of(url)
    if scheme is None:
        raise UserError(f"--notify {index}: not a notification URL (SCHEME://…, e.g. slack://…, mailto://…, json://…)")
    manager = NotificationManager()  # type: ignore[no-untyped-call]  # a singleton: the loaded plugins
    known = scheme in manager
    try:
        plugin = apprise.Apprise.instantiate(url, asset=asset, suppress_exceptions=True)
    except Exception:
        plugin = None
    if plugin is None:
        if not known:
            raise UserError(f"--notify {index}: '{scheme}://…' is not a notification URL apprise knows")
        if not manager[scheme].enabled:
            raise UserError(f"--notify {index}: '{scheme}://…' notifications are not available on this host")
        raise UserError(f"--notify {index}: '{scheme}://…' is not a URL apprise can use (check its parts)")
    # the sockets of an HTTP target (apprise's cto and rto) time out at ``timeout``, whatever the URL or
    # the plugin says: a server that never answers ends the send itself, just before it is given up on
    for attribute in ("socket_connect_timeout", "socket_read_timeout"):
        if isinstance(getattr(plugin, attribute, None), int | float):
            setattr(plugin, attribute, timeout)
    if not known:  # a service's own URL (https://hooks.slack.com/...): name it by the plugin's scheme
        protocols = plugin.secure_protocol or plugin.protocol
        first = protocols if isinstance(protocols, str) else next(iter(protocols or ()), None)
        scheme = first if isinstance(first, str) else scheme
    sender = apprise.Apprise(asset=asset)
    sender.add(plugin)
    return scheme, sender
