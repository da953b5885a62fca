"""The ``reconcile`` command: parse, call, format, exit code. Nothing else.

Guarantees: every ``ReconcileError`` becomes its message on stderr and exit 1, never a traceback.
Exit codes: 0 done / in sync; 1 error or a failed app; 2 drift (``--dry-run`` only). The common options
work before or after a command's name and from the environment (``RECONCILE_*``, ``DOCKER_HOST``).
Heavy modules (docker, git) are imported by the commands that need them, so ``--help`` and
``validate`` start fast.
"""

from __future__ import annotations

import copy
import functools
import gc
import inspect
import json
import os
import sys
import typing
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from reconciler.errors import InvalidDesiredState, ReconcileError, Refused

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

PolicyOpt = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        envvar="RECONCILE_POLICY",
        show_default=False,
        help="This server's policy (allowed images, host paths, ports, container powers): a commit that asks for more"
        " is not applied.",
    ),
]
AllHostsOpt = Annotated[
    bool,
    typer.Option(
        "--all-hosts",
        help="Every host of the file's hosts: through its engine:, --parallel at once: preview (--dry-run), "
        "status, or push the commit (--rollout).",
    ),
]
RolloutOpt = Annotated[
    str | None,
    typer.Option(
        "--rollout",
        help="With --all-hosts: push the commit group by group, each gated before the next (e.g. canary,*: "
        "hosts labelled canary=true, then the rest). Terms: HOST, KEY=VALUE, KEY, *; + joins terms in a group.",
        show_default=False,
    ),
]
HostTimeoutOpt = Annotated[
    float, typer.Option("--host-timeout", help="Seconds each host of --all-hosts has to answer.", min=0.1)
]
FleetHostOpt = Annotated[
    str | None,
    typer.Option(
        "--host",
        envvar="RECONCILE_HOST",
        show_default=False,
        help="This host's name in the file's hosts: (a fleet): only the apps placed on it. [default: hostname]",
    ),
]
SignedByOpt = Annotated[
    str | None,
    typer.Option(
        "--require-signed-by",
        envvar="RECONCILE_REQUIRE_SIGNED_BY",
        show_default=False,
        help="Apply only commits signed by an allowed key: ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR.",
    ),
]
SopsKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--sops-age-key-file",
        envvar="SOPS_AGE_KEY_FILE",
        show_default=False,
        help="The age identities that open the SOPS files of the repository (several in one file are all tried). "
        "[default: ~/.config/sops/age/keys.txt, as sops; PGP: gpg's keyring, GNUPGHOME]",
    ),
]
ParallelOpt = Annotated[
    int,
    typer.Option(
        "--parallel",
        envvar="RECONCILE_PARALLEL",
        min=1,
        max=32,
        help="How many apps a pass deploys at once (their health gates overlap); 1: one after another.",
    ),
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
    "prune_foreign": False,
    "relabel": False,
    "dry_run": False,
    "policy": None,
    "require_signed_by": None,
    "host": None,
    "sops_age_key_file": None,
}


COMMON: dict[str, Any] = {
    "repo": RepoOpt,
    "ref": RefOpt,
    "file": FileOpt,
    "state_dir": StateOpt,
    "docker_host": HostOpt,
    "instance": InstanceOpt,
    "output": OutputOpt,
}
COMMON_EPILOG = (
    "The common options (--repo, --ref, --file, --state-dir, --docker-host, --instance, --output) are "
    "accepted by every command, before or after its name; the ones it uses are listed above."
)


def _common(fn: Callable[..., T]) -> Callable[..., T]:
    """Let a command accept every common option, also after its name (``reconcile history --repo .``).

    The options it declares itself keep their place in its ``--help``; the others are accepted, hidden,
    and count as if given before the command's name, as click would have them there.
    """
    signature = inspect.signature(fn, eval_str=True)
    extra: list[inspect.Parameter] = []
    for name, annotated in COMMON.items():
        if name in signature.parameters:
            continue
        base, info = typing.get_args(annotated)
        hidden = copy.copy(info)
        hidden.hidden = True
        extra.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[base, hidden])
        )
    names = {parameter.name for parameter in extra}
    context = next(name for name, parameter in signature.parameters.items() if parameter.annotation is typer.Context)

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> T:
        given = {name: kwargs.pop(name) for name in names if name in kwargs}
        root = kwargs[context].find_root()
        if isinstance(root.obj, dict):
            root.obj.update({name: value for name, value in given.items() if value is not None})
        return fn(*args, **kwargs)

    parameters = [*signature.parameters.values(), *extra]
    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return command


