"""The ``reconcile`` command: parse, call, format, exit code. Nothing else.

Guarantees: every ``ReconcileError`` becomes its message on stderr and exit 1, never a traceback.
Exit codes: 0 done / in sync; 1 error or a failed app; 2 drift (``--dry-run`` only). The common options
work before or after a command's name and from the environment (``RECONCILE_*``, ``DOCKER_HOST``).
Heavy modules (docker, git) are imported by the commands that need them, so ``--help`` and
``validate`` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from reconciler.errors import InvalidDesiredState, ReconcileError

T = TypeVar("T")


class Output(StrEnum):
    text = "text"
    json = "json"


app = typer.Typer(
    help="Converge this Docker host to the desired-state.yaml committed in git.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RepoOpt = Annotated[
    str | None,
    typer.Option(
        "--repo",
        envvar="RECONCILE_REPO",
        show_default=False,
        help="Clone, bare repository or URL holding the file. [default: .]",
    ),
]
RefOpt = Annotated[
    str | None,
    typer.Option(
        "--ref", envvar="RECONCILE_REF", show_default=False, help="Commit, branch or tag to read. [default: HEAD]"
    ),
]
FileOpt = Annotated[
    str | None,
    typer.Option(
        "--file",
        envvar="RECONCILE_FILE",
        show_default=False,
        help="Path of the file inside the repo. [default: desired-state.yaml]",
    ),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="RECONCILE_STATE_DIR",
        show_default=False,
        help="Journal, mirrors and lock. [default: state]",
    ),
]
HostOpt = Annotated[
    str | None,
    typer.Option(
        "--docker-host",
        envvar="DOCKER_HOST",
        show_default=False,
        help="Docker engine, e.g. ssh://deploy@server. [default: local socket]",
    ),
]
InstanceOpt = Annotated[
    str | None,
    typer.Option(
        "--instance",
        envvar="RECONCILE_INSTANCE",
        show_default=False,
        help="Name of this reconciler on the engine; containers of another instance are never touched. "
        "[default: default]",
    ),
]
OutputOpt = Annotated[
    Output | None, typer.Option("--output", "-o", show_default=False, help="text or json. [default: text]")
]

DEFAULTS: dict[str, Any] = {
    "repo": ".",
    "ref": "HEAD",
    "file": "desired-state.yaml",
    "state_dir": Path("state"),
    "docker_host": None,
    "instance": "default",
    "output": Output.text,
    "lock_timeout": 0.0,
    "adopt": False,
    "dry_run": False,
}


def _option(ctx: typer.Context, name: str, given: Any) -> Any:
    """A command's own value, else the one given before the command's name, else the default."""
    if given is not None:
        return given
    root = ctx.find_root().obj or {}
    if root.get(name) is not None:
        return root[name]
    return DEFAULTS[name]


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _guarded(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except InvalidDesiredState as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        count = len(exc.errors)
        _fail(f"{count} error{'s' if count != 1 else ''}; nothing was changed")
    except ReconcileError as exc:
        _fail(f"error: {exc}")
    except KeyboardInterrupt:
        _fail("interrupted")


def _settings(ctx: typer.Context, **given: Any) -> Any:
    from reconciler.shell.loop import Settings

    values = {name: _option(ctx, name, value) for name, value in given.items()}
    return Settings(**{k: v for k, v in values.items() if k in Settings.__dataclass_fields__})


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the drift and change nothing.")] = False,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="Take over containers with an app's name that "
            "reconciler did not create (kept stopped as APP.adopted).",
        ),
    ] = False,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", help="Seconds to wait for another reconcile's lock.")
    ] = 0.0,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
    output: OutputOpt = None,
) -> None:
    """Converge once (or, with --dry-run, show what would change). Exit 0 converged or in sync,
    1 error, 2 drift (--dry-run)."""
    ctx.obj = {
        "repo": repo,
        "ref": ref,
        "file": file,
        "state_dir": state_dir,
        "docker_host": docker_host,
        "instance": instance,
        "output": output,
    }
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings(
        ctx,
        repo=repo,
        ref=ref,
        file=file,
        state_dir=state_dir,
        docker_host=docker_host,
        instance=instance,
        lock_timeout=lock_timeout,
        adopt=adopt,
    )
    fmt = _option(ctx, "output", output)
    from reconciler.core import report
    from reconciler.shell.loop import reconcile_once

    result = _guarded(lambda: reconcile_once(settings, dry_run=dry_run, on_step=_kill_hook()))
    plan = result.plan
    if dry_run:
        if fmt is Output.json:
            _emit(report.plan_as_dict(plan, file=settings.file))
        else:
            typer.echo("\n".join(report.plan_lines(plan, file=settings.file)))
        if plan.problems:  # a conflict or an unresolvable image: applying would fail too
            raise typer.Exit(1)
        raise typer.Exit(0 if plan.in_sync else 2)
    if fmt is Output.json:
        _emit(
            {
                **report.plan_as_dict(plan, file=settings.file),
                "outcomes": [outcome.as_dict() for outcome in result.outcomes],
                "ok": result.ok,
            }
        )
    else:
        typer.echo("\n".join(report.outcome_lines(result.outcomes, revision=plan.revision)))
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def validate(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(help="A plain file to check. Without it: --file at --ref of --repo.", show_default=False),
    ] = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    file: FileOpt = None,
    output: OutputOpt = None,
) -> None:
    """Check a desired-state file against the schema; every error as FILE:LINE:COL. Exit 0 valid, 1 not."""
    from reconciler.core.desired import load_desired
    from reconciler.shell.yamlfile import parse_yaml

    def check() -> Any:
        if path is not None:
            try:
                text = path.read_bytes()
            except OSError as exc:
                raise ReconcileError(f"{path}: {exc.strerror}") from None
            data, positions = parse_yaml(text, filename=str(path))
            return load_desired(data, positions, filename=str(path))
        from reconciler.shell.loop import read_desired

        return read_desired(_settings(ctx, repo=repo, ref=ref, file=file, state_dir=None))

    desired = _guarded(check)
    where = str(path) if path is not None else f"{desired.path} @ {desired.short}"
    if _option(ctx, "output", output) is Output.json:
        _emit({"valid": True, "file": where, "revision": desired.revision, "apps": sorted(desired.apps)})
    else:
        count = len(desired.apps)
        typer.echo(f"{where}: valid, {count} app{'s' if count != 1 else ''}")


@app.command()
def history(
    ctx: typer.Context,
    app_name: Annotated[str | None, typer.Option("--app", help="Only this app.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many entries, newest first.")] = 20,
    state_dir: StateOpt = None,
    output: OutputOpt = None,
) -> None:
    """What was applied, when, from which commit, and how it ended."""
    import time

    from reconciler.shell.journal import Journal

    directory: Path = _option(ctx, "state_dir", state_dir)
    journal = _guarded(lambda: Journal(directory, create=False))
    entries = journal.history(app=app_name, limit=limit)
    journal.close()
    if _option(ctx, "output", output) is Output.json:
        _emit([entry.as_dict() for entry in entries])
        return
    if not entries:
        typer.echo(f"no deploys recorded in {directory}")
        return
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.started_at))
        took = f" {entry.finished_at - entry.started_at:.1f}s" if entry.finished_at else ""
        change = f"{entry.from_version or '-'} -> {entry.to_version or '-'}"
        commit = entry.revision[:8] or "-"
        line = f"{when}  {commit:8}  {entry.app:<20} {entry.action:<8} {change:<24} {entry.result}{took}"
        typer.echo(line + (f"  {entry.message}" if entry.message else ""))


def _kill_hook() -> Callable[[str, str], None] | None:
    """``RECONCILE_KILL_AT=STEP`` (or ``APP:STEP``): SIGKILL this process when a deploy reaches STEP.

    A fault-injection hook for crash-safety tests and drills; unset, it costs nothing.
    """
    import os

    wanted = os.environ.get("RECONCILE_KILL_AT")
    if not wanted:
        return None

    def hook(app: str, step: str) -> None:
        if wanted in (step, f"{app}:{step}"):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@app.command()
def agent(
    ctx: typer.Context,
    branch: Annotated[
        str | None,
        typer.Option(
            "--branch",
            "-b",
            envvar="RECONCILE_BRANCH",
            show_default=False,
            help="Branch to follow. [default: the repository's HEAD]",
        ),
    ] = None,
    interval: Annotated[
        str, typer.Option("--interval", envvar="RECONCILE_INTERVAL", help="How often to fetch and converge.")
    ] = "60s",
    self_heal: Annotated[
        bool, typer.Option("--self-heal/--no-self-heal", help="Correct containers changed by hand, or only report.")
    ] = True,
    log_format: Annotated[Output, typer.Option("--log-format", help="text or json lines on stderr.")] = Output.text,
    repo: RepoOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
) -> None:
    """Follow a branch and keep this host converged to it: health-gated deploys, automatic rollback,
    self-heal, promotion to stable. SIGHUP: a pass now. SIGTERM: finish the step, exit 0."""
    from reconciler.core.model import parse_duration
    from reconciler.shell.agent import AgentSettings, run_agent

    try:
        every = parse_duration(interval)
    except ValueError as exc:
        _fail(f"--interval: {exc}")
    settings = _settings(ctx, repo=repo, ref=None, file=file, state_dir=state_dir, docker_host=docker_host,
                         instance=instance)  # fmt: skip
    config = AgentSettings(settings=settings, branch=branch, interval=every, self_heal=self_heal)
    code = _guarded(lambda: run_agent(config, log_format=log_format.value, on_step=_kill_hook()))
    raise typer.Exit(code)


@app.command()
def status(
    ctx: typer.Context,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
    output: OutputOpt = None,
) -> None:
    """Per app: desired vs running, health, last applied and attempted commit, stable, failed releases."""
    from reconciler.core.report import status_lines
    from reconciler.shell.status import collect

    settings = _settings(ctx, repo=repo, ref=ref, file=file, state_dir=state_dir, docker_host=docker_host,
                         instance=instance)  # fmt: skip
    result = _guarded(lambda: collect(settings))
    if _option(ctx, "output", output) is Output.json:
        _emit(result)
    else:
        typer.echo("\n".join(status_lines(result)))


@app.command()
def retry(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app whose failed release to try again.")],
    state_dir: StateOpt = None,
) -> None:
    """Forget APP's failed release so the agent tries it again (now, if an agent runs)."""
    import os
    import signal

    from reconciler.shell.agent import state_pid
    from reconciler.shell.journal import Journal

    directory: Path = _option(ctx, "state_dir", state_dir)
    journal = _guarded(lambda: Journal(directory, create=False))
    try:
        cleared = journal.clear_failures(app_name)
    finally:
        journal.close()
    if not cleared:
        _fail(f"{app_name}: no failed release recorded in {directory}; nothing to retry")
    pid = state_pid(directory)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    typer.echo(f"{app_name}: failed release forgotten; " + (f"agent (pid {pid}) asked for a pass now"
               if pid else "the next reconcile or agent pass tries it again"))  # fmt: skip


@app.command(hidden=True)
def schema() -> None:
    """Print the JSON Schema of desired-state.yaml (the source of schemas/desired-state.schema.json)."""
    from reconciler.core.schema import render

    typer.echo(render(), nl=False)


def main() -> None:
    try:
        app()
    except ReconcileError as exc:  # a command that forgot _guarded still never shows a traceback
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
