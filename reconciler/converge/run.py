"""One pass of `reconcile`, end to end: read the commit, observe, resolve, plan, and (unless dry) apply.

Guarantees:
- The desired state is read from a commit (``Source``), never from a working tree. A commit's file is
  read and parsed once (``read_at``): the signature rule, the policy and the dangerous-mount warnings
  (``Read.dangers``) all use the positions of that one parse. What this server trusts is one ``Trust``
  value (policy, signer rule, host), built once from the options and handed to every read.
- ``apply_pass`` is the one pass of the one-shot, a fleet's push and the agent: proxy, unfinished
  verdicts, (the one-shot: live verdicts), plan, the caller's plan filters, apply, proxy again. What the
  agent adds (hold-back, whole commit, self-heal, its notices, metrics and stable clock) comes in as
  ``PassHooks``; the pass returns one ``PassResult``. Its ``Applier`` is built in one place
  (``new_applier``), every collaborator given to its constructor.
- A dry run takes no lock, pulls nothing and changes nothing on the engine: images are resolved from
  the local image list, else from the registry's API.
- An apply holds the state directory's lock and observes the engine *after* taking it, so two passes
  never plan against the same stale view.
- Per pass: one container listing, one service listing (answered at once by an engine that is no swarm
  manager) and one image listing, whatever the number of apps (and one registry look-up per app that
  follows a canary's ``stable``, on the hosts that are not its canary).
- The desired state carries its source (repository, branch, file): the planner changes only
  containers that this source deployed.
- Env values of the file are remembered by ``scrub`` before the file is validated, so that no
  message, however it quotes them, prints them.
- With ``previews:``, the desired state holds one app per open pull request on record in the state directory
  (``previewed``, ``core.previews``): planned, gated, routed and pruned as any app; a preview's image is looked
  up in the registry each pass (its tag moves), and its trouble never holds the file's own apps back.
- A proxy that cannot be brought in line (``PassResult.proxy_error``), before the deploys or after them,
  holds back the routed apps only: the apps without a route deploy in the same pass, and are reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.adapters.docker import connect
from reconciler.adapters.git import Source, open_source
from reconciler.adapters.protocols import DockerEngine
from reconciler.adapters.yamlfile import parse_yaml
from reconciler.converge.sealed import Mode, open_sealed
from reconciler.core import canary as core_canary
from reconciler.core import certs as core_certs
from reconciler.core import fleet
from reconciler.core import images as image_match
from reconciler.core.canary import Rollout
from reconciler.core.desired import Positions, load_desired
from reconciler.core.holdback import Notice
from reconciler.core.model import STABLE, AppSpec, DesiredState, ObservedState, image_ref
from reconciler.core.plan import Plan, Resolution, plan
from reconciler.core.proxy import Canary, route_lines, routed, unrouted
from reconciler.core.report import Outcome, Result
from reconciler.core.sealed import ENV_FILE
from reconciler.core.stack import SecretSpec, SopsRef
from reconciler.deploy import canary as canaries
from reconciler.deploy import networks
from reconciler.errors import CommitRefused, ImageError, InvalidDesiredState, ReconcileError, UserError
from reconciler.telemetry import scrub

if TYPE_CHECKING:
    from reconciler.core.health import Sample
    from reconciler.deploy.applier import Applier
    from reconciler.deploy.certs import CertReport
    from reconciler.deploy.proxy import Proxy
    from reconciler.state.journal import Journal

# The proxy, the journal, signatures and the policy are imported where they are used: a fleet's preview
# and status need none of them, and start asking their hosts sooner without (bench/fleet.py times it).

# Deploys of a pass at once. A gate mostly waits (one inspect per 100 ms), so the bound is what the
# engine can create and start at once on a small host. 16 takes 20 apps from an empty 2-core host in
# two rounds of the default 5 s gate (8 took three rounds, 18.6 s: over the 15 s target), and 200 apps
# in about 7 x that; bench/parallel.py measures it.
DEFAULT_PARALLEL = 16
SECRETS = "secrets"  # STATE/secrets: the decrypted SOPS file secrets of the releases that run


@dataclass(frozen=True)
class Settings:
    """Where to read from and what to act on; the CLI builds this from flags and the environment."""

    repo: str = "."
    ref: str = "HEAD"
    file: str = "desired-state.yaml"
    state_dir: Path = Path("state")
    docker_host: str | None = None
    lock_timeout: float = 0.0
    adopt: bool = False
    instance: str = "default"
    prune_foreign: bool = False  # also remove containers of this instance that another source deployed
    relabel: bool = False  # redeploy containers deployed before they carried their source
    parallel: int = DEFAULT_PARALLEL  # deploys of a pass at once; 1: one after another
    policy: Path | None = None  # this server's policy file: what a commit may ask for (read at each pass)
    require_signed_by: str | None = None  # ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR
    host: str | None = None  # this host's name in a fleet's hosts: (None: this machine's hostname)
    sops_age_key_file: str | None = None  # age identities for SOPS files (None: SOPS_AGE_KEY_FILE, sops' default)

    @property
    def trust(self) -> Trust:
        """The one ``Trust`` value of these settings, handed to every read of a commit."""
        return Trust(
            policy=self.policy, signed_by=self.require_signed_by, host=self.host,
            sops_key_file=self.sops_age_key_file, state_dir=self.state_dir,
        )  # fmt: skip


@dataclass
class PassResult:
    """The record of one pass (``apply_pass``), or of a dry run's plan."""

    desired: DesiredState
    plan: Plan  # as planned, before the proxy held routed apps back and before any rule (``PassHooks.filters``)
    outcomes: list[Outcome] = field(default_factory=list)  # verified + applied + waited, in that order
    proxy: list[str] = field(default_factory=list)  # what the pass changed of the proxy (a dry run: would change)
    routes: list[str] = field(default_factory=list)  # which release serves each route, and the warm ones
    proxy_error: str = ""  # the proxy could not be brought in line (before or after the deploys, or went away)
    verified: list[Outcome] = field(default_factory=list)  # verdicts on deploys an earlier run left unfinished
    applied: list[Outcome] = field(default_factory=list)  # the outcomes of the plan as the rules left it
    waited: list[Outcome] = field(default_factory=list)  # routed changes not deployed: their proxy is not in line
    notices: list[Notice] = field(default_factory=list)  # what the rules said of what they held back
    cut_short: str = ""  # the outage that ended the deploys early, when a hook chose to end the pass there
    networks: list[str] = field(default_factory=list)  # what the pass did of the instance's networks (dry: would do)
    cert_errors: list[str] = field(default_factory=list)  # ACME: a line per host whose order failed (pass goes on)
    rollouts: list[str] = field(default_factory=list)  # what the pass did of the rollouts under way (a dry run: each)
    next_step: float = math.inf  # when a rollout's step is judged next (epoch seconds): the agent wakes then
    shares: dict[str, tuple[int, int]] = field(default_factory=dict)  # each rollout under way: (step, weight)
    previews_deferred: bool = False  # a preview's new release waits for the next pass (it deploys alone)

    def done(self) -> PassResult:
        self.outcomes = self.verified + self.applied + self.waited
        return self

    @property
    def ok(self) -> bool:
        return all(outcome.result.ok for outcome in self.outcomes) and not self.proxy_error