def _option(ctx: typer.Context, name: str, given: Any) -> Any:
    """A command's own value, else the one given before the command's name, else the default. A value
    typed on the command line wins over one from the environment, before or after the command's name:
    ``RECONCILE_INSTANCE=a reconcile --instance b status`` is instance b."""
    root = ctx.find_root()
    values = root.obj or {}
    if given is not None:
        # By the source's name: typer's click is its own (vendored) module, whose enum is not ours to import.
        from_env = _source(ctx, name) == "ENVIRONMENT"
        typed_before = root is not ctx and _source(root, name) == "COMMANDLINE"
        if from_env and typed_before and values.get(name) is not None:
            return values[name]
        return given
    if values.get(name) is not None:
        return values[name]
    return DEFAULTS[name]


def _source(ctx: Any, name: str) -> str:
    """Where a parameter's value came from (``COMMANDLINE``, ``ENVIRONMENT``, ``DEFAULT``...), or ""."""
    return str(getattr(ctx.get_parameter_source(name), "name", ""))


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _guarded(fn: Callable[[], T]) -> T:
    if not gc.isenabled():  # main() turned it off for the start-up: what is loaded now lives as long as the process
        gc.freeze()
        gc.enable()
    try:
        return fn()
    except InvalidDesiredState as exc:
        for line in exc.errors:
            typer.echo(line, err=True)
        count = len(exc.errors)
        _fail(f"{count} error{'s' if count != 1 else ''}; nothing was changed")
    except Refused as exc:  # the command's own refusal: said as it is
        _fail(str(exc))
    except ReconcileError as exc:
        _fail(f"error: {exc}")
    except KeyboardInterrupt:
        _fail("interrupted")


def _settings(ctx: typer.Context, **given: Any) -> Any:
    from reconciler.converge.run import Settings

    # What the server trusts holds for every command that reads the branch (status and the edits too).
    given = {"policy": None, "require_signed_by": None, "host": None, "sops_age_key_file": None, **given}
    values = {name: _option(ctx, name, value) for name, value in given.items()}
    return Settings(**{k: v for k, v in values.items() if k in Settings.__dataclass_fields__})


def _emit(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def _print_version(value: bool) -> None:
    if value:
        from reconciler.version import describe

        typer.echo(describe())
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and the commit it was built from, and exit.",
        ),
    ] = False,
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
    prune_foreign: Annotated[
        bool,
        typer.Option(
            "--prune-foreign",
            help="Also remove containers of this instance that another source (repository, branch or file) "
            "deployed, when their app is not in this file.",
        ),
    ] = False,
    relabel: Annotated[
        bool,
        typer.Option(
            "--relabel", help="Redeploy containers deployed before containers carried their source, to label them."
        ),
    ] = False,
    parallel: ParallelOpt = 16,
    policy: PolicyOpt = None,
    require_signed_by: SignedByOpt = None,
    host: FleetHostOpt = None,
    sops_age_key_file: SopsKeyOpt = None,
    all_hosts: AllHostsOpt = False,
    rollout: RolloutOpt = None,
    host_timeout: HostTimeoutOpt = 10.0,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
    output: OutputOpt = None,
) -> None:
    """Converge once (or, with --dry-run, show what would change). Exit 0 converged or in sync,
    1 error (a failed deploy, or a host of --all-hosts that failed or could not be read), 2 drift (--dry-run)."""
    ctx.obj = {
        "repo": repo,
        "ref": ref,
        "file": file,
        "state_dir": state_dir,
        "docker_host": docker_host,
        "instance": instance,
        "output": output,
        "policy": policy,
        "require_signed_by": require_signed_by,
        "host": host,
        "sops_age_key_file": sops_age_key_file,
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
        prune_foreign=prune_foreign,
        relabel=relabel,
        parallel=parallel,
        policy=policy,
        require_signed_by=require_signed_by,
        host=host,
        sops_age_key_file=sops_age_key_file,
    )
    fmt = _option(ctx, "output", output)
    if rollout is not None and not all_hosts:
        _fail("--rollout pushes to the file's hosts: give --all-hosts too")
    if all_hosts and _source(ctx, "host") == "COMMANDLINE":
        _fail("--host names the one host this machine is; --all-hosts reaches every host: give one of them")
    if all_hosts and dry_run:
        _fleet_preview(settings, rollout, fmt=fmt, parallel=parallel, timeout=host_timeout)
    if all_hosts:
        _fleet_push(settings, rollout or "*", fmt=fmt, parallel=parallel, timeout=host_timeout)
    from reconciler.converge.run import reconcile_once
    from reconciler.core import report

    result = _guarded(lambda: reconcile_once(settings, dry_run=dry_run, on_step=_kill_hook()))
    plan = result.plan
    proxied = report.proxy_lines(result.proxy, result.routes, dry_run=dry_run) + result.networks
    if dry_run:
        if fmt is Output.json:
            _emit(
                {
                    **report.plan_as_dict(plan, file=settings.file),
                    "proxy": result.proxy,
                    "routes": result.routes,
                    "networks": result.networks,
                    "rollouts": result.rollouts,
                }
            )
        else:
            typer.echo("\n".join(report.plan_lines(plan, file=settings.file) + result.rollouts + proxied))
        if plan.problems:  # a conflict or an unresolvable image: applying would fail too
            raise typer.Exit(1)
        # A rollout under way is not converged: a pass moves it on when its step is due.
        in_line = plan.in_sync and not result.proxy and not result.networks and not result.rollouts
        raise typer.Exit(0 if in_line else 2)
    if fmt is Output.json:
        _emit(
            {
                **report.plan_as_dict(plan, file=settings.file),
                "outcomes": [outcome.as_dict() for outcome in result.outcomes],
                "proxy": result.proxy,
                "routes": result.routes,
                "networks": result.networks,
                "proxy_error": result.proxy_error or None,
                "cert_errors": result.cert_errors,
                "rollouts": result.rollouts,
                "ok": result.ok,
            }
        )
    else:
        lines = report.outcome_lines(result.outcomes, revision=plan.revision, file=settings.file)
        typer.echo("\n".join(lines + result.rollouts + report.note_lines(plan) + proxied))
        for line in result.cert_errors:  # a certificate not had: the deploys stand, plain HTTP keeps serving
            typer.echo(f"warning: {line}", err=True)
        if result.proxy_error:
            typer.echo(f"error: {result.proxy_error}", err=True)
    raise typer.Exit(0 if result.ok else 1)


