"""The server's policy file, read; a commit's file checked against it, every violation at its FILE:LINE:COL.

Guarantees:
- ``load_policy`` returns a ``ServerPolicy`` or raises ``InvalidPolicy`` whose every line is
  ``POLICY_FILE:LINE:COL: path: message`` (YAML errors included), or a one-line ``UserError`` when the
  file cannot be read. The format is in ``reconciler.core.guard``.
- ``check`` places each violation of a policy (with no policy: each dangerous mount or container option:
  ``privileged``, ``network_mode: host``, a device, an unconfining ``security_opt`` or ``cap_add``) in the
  desired-state file, at the positions of its one parse (the file is not parsed again), as
  ``FILE:LINE:COL: apps.web.volumes[0]: message``, sorted by place. No line shows
  an env value, even one that reached a checked field through a YAML alias.
- ``enforce`` raises ``PolicyViolation`` with those lines when a commit asks for more than the policy
  allows: the whole commit is refused.
- ``on_host`` checks, at apply time, the real path of each host path of a desired state that passed a
  policy (bind sources, ``proxy.tls.certs``, env_files: ``DesiredState.limits``) on the engine's host,
  and hands the pass's later checks (each create, each env_file read) the same folders: a link that a
  container made under an allowed folder since the commit was read is refused, as
  ``FILE: apps.web.volumes[0]: PATH leads through a symlink to REAL on the engine's host, ...``.
- Like every message, the lines are scrubbed of remembered secrets where they are written (``scrub``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core.desired import Positions, dotted
from reconciler.core.guard import (
    InvalidPolicy,
    PolicyViolation,
    ServerPolicy,
    Violation,
    dangerous,
    limits_of,
    real_violations,
    to_resolve,
    validate_policy,
    violations,
)
from reconciler.core.model import DesiredState
from reconciler.errors import InvalidDesiredState, UserError

if TYPE_CHECKING:  # the engine is only passed in: validating a file never imports docker
    from reconciler.adapters.protocols import DockerEngine

__all__ = ["InvalidPolicy", "PolicyViolation", "ServerPolicy", "check", "enforce", "load_policy", "on_host"]


def load_policy(path: Path) -> ServerPolicy:
    """The policy file at ``path``; ``InvalidPolicy`` with every error, or ``UserError`` when it cannot be read."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise UserError(f"policy file {path}: {reason}") from None
    filename = str(path)
    try:
        data, positions = parse_yaml(text, filename=filename)
    except InvalidDesiredState as exc:
        raise InvalidPolicy(exc.errors) from None
    return validate_policy(data, positions, filename=filename)


def _place(violation: Violation, positions: Positions) -> tuple[int, int]:
    """Where the value stands; for what the file leaves to a default, the key of its nearest written parent."""
    return positions.values.get(violation.path) or positions.of(violation.path, key=True)


def _message(violation: Violation, positions: Positions) -> str:
    """The violation's message; what it quotes of the file is left out when an env value got there
    through a YAML alias (``volumes: [*token]``): env values are never shown."""
    path = violation.path
    if any(path[:cut] in positions.secrets for cut in range(len(path) + 1)):
        return "<an env value>" + violation.message.removeprefix(violation.quoted)
    return violation.message


def check(positions: Positions, file: str, desired: DesiredState, policy: ServerPolicy | None) -> list[str]:
    """Each violation of ``policy`` by ``desired`` (read from ``file``, whose reading gave ``positions``: the
    file is parsed once, by its reader), or with no policy each dangerous mount or container option, as
    ``FILE:LINE:COL: path: message``, sorted by place."""
    found = violations(desired, policy) if policy is not None else dangerous(desired)
    if not found:
        return []
    placed = []
    for violation in found:
        line, col = _place(violation, positions)
        message = _message(violation, positions)
        placed.append(((line, col), f"{file}:{line}:{col}: {dotted(violation.path)}: {message}"))
    return list(dict.fromkeys(line for _, line in sorted(placed)))


def enforce(positions: Positions, file: str, desired: DesiredState, policy: ServerPolicy) -> DesiredState:
    """Raise ``PolicyViolation`` with every violation when ``desired`` asks for more than ``policy`` allows;
    else ``desired`` carrying the policy's host folders, for the check of real paths at apply time."""
    lines = check(positions, file, desired, policy)
    if lines:
        raise PolicyViolation(lines)
    return desired.model_copy(update={"limits": limits_of(policy)})


def on_host(engine: DockerEngine, desired: DesiredState) -> dict[str, list[str]]:
    """At apply time: each host path of ``desired`` whose real path on ``engine``'s host leads out of the
    folders it passed, as ``FILE: path: message`` lines by app ("" for the proxy). ``engine`` keeps the
    folders, so that each create and env_file read of the pass checks again just before it."""
    engine.limits = desired.limits
    engine.files.allowed = desired.limits.env_files if desired.limits is not None else None
    if desired.limits is None:
        return {}
    real_of, unknown = engine.real_paths(to_resolve(desired))
    engine.files.allowed_real = real_of
    refused: dict[str, list[str]] = {}
    for violation in real_violations(desired, real_of, unknown=unknown):
        app = str(violation.path[1]) if violation.path[0] == "apps" else ""
        refused.setdefault(app, []).append(f"{desired.path}: {dotted(violation.path)}: {violation.message}")
    return refused
