"""The stable clock: how long an app's release has stayed healthy since its deploy. Pure.

Guarantees:
- Nothing here sleeps or reads a clock: the caller passes ``now`` and each sample's time and the
  container's start time, so ``stable_after`` is tested without waiting.
- The clock starts when the release's deploy finished, and starts over at a sample that is not
  healthy (not running, a failed probe, Docker not ``healthy``), at a restart counted since the
  previous sample, and at a start of the container after the clock's (a rollback of a later release,
  a manual restart).
- ``promote`` once a healthy sample comes ``stable_after`` after the clock's start (an unhealthy one never
  promotes, not even with ``stable_after: 0s``).
- A release that dies inside its window is a failed release (``died``): Docker restarting it, a restart
  counted since the previous sample, or an exit that is not a stop's (code 0, 137 or 143). The watch
  then says why (``failure``) and never promotes; the agent takes it back as a failed deploy.
- Only an app's own release is watched: the container of ours that its last succeeded deploy made.
  An app without one, or whose image is already the promoted one, is no longer watched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from reconciler.core.health import Sample


@dataclass(frozen=True)
class StableSample:
    """One look at the watched container: when, was it healthy, its restart count, when it last started."""

    at: float
    healthy: bool
    restarts: int
    started_at: float
    running: bool = True
    restarting: bool = False  # exited, and Docker's restart policy starts it again
    exit_code: int = 0  # of its last exit, when it does not run

    @classmethod
    def of(cls, sample: Sample, *, at: float, started_at: float) -> StableSample:
        """A gate's sample as the clock reads it: ``at`` on the clock's time (the gate's may differ)."""
        healthy = sample.running and sample.probe_ok and sample.docker_health in ("", "healthy")
        return cls(
            at=at, healthy=healthy, restarts=sample.restarts, started_at=started_at, running=sample.running,
            restarting=sample.restarting, exit_code=sample.exit_code,
        )  # fmt: skip


# Exit codes of a stop (``docker stop``: SIGTERM through init, SIGKILL after the timeout; 0: it handled
# SIGTERM): a person or an engine stopping it, not the release dying.
STOPPED_CODES = (0, 137, 143)


def died(before: int, sample: StableSample) -> str:
    """Why a release counts as failed at ``sample`` inside its stable window ("" when it does not).

    ``before``: its restart count at the previous sample (-1: none yet). A restart count that went down
    (a ``docker start``, an engine restart resets it) is no restart of its own.
    """
    if sample.restarting:
        return f"it exited with code {sample.exit_code} after it went live, and Docker keeps restarting it"
    if before >= 0 and sample.restarts > before:
        return f"it restarted after it went live ({sample.restarts - before}x since the last look)"
    if not sample.running and sample.exit_code not in STOPPED_CODES:
        return f"it exited with code {sample.exit_code} after it went live"
    return ""


@dataclass(frozen=True)
class StableWatch:
    """An app's release on its way to stable: healthy since ``since``."""

    spec_hash: str
    since: float
    stable_after: float
    restarts: int = -1  # at the last sample; -1 before the first, which sets the count to compare with
    seen_at: float | None = None  # the last sample's time
    healthy: bool = False  # the last sample was healthy
    failure: str = ""  # why it died inside its window (``died``); once said, it stays

    def observe(self, sample: StableSample) -> StableWatch:
        """The watch after ``sample``."""
        since = self.since
        if not sample.healthy or (self.restarts >= 0 and sample.restarts > self.restarts):
            since = sample.at
        return replace(
            self, since=max(since, sample.started_at), restarts=sample.restarts, seen_at=sample.at,
            healthy=sample.healthy, failure=self.failure or died(self.restarts, sample),
        )  # fmt: skip

    def due(self, now: float) -> float:
        """Seconds from ``now`` until a healthy sample promotes it (0 or less: the next one does)."""
        return self.since + self.stable_after - now

    @property
    def promote(self) -> bool:
        return (
            self.seen_at is not None
            and self.healthy
            and not self.failure
            and self.seen_at - self.since >= self.stable_after
        )


@dataclass(frozen=True)
class Candidate:
    """What the engine and the journal say of an app's container of ours, before the clock looks at it."""

    spec_hash: str  # the container's release
    image_id: str
    stable_after: float  # as the file says now
    deployed_hash: str | None = None  # the release of the app's last succeeded deploy; None: none
    deployed_at: float | None = None  # when that deploy finished
    stable_image_id: str | None = None  # the image of the app's last promotion; None: never promoted


def track(
    watches: Mapping[str, StableWatch], apps: Mapping[str, Candidate | None], *, now: float
) -> tuple[dict[str, StableWatch], tuple[str, ...]]:
    """The watches after a look at each app of the file (None: no container of ours, or one of no known
    release), and the apps whose container to sample now (each then goes through ``StableWatch.observe``).

    An app whose container is not its last succeeded deploy's release keeps its watch as it is, unsampled:
    neither started over nor dropped.
    """
    watches = dict(watches)
    look: list[str] = []
    for app, candidate in apps.items():
        if candidate is None or candidate.stable_image_id == candidate.image_id:
            watches.pop(app, None)
            continue
        if candidate.deployed_hash != candidate.spec_hash:
            continue
        current = watches.get(app)
        if current is None or current.spec_hash != candidate.spec_hash:
            current = StableWatch(candidate.spec_hash, candidate.deployed_at or now, candidate.stable_after)
        # stable_after shapes no container: a change to it reaches the running release's clock at once.
        watches[app] = replace(current, stable_after=candidate.stable_after)
        look.append(app)
    return watches, tuple(look)