@app.command(epilog=COMMON_EPILOG)
@_common
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
    policy: PolicyOpt = None,
) -> None:
    """Check a desired-state file against the schema (and --policy); every error as FILE:LINE:COL. Exit 0 valid,
    1 not."""

    def check() -> Any:
        if path is not None:
            from reconciler.ops import controls

            return controls.validate_file(path, policy=_option(ctx, "policy", policy))
        from dataclasses import replace

        from reconciler.converge.run import ALL_HOSTS, read_desired
        from reconciler.converge.sealed import Mode

        settings = _settings(ctx, repo=repo, ref=ref, file=file, state_dir=None, policy=policy)
        # A fleet's file is valid or not wherever it is checked: every app, unless --host names one host. Its SOPS
        # files exist and parse; no key is needed to say so.
        return read_desired(
            settings if settings.host is not None else replace(settings, host=ALL_HOSTS), sops=Mode.PARSE
        )

    desired = _guarded(check)
    where = str(path) if path is not None else f"{desired.path} @ {desired.short}"
    if _option(ctx, "output", output) is Output.json:
        _emit({"valid": True, "file": where, "revision": desired.revision, "apps": sorted(desired.apps)})
    else:
        count = len(desired.apps)
        typer.echo(f"{where}: valid, {count} app{'s' if count != 1 else ''}")


@app.command(epilog=COMMON_EPILOG)
@_common
def history(
    ctx: typer.Context,
    app_name: Annotated[str | None, typer.Option("--app", help="Only this app.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many entries, newest first.")] = 20,
    state_dir: StateOpt = None,
    output: OutputOpt = None,
) -> None:
    """What was applied, when, from which commit, and how it ended."""
    from reconciler.ops import controls

    directory: Path = _option(ctx, "state_dir", state_dir)
    entries = _guarded(lambda: controls.history(state_dir=directory, app=app_name, limit=limit))
    if _option(ctx, "output", output) is Output.json:
        _emit([entry.as_dict() for entry in entries])
        return
    if not entries:
        typer.echo(f"no deploys recorded in {directory}")
        return
    from reconciler.core.report import history_line

    typer.echo("\n".join(history_line(entry) for entry in entries))


def _fleet_preview(settings: Any, spec: str | None, *, fmt: Output, parallel: int, timeout: float) -> NoReturn:
    """``--dry-run --all-hosts [--rollout GROUPS]``: every host's drift, one report grouped by host (and the
    groups a push would take). Exit 1 if a host could not be read, 2 if one drifts, 0 when all are in sync."""
    from reconciler.core import fleet_report
    from reconciler.ops import fleet

    desired, groups, hosts = _guarded(lambda: fleet.preview(settings, parallel=parallel, timeout=timeout, spec=spec))
    if fmt is Output.json:
        _emit(fleet_report.preview_json(desired.revision, settings.file, groups, hosts))
    else:
        typer.echo("\n".join(fleet_report.preview_lines(desired.short, settings.file, spec, groups, hosts)))
    if any(h.answer is None for h in hosts):
        raise typer.Exit(1)
    raise typer.Exit(2 if any(h.answer is not None and not h.answer.in_sync for h in hosts) else 0)