@dataclass(frozen=True)
class Trust:
    """What this server trusts of a commit: built once from the command's options (or the agent's settings)
    and handed to every read of a commit."""

    policy: Path | None = None  # this server's policy file: what a commit may ask for (read at each read)
    signed_by: str | None = None  # ssh:ALLOWED_SIGNERS_FILE or gpg:KEYRING_DIR: whose signature a commit needs
    host: str | None = None  # this host's name in a fleet's hosts: (None: this machine's hostname; ``ALL_HOSTS``)
    sops: Mode = Mode.OPEN  # how the commit's SOPS files are opened: every one (or refused), a preview, parsed only
    sops_key_file: str | None = None  # --sops-age-key-file
    state_dir: Path | None = None  # where the key of the secrets' digests is kept


@dataclass(frozen=True)
class Read:
    """A commit's file read once: the desired state, and what the checkers found at the positions of that
    one parse."""

    desired: DesiredState
    dangers: tuple[str, ...] = ()  # without a policy: each dangerous mount, as FILE:LINE:COL: path: message
    signer: str = ""  # with ``trust.signed_by``: the key that signed it, as git names it (``PRINCIPAL SHA256:…``)


def parse_desired(text: bytes, file: str, revision: str, *, author: str = "") -> DesiredState:
    return _parse(text, file, revision, author=author)[0]


