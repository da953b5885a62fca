"""The agent's stable clock: an app that stays healthy ``stable_after`` after its deploy is promoted.

Guarantees:
- What is on its way to stable, and when it is due, is decided in the core (``core.stable``) over the
  journal's and the engine's answers; this module samples what runs and acts on the verdicts.
- A promotion is recorded in the journal and tags ``IMAGE:stable`` on the engine (``ops.stable``); with
  ``publish``, the git tags and the image tag are pushed too, what failed of that said as
  ``stable.unpublished``. A promotion the engine refuses is said once per app (``stable.unpublished``),
  and cleared by the next one that stands.
- A container release that dies inside its window is handed to ``died`` (the agent takes it back and
  holds it); a service's dead tasks only start its clock over (Swarm replaced them, its rollout judged).
- An app that follows a canary's ``stable`` is never promoted here: that could only put an older stable
  back over the canary's.
- What the clock learned is kept through an engine outage mid-way; ``EngineUnavailable`` is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from reconciler.adapters.git import Source
from reconciler.adapters.protocols import DockerEngine
from reconciler.core.events import Event
from reconciler.core.model import STABLE, AppSpec, DesiredState, ObservedState
from reconciler.core.stable import Candidate, StableWatch, track
from reconciler.deploy.applier import Applier
from reconciler.errors import UserError
from reconciler.ops.stable import concrete_version, hold, publish_stable, stable_source
from reconciler.state.journal import Journal, JournalResult
from reconciler.telemetry.log import EventLog


@dataclass
class StableClock:
    """The apps on their way to stable (``core.stable.StableWatch`` each), and what to do when one is due."""

    events: EventLog
    publish: bool = False  # push the stable git tags and IMAGE:stable on promotion
    watching: dict[str, StableWatch] = field(default_factory=dict)

    def look(
        self,
        desired: DesiredState,
        observed: ObservedState,
        applier: Applier,
        *,
        source: Source | None,
        died: Callable[[str, AppSpec, ObservedState, str], None],
    ) -> None:
        """Sample the apps on their way to stable and promote those that stayed healthy."""
        engine, journal = applier.engine, applier.journal
        now = time.time()
        # A preview is never promoted: IMAGE:stable is its app's, and a pull request's release is not one.
        previews = desired.previewed.of if desired.previewed is not None else {}
        candidates = {
            app: candidate(app, spec, observed, journal) for app, spec in desired.apps.items() if app not in previews
        }
        # Kept before sampling: an engine outage mid-way keeps what the clock learned so far.
        self.watching, look = track(self.watching, candidates, now=now)
        for app in look:
            spec = desired.apps[app]
            current = observed.of_app(app, service=spec.service)
            assert current is not None
            sample = applier.prober.stable_sample(current, spec, at=now)
            watch = self.watching[app] = self.watching[app].observe(sample)
            if watch.failure and spec.service:
                # Swarm replaces a service's dead tasks and its rollout judged them: only the clock starts over.
                watch = self.watching[app] = replace(watch, failure="")
            if watch.failure:
                self.watching.pop(app, None)  # judged: it is a failed release now, held as one
                died(app, spec, observed, watch.failure)
                continue
            if watch.promote:
                self.watching.pop(app, None)  # done, or tried again from the next pass on
                image_id = stable_source(spec.image, current)
                try:
                    hold(engine, image_id)
                    self._promote(engine, journal, source, app, spec.image, current.version, image_id, current.commit)
                except UserError as exc:  # an outage is raised: the pass stops, the clock keeps what it learned
                    self.events.once(f"stable:{app}", Event.STABLE_UNPUBLISHED, f"{app}: not promoted: {exc}", app=app)
                else:
                    self.events.clear(f"stable:{app}")

    def _promote(
        self, engine: DockerEngine, journal: Journal, source: Source | None, app: str, image: str, version: str,
        image_id: str, revision: str,
    ) -> None:  # fmt: skip
        concrete = concrete_version(app, version, journal)
        problems = publish_stable(
            engine, journal, source, app=app, image=image, version=concrete, image_id=image_id,
            revision=revision, how="auto", publish=self.publish,
        )  # fmt: skip
        self.events.emit(Event.STABLE_PROMOTED, f"{app} {concrete} is stable ({image}:stable)", app=app,
                         commit=revision[:8])  # fmt: skip
        for problem in problems:
            self.events.emit(Event.STABLE_UNPUBLISHED, f"{app}: {problem}", app=app)

    def due(self) -> float:
        """Seconds until the next app could be promoted (the loop wakes then to look)."""
        if not self.watching:
            return float("inf")
        now = time.time()
        soonest = min(watch.due(now) for watch in self.watching.values())
        # Look at least every 5 s meanwhile: staying healthy is what earns the promotion.
        return max(0.05, min(soonest, 5.0))


def candidate(app: str, spec: AppSpec, observed: ObservedState, journal: Journal) -> Candidate | None:
    """What the engine and the journal say of ``app``'s container, for the stable clock."""
    if spec.canary is not None and spec.version == STABLE:
        # This host follows the stable its canary promotes and publishes: promoting (and publishing)
        # what it runs here could only put an older stable back over the canary's.
        return None
    current = observed.of_app(app, service=spec.service)
    if current is None or not current.managed or not current.spec_hash:
        return None
    image_id = stable_source(spec.image, current)
    if not image_id:
        return None
    promoted = journal.stable(app)
    deployed = journal.last(app, result=JournalResult.SUCCEEDED)
    return Candidate(
        spec_hash=current.spec_hash,
        image_id=image_id,
        stable_after=spec.stable_after,
        deployed_hash=deployed.spec_hash if deployed is not None else None,
        deployed_at=deployed.finished_at if deployed is not None else None,
        stable_image_id=promoted.image_id if promoted is not None else None,
    )