def _fleet_push(settings: Any, spec: str, *, fmt: Output, parallel: int, timeout: float) -> NoReturn:
    """``--all-hosts [--rollout GROUPS]``: push the commit group by group; the report says where each host
    was left and what it runs. Exit 0 when every host of the rollout converged, 1 otherwise."""
    from reconciler.core import fleet_report
    from reconciler.ops import fleet

    def say(line: str) -> None:
        if fmt is not Output.json:
            typer.echo(line, err=True)

    desired, groups, hosts = _guarded(
        lambda: fleet.roll_out(settings, spec, parallel=parallel, timeout=timeout, say=say)
    )
    runs = fleet.running(desired, settings, parallel=parallel, timeout=timeout)
    if fmt is Output.json:
        _emit(fleet_report.push_json(desired.revision, settings.file, groups, hosts, runs))
    else:
        typer.echo(
            "\n".join(fleet_report.push_lines(desired.revision, desired.short, settings.file, spec, hosts, runs))
        )
    raise typer.Exit(0 if all(h.ok for h in hosts) else 1)


def _fleet_status(settings: Any, *, fmt: Output, parallel: int, timeout: float) -> NoReturn:
    """``status --all-hosts``: host by app -> version, desired, commit, state, from each engine's labels, and
    how many hosts run what the commit asks (a rollback commit shows who has followed it)."""
    from reconciler.core import fleet_report
    from reconciler.ops import fleet

    desired, hosts = _guarded(lambda: fleet.status(settings, parallel=parallel, timeout=timeout))
    if fmt is Output.json:
        _emit(fleet_report.status_json(desired.revision, settings.file, hosts))
    else:
        typer.echo("\n".join(fleet_report.status_lines(desired.short, settings.file, hosts)))
    raise typer.Exit(1 if any(h.error for h in hosts) else 0)


def _trust_files(settings: Any) -> None:
    """Read --policy and --require-signed-by once, so that a typo stops the command before it starts."""
    from reconciler.trust import server_policy, signatures

    if settings.policy is not None:
        server_policy.load_policy(settings.policy)
    if settings.require_signed_by is not None:
        signatures.parse_rule(settings.require_signed_by)
    if settings.sops_age_key_file is not None:
        from reconciler.ops.secrets import keys_of

        keys_of(settings.sops_age_key_file, given=True)


