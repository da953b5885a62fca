"""Health codes and the deploy gate as a pure state machine: samples in, verdict out.

Guarantees:
- ``Gate.observe`` never sleeps or reads a clock: the caller passes each sample's time, so timeouts are
  tested without waiting.
- Fail fast: a container that is not running, restarted, or reports Docker ``unhealthy`` fails the gate
  at the sample that shows it; a probe that fails after the container was healthy fails it too.
- Passing needs ``healthy_for`` seconds of consecutive good samples; never passing within ``timeout``
  seconds of the start fails.
- Each probe has a deadline of its own (``probe_timeout``): the gate's interval or timeout, whichever is
  shorter, kept between 1 s and 2 s. A probe that hangs is one failed sample, and the gate goes on.
- ``Health`` is ordered (``rank``, ``is_worse``, ``worst``): healthy, progressing, unhealthy, missing.
  ``of_sample`` is what ``status`` says of a running container's sample: the worse of Docker's own
  healthcheck and our probe, except that a healthcheck still starting is progressing, whatever the probe
  says (the release is not expected to answer yet).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from reconciler.core.model import HealthSpec

PROBE_TIMEOUT_MAX = 2.0  # seconds: one hung probe must not hold the gate past its own timeout
# seconds: below this a loaded host fails healthy probes (seen at 200 ms: a busy CI box answered a
# published port late, and one late answer after healthy fails the gate)
PROBE_TIMEOUT_MIN = 1.0


def probe_timeout(spec: HealthSpec) -> float:
    """How long one probe (http, tcp or exec) may take before it counts as failed."""
    return max(PROBE_TIMEOUT_MIN, min(spec.interval, spec.timeout, PROBE_TIMEOUT_MAX))


class Health(StrEnum):
    """What ``status`` says of an app's container, ordered from best to worst (gitops-engine's order)."""

    HEALTHY = "healthy"
    PROGRESSING = "progressing"
    UNHEALTHY = "unhealthy"
    MISSING = "missing"

    @property
    def rank(self) -> int:
        """0 for healthy, growing as it gets worse (the order of the members)."""
        return list(Health).index(self)


def is_worse(a: Health, b: Health) -> bool:
    """Whether ``a`` is worse than ``b``."""
    return a.rank > b.rank


def worst(*found: Health) -> Health:
    """The worst of ``found`` (healthy when none is given)."""
    return max(found, key=lambda health: health.rank, default=Health.HEALTHY)


@dataclass(frozen=True)
class Sample:
    """One look at a container: is it running, how often did it restart, did the probe pass."""

    at: float
    running: bool
    restarts: int = 0
    probe_ok: bool = True
    docker_health: str = ""  # "", starting, healthy, unhealthy
    detail: str = ""
    restarting: bool = False  # it exited and Docker's restart policy is about to start it again
    exit_code: int = 0  # of its last exit (when not running)


def of_sample(sample: Sample) -> Health:
    """What ``status`` says of a container from one sample (see the module docstring)."""
    if sample.docker_health == "starting":
        return Health.PROGRESSING
    probe = Health.HEALTHY if sample.running and sample.probe_ok else Health.UNHEALTHY
    docker = Health.HEALTHY if sample.docker_health in ("", "healthy") else Health.UNHEALTHY
    return worst(probe, docker)


class Verdict(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"

    @property
    def done(self) -> bool:
        return self is not Verdict.PENDING


@dataclass(frozen=True)
class Gate:
    spec: HealthSpec
    started_at: float
    restarts_at_start: int = 0
    healthy_since: float | None = None
    verdict: Verdict = Verdict.PENDING
    reason: str = ""
    completes: bool = False  # a job (``AppSpec.completes``): exiting 0 passes, as running healthy_for does

    def observe(self, sample: Sample) -> Gate:
        """The gate after ``sample``; a decided gate stays decided."""
        if self.verdict.done:
            return self
        if self.completes and not sample.running and not sample.restarting and sample.exit_code == 0:
            return replace(self, verdict=Verdict.PASSED, reason="it completed (exit 0)")
        if not sample.running:
            return self._fail(sample.detail or "the container is not running")
        if sample.restarts > self.restarts_at_start:
            return self._fail(f"the container restarted ({sample.restarts - self.restarts_at_start}x)")
        if sample.docker_health == "unhealthy":
            return self._fail(
                "Docker reports the container unhealthy" + (f": {sample.detail}" if sample.detail else "")
            )
        good = sample.docker_health == "healthy" if self.spec.probe == "docker" else sample.probe_ok
        if good:
            if self.healthy_since is None and sample.at - self.started_at >= self.spec.timeout:
                return self._fail(f"not healthy after {self.spec.timeout:g}s")
            since = self.healthy_since if self.healthy_since is not None else sample.at
            # The same sum as next_sample_at: a sample taken at that moment must pass.
            if sample.at >= since + self.spec.healthy_for:
                return replace(self, healthy_since=since, verdict=Verdict.PASSED)
            return replace(self, healthy_since=since)
        if self.healthy_since is not None:
            return self._fail("it was healthy, then the probe failed" + (f": {sample.detail}" if sample.detail else ""))
        if sample.at - self.started_at >= self.spec.timeout:
            detail = f": {sample.detail}" if sample.detail else ""
            return self._fail(f"not healthy after {self.spec.timeout:g}s{detail}")
        return self

    def _fail(self, reason: str) -> Gate:
        return replace(self, verdict=Verdict.FAILED, reason=reason)

    def next_sample_at(self, now: float) -> float:
        """When to look again: one ``interval`` on, but never past the moment the gate could pass."""
        wake = now + self.spec.interval
        if self.healthy_since is not None:
            wake = min(wake, self.healthy_since + self.spec.healthy_for)
        return max(wake, now)
