"""The agent's Prometheus metrics: what runs, what the agent did, whether it can reach what it needs.

Guarantees:
- Names follow Prometheus conventions (``reconciler_`` prefix, base units, ``_total`` counters, ``_info``
  with a constant 1); one registry per agent, so that tests and two agents in one process never share.
- Labels hold app names, versions, short commits, image digests, providers and results only: never an
  env value, a secret, a URL or a notification target.
- ``on_event`` reads the agent's events (the counters follow the log, line for line); ``observe`` sets
  the per-app gauges from one pass's view; an app gone from the file and the engine leaves every gauge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reconciler.core.events import Event
from reconciler.core.model import DesiredState, ObservedState

_RESULTS = {
    Event.DEPLOY_SUCCEEDED: "succeeded",
    Event.DEPLOY_ROLLED_BACK: "rolled-back",
    Event.DEPLOY_FAILED: "failed",
    Event.DEPLOY_SUPERSEDED: "superseded",
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.app_info = Gauge(
            "reconciler_app_info", "What runs for each app (constant 1)", ["app", "version", "commit", "digest"],
            registry=r,
        )  # fmt: skip
        self.app_healthy = Gauge("reconciler_app_healthy", "1 when the app's container runs", ["app"], registry=r)
        self.app_drift = Gauge("reconciler_app_drift", "1 when the app differs from the file", ["app"], registry=r)
        self.deploys = Counter("reconciler_deploys", "Deploys by their verdict", ["app", "result"], registry=r)
        self.rollbacks = Counter("reconciler_rollbacks", "Releases rolled back", ["app"], registry=r)
        self.promoted = Gauge(
            "reconciler_stable_promotion_timestamp_seconds", "When the app was last promoted to stable", ["app"],
            registry=r,
        )  # fmt: skip
        self.last_pass = Gauge("reconciler_last_pass_timestamp_seconds", "When the last pass ended", registry=r)
        self.pass_duration = Histogram(
            "reconciler_pass_duration_seconds", "How long a pass took", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )  # fmt: skip
        self.remote_up = Gauge("reconciler_remote_up", "1 when the git remote answered last", registry=r)
        self.engine_up = Gauge("reconciler_engine_up", "1 when the Docker engine answered last", registry=r)
        self.refused = Counter(
            "reconciler_commits_refused", "Commits not applied, by why (signature, policy)", ["reason"], registry=r
        )
        self.webhooks = Counter("reconciler_webhooks", "Webhook deliveries by provider and verdict",
                                ["provider", "result"], registry=r)  # fmt: skip
        self.cert_expiry = Gauge(
            "reconciler_cert_expiry_timestamp_seconds",
            "When the ACME certificate the proxy serves for the host expires",
            ["host"],
            registry=r,
        )
        self.rollout_weight = Gauge(
            "reconciler_rollout_weight_percent",
            "The percent of a routed app's requests sent to the new release of its rollout under way",
            ["app"],
            registry=r,
        )
        self.rollout_step = Gauge(
            "reconciler_rollout_step", "The step its rollout under way is at", ["app"], registry=r
        )
        self._rolling: set[str] = set()
        self.remote_up.set(1)
        self.engine_up.set(1)
        self._info: dict[str, tuple[str, str, str, str]] = {}
        self._cert_hosts: set[str] = set()
        self._lock = threading.Lock()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def on_event(self, event: Event, message: str, fields: Mapping[str, Any]) -> None:
        app = str(fields.get("app") or "")
        if event in _RESULTS and app:
            self.deploys.labels(app, _RESULTS[event]).inc()
            if event is Event.DEPLOY_ROLLED_BACK:
                self.rollbacks.labels(app).inc()
        elif event is Event.STABLE_PROMOTED and app:
            self.promoted.labels(app).set(time.time())
        elif event is Event.REMOTE_UNREACHABLE:
            self.remote_up.set(0)
        elif event is Event.REMOTE_RECOVERED:
            self.remote_up.set(1)
        elif event is Event.ENGINE_UNREACHABLE:
            self.engine_up.set(0)
        elif event is Event.ENGINE_RECOVERED:
            self.engine_up.set(1)
        elif event in (Event.COMMIT_UNSIGNED, Event.COMMIT_BAD_SIGNATURE, Event.COMMIT_REFUSED):
            self.refused.labels(event.value.removeprefix("commit.")).inc()

    def observe(self, desired: DesiredState, observed: ObservedState, drifting: Collection[str]) -> None:
        """The per-app gauges, from one pass's view of the file and the engine, and the apps that differ."""
        apps = set(desired.apps) | {c.app for c in observed.containers if c.managed and c.app and c.role is not None}
        with self._lock:
            for app in sorted(apps):
                current = observed.ours(app)
                ours = current is not None and current.managed
                self.app_healthy.labels(app).set(1 if ours and current is not None and current.running else 0)
                self.app_drift.labels(app).set(1 if app in drifting else 0)
                info = (
                    (app, current.version, current.commit[:8], current.digest)
                    if ours and current is not None
                    else (app, "", "", "")
                )
                old = self._info.get(app)
                if old != info:
                    if old is not None:
                        self.app_info.remove(*old)
                    self.app_info.labels(*info).set(1)
                    self._info[app] = info
            for app in set(self._info) - apps:
                self.app_info.remove(*self._info.pop(app))
                self.app_healthy.remove(app)
                self.app_drift.remove(app)

    def certificates(self, expiries: Mapping[str, float]) -> None:
        """The expiry of each ACME host's certificate (a host with none yet has no sample); hosts gone, removed."""
        with self._lock:
            for host, at in expiries.items():
                self.cert_expiry.labels(host).set(at)
            for host in self._cert_hosts - set(expiries):
                self.cert_expiry.remove(host)
            self._cert_hosts = set(expiries)

    def rollouts(self, shares: Mapping[str, tuple[int, int]]) -> None:
        """Each rollout under way: its step and its new release's percent; the ones that ended, removed."""
        with self._lock:
            for app, (step, weight) in shares.items():
                self.rollout_step.labels(app).set(step)
                self.rollout_weight.labels(app).set(weight)
            for app in self._rolling - set(shares):
                self.rollout_step.remove(app)
                self.rollout_weight.remove(app)
            self._rolling = set(shares)

    def passed(self, seconds: float) -> None:
        self.pass_duration.observe(seconds)
        self.last_pass.set(time.time())