def _secret_file(path: Path, option: str = "--webhook-secret-file", *, least: int = 1) -> bytes:
    """A secret from a file (its surrounding whitespace dropped); a missing, empty or short one is a usage error."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        _fail(f"{option} {path}: {exc.strerror or exc}")
    if not secret:
        _fail(f"{option} {path}: the file is empty")
    if len(secret) < least:
        _fail(f"{option} {path}: at least {least} characters (e.g. `openssl rand -hex 32 > {path}`)")
    return secret


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


@app.command(epilog=COMMON_EPILOG)
@_common
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
    publish_stable: Annotated[
        bool,
        typer.Option("--publish-stable", help="On promotion, push the stable git tags and IMAGE:stable."),
    ] = False,
    parallel: ParallelOpt = 16,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            envvar="RECONCILE_LISTEN",
            show_default=False,
            help="HOST:PORT for the dashboard (/), /metrics, /healthz and /hooks/{github,gitlab,gitea}. Keep it on"
            " loopback or behind the proxy with TLS. [default: no listener]",
        ),
    ] = None,
    ui_token_file: Annotated[
        Path | None,
        typer.Option(
            "--ui-token-file",
            envvar="RECONCILE_UI_TOKEN_FILE",
            show_default=False,
            help="File holding the dashboard's login token (never printed): a browser logged in with it may suspend,"
            " resume, retry, break glass and roll back. Without it the dashboard is read-only.",
        ),
    ] = None,
    policy: PolicyOpt = None,
    require_signed_by: SignedByOpt = None,
    host: FleetHostOpt = None,
    sops_age_key_file: SopsKeyOpt = None,
    webhook_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--webhook-secret-file",
            envvar="RECONCILE_WEBHOOK_SECRET_FILE",
            show_default=False,
            help="File holding the webhooks' shared secret (never printed). Without it the hooks answer 404.",
        ),
    ] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(
            "--notify",
            envvar="RECONCILE_NOTIFY",
            show_default=False,
            help="An apprise URL (slack://..., mailto://..., json://...) told of failed deploys, rollbacks, holds, "
            "promotions, outages and refused commits; repeatable. Never printed.",
        ),
    ] = None,
    repo: RepoOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
) -> None:
    """Follow a branch and keep this host converged to it: health-gated deploys, automatic rollback,
    self-heal, promotion to stable. SIGHUP: a pass now. SIGTERM: finish the step, exit 0."""
    from reconciler.agent.loop import AgentSettings, run_agent
    from reconciler.core.fields import parse_duration

    try:
        every = parse_duration(interval)
    except ValueError as exc:
        _fail(f"--interval: {exc}")
    if every < 1:
        _fail("--interval: at least 1s (a local repository is watched anyway: a push converges at once)")
    settings = _settings(ctx, repo=repo, ref=None, file=file, state_dir=state_dir, docker_host=docker_host,
                         instance=instance, parallel=parallel, policy=policy,
                         require_signed_by=require_signed_by, host=host,
                         sops_age_key_file=sops_age_key_file)  # fmt: skip
    secret = _secret_file(webhook_secret_file) if webhook_secret_file is not None else b""
    if secret and listen is None:
        _fail("--webhook-secret-file: webhooks come in through --listen HOST:PORT; give it too")
    ui_token = _secret_file(ui_token_file, "--ui-token-file", least=16) if ui_token_file is not None else b""
    if ui_token and listen is None:
        _fail("--ui-token-file: the dashboard is served on --listen HOST:PORT; give it too")
    _guarded(lambda: _trust_files(settings))  # a mistake in them is said now, not at the first pass
    config = AgentSettings(
        settings=settings, branch=branch, interval=every, self_heal=self_heal, publish_stable=publish_stable,
        listen=listen, webhook_secret=secret, notify=tuple(notify or ()), ui_token=ui_token,
    )  # fmt: skip
    code = _guarded(lambda: run_agent(config, log_format=log_format.value, on_step=_kill_hook()))
    raise typer.Exit(code)


@app.command(epilog=COMMON_EPILOG)
@_common
def status(
    ctx: typer.Context,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
    output: OutputOpt = None,
    all_hosts: AllHostsOpt = False,
    host_timeout: HostTimeoutOpt = 10.0,
    parallel: ParallelOpt = 16,
) -> None:
    """Per app: desired vs running, health, last applied and attempted commit, stable, failed releases."""
    settings = _settings(ctx, repo=repo, ref=ref, file=file, state_dir=state_dir, docker_host=docker_host,
                         instance=instance)  # fmt: skip
    if all_hosts:
        _fleet_status(settings, fmt=_option(ctx, "output", output), parallel=parallel, timeout=host_timeout)
    from reconciler.core.report import status_lines
    from reconciler.ops.status import collect

    result = _guarded(lambda: collect(settings))
    if result.journal_error:
        typer.echo(f"warning: {result.journal_error}", err=True)
    if _option(ctx, "output", output) is Output.json:
        _emit(result.as_dict())
    else:
        typer.echo("\n".join(status_lines(result)))


@app.command(epilog=COMMON_EPILOG)
@_common
def retry(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP", help="The app whose failed release to try again.")],
    state_dir: StateOpt = None,
) -> None:
    """Forget APP's failed release so the agent tries it again (now, if an agent runs)."""
    from reconciler.ops import controls

    pid = _guarded(lambda: controls.retry(state_dir=_option(ctx, "state_dir", state_dir), app=app_name))
    from reconciler.core.report import retried_line

    typer.echo(retried_line(app_name, pid))


PushOpt = Annotated[bool, typer.Option("--push", help="Push the commit to the branch's remote.")]
BranchOpt = Annotated[
    str | None,
    typer.Option("--branch", help="Commit on a new branch and push it (to open a pull request from)."),
]


def _source_for_writing(ctx: typer.Context, repo: str | None) -> Any:
    """The repository to commit to, its tip checked against --require-signed-by and --policy first."""
    from reconciler.ops import rollback as rolling

    return _guarded(
        lambda: rolling.open_for_writing(
            repo=_option(ctx, "repo", repo), file=_option(ctx, "file", None),
            policy=_option(ctx, "policy", None), signed_by=_option(ctx, "require_signed_by", None),
        )
    )  # fmt: skip


def _written(committed: Any) -> None:
    from reconciler.core.report import written_line

    w = committed.written
    typer.echo(written_line(w.revision, w.branch, w.pushed_to, w.retried, committed.message))


