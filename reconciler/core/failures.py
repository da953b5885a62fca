"""Which apps to hold back because their release already failed. Pure.

A release that fails its gate is recorded for its app as the *culprit*; the other apps of the same
commit, rolled back with it so that the host never runs half a release, are recorded as its
*companions*. An app is held back while the file still asks for the very spec that failed:

- a culprit stays held until a commit changes that app (its spec hash differs) or ``reconcile retry``;
- a companion stays held only while a culprit of its commit is held: once the culprit's spec changes,
  the whole release is tried again together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    app: str
    spec_hash: str  # what was asked for: image and container-shaping fields
    revision: str
    version: str
    reason: str
    culprit: bool
    at: float = 0.0


def held_back(failures: Iterable[Failure], targets: Mapping[str, str]) -> dict[str, Failure]:
    """``targets`` maps app -> the spec hash the file asks for now; returns the held apps and why."""
    failures = list(failures)
    culprits: dict[str, Failure] = {}
    for failure in failures:
        if failure.culprit and targets.get(failure.app) == failure.spec_hash:
            culprits[failure.app] = failure
    held_revisions = {failure.revision for failure in culprits.values()}
    held = dict(culprits)
    for failure in failures:
        if (
            not failure.culprit
            and failure.app not in held
            and targets.get(failure.app) == failure.spec_hash
            and failure.revision in held_revisions
        ):
            held[failure.app] = failure
    return held