def _parse(text: bytes, file: str, revision: str, *, author: str = "") -> tuple[DesiredState, Positions]:
    """The validated file and the positions of its one parse, for the checkers that place what they find."""
    data, positions = parse_yaml(text, filename=file)
    scrub.remember_in(data)
    try:
        return load_desired(data, positions, filename=file, revision=revision, author=author), positions
    except InvalidDesiredState as exc:
        raise InvalidDesiredState([scrub.scrub(line) for line in exc.errors]) from None


def desired_at(source: Source, ref: str, revision: str, file: str, trust: Trust) -> DesiredState:
    """The validated file at ``revision`` (what ``ref`` resolved to), with its author and source (``read_at``)."""
    return read_at(source, ref, revision, file, trust).desired


def read_at(source: Source, ref: str, revision: str, file: str, trust: Trust) -> Read:
    """The file at ``revision`` read once, parsed once, and checked against ``trust``.

    With ``trust.signed_by``, a commit without a good signature by an allowed key is ``CommitRefused`` before
    its file is even read; with a ``trust.policy`` file, one that asks for more than it allows is a
    ``PolicyViolation``. Either way nothing of it is applied. Without a policy, the dangerous mounts are
    placed in the file (``Read.dangers``) from the same parse. The SOPS files it names are read at the same
    commit and opened as ``trust.sops`` says (``converge.sealed``): one that cannot be is ``CommitRefused``."""
    from reconciler.trust import server_policy

    signer = check_signature(source, revision, trust.signed_by) if trust.signed_by is not None else ""
    text = source.read(revision, file)
    desired, positions = _parse(text, file, revision, author=source.author(revision))
    if trust.policy is not None:
        desired = server_policy.enforce(positions, file, desired, server_policy.load_policy(trust.policy))
    desired = place(desired, trust.host)
    desired = previewed(desired, trust.state_dir)
    desired = open_sealed(
        source, revision, desired, mode=trust.sops, key_file=trust.sops_key_file, state_dir=trust.state_dir
    )
    dangers = server_policy.check(positions, file, desired, None) if trust.policy is None else []
    return Read(desired.model_copy(update={"source": source.identity(ref, revision, file)}), tuple(dangers), signer)


ALL_HOSTS = "*"  # ``Settings.host`` for a reader of the whole fleet: every app, placed nowhere


def place(desired: DesiredState, host: str | None) -> DesiredState:
    """The apps of this host, when the file declares a fleet (``hosts:``); the file as it is otherwise."""
    if host == ALL_HOSTS:
        return desired
    if desired.hosts is None:
        if host is not None:
            raise UserError(f"--host {host}: {desired.path} declares no hosts: (every app runs on every host)")
        return desired
    name = host if host is not None else socket.gethostname()
    if name not in desired.hosts:
        told = f"--host {name}" if host is not None else f"this machine is {name!r}"
        raise UserError(
            f"{told}, which {desired.path} does not declare in hosts{fleet.nearest(name, sorted(desired.hosts))};"
            " give --host NAME (or RECONCILE_HOST)"
        )
    return fleet.placed(desired, name)


def previewed(desired: DesiredState, state_dir: Path | None) -> DesiredState:
    """The file's apps and, when it has ``previews:``, one app per open pull request on record in ``state_dir``
    (``core.previews``): the one-shot and the agent read the same record, so neither prunes the other's."""
    if not desired.previews or state_dir is None:
        return desired
    from reconciler.core.previews import with_previews
    from reconciler.state import previews

    return with_previews(desired, previews.load(state_dir), time.time())