@app.command(epilog=COMMON_EPILOG)
@_common
def rollback(
    ctx: typer.Context,
    app_name: Annotated[
        str | None, typer.Argument(metavar="[APP]", help="The app; without --to, list its versions.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="A version, `stable`, or `previous`.", show_default=False)
    ] = None,
    push: PushOpt = False,
    branch: BranchOpt = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Break-glass: swap the kept previous container back in now, without git; "
            "suspends the agent until `reconcile resume`.",
        ),
    ] = False,
    repo: RepoOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
) -> None:
    """Roll APP (or, with --to stable|previous and no APP, every app) back, as a commit."""
    from reconciler.ops import breakglass, edits

    settings = _settings(ctx, repo=repo, ref=None, file=file, state_dir=state_dir, docker_host=docker_host,
                         instance=instance)  # fmt: skip
    if local:
        if app_name is None or to not in (None, edits.PREVIOUS):
            _fail("--local swaps APP back to its kept previous container: reconcile rollback APP --local")
        text, version = _guarded(lambda: breakglass.swap_back(settings, app_name))
        typer.echo(text)
        from reconciler.core.report import swapped_back_warning

        typer.echo(swapped_back_warning(app_name, version))
        return
    if app_name is None and to is None:
        _fail("name an app (reconcile rollback APP) or roll every app back with --to stable|previous")
    from reconciler.core.report import choices_lines
    from reconciler.ops import rollback as rolling

    source = _source_for_writing(ctx, repo)
    if to is None:
        assert app_name is not None
        desired, found = _guarded(lambda: rolling.choices(source=source, settings=settings, app=app_name))
        lines = choices_lines(app_name, settings.file, desired.short, current=found.current,
                              previous=found.previous, stable=found.stable, seen=found.seen)  # fmt: skip
        typer.echo("\n".join(lines))
        return
    _written(_guarded(lambda: rolling.rollback(source=source, settings=settings, app=app_name, to=to, push=push,
                                               branch=branch)))  # fmt: skip


@app.command(name="set-version", epilog=COMMON_EPILOG)
@_common
def set_version(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    version: Annotated[str, typer.Argument(metavar="VERSION", help="A tag or sha256:<digest>.")],
    push: PushOpt = False,
    branch: BranchOpt = None,
    repo: RepoOpt = None,
    file: FileOpt = None,
    docker_host: HostOpt = None,
) -> None:
    """Set APP's version in the file and commit it: what CI runs after it built and pushed an image."""
    from reconciler.ops import rollback as rolling

    settings = _settings(ctx, repo=repo, ref=None, file=file, state_dir=None, docker_host=docker_host)
    source = _source_for_writing(ctx, repo)
    _written(_guarded(lambda: rolling.set_version(source=source, settings=settings, app=app_name, version=version,
                                                  push=push, branch=branch)))  # fmt: skip


@app.command(epilog=COMMON_EPILOG)
@_common
def revert(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(metavar="SHA", help="The deploy commit to revert.")],
    push: PushOpt = False,
    repo: RepoOpt = None,
    file: FileOpt = None,
) -> None:
    """`git revert` a deploy commit (validated before it is committed); never a force push."""
    from reconciler.ops import edits
    from reconciler.ops import rollback as rolling

    settings = _settings(ctx, repo=repo, ref=None, file=file, state_dir=None)
    source = _source_for_writing(ctx, repo)
    written = _guarded(lambda: edits.revert(source, revision, file=settings.file, push=push))
    _written(rolling.Committed(written, f"revert {revision[:8]}"))


@app.command(epilog=COMMON_EPILOG)
@_common
def promote(
    ctx: typer.Context,
    app_name: Annotated[str, typer.Argument(metavar="APP")],
    publish: Annotated[
        bool, typer.Option("--publish", help="Also push the stable git tags and IMAGE:stable to their remotes.")
    ] = False,
    repo: RepoOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
) -> None:
    """Mark what runs now as APP's stable version (journal, IMAGE:stable, git tags stable and stable-APP)."""
    from reconciler.ops import stable

    settings = _settings(ctx, repo=repo, ref=None, state_dir=state_dir, docker_host=docker_host, instance=instance)
    text, problems = _guarded(lambda: stable.promote_running(settings, app_name, publish=publish))
    typer.echo(text)
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    if problems:
        raise typer.Exit(1)


@app.command(epilog=COMMON_EPILOG)
@_common
def suspend(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option("--reason", help="Why; shown by status and the agent's log.")] = "by hand",
    state_dir: StateOpt = None,
) -> None:
    """During an incident: the agent changes nothing until `reconcile resume`."""
    from reconciler.ops import controls

    _guarded(lambda: controls.suspend(state_dir=_option(ctx, "state_dir", state_dir), reason=reason))
    typer.echo("suspended: the agent changes nothing until `reconcile resume`")


@app.command(epilog=COMMON_EPILOG)
@_common
def resume(ctx: typer.Context, state_dir: StateOpt = None) -> None:
    """Let the agent converge again (a pass starts now if it runs)."""
    from reconciler.ops import controls

    _guarded(lambda: controls.resume(state_dir=_option(ctx, "state_dir", state_dir)))
    typer.echo("resumed: the agent converges to git again")


