"""Running `reconcile agent` as a real subprocess in tests, and reading its event log.

Guarantees:
- `AgentProcess.start()` runs `python -m reconciler agent ARGS` with the tests' interpreter, no
  stdin, and `cli_env(env)` (the running test's own `RECONCILE_INSTANCE`). Two daemon threads read
  stderr and stdout line by line into `lines` / `stdout` as they come, so a test can wait for an
  event while the agent keeps running.
- Each stderr line is parsed into a `LogLine`: a JSON object (``--log-format json``) or the text
  form ``TIME EVENT MESSAGE key=value...``. A line that is neither keeps `event == ""`.
- `wait_for` returns as soon as a matching line is there, fails at once (with the log) when the
  process has died, and fails after its deadline saying what it waited for and showing the log.
- `stop()` sends SIGTERM, waits, then SIGKILLs; it never raises and is safe to call twice, so a
  fixture can always call it.
- `World` is one test's world (its git remote, state directory, engine client, images, apps,
  agents): a `Site` (tests/support/state.py, where the desired-state, engine and CLI helpers are)
  that also starts agents. `open_world()` stops every agent it started when the test ends, before
  the `app_names` fixture removes the containers (a fixture that uses it must request `app_names`
  so that it is torn down first: a running agent would heal the containers back); then every
  agent's log must be clean (`assert_clean_log`).
- `World.app(word)` builds the images `v1`, `v2`, `v3` of a new app named `names(word)` in an image
  repository of its own, on a free port, and records it as an `App` (name, image, port, version,
  `yaml()`: the app's entry gated on a fast HTTP check, with a comment on its first line).
  `commit_apps(message, versions)` writes the recorded apps as desired-state.yaml in the clone,
  commits it (as `author` when given) and pushes it (unless `push=False`), leaving the clone's
  `main` tracking `origin/main`; `set(name, version)` is that for one app. `Site.commit(text)`
  still commits any text.
- The clone is where commands that write commits run: `rc(ARGS)` is `reconcile --repo CLONE
  --state-dir STATE ARGS` (never raises for an exit code), `ok(ARGS)` the same but it must
  succeed; `server(ARGS)` runs on the bare remote. All three fail the test on a traceback or an
  "internal error" (`STRICT`). `status()` is `reconcile status` (must succeed) as a result,
  `status_text()` what it prints, `status_json()` its `-o json` parsed, `status_of(app)` one app's
  entry of it.
- `bare_git(ARGS)` runs git on the bare remote; `remote_file(ref)` is desired-state.yaml at `ref`
  there (no final newline, as `git show` prints it), `remote_log(ref)` its (sha, parents, subject)
  newest first; `clone_file()` is the file in the clone's checkout.
- `wait_body` waits until an app serves a given body, and shows the agent's log when it does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .cli import cli_env
from .engine import AppNames
from .gitrepo import GitRemote, run_git
from .images import ImageFactory
from .net import free_port, http_get
from .state import FILE, STRICT, Site, app_yaml, cli, show

_TEXT_LINE = re.compile(r"^(?P<time>\d{4}-\d\d-\d\dT[\d:.]+Z) (?P<event>[a-z][a-z0-9.-]*)\s+(?P<message>.*)$")
_TEXT_FIELD = re.compile(r" (?P<key>[a-z_]+)=(?P<value>\S*)$")

# Every event the agent documents; a line with another name is a surprise worth a look.
KNOWN_EVENTS = frozenset(
    {
        "agent.started",
        "preview.opened",
        "preview.updated",
        "preview.closed",
        "preview.refused",
        "preview.expired",
        "preview.held",
        "agent.stopped",
        "agent.suspended",
        "agent.resumed",
        "ui.action",
        "commit.seen",
        "deploy.succeeded",
        "deploy.rolled-back",
        "deploy.failed",
        "deploy.superseded",
        "deploy.held",
        "deploy.done",
        "proxy.changed",
        "cert.issued",
        "cert.renewed",
        "cert.failed",
        "cert.recovered",
        "commit.unsigned",
        "commit.bad-signature",
        "commit.refused",
        "policy.warning",
        "webhook.refused",
        "notify.failed",
        "notify.recovered",
        "proxy.failed",
        "drift.healing",
        "drift.found",
        "remote.unreachable",
        "remote.recovered",
        "engine.unreachable",
        "engine.recovered",
        "node.down",
        "node.recovered",
        "lock.held",
        "lock.recovered",
        "stable.promoted",
        "stable.unpublished",
        "app.removed",
        "deploy.cleanup",
        "rollout.started",
        "rollout.step",
        "app.rollout",
        "app.conflict",
        "app.error",
        "app.foreign",
        "app.unlabelled",
        "app.unchecked",
        "app.waiting",
        "journal.reset",
        "mirror.reset",
        "state.error",
        "state.recovered",
        "desired.invalid",
        "pass.error",
        "pass.recovered",
        "pass.done",
    }
)


@dataclass(frozen=True)
class LogLine:
    """One line the agent wrote on stderr."""

    raw: str
    event: str = ""
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)  # the JSON object, or the text form's key=value fields

    @classmethod
    def parse(cls, raw: str) -> LogLine:
        if raw.startswith("{"):
            try:
                data = json.loads(raw)
            except ValueError:
                return cls(raw)
            if isinstance(data, dict):
                return cls(raw, str(data.get("event", "")), str(data.get("message", "")), data)
            return cls(raw)
        match = _TEXT_LINE.match(raw)
        if match is None:
            return cls(raw)
        # The text form ends with the event's fields as ` key=value`: peel them off the end.
        message, fields = match["message"], {}
        while (found := _TEXT_FIELD.search(message)) is not None:
            fields[found["key"]] = found["value"]
            message = message[: found.start()]
        return cls(raw, match["event"], message, {"time": match["time"], **dict(reversed(list(fields.items())))})

    @property
    def at(self) -> float:
        """When the agent wrote the line (its own clock, seconds since the epoch)."""
        stamp = str(self.data.get("time") or self.raw.split(" ", 1)[0])
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()

    @property
    def app(self) -> str:
        return str(self.data.get("app") or "")

    @property
    def commit(self) -> str:
        return str(self.data.get("commit") or "")

    def mentions(self, *words: str) -> bool:
        return all(word in self.raw for word in words)


class AgentDied(AssertionError):
    """The agent exited while a test waited for it."""


class AgentProcess:
    """One `reconcile agent` process; see the module docstring."""

    def __init__(
        self,
        args: Iterable[str | Path],
        *,
        env: Mapping[str, str | None] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self.env = dict(env or {})
        self.state_dir = state_dir
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[LogLine] = []
        self.stdout: list[str] = []
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []

    # -- process ---------------------------------------------------------------------------------

    def start(self) -> AgentProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "agent", *self.args],
            env=cli_env(self.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.process.stderr is not None and self.process.stdout is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stderr, self._add_line), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def _read(self, stream: IO[str], sink: Callable[[str], None]) -> None:
        for raw in stream:
            with self._changed:
                sink(raw.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _add_line(self, raw: str) -> None:
        self.lines.append(LogLine.parse(raw))

    @property
    def pid(self) -> int:
        assert self.process is not None, "the agent was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        assert self.alive(), f"the agent is not running (exit {self.returncode})\n{self.log()}"
        os.kill(self.pid, signum)

    def hup(self) -> None:
        """SIGHUP: a pass now."""
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end (and its output to be read); its exit code."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the agent did not exit within {timeout}s\n{self.log()}") from None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; never raises."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(Exception):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    # -- the log -----------------------------------------------------------------------------------

    def log(self) -> str:
        """Everything the agent wrote so far, for assertion messages."""
        with self._changed:
            text = "\n".join(line.raw for line in self.lines)
            out = "\n".join(self.stdout)
        return f"--- agent stderr ({self.args})\n{text}" + (f"\n--- agent stdout\n{out}" if out else "")

    def mark(self) -> int:
        """A position in the log, to wait only for what comes after it."""
        with self._changed:
            return len(self.lines)

    def events(self, event: str | None = None, *words: str, app: str | None = None, since: int = 0) -> list[LogLine]:
        """The lines of `event` (any event when None) about `app` (its `app` field) with every one of `words`."""
        with self._changed:
            lines = list(self.lines[since:])
        return [
            ln
            for ln in lines
            if (event is None or ln.event == event) and (app is None or ln.app == app) and ln.mentions(*words)
        ]

    def wait_for(
        self, event: str, *words: str, app: str | None = None, since: int = 0, timeout: float = 30.0
    ) -> LogLine:
        """The first line of `event` (about `app`, with `words`) at or after `since`; waits up to `timeout`."""
        what = f"event {event}" + (f" app={app}" if app else "") + "".join(f" {word!r}" for word in words)
        return self.wait_until(lambda: next(iter(self.events(event, *words, app=app, since=since)), None), what,
                               timeout)  # fmt: skip

    def pass_after(self, started: float, *, count: int = 1, timeout: float = 15.0) -> LogLine:
        """The `count`th `pass.done` of a pass that started at or after `started` (``time.time()``): the fact that
        the agent looked again, for a test that checks that nothing happens (its agent runs with
        ``PASS_DONE``)."""

        def found() -> LogLine | None:
            done = [line for line in self.events("pass.done") if float(line.data.get("started", 0)) >= started]
            return done[count - 1] if len(done) >= count else None

        return self.wait_until(found, f"{count} pass.done of passes started after {started:.3f}", timeout)

    def wait_until(self, found: Callable[[], LogLine | None], what: str, timeout: float) -> LogLine:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                line = found()
                if line is not None:
                    return line
                if not self.alive() and all(not r.is_alive() for r in self._readers):
                    raise AgentDied(f"the agent exited ({self.returncode}) before {what}\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout}s\n{self.log()}")
                self._changed.wait(min(left, 0.2))

    def watching(self) -> bool:
        """True once the process holds an inotify descriptor (the watcher on a local repository is up)."""
        try:
            fds = list(Path(f"/proc/{self.pid}/fd").iterdir())
        except OSError:
            return False
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) == "anon_inode:inotify":
                    return True
        return False

    def wait_watching(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.watching():
            assert self.alive(), f"the agent exited ({self.returncode})\n{self.log()}"
            assert time.monotonic() < deadline, f"the agent set up no watcher within {timeout}s\n{self.log()}"
            time.sleep(0.05)

    def assert_clean_log(self) -> None:
        """No traceback, and every stderr line is an event line (text or JSON)."""
        text = self.log()
        assert "Traceback" not in text, text
        strays = [line.raw for line in self.lines if not line.event]
        assert not strays, f"lines that are not events: {strays}\n{text}"


PASS_DONE = {"RECONCILE_PASS_DONE": "1"}  # the agent says `pass.done` at the end of each pass (``pass_after``)


def agent_args(
    repo: str,
    state_dir: Path,
    *,
    interval: str = "60s",
    branch: str = "main",
    extra: Iterable[str] = (),
) -> list[str]:
    return ["--repo", repo, "--branch", branch, "--state-dir", str(state_dir), "--interval", interval, *extra]


def wait_body(port: int, expected: str, timeout: float, agent: AgentProcess | None = None) -> None:
    """Wait until the app on `port` serves `expected` at /."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        try:
            status, text = http_get(f"http://127.0.0.1:{port}/", timeout=1.0)
            if status == 200 and text == expected:
                return
            last = f"HTTP {status} {text!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise AssertionError(
        f"port {port} did not serve {expected!r} within {timeout}s (last: {last})"
        + (f"\n{agent.log()}" if agent else "")
    )


