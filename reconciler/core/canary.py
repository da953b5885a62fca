"""A routed app's weighted rollout (``rollout:``), decided without I/O: its record, each step's verdict, the next move.

Guarantees:
- A rollout is one ``Rollout`` record (journaled by the shell after every move): the release under way
  (``APP.next``, by container id and spec hash), the step it is at, when that step began, and the proxy's
  counters of both releases at that moment. Everything else (the weight, when the step ends) is read from
  the file's ``rollout:`` and this record, so that an agent killed at any step resumes that step, at its
  weight and with its clock, never from the first step and never at 100 %.
- ``judge`` compares the new release's answers over the step with the serving release's over the same
  step: it fails on 5xx when its ratio is above ``max_5xx_ratio`` *and* above the old release's, on latency
  when its average is above ``max_avg_ms`` *and* above the old one's (a cause both share, a database
  down, is not the new release's). Fewer than ``min_requests`` answers is ``inconclusive``, settled by
  ``on_no_traffic`` and said so (``inconclusive ...; on_no_traffic: advance``): never silently.
- Counters that went down (the proxy restarted or reloaded: a new worker counts from zero) are read as
  counting from zero, never as a negative number of answers.
- ``decide`` gives one move per look, in this order: the app left the file (``SUPERSEDE``), a newer commit
  changed it (``SUPERSEDE``: aborted before the new commit deploys), its file has no ``rollout:`` any more
  (``PROMOTE``), the new release does not run (``ABORT``), a promote or abort asked by hand, the step's
  pause not over (``WAIT``), counters not read (``WAIT``), then the verdict.
- Nothing here holds an env value: a record names versions, ids and counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from reconciler.core.model import AnalysisSpec, AppSpec, DesiredState, ObservedState, OnNoTraffic, Role, container_name
from reconciler.core.proxy import Canary, Server

FLAG = "rollout:"  # + app: the journal flag that holds an app's rollout record (JSON)
PROMOTE_ASKED = "promote"
ABORT_ASKED = "abort"


@dataclass(frozen=True)
class Counters:
    """A server's answers as the proxy counts them: every HTTP answer, the 5xx among them, and HAProxy's
    average response time over the server's last 1024 answers (``rtime``, not a counter)."""

    responses: int = 0
    errors: int = 0
    avg_ms: int = 0

    def since(self, base: Counters) -> Counters:
        """What was counted since ``base``; from zero when the counters went down (a new proxy worker)."""
        if self.responses < base.responses or self.errors < base.errors:
            return self
        return Counters(self.responses - base.responses, self.errors - base.errors, self.avg_ms)

    @property
    def ratio(self) -> float:
        return self.errors / self.responses if self.responses else 0.0

    def said(self) -> str:
        return f"{self.responses} answers, 5xx {100 * self.ratio:.1f}%, avg {self.avg_ms} ms"