rollout_app = typer.Typer(
    help="End a routed app's weighted rollout (rollout:) early; the next pass (the agent's, at once) does it.",
    rich_markup_mode=None,
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")


def _rollout(ctx: typer.Context, app_name: str, what: str, state_dir: Path | None) -> None:
    from reconciler.ops import controls

    where = _option(ctx, "state_dir", state_dir)
    record, pid = _guarded(lambda: controls.rollout(state_dir=where, app=app_name, what=what))
    when = f"the agent (pid {pid}) does it now" if pid else "the next `reconcile` does it"
    typer.echo(f"{app_name}: {what} of its rollout {record.from_version} -> {record.to_version} asked; {when}")


@rollout_app.command("promote", epilog=COMMON_EPILOG)
@_common
def rollout_promote(
    ctx: typer.Context, app_name: Annotated[str, typer.Argument(metavar="APP")], state_dir: StateOpt = None
) -> None:
    """APP's new release serves alone now, whatever step its rollout is at (journaled)."""
    _rollout(ctx, app_name, "promote", state_dir)


@rollout_app.command("abort", epilog=COMMON_EPILOG)
@_common
def rollout_abort(
    ctx: typer.Context, app_name: Annotated[str, typer.Argument(metavar="APP")], state_dir: StateOpt = None
) -> None:
    """Every request back on APP's old release now; the new one is kept stopped as APP.failed and held."""
    _rollout(ctx, app_name, "abort", state_dir)


class Shell(StrEnum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command(epilog=COMMON_EPILOG)
@_common
def completion(
    ctx: typer.Context,
    shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")],
    install: Annotated[bool, typer.Option("--install", help="Write it where SHELL loads completions.")] = False,
) -> None:
    """Print (or --install) tab completion for SHELL: `source <(reconcile completion bash)`.

    Like --install-completion, but for the shell you name rather than the one it detects."""
    from reconciler.ops import controls

    if install:
        where = _guarded(lambda: controls.install_completion(shell=shell.value))
        typer.echo(f"{shell.value} completion installed in {where}; open a new shell")
        return
    typer.echo(_guarded(lambda: controls.completion_script(shell=shell.value)), nl=False)


import_app = typer.Typer(
    help="Convert another tool's file into a desired-state.yaml.", rich_markup_mode=None, no_args_is_help=True
)
app.add_typer(import_app, name="import")


@import_app.command("compose")
def import_compose(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="The compose file (docker-compose.yml, compose.yaml).")],
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file", metavar="FILE", help="Variables for ${VAR}. [default: .env beside the file, if any]"
        ),
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option("--profile", metavar="NAME", help="Also the services of this profile (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--out", metavar="FILE", help="Write it here (atomically). [default: stdout]"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the --out file if it exists.")] = False,
) -> None:
    """Convert a Compose file into a desired-state.yaml. Exit 0 converted, 1 not (every problem one line)."""
    from reconciler.core.compose import ComposeError
    from reconciler.ops import importer

    def run() -> Any:
        try:
            return importer.import_compose(
                path, environ=dict(os.environ), env_file=env_file, profiles=profile or [], out=out, force=force
            )
        except ComposeError as exc:
            for line in exc.problems:
                typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1) from None

    imported = _guarded(run)
    for line in imported.warnings:
        typer.echo(f"warning: {line}", err=True)
    if imported.written is None:
        typer.echo(imported.text, nl=False)
    else:
        count = len(imported.apps)
        typer.echo(f"{imported.written}: written, {count} app{'s' if count != 1 else ''}")


secrets_app = typer.Typer(
    help="SOPS files of the repository, for teams without the sops binary.",
    rich_markup_mode=None,
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("encrypt")
def secrets_encrypt(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A plaintext yaml, json, .env or any other file.")],
    in_place: Annotated[bool, typer.Option("--in-place", "-i", help="Replace FILE (its mode kept).")] = False,
    out: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="OUT", help="Write it to OUT (mode 600). [default: stdout]"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", metavar="PATH", help="The .sops.yaml. [default: the nearest one, as sops]"),
    ] = None,
) -> None:
    """Encrypt FILE as sops does, for the age recipients of the .sops.yaml creation rule that matches it."""
    from reconciler.ops import secrets
    from reconciler.ops.files import write_atomically

    if in_place and out is not None:
        _fail("--in-place and --output: give one of them")
    data = _guarded(lambda: secrets.encrypt(path, config=config))
    if in_place:
        _guarded(lambda: write_atomically(path, data, force=True, mode=path.stat().st_mode & 0o7777))
    elif out is not None:
        _guarded(lambda: write_atomically(out, data, force=True, mode=0o600))
    else:
        _raw_stdout(data)


