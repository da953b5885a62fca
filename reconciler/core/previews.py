"""Pull-request previews as apps of the desired state: which run, how each is made, what is said. Pure.

Guarantees:
- A preview is one more app of the desired state (``APP-pr-N``), so that the plan, the health gate, the proxy's
  routes, ACME and pruning treat it as any routed app: a pull request no longer recorded (closed, merged,
  removed by hand), expired or refused is an app no longer in the desired state, and pruned as one.
- A preview is the app's spec with the preview's version, its route's hosts replaced by the preview's one host,
  its env updated with the preview's overrides and ``PREVIEW_PR`` / ``PREVIEW_SHA`` (so that every push to the
  pull request is a new release, even under the same tag). The app's ``secrets:`` and ``env_file:`` are not
  copied unless the preview lists them; its named volumes become the preview's own (``APP-pr-N-VOLUME``) and its
  host paths are mounted read-only, so a preview never writes the app's data; its ``canary:``, ``rollout:``,
  ``on:`` and ``hostname:`` are dropped. The app it was made from is never changed.
- Which pull requests get one: those of the file's previews (a fork's only with ``forks: true``), updated within
  ``ttl`` of ``now``; of those, the ``max`` opened first (the number breaks ties), so that a preview that runs
  is never pushed out by a newer pull request. Each one refused or expired is one note, said once.
- ``preview_rule`` keeps a preview's trouble to itself: a preview that cannot be deployed (its image is not
  there yet, a stranger holds its name) is held and said once, never blocking the file's own apps; and, in an
  atomic pass, a preview's new release goes alone (no app of the file and no other preview beside it), so that
  a preview that fails its gate never takes another app back with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from reconciler.core.events import Event
from reconciler.core.holdback import DEPLOYS, Notice
from reconciler.core.model import AppSpec, DesiredState, ObservedState, Previewed, PreviewSpec, fill
from reconciler.core.plan import ActionKind, Plan

SUFFIX = "-pr-"  # web + -pr- + 7
_NAMED_VOLUME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_APP_NAME = 63
# A plan filter, as ``converge.run`` takes them (named here: the core does not import the floors above it).
PlanFilter = Callable[[Plan, ObservedState], tuple[Plan, list[Notice]]]


@dataclass(frozen=True)
class OpenPull:
    """A pull request as the last event recorded it (``state.previews``); times are epoch seconds."""

    number: int
    head_sha: str
    opened_at: float
    updated_at: float
    fork: bool = False
    provider: str = ""


def name_of(app: str, number: int) -> str:
    return f"{app}{SUFFIX}{number}"


def made(app: str, spec: AppSpec, preview: PreviewSpec, pull: OpenPull) -> AppSpec:
    """The preview app of ``pull``: ``spec`` with the preview's version, host, env; see the module docstring."""
    name = name_of(app, pull.number)
    values = {"number": str(pull.number), "head_sha": pull.head_sha}
    assert spec.route is not None
    volumes = []
    for volume in spec.volumes:
        source, _, rest = volume.partition(":")
        if _NAMED_VOLUME.match(source):
            volumes.append(f"{name}-{source}:{rest}")
        else:  # a host path (it starts with /): read, never written
            volumes.append(f"{source}:{rest.split(':')[0]}:ro")
    # Copied, not validated again: every part was validated in the file, and the filled host and version were
    # checked with the longest values their placeholders take (``model.PreviewSpec``).
    return spec.model_copy(
        update={
            "version": fill(preview.version, values),
            "route": spec.route.model_copy(update={"hosts": (fill(preview.host, values),)}),
            "env": {**spec.env, **preview.env, "PREVIEW_PR": str(pull.number), "PREVIEW_SHA": pull.head_sha},
            "volumes": tuple(volumes),
            "secrets": tuple(secret for secret in spec.secrets if secret.target in preview.secrets),
            "env_file": spec.env_file if preview.env_file else None,
            "canary": None,
            "rollout": None,  # a pull request's new push replaces its preview at once
            "on": None,
            "hostname": None,
        }
    )


@dataclass(frozen=True)
class Decision:
    apps: dict[str, AppSpec]
    previewed: Previewed


def decide(
    previews: Mapping[str, PreviewSpec], apps: Mapping[str, AppSpec], pulls: Iterable[OpenPull], now: float
) -> Decision:
    """The preview apps of ``pulls`` at ``now``, and the notes of those refused or expired."""
    made_apps: dict[str, AppSpec] = {}
    of: dict[str, str] = {}
    numbers: dict[str, int] = {}
    notes: list[tuple[str, str, str]] = []
    ordered = sorted(pulls, key=lambda pull: (pull.opened_at, pull.number))
    for app, preview in sorted(previews.items()):
        spec = apps.get(app)
        if spec is None or spec.route is None:  # not placed on this host (a fleet), or not routed
            continue
        running = 0
        for pull in ordered:
            name = name_of(app, pull.number)
            if pull.fork and not preview.forks:
                continue  # ignored, as if never opened: nothing to say each pass
            if len(name) > MAX_APP_NAME or name in apps:
                notes.append((f"preview:refused:{name}", str(Event.PREVIEW_REFUSED),
                              f"{name}: not made: an app of the file has that name, or it is too long"))  # fmt: skip
                continue
            if now - pull.updated_at > preview.ttl:
                notes.append((f"preview:expired:{name}", str(Event.PREVIEW_EXPIRED),
                              f"{name}: removed: pull request #{pull.number} was not updated for"
                              f" {_days(preview.ttl)} (ttl); a push to it brings it back"))  # fmt: skip
                continue
            if running >= preview.max:
                notes.append((f"preview:refused:{name}", str(Event.PREVIEW_REFUSED),
                              f"{name}: not made: {app} has {preview.max} previews already (max); it is made when"
                              " one of them closes"))  # fmt: skip
                continue
            running += 1
            made_apps[name] = made(app, spec, preview, pull)
            of[name], numbers[name] = app, pull.number
    return Decision(made_apps, Previewed(of=of, pulls=numbers, notes=tuple(notes)))


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h"