def check_signature(source: Source, revision: str, signed_by: str) -> str:
    """The key that signed ``revision``; ``CommitRefused`` unless it is a good signature by a key ``signed_by``
    allows."""
    from reconciler.trust import signatures

    found = signatures.verify(source.git_dir, revision, signatures.parse_rule(signed_by))
    if found.verdict is signatures.SignatureVerdict.GOOD:
        return found.key
    if found.verdict is signatures.SignatureVerdict.UNSIGNED:
        message = f"commit {revision[:8]} is not signed; not applied (--require-signed-by {signed_by})"
    else:
        key = f" (key {found.key})" if found.key else ""
        message = f"commit {revision[:8]} is not signed by an allowed key{key}: {found.detail}; not applied"
    raise CommitRefused(str(found.verdict), message)


def read_desired(settings: Settings, *, sops: Mode = Mode.OPEN) -> DesiredState:
    """The validated desired state at ``settings.ref`` of ``settings.repo``, its SOPS files opened as ``sops``
    says."""
    source = open_source(settings.repo, state_dir=settings.state_dir)
    try:
        revision = source.resolve(settings.ref)
        trust = dataclasses.replace(settings.trust, sops=sops)
        return desired_at(source, settings.ref, revision, settings.file, trust)
    finally:
        source.close()


def resolve(engine: DockerEngine, desired: DesiredState) -> dict[str, Resolution]:
    """Each app's image as a local image id, else as a registry digest (to pull), else an error.

    ``stable`` is the local ``IMAGE:stable`` tag, except for an app with a ``canary:`` on the hosts that
    follow it: there it is the registry's ``IMAGE:stable`` (``_registry_stable``), so that what the canary
    host promoted and published reaches them at their next pass."""
    local = engine.local_images()
    resolutions: dict[str, Resolution] = {}
    for app, spec in desired.apps.items():
        ref = image_ref(spec)
        found = image_match.find_local(ref, local)
        # A preview's tag is pushed again by CI for each commit of its pull request: the registry says what it is.
        follows = (spec.canary and spec.version == STABLE) or (desired.previewed and app in desired.previewed.of)
        followed = _registry_stable(engine, ref, spec.image, found) if follows else None
        if followed is not None:
            resolutions[app] = followed
        elif found is not None:
            resolutions[app] = Resolution(
                ref=ref, image_id=found.id, digest=image_match.registry_digest(found, spec.image)
            )
        elif spec.version == STABLE:
            resolutions[app] = Resolution(
                ref=ref, error=f"{ref}: no stable version yet (a deploy is promoted after stable_after healthy)"
            )
        else:
            try:
                resolutions[app] = Resolution(ref=ref, digest=engine.registry_digest(ref))
            except ImageError as exc:
                resolutions[app] = Resolution(ref=ref, error=str(exc))
    return resolutions


def _registry_stable(
    engine: DockerEngine, ref: str, image: str, found: image_match.LocalImage | None
) -> Resolution | None:
    """``IMAGE:stable`` as the registry has it: the local image when the local tag already carries that
    digest, else that digest to pull. None when the registry cannot say (no answer, no ``stable`` tag yet,
    an image only built here): then the local tag stands, as without a canary."""
    try:
        digest = engine.registry_digest(ref)
    except ImageError:
        return None
    if found is not None and image_match.normalize(f"{image}@{digest}") in found.digests:
        return Resolution(ref=ref, image_id=found.id, digest=digest)
    # Pulled by its tag, not by digest: the pull moves the local IMAGE:stable too, so the next pass finds it
    # here. Should the registry's stable move again between this look-up and the pull, the newer one is
    # deployed under the older digest's label, and the next pass deploys it once more under its own.
    return Resolution(ref=ref, digest=digest)