def _raw_stdout(data: bytes) -> None:
    """Bytes to the process's own stdout, past the masking of ``main`` (a file's bytes: ciphertext, or what
    ``secrets show`` was asked to print)."""
    stream = sys.__stdout__
    assert stream is not None
    stream.buffer.write(data)
    stream.buffer.flush()


@secrets_app.command("show")
def secrets_show(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="A SOPS file.")],
    key: Annotated[
        str | None, typer.Option("--key", metavar="PATH", help="Only this value (db.password).", show_default=False)
    ] = None,
    sops_age_key_file: SopsKeyOpt = None,
) -> None:
    """Decrypt FILE to stdout with this machine's keys, as sops -d prints it (for debugging: it prints secrets)."""
    from reconciler.ops import secrets

    keys = _guarded(lambda: secrets.keys_of(sops_age_key_file))
    _raw_stdout(_guarded(lambda: secrets.show(path, keys, key=key)))


class PreviewsAction(StrEnum):
    list = "list"
    remove = "remove"


@app.command(epilog=COMMON_EPILOG)
@_common
def previews(
    ctx: typer.Context,
    action: Annotated[PreviewsAction, typer.Argument(help="list (the default), or remove N.")] = PreviewsAction.list,
    number: Annotated[
        int | None, typer.Argument(metavar="N", help="The pull request's number.", show_default=False)
    ] = None,
    repo: RepoOpt = None,
    ref: RefOpt = None,
    file: FileOpt = None,
    state_dir: StateOpt = None,
    docker_host: HostOpt = None,
    instance: InstanceOpt = None,
    output: OutputOpt = None,
) -> None:
    """Pull-request previews: each pull request on record and its preview; `remove N` takes one down by hand."""
    import time

    from reconciler.core.previews import lines
    from reconciler.ops import previews as ops

    settings = _settings(ctx, repo=repo, ref=ref, file=file, state_dir=state_dir, docker_host=docker_host,
                         instance=instance)  # fmt: skip
    if action is PreviewsAction.remove:
        if number is None:
            _fail("previews remove N: give the pull request's number")
        gone, pid = _guarded(lambda: ops.remove(state_dir=settings.state_dir, number=number))
        if gone is None:
            _fail(f"pull request #{number} is not on record: no preview to remove (`reconcile previews` lists them)")
        when = f"the agent (pid {pid}) removes it now" if pid else "the next pass (`reconcile`) removes it"
        typer.echo(f"pull request #{number} taken off the record: {when}; a push to it brings it back")
        return
    if number is not None:
        _fail("previews: N goes with remove (`reconcile previews remove N`)")
    found, problem = _guarded(lambda: ops.listed(settings))
    if problem:
        typer.echo(f"warning: {problem}", err=True)
    if _option(ctx, "output", output) is Output.json:
        _emit([row.as_dict() for row in found])
    else:
        typer.echo("\n".join(lines(found, time.time())))


@app.command(hidden=True)
def schema() -> None:
    """Print the JSON Schema of desired-state.yaml (the source of schemas/desired-state.schema.json)."""
    from reconciler.core.schema import render

    typer.echo(render(), nl=False)


def main() -> None:
    from reconciler.telemetry.scrub import ScrubbedStream

    # The one boundary every line we print crosses: no env value or URL password gets past it.
    sys.stdout = ScrubbedStream(sys.stdout)
    sys.stderr = ScrubbedStream(sys.stderr)
    # A command first loads its modules (~550: the libraries' and ours), objects that live as long as the
    # process: the collector would walk them at each full collection and once more at exit (~0.1 s of a
    # 0.45 s dry run, bench/converge.py). It is off while they load; ``_guarded`` freezes them, then turns it on.
    gc.disable()
    try:
        app(prog_name="reconcile")
    except ReconcileError as exc:  # a command that forgot _guarded still never shows a traceback
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        if os.environ.get("RECONCILE_DEBUG"):
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc} (a bug in reconciler: {_crash_file(exc)}; "
                   "report it)", err=True)  # fmt: skip
        sys.exit(1)
    finally:
        gc.enable()  # a command that never reached ``_guarded`` (--help, a usage error)


def _crash_file(exc: BaseException) -> str:
    """Where the traceback of a bug went: a private folder of this user's under the temp directory (the
    command's own state directory may be what failed)."""
    import tempfile

    from reconciler.state.crash import keep_traceback

    folder = Path(tempfile.gettempdir()) / f"reconcile-crashes-{os.geteuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        return f"no traceback kept ({error.strerror or error}); RECONCILE_DEBUG=1 prints it"
    return keep_traceback(exc, folder)