class Verdict(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Judged:
    """One step's verdict: what each release answered over it, and what was made of it."""

    step: int  # 0-based
    weight: int
    canary: Counters
    stable: Counters
    verdict: Verdict
    reason: str
    at: float

    def said(self, old: str) -> str:
        return (
            f"step {self.step + 1} ({self.weight}%): {self.verdict}: {self.canary.said()}"
            f" (the old {old}: 5xx {100 * self.stable.ratio:.1f}%, avg {self.stable.avg_ms} ms); {self.reason}"
        )


@dataclass(frozen=True)
class Rollout:
    """An app's rollout under way, as the journal keeps it."""

    app: str
    entry: int  # its deploy's journal row, finished when the rollout ends
    revision: str
    spec_hash: str  # the new release's
    canary: str  # the new release's container id (``APP.next``)
    from_version: str
    to_version: str
    started: float  # epoch seconds
    step: int = 0  # 0-based
    since: float = 0.0  # when this step (or its last hold) began
    base_canary: Counters = field(default_factory=Counters)  # the counters when this step began
    base_stable: Counters = field(default_factory=Counters)
    judged: tuple[Judged, ...] = ()
    asked: str = ""  # promote or abort, asked by hand (``reconcile rollout``), carried out by the next pass

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Rollout:
        """A record as ``to_json`` wrote it; a ``ValueError`` for anything else (a corrupt flag)."""
        try:
            data: dict[str, Any] = json.loads(text)
            judged = tuple(
                Judged(**{**item, "canary": Counters(**item["canary"]), "stable": Counters(**item["stable"]),
                          "verdict": Verdict(item["verdict"])})
                for item in data.pop("judged", [])
            )  # fmt: skip
            base_canary = Counters(**data.pop("base_canary", {}))
            base_stable = Counters(**data.pop("base_stable", {}))
            return Rollout(**data, base_canary=base_canary, base_stable=base_stable, judged=judged)
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a rollout record: {exc}") from None


def weight(spec: AppSpec, rollout: Rollout) -> int:
    """The share of the route's requests the new release gets at the record's step (the last step's past it)."""
    assert spec.rollout is not None
    steps = spec.rollout.steps
    return steps[min(rollout.step, len(steps) - 1)].weight


def ends(spec: AppSpec, rollout: Rollout) -> float:
    """When the record's step is judged (epoch seconds)."""
    assert spec.rollout is not None
    steps = spec.rollout.steps
    return rollout.since + steps[min(rollout.step, len(steps) - 1)].pause


def judge(analysis: AnalysisSpec, canary: Counters, stable: Counters) -> tuple[Verdict, str]:
    """One step's verdict from what each release answered over it (see the module docstring)."""
    if canary.responses < analysis.min_requests:
        return Verdict.INCONCLUSIVE, f"{canary.responses} answers < min_requests {analysis.min_requests}"
    if canary.ratio > analysis.max_5xx_ratio and canary.ratio > stable.ratio:
        return (
            Verdict.FAILED,
            f"5xx {100 * canary.ratio:.1f}% > max_5xx_ratio {100 * analysis.max_5xx_ratio:g}%"
            f" (the old release {100 * stable.ratio:.1f}%)",
        )
    if analysis.max_avg_ms is not None and canary.avg_ms > analysis.max_avg_ms and canary.avg_ms > stable.avg_ms:
        return (
            Verdict.FAILED,
            f"avg {canary.avg_ms} ms > max_avg_ms {analysis.max_avg_ms} (the old release {stable.avg_ms} ms)",
        )
    shared = canary.ratio > analysis.max_5xx_ratio or (
        analysis.max_avg_ms is not None and canary.avg_ms > analysis.max_avg_ms
    )
    return Verdict.PASSED, "over a limit, as the old release is too: not the new release's doing" if shared else "ok"


class Move(StrEnum):
    WAIT = "wait"  # the step's pause is not over (or its counters could not be read)
    ADVANCE = "advance"  # on to the next step, at its weight
    HOLD = "hold"  # inconclusive, on_no_traffic: hold: judged again after another pause
    PROMOTE = "promote"  # it serves alone; the old release stays warm
    ABORT = "abort"  # weight 0, the new release kept stopped as APP.failed and held
    SUPERSEDE = "supersede"  # a newer commit (or the app left the file): the new release goes, not held


@dataclass(frozen=True)
class Decision:
    move: Move
    reason: str = ""
    judged: Judged | None = None


def decide(
    rollout: Rollout,
    spec: AppSpec | None,
    *,
    superseded: bool,
    running: bool,
    now: float,
    canary: Counters | None,
    stable: Counters | None,
) -> Decision:
    """The next move of ``rollout`` (see the module docstring). ``spec`` is the app's in the file (None: gone),
    ``superseded`` whether the file asks for another release of it, ``running`` whether the new release runs,
    ``canary``/``stable`` the proxy's counters now (None: not read)."""
    if spec is None:
        return Decision(Move.SUPERSEDE, "the app left the file")
    if superseded:
        return Decision(Move.SUPERSEDE, f"a newer commit changes {rollout.app}: this rollout is aborted first")
    if spec.rollout is None:
        return Decision(Move.PROMOTE, "the file has no rollout: any more: the new release serves alone")
    if not running:
        return Decision(Move.ABORT, f"the new release {rollout.to_version} stopped running")
    if rollout.asked == ABORT_ASKED:
        return Decision(Move.ABORT, "aborted by hand (reconcile rollout abort)")
    if rollout.asked == PROMOTE_ASKED:
        return Decision(Move.PROMOTE, "promoted by hand (reconcile rollout promote)")
    if now < ends(spec, rollout):
        return Decision(Move.WAIT)
    if canary is None or stable is None:
        return Decision(Move.WAIT, "the proxy's counters could not be read: judged at the next pass")
    analysis = spec.rollout.analysis
    over_canary, over_stable = canary.since(rollout.base_canary), stable.since(rollout.base_stable)
    verdict, reason = judge(analysis, over_canary, over_stable)
    last = rollout.step + 1 >= len(spec.rollout.steps)
    if verdict is Verdict.INCONCLUSIVE:
        reason = f"{reason}; on_no_traffic: {analysis.on_no_traffic}"
    judged = Judged(rollout.step, weight(spec, rollout), over_canary, over_stable, verdict, reason, now)
    if verdict is Verdict.FAILED or (verdict is Verdict.INCONCLUSIVE and analysis.on_no_traffic is OnNoTraffic.FAIL):
        return Decision(Move.ABORT, reason, judged)
    if verdict is Verdict.INCONCLUSIVE and analysis.on_no_traffic is OnNoTraffic.HOLD:
        return Decision(Move.HOLD, reason, judged)
    return Decision(Move.PROMOTE if last else Move.ADVANCE, reason, judged)


def moved(rollout: Rollout, decision: Decision, *, now: float, canary: Counters, stable: Counters) -> Rollout:
    """The record after an ``ADVANCE`` (the next step begins now, counted from now) or a ``HOLD`` (another
    pause, counted from where the step began)."""
    judged = (*rollout.judged, decision.judged) if decision.judged is not None else rollout.judged
    if decision.move is Move.HOLD:
        return replace(rollout, since=now, judged=judged)
    return replace(rollout, step=rollout.step + 1, since=now, base_canary=canary, base_stable=stable, judged=judged)


def lines(rollout: Rollout, spec: AppSpec | None) -> list[str]:
    """A rollout as ``status``, the dry run and the report say it: its step, weights, and each step's verdict."""
    if spec is None or spec.rollout is None:
        return [f"rollout {rollout.app} {rollout.from_version} -> {rollout.to_version}: ending"]
    count = len(spec.rollout.steps)
    share = weight(spec, rollout)
    at = time.strftime("%H:%M:%SZ", time.gmtime(ends(spec, rollout)))
    asked = f"; {rollout.asked} asked by hand" if rollout.asked else ""
    found = [
        f"rollout {rollout.app} {rollout.from_version} -> {rollout.to_version}: step {min(rollout.step + 1, count)}/"
        f"{count}, {share}% of requests to {rollout.to_version}, {100 - share}% to {rollout.from_version};"
        f" judged at {at}{asked}"
    ]
    found += [f"  {judged.said(rollout.from_version)}" for judged in rollout.judged]
    return found


def canaries(
    records: Mapping[str, Rollout], desired: DesiredState, observed: ObservedState, network: str
) -> dict[str, Canary | None]:
    """Each app of the file with ``rollout:``: its rollout's new release (``APP.next`` of the record, running on the
    proxy's network) at its step's weight, or None (no rollout: the canary server out of use)."""
    found: dict[str, Canary | None] = {}
    for app, spec in sorted(desired.apps.items()):
        if spec.route is None or spec.rollout is None or spec.service:
            continue
        record = records.get(app)
        release = observed.named(container_name(app, Role.NEXT))
        ip = release.networks.get(network) if release is not None else None
        if record is None or release is None or release.id != record.canary or not release.running or not ip:
            found[app] = None
            continue
        port = release.fingerprint.get("route_port")
        server = Server(release.name, ip, port if isinstance(port, int) else spec.route.port)
        found[app] = Canary(server, weight(spec, record))
    return found