def plan_against(
    engine: DockerEngine,
    desired: DesiredState,
    settings: Settings,
    *,
    observed: ObservedState | None = None,
    rolling: Mapping[str, str] | None = None,
) -> tuple[Plan, ObservedState]:
    """Observe (unless given), resolve and plan. An app with a host path whose real path on the engine's
    host leads out of the policy's folders is an error of the plan (``server_policy.on_host``), not a deploy."""
    from reconciler.trust import server_policy

    observed = observed if observed is not None else engine.observe()
    refused = server_policy.on_host(engine, desired)
    resolutions = resolve(engine, desired)
    for app, lines in refused.items():
        if app in resolutions:
            resolutions[app] = Resolution(ref=resolutions[app].ref, error="; ".join(lines))
    digests = {app: env_file_digest(engine, desired, app, spec) for app, spec in desired.apps.items() if spec.env_file}
    secrets = {
        app: {s.target: secret_digest(engine, desired, app, s) for s in spec.secrets}
        for app, spec in desired.apps.items()
        if spec.secrets
    }
    the_plan = plan(
        desired,
        resolutions,
        observed,
        env_file_hashes=digests,
        secret_hashes=secrets,
        adopt=settings.adopt,
        prune_foreign=settings.prune_foreign,
        relabel=settings.relabel,
        rolling=rolling,
    )
    return the_plan, observed


def env_file_digest(engine: DockerEngine, desired: DesiredState, app: str, spec: AppSpec) -> str | None:
    """What the labels carry of an env_file's contents: its host file's hash, or a SOPS file's keyed digest
    (None: not read here)."""
    if isinstance(spec.env_file, SopsRef):
        return desired.sealed.digest(app, ENV_FILE, spec.env_file)
    return engine.files.digest(spec.env_file) if spec.env_file else None


def secret_digest(engine: DockerEngine, desired: DesiredState, app: str, secret: SecretSpec) -> str | None:
    if isinstance(secret.source, SopsRef):
        return desired.sealed.digest(app, secret.target, secret.source)
    return engine.files.secret_digest(app, secret.target, secret.source)