def with_previews(desired: DesiredState, pulls: Iterable[OpenPull], now: float) -> DesiredState:
    """``desired`` with its preview apps added (``decide``); as it is when the file has no ``previews:``."""
    if not desired.previews:
        return desired
    decision = decide(desired.previews, desired.apps, pulls, now)
    copy = desired.model_copy(update={"apps": {**desired.apps, **decision.apps}, "previewed": decision.previewed})
    return copy.with_sealed(desired.sealed)


def preview_rule(desired: DesiredState, *, alone: bool) -> PlanFilter:
    """The plan filter of a pass with previews (see the module docstring); ``alone``: an atomic pass."""
    previewed = desired.previewed or Previewed()

    def rule(plan: Plan, observed: ObservedState) -> tuple[Plan, list[Notice]]:
        notices = [Notice(key, Event(event), message) for key, event, message in previewed.notes]
        kept = []
        for action in plan.actions:
            if action.app in previewed.of and action.kind in (ActionKind.ERROR, ActionKind.CONFLICT):
                notices.append(Notice(f"preview:held:{action.app}", Event.PREVIEW_HELD,
                                      f"{action.app}: held: {action.message}", app=action.app))  # fmt: skip
                continue
            kept.append(action)
        held = {notice.key for notice in notices}
        for app in previewed.of:
            for key in (f"preview:held:{app}", f"preview:refused:{app}", f"preview:expired:{app}"):
                if key not in held:
                    notices.append(Notice.clear(key))
        if alone:
            deploys = [a for a in kept if a.kind in DEPLOYS]
            first = next((a.app for a in deploys if a.app in previewed.of), None)
            if any(a.app not in previewed.of for a in deploys):
                first = None  # the file's own apps deploy first: every preview waits for the next pass
            kept = [a for a in kept if a.kind not in DEPLOYS or a.app not in previewed.of or a.app == first]
        return replace(plan, actions=tuple(kept)), notices

    return rule


def deferred(desired: DesiredState, plan: Plan, applied: Plan) -> bool:
    """Whether ``preview_rule`` left a preview's new release for the next pass (the agent runs it at once)."""
    previewed = desired.previewed or Previewed()
    wanted = {a.app for a in plan.actions if a.kind in DEPLOYS and a.app in previewed.of}
    return bool(wanted - {a.app for a in applied.actions})


# -- what ``reconcile previews`` shows ------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRow:
    """One pull request on record and what became of its preview."""

    number: int
    head_sha: str
    fork: bool
    opened_at: float
    updated_at: float
    app: str = ""  # the preview app (web-pr-7); "" when the file makes none
    of: str = ""  # the app it is made from
    host: str = ""
    version: str = ""
    state: str = "no preview"  # running, not running, refused, expired, fork (ignored), no preview
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "number": self.number, "app": self.app, "of": self.of, "host": self.host, "version": self.version,
            "state": self.state, "head_sha": self.head_sha, "fork": self.fork,
            "opened_at": self.opened_at, "updated_at": self.updated_at, "detail": self.detail,
        }  # fmt: skip


def rows(desired: DesiredState | None, pulls: Iterable[OpenPull], running: Iterable[str]) -> list[PreviewRow]:
    """Each pull request on record, per app of the file's previews (or alone, when the file makes none)."""
    up = set(running)
    previewed = desired.previewed if desired is not None and desired.previewed is not None else Previewed()
    said = {key: message for key, _, message in previewed.notes}
    specs = (desired.previews or {}) if desired is not None else {}
    found: list[PreviewRow] = []
    for pull in sorted(pulls, key=lambda pull: pull.number):
        base = PreviewRow(pull.number, pull.head_sha, pull.fork, pull.opened_at, pull.updated_at)
        made_any = False
        for app, preview in sorted(specs.items()):
            name = name_of(app, pull.number)
            values = {"number": str(pull.number), "head_sha": pull.head_sha}
            row = replace(
                base, app=name, of=app, host=fill(preview.host, values), version=fill(preview.version, values)
            )
            if name in previewed.of:
                row = replace(row, state="running" if name in up else "not running")
            elif f"preview:expired:{name}" in said:
                row = replace(row, state="expired", detail=said[f"preview:expired:{name}"])
            elif f"preview:refused:{name}" in said:
                row = replace(row, state="refused", detail=said[f"preview:refused:{name}"])
            elif pull.fork and not preview.forks:
                row = replace(row, state="fork", detail="from a fork: previewed only with forks: true")
            else:
                continue  # the app is not placed on this host
            found.append(row)
            made_any = True
        if not made_any:
            found.append(base)
    return found


def lines(found: Iterable[PreviewRow], now: float) -> list[str]:
    """``reconcile previews`` as text: one line per pull request and app."""
    out = []
    for row in found:
        age = _age(now - row.updated_at)
        if not row.app:
            out.append(
                f"#{row.number}  {row.head_sha[:8]}  no preview (the file has no previews: for it)  updated {age} ago"
            )
            continue
        detail = f"  ({row.detail})" if row.detail else ""
        out.append(f"#{row.number}  {row.app}  {row.state}  {row.host}  {row.version}  updated {age} ago{detail}")
    return out or ["no pull request on record"]


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
