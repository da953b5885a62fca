"""The server's policy file, read; a commit's file checked against it, every violation at its FILE:LINE:COL.

Guarantees:
- ``load_policy`` returns a ``ServerPolicy`` or raises ``InvalidPolicy`` whose every line is
  ``POLICY_FILE:LINE:COL: path: message`` (YAML errors included), or a one-line ``UserError`` when the
  file cannot be read. The format is in ``reconciler.core.guard``.
- ``check`` places each violation of a policy (with no policy: each dangerous mount) in the
  desired-state file, as ``FILE:LINE:COL: apps.web.volumes[0]: message``, sorted by place. No line shows
  an env value, even one that reached a checked field through a YAML alias.
- ``enforce`` raises ``PolicyViolation`` with those lines when a commit asks for more than the policy
  allows: the whole commit is refused.
- Like every message, the lines are scrubbed of remembered secrets where they are written (``scrub``).
"""

from __future__ import annotations

from pathlib import Path

from reconciler.core.desired import Positions, dotted
from reconciler.core.guard import (
    InvalidPolicy,
    PolicyViolation,
    ServerPolicy,
    Violation,
    dangerous,
    validate_policy,
    violations,
)
from reconciler.core.model import DesiredState
from reconciler.errors import InvalidDesiredState, UserError
from reconciler.shell.yamlfile import parse_yaml

__all__ = ["InvalidPolicy", "PolicyViolation", "ServerPolicy", "check", "enforce", "load_policy"]


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


def check(text: bytes, file: str, desired: DesiredState, policy: ServerPolicy | None) -> list[str]:
    """Each violation of ``policy`` by ``desired`` (read from ``text``, named ``file``), or with no policy
    each dangerous mount, as ``FILE:LINE:COL: path: message``, sorted by place."""
    found = violations(desired, policy) if policy is not None else dangerous(desired)
    if not found:
        return []
    _, positions = parse_yaml(text, filename=file)
    placed = []
    for violation in found:
        line, col = _place(violation, positions)
        message = _message(violation, positions)
        placed.append(((line, col), f"{file}:{line}:{col}: {dotted(violation.path)}: {message}"))
    return list(dict.fromkeys(line for _, line in sorted(placed)))


def enforce(text: bytes, file: str, desired: DesiredState, policy: ServerPolicy) -> None:
    """Raise ``PolicyViolation`` with every violation when ``desired`` asks for more than ``policy`` allows."""
    lines = check(text, file, desired, policy)
    if lines:
        raise PolicyViolation(lines)
