"""The stable release of an app: what ``stable`` points at, and promoting a release to it.

Guarantees:
- ``stable`` resolves to the journal's latest promotion of the app, else to the version in the file at
  the git tag ``stable-APP``, else at ``stable``; with none of them it is a ``UserError``, never a guess.
- A promotion always stands once the journal records it and the engine tags ``IMAGE:stable``; moving
  and pushing the git tags and pushing the image tag are best effort, and what failed is returned
  for the log, never raised.
- ``promote`` promotes only a running container or service of ours; a service's image that the manager
  does not hold (its tasks run on other nodes) is pulled there by its digest first.
"""

from __future__ import annotations

from reconciler.adapters.git import Source
from reconciler.adapters.protocols import DockerEngine
from reconciler.adapters.yamlfile import parse_yaml
from reconciler.converge.run import Settings
from reconciler.core.model import STABLE, ObservedContainer
from reconciler.errors import ReconcileError, UserError
from reconciler.state.journal import Journal


def stable_tag(app: str) -> str:
    """The git tag of the app's stable commit (``stable/APP`` cannot live beside the tag ``stable``)."""
    return f"{STABLE}-{app}"


def stable_version(app: str, *, journal: Journal | None, source: Source, file: str) -> str:
    """The version ``stable`` points at: the journal's promotion, else the ``stable-APP`` or ``stable`` tag."""
    if journal is not None:
        promoted = journal.stable(app)
        if promoted is not None:
            return promoted.version
    for tag in (stable_tag(app), STABLE):
        try:
            sha = source.resolve(f"refs/tags/{tag}")
            data, _ = parse_yaml(source.read(sha, file), filename=file)
            return str(data["apps"][app]["version"])
        except (ReconcileError, KeyError, TypeError):
            continue
    raise UserError(f"{app}: no stable version yet (no promotion in the journal, no stable tag in git)")


def publish_stable(
    engine: DockerEngine,
    journal: Journal,
    source: Source | None,
    *,
    app: str,
    image: str,
    version: str,
    image_id: str,
    revision: str,
    how: str,
    publish: bool = False,
) -> list[str]:
    """Mark ``image_id`` (``image:version`` from ``revision``) as the app's stable release.

    Always: the journal records it and the engine tags ``IMAGE:stable``; the git tags ``stable`` and
    ``stable-APP`` move to ``revision`` in ``source``. With ``publish``: both git tags and the image
    tag are pushed. Returns what could not be done (for the log); the promotion itself stands.
    """
    problems: list[str] = []
    engine.tag(image_id, image, STABLE)
    journal.promote(app=app, image=image, version=version, image_id=image_id, revision=revision, how=how)
    tags = [STABLE, stable_tag(app)]
    if source is not None and revision:
        try:
            for tag in tags:
                source.tag(tag, revision)
        except ReconcileError as exc:
            problems.append(str(exc))
    if not publish:
        return problems
    if source is not None and revision and (remote := source.default_remote()) is not None:
        try:
            source.push_tags(remote, tags)
        except ReconcileError as exc:
            problems.append(f"git push of the stable tags: {exc}")
    try:
        engine.push(image, STABLE)
    except ReconcileError as exc:
        problems.append(str(exc))
    return problems


def stable_source(image: str, current: ObservedContainer) -> str:
    """What a promotion tags ``stable``: a container's local image; a service's registry digest
    (``IMAGE@sha256:...``: its tasks run on other nodes, the manager may not hold it, and it is the same
    whether or not it does, so one release is promoted once), else its image as the manager resolved it."""
    if current.kind == "service" and current.digest.startswith("sha256:") and current.digest != current.image_id:
        return f"{image}@{current.digest}"
    return current.image_id


def concrete_version(app: str, version: str, journal: Journal) -> str:
    """The version a release of ``app`` at ``version`` is promoted as: ``stable`` itself names the version
    the journal last promoted (a release that runs ``stable`` is that one again), as long as there is one."""
    if version != STABLE:
        return version
    promoted = journal.stable(app)
    return promoted.version if promoted is not None else version


def hold(engine: DockerEngine, source: str) -> None:
    """Make sure the engine holds ``source`` before it is tagged: a service's image by its digest is pulled
    when the manager does not have it (its tasks run on other nodes only)."""
    if "@" in source and not engine.has_image(source):
        engine.pull(source)


def _repository(ref: str) -> str:
    """``host:5000/team/app:v1`` -> ``host:5000/team/app`` (a colon in the last part is the tag's)."""
    head, _, last = ref.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def promote_running(settings: Settings, app: str, *, publish: bool) -> tuple[str, list[str]]:
    """``reconcile promote``: what runs now under the app's name becomes its stable release."""
    from reconciler.adapters.docker import connect
    from reconciler.adapters.git import open_source

    engine = connect(settings.docker_host, instance=settings.instance)
    observed = engine.observe()
    current = observed.ours(app)
    if current is None or not current.managed or not current.running:
        raise UserError(f"{app}: no running container or service of reconciler's to promote")
    journal = Journal(settings.state_dir)
    try:
        version = concrete_version(app, current.version, journal)
        if current.kind == "service":
            image = _repository(engine.service_image(current.id).split("@", 1)[0])
        else:
            inspected = engine.inspect(current.id)
            ref = inspected.image if inspected is not None else ""
            image = ref.split("@", 1)[0] if "@" in ref else _repository(ref)
        image_id = stable_source(image, current)  # as the agent promotes it: one release, one name
        hold(engine, image_id)
        try:
            source: Source | None = open_source(settings.repo, state_dir=settings.state_dir, fetch=False)
        except ReconcileError:
            source = None
        try:
            problems = publish_stable(
                engine, journal, source, app=app, image=image, version=version, image_id=image_id,
                revision=current.commit, how="manual", publish=publish,
            )  # fmt: skip
        finally:
            if source is not None:
                source.close()
    finally:
        journal.close()
    return f"{app}: {version} ({image}, commit {current.commit[:8]}) is stable", problems