def reconcile_once(
    settings: Settings,
    *,
    dry_run: bool = False,
    on_step: Callable[[str, str], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> PassResult:
    """Read, plan, and unless ``dry_run`` apply; raise ``ReconcileError`` for what stops the whole pass."""
    desired = read_desired(settings, sops=Mode.PREVIEW if dry_run else Mode.OPEN)
    engine = connect(settings.docker_host, instance=settings.instance)
    if dry_run:
        from reconciler.deploy.proxy import Proxy

        proxy = Proxy(engine, settings.state_dir)
        rollouts = canaries.peek(settings.state_dir) if desired.proxy is not None else {}
        the_plan, observed = plan_against(engine, desired, settings, rolling=canaries.rolling(rollouts))
        routes = route_lines(desired, observed, proxy.network, proxy.switched())
        said = networks.ensure(engine, desired, dry=True) + networks.prune(engine, desired, dry=True)
        routes += cert_lines(proxy, settings.state_dir, desired)
        drift = proxy.drift(desired, observed, canaries=weights(rollouts, desired, observed, proxy))
        under_way = rollout_lines(rollouts, desired)
        return PassResult(desired, the_plan, proxy=drift, routes=routes, networks=said, rollouts=under_way)
    from reconciler.trust import server_policy

    # before anything changes: the commit is applied whole or not at all
    refused = server_policy.on_host(engine, desired)
    if refused:
        raise server_policy.PolicyViolation([line for lines in refused.values() for line in lines])
    with applying(engine, settings.state_dir, desired, settings, on_step=on_step, log=log) as applier:
        return apply_pass(applier, desired, settings)


def new_applier(
    engine: DockerEngine,
    journal: Journal,
    state_dir: Path,
    desired: DesiredState,
    settings: Settings,
    *,
    on_step: Callable[[str, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    interrupted: Callable[[], bool] | None = None,
    on_sample: Callable[[str, float, Sample], None] | None = None,
) -> Applier:
    """The ``Applier`` of a pass, every collaborator given to its constructor (the one place one is built
    for a pass: the one-shot, a fleet's push and the agent)."""
    from reconciler.deploy.applier import Applier
    from reconciler.deploy.proxy import Proxy

    given: dict[str, Any] = {"on_step": on_step, "log": log, "interrupted": interrupted, "on_sample": on_sample}
    return Applier(
        engine, journal, author=desired.author, parallel=settings.parallel, proxy=Proxy(engine, state_dir),
        sealed={desired.revision: desired.sealed}, secrets_dir=(state_dir / SECRETS).absolute(),
        **{name: value for name, value in given.items() if value is not None},
    )  # fmt: skip


@contextlib.contextmanager
def applying(
    engine: DockerEngine,
    state_dir: Path,
    desired: DesiredState,
    settings: Settings,
    *,
    on_step: Callable[[str, str], None] | None = None,
    log: Callable[[str], None] | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> Iterator[Applier]:
    """An ``Applier`` for ``engine`` while ``state_dir``'s lock is held and its journal is open."""
    from reconciler.state.journal import Journal
    from reconciler.state.lock import locked

    with locked(state_dir, timeout=settings.lock_timeout):
        journal = Journal(state_dir)
        try:
            applier = new_applier(
                engine, journal, state_dir, desired, settings, on_step=on_step, log=log, interrupted=interrupted
            )
            yield applier
            assert applier.proxy is not None
            applier.proxy.settle()  # the warm releases it cooled are stopped before the run ends
        finally:
            journal.close()


def weights(
    rollouts: Mapping[str, Rollout], desired: DesiredState, observed: ObservedState, proxy: Proxy
) -> dict[str, Canary | None]:
    """The canary server and weights of each app with ``rollout:`` (``core.canary.canaries``)."""
    return core_canary.canaries(rollouts, desired, observed, proxy.network)


def rollout_lines(rollouts: Mapping[str, Rollout], desired: DesiredState) -> list[str]:
    """Each rollout under way as ``status`` and the report say it (``core.canary.lines``)."""
    return [line for app, found in sorted(rollouts.items()) for line in core_canary.lines(found, desired.apps.get(app))]


def cert_lines(proxy: Proxy, state_dir: Path, desired: DesiredState) -> list[str]:
    """Each ACME host's certificate as stored (``cert HOST: expires ..., renews ...``); nothing is asked."""
    if core_certs.acme_of(desired) is None:
        return []
    from reconciler.deploy.certs import Certs

    return core_certs.lines(Certs(proxy, state_dir).look(desired), time.time())


def _nothing(*args: object) -> None:
    return None


def _raise(exc: ReconcileError, done: list[Outcome], plan: Plan | None) -> bool:
    return False


# A plan filter: the plan less what a rule keeps from the pass, and what the rule has to say of it.
PlanFilter = Callable[[Plan, ObservedState], tuple[Plan, Sequence[Notice]]]


@dataclass(frozen=True)
class PassHooks:
    """What a caller adds to the one pass (``apply_pass``): the agent's rules and its telling of them. The
    defaults are the one-shot's: nothing is told as it happens, the record says it all at the end.

    Each hook is called at one point of the pass, in this order: ``proxy_synced`` / ``proxy_failed`` (the
    proxy first), ``started``, ``verified`` (the unfinished deploys' verdicts), ``planned``, ``rolled`` and
    ``verified`` again (the weighted rollouts under way: what each step did, the ones that ended), the ``filters``
    in turn (each one's notices to ``say``), ``observed_after`` (what runs after the deploys),
    ``applied`` (the deploys' outcomes, also when the look after them failed), ``proxy_synced`` /
    ``proxy_failed`` again (the proxy after the deploys), ``finished``."""

    filters: Sequence[PlanFilter] = ()  # in order; e.g. the agent's hold-back, whole-commit, self-heal rules
    say: Callable[[Sequence[Notice]], None] = _nothing
    proxy_synced: Callable[[list[str]], None] = _nothing  # the proxy is in line; what it changed of it
    proxy_failed: Callable[[UserError], None] = _nothing  # it cannot be brought in line: routed apps wait
    started: Callable[[ObservedState, Mapping[str, AppSpec]], None] = _nothing  # what runs, the apps that wait
    verified: Callable[[list[Outcome]], None] = _nothing  # each under the commit that released it
    rolled: Callable[[list[str]], None] = _nothing  # what the pass did of the weighted rollouts under way
    planned: Callable[[Plan, ObservedState], None] = _nothing  # the plan, before any filter
    observed_after: Callable[[ObservedState, list[Outcome]], None] = _nothing  # only when the pass deployed
    applied: Callable[[list[Outcome], Plan], None] = _nothing  # the outcomes of the plan that was applied
    finished: Callable[[ObservedState], None] = _nothing  # the pass went through (not after ``cut``)
    # An outage (``EngineUnavailable``, ``ProxyUnavailable``) cut the deploys short, ``done`` being what they
    # did before: True ends the pass there with its record; False (the default) raises it. An outage met by
    # the unfinished verdicts is told (with nothing done) and always raised.
    certified: Callable[[CertReport], None] = _nothing  # ACME: what the pass did of the certificates (proxy in line)
    cut: Callable[[ReconcileError, list[Outcome], Plan | None], bool] = _raise
    judge_live: bool = True  # judge the releases that died in their stable window (the agent's clock does)
    look_after: bool = False  # look at what runs after any deploy (the agent's gauges and stable clock)


ONE_SHOT = PassHooks()


def apply_pass(
    applier: Applier, desired: DesiredState, settings: Settings, *, atomic: bool = False, hooks: PassHooks = ONE_SHOT
) -> PassResult:
    """Converge ``applier``'s engine to ``desired``: the proxy, unfinished deploys, then the plan, then the
    proxy again. The one pass of the one-shot, a fleet's push and the agent; ``hooks`` add the agent's.

    ``atomic``: a release of the pass that fails takes the others of the pass back (whole commit)."""
    from reconciler.errors import EngineUnavailable, ProxyUnavailable

    engine, proxy = applier.engine, applier.proxy
    assert proxy is not None
    proxy_error = ""
    changed: list[str] = []
    observed = engine.observe()
    rollouts = canaries.records(applier.journal) if desired.proxy is not None else {}
    # The proxy first: whatever happened to it, it routes to what runs before anything changes.
    try:
        changed = proxy.sync(desired, observed, canaries=weights(rollouts, desired, observed, proxy))
    except UserError as exc:  # the proxy (its port taken, its image missing): the routed apps wait for it
        proxy_error = str(exc)
        hooks.proxy_failed(exc)
    else:
        hooks.proxy_synced(changed)
    certified = None
    if not proxy_error and core_certs.acme_of(desired) is not None:
        from reconciler.deploy.certs import Certs

        # Before the deploys: a route's certificate is there before its first HTTPS request where it can be.
        certified = Certs(proxy, settings.state_dir).sync(desired)
        changed = changed + certified.done
        hooks.certified(certified)
    waiting = routed(desired) if proxy_error else {}
    made = networks.ensure(engine, desired)  # before any deploy joins them
    hooks.started(observed, waiting)
    # A deploy that an earlier run never finished (killed mid-gate) gets its verdict first.
    try:
        verified = applier.verify_unfinished(observed, desired.apps, waiting=waiting)
    except EngineUnavailable as exc:
        hooks.cut(exc, [], None)
        raise
    hooks.verified(verified)
    # One listing per pass, and one more after each verdict that changed what runs.
    if verified:
        observed = engine.observe()
    died: list[Outcome] = []
    if hooks.judge_live:
        # A release that died inside its stable window is taken back as a failed one, and not deployed again
        # by this pass (the next run tries it again). A routed one waits with its proxy.
        live = {app: spec for app, spec in desired.apps.items() if app not in waiting}
        died = applier.verify_live(observed, live)
        if died:
            observed = engine.observe()
        verified += died
    rolling = canaries.rolling(rollouts)
    the_plan, observed = plan_against(engine, desired, settings, observed=observed, rolling=rolling)
    tended = canaries.Tended()
    if rollouts and not proxy_error:
        # Each rollout under way moves before the deploys: one a newer commit supersedes goes first.
        tended = canaries.tend(applier, desired, observed, the_plan)
        hooks.rolled(tended.said)
        hooks.verified(tended.outcomes)
        verified += tended.outcomes
        if tended.ended:
            rolling = canaries.rolling(canaries.records(applier.journal))
            the_plan, observed = plan_against(engine, desired, settings, rolling=rolling)
    # A release taken back (died in its window, its rollout aborted) is not deployed again by this pass.
    judged = {outcome.app for outcome in died} | {outcome.app for outcome in tended.outcomes}
    the_plan = dataclasses.replace(the_plan, actions=tuple(a for a in the_plan.actions if a.app not in judged))
    hooks.planned(the_plan, observed)
    to_apply, held = unrouted(the_plan, desired) if proxy_error else (the_plan, [])
    waited = [
        Outcome(action.app, action.kind, action.container, Result.SKIPPED, "not deployed: its proxy is not in line")
        for action in the_plan.changes
        if action.app in held
    ]
    notices: list[Notice] = []
    deferred = False
    if desired.previewed is not None:  # before the caller's rules: a preview's trouble stays its own
        from reconciler.core import previews

        before = to_apply
        to_apply, told = previews.preview_rule(desired, alone=atomic)(to_apply, observed)
        deferred = previews.deferred(desired, before, to_apply)
        hooks.say(told)
        notices += told
    for rule in hooks.filters:
        to_apply, said = rule(to_apply, observed)
        hooks.say(said)
        notices += said
    record = PassResult(
        desired, the_plan, proxy=changed, notices=notices, verified=verified, waited=waited, networks=made,
        rollouts=tended.said, previews_deferred=deferred,
    )  # fmt: skip
    if to_apply.changes:
        try:
            record.applied = applier.apply(to_apply, observed, atomic=atomic)
        except (EngineUnavailable, ProxyUnavailable) as exc:
            # Not a verdict on a release: the journal's rows stay unfinished for the next pass.
            if not hooks.cut(exc, applier.done, to_apply):
                raise
            record.applied, record.cut_short = applier.done, str(exc)
            record.proxy_error = str(exc) if isinstance(exc, ProxyUnavailable) else proxy_error
            return record.done()
    else:  # what ``apply`` says of a plan without a change, without asking it
        record.applied = [Outcome(a.app, a.kind, a.container, Result.SKIPPED, a.message) for a in to_apply.problems]
    resync = desired.proxy is not None and bool(verified or record.applied or tended.said) and not waiting
    try:
        if resync or (hooks.look_after and to_apply.changes):
            observed = engine.observe()
            if to_apply.changes:
                hooks.observed_after(observed, record.applied)
    finally:
        hooks.applied(record.applied, to_apply)
    if resync:
        try:
            rollouts = canaries.records(applier.journal)  # with the ones the deploys began
            late = proxy.sync(desired, observed, canaries=weights(rollouts, desired, observed, proxy))
        except UserError as exc:  # the deploys happened: they are reported, and this with them
            proxy_error = str(exc)
            hooks.proxy_failed(exc)
        else:
            changed += late
            hooks.proxy_synced(late)
    record.proxy, record.proxy_error = changed, proxy_error
    record.networks += networks.prune(engine, desired)
    if applier.secrets_dir is not None and (verified or to_apply.changes):
        engine.prune_secret_files(applier.secrets_dir)  # the file secrets of the releases this pass removed
    record.routes = route_lines(desired, observed, proxy.network, proxy.switched())
    rollouts = canaries.records(applier.journal)  # after the deploys began theirs
    record.routes += rollout_lines(rollouts, desired)
    for app, found in rollouts.items():
        spec = desired.apps.get(app)
        if spec is not None and spec.rollout is not None:
            record.next_step = min(record.next_step, core_canary.ends(spec, found))
            record.shares[app] = (found.step + 1, core_canary.weight(spec, found))
    if certified is not None:
        record.routes += certified.lines(time.time())
        record.cert_errors = list(certified.failed.values())
    else:
        record.routes += cert_lines(proxy, settings.state_dir, desired)
    hooks.finished(observed)
    return record.done()