# -- a test's world: the command line's, plus agents ------------------------------------------------


@dataclass
class App:
    """One app of a `World`: what `World.desired_text()` writes for it under `apps:`."""

    name: str
    image: str  # repository, no tag
    port: int
    version: str
    stable_after: str | None = None
    env: dict[str, str] | None = None

    def yaml(self) -> str:
        """The app under `apps:`, with a comment to keep: loopback port, init, a fast HTTP gate."""
        return app_yaml(
            self.name,
            self.image,
            self.version,
            self.port,
            timeout="5s",
            healthy_for="300ms",
            stable_after=self.stable_after,
            env=self.env,
            comment=f"{self.name} stays commented",
        )


@dataclass
class World(Site):
    """One test's world: the git remote it pushes to, a state directory, the engine, its apps and agents."""

    names: AppNames
    tmp: Path  # the test's own temporary directory
    agents: list[AgentProcess] = field(default_factory=list)
    apps: dict[str, App] = field(default_factory=dict)
    header: Callable[[], str] | None = None  # top-level keys written before `apps:` (a `proxy:`)

    @property
    def clone(self) -> Path:
        return self.remote.clone_path

    # -- apps, and the desired state made of them ----------------------------------------------------

    def app(self, word: str = "web", *, tags: tuple[str, ...] = ("v1", "v2", "v3"), version: str = "v1") -> App:
        """A new app whose image repository is its own (so `IMAGE:stable` is this test's alone)."""
        name = self.names(word)
        for tag in tags:
            self.images.build(name, tag)
        app = App(name, self.images.repo(name), free_port(), version)
        self.apps[name] = app
        return app

    def desired_text(self) -> str:
        """desired-state.yaml holding `apps`, in the order they were added."""
        head = self.header() if self.header is not None else ""
        return (
            "# yaml-language-server: $schema=schemas/desired-state.schema.json\n"
            + head
            + "apps:\n"
            + "".join(app.yaml() for app in self.apps.values())
        )

    def commit_apps(
        self, message: str, versions: Mapping[str, str] | None = None, *, author: str | None = None, push: bool = True
    ) -> str:
        """Set `versions` (app name -> version), commit the file in the clone (as `author`), push; the sha."""
        for name, version in (versions or {}).items():
            self.apps[name].version = version
        self.remote.write(FILE, self.desired_text())
        self.remote.git("add", FILE)
        self.remote.git("commit", "-q", "-m", message, *(["--author", author] if author else []))
        if push:
            self.remote.push()
            # The clone tracks the remote's main, as a clone made with `git clone` does.
            self.remote.git("branch", "-q", "--set-upstream-to=origin/main", "main")
        return self.remote.head()

    def set(self, name: str, version: str) -> str:
        """`commit_apps` of one new version, pushed."""
        return self.commit_apps(f"deploy {version}", {name: version})

    # -- the command line --------------------------------------------------------------------------

    def rc(self, *args: str | Path, env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        """A command that writes commits, run on the clone with the server's state directory."""
        return cli("--repo", self.clone, "--state-dir", self.state, *args, env=env, forbidden=STRICT)

    def ok(self, *args: str | Path, env: Mapping[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        """`rc`, which must succeed."""
        result = self.rc(*args, env=env)
        assert result.returncode == 0, show(result)
        return result

    def server(
        self, *args: str | Path, env: Mapping[str, str | None] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A server-side command: reads the bare remote."""
        return cli("--repo", self.repo, "--state-dir", self.state, *args, env=env, forbidden=STRICT)

    def status(self) -> subprocess.CompletedProcess[str]:
        result = cli("status", "--repo", self.repo, "--ref", "main", "--state-dir", self.state)
        assert result.returncode == 0, show(result)
        return result

    def status_text(self) -> str:
        """`reconcile status` of the remote, which must succeed: what it prints."""
        result = self.server("status")
        assert result.returncode == 0, show(result)
        return result.stdout

    def status_json(self) -> dict[str, Any]:
        """`reconcile status -o json` of the remote, which must succeed, parsed."""
        result = self.server("status", "-o", "json")
        assert result.returncode == 0, show(result)
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def status_of(self, app: str) -> dict[str, Any]:
        result = cli("status", "--repo", self.repo, "--ref", "main", "--state-dir", self.state, "--output", "json")
        assert result.returncode == 0, show(result)
        data = json.loads(result.stdout)
        mine = [entry for entry in data["apps"] if entry["app"] == app]
        assert len(mine) == 1, data
        entry: dict[str, Any] = mine[0]
        entry["_top"] = {k: v for k, v in data.items() if k != "apps"}
        return entry

    # -- git, as the user looks at it ----------------------------------------------------------------

    def bare_git(self, *args: str) -> str:
        """A git command on the bare remote."""
        return run_git("--git-dir", self.repo, *args)

    def remote_file(self, ref: str = "main") -> str:
        """desired-state.yaml at `ref` of the remote (as `git show` prints it: no final newline)."""
        return self.bare_git("show", f"{ref}:{FILE}")

    def remote_log(self, ref: str = "main") -> list[tuple[str, list[str], str]]:
        """(sha, parents, subject) of the remote branch, newest first."""
        lines = self.bare_git("log", "--format=%H%x00%P%x00%s", ref).splitlines()
        return [(sha, parents.split(), subject) for sha, parents, subject in (ln.split("\0") for ln in lines)]

    def clone_file(self) -> str:
        """desired-state.yaml as it is in the clone's checkout."""
        return (self.clone / FILE).read_text()

    # -- agents --------------------------------------------------------------------------------------

    def agent(
        self,
        *extra: str,
        interval: str = "60s",
        repo: str | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> AgentProcess:
        """Start `reconcile agent` on the remote's `main` and wait for `agent.started`."""
        args = agent_args(repo or self.repo, self.state, interval=interval, extra=extra)
        process = AgentProcess(args, env=env, state_dir=self.state)
        self.agents.append(process)
        process.start()
        process.wait_for("agent.started", timeout=30)
        return process

    def close(self) -> None:
        """Stop every agent this world started (SIGTERM, then SIGKILL) and print their logs; never raises."""
        for process in self.agents:
            process.stop(timeout=20)
            print(process.log())  # pytest shows it when the test fails


@contextlib.contextmanager
def open_world(
    remote: GitRemote, state: Path, client: Any, images: ImageFactory, names: AppNames, tmp: Path
) -> Iterator[World]:
    """A `World` whose agents are all stopped at the end, and whose logs must then be clean."""
    world = World(remote=remote, state=state, client=client, images=images, names=names, tmp=tmp)
    try:
        yield world
    finally:
        world.close()
    for process in world.agents:
        process.assert_clean_log()
