"""``reconcile import compose``: a Compose file read, converted, rendered, validated, and written or returned.

Guarantees:

- The text returned or written always validates as a desired-state.yaml (checked in-process by the same
  reader and validation as ``reconcile validate``); a conversion that would not is a ``ComposeError``
  saying it is a bug of the importer, and nothing is written.
- Every problem of the input is one line of a ``ComposeError`` (a YAML error at ``FILE:LINE:COL``); nothing
  is written then either. Warnings are returned, one line each, for the caller to say.
- Variables come from ``env_file`` (or the ``.env`` beside the compose file, when there is one) and the
  process environment given, the environment winning, as compose does; without ``profiles``, those of
  ``COMPOSE_PROFILES`` (comma-separated) are used.
- ``out`` is written atomically (a temporary file beside it, then a rename); an existing ``out`` is
  replaced only with ``force``: without it the file is linked into place, which fails if one appeared meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.adapters import compose_file
from reconciler.adapters.yamlfile import parse_yaml
from reconciler.core.compose import ComposeError, convert
from reconciler.core.desired import load_desired
from reconciler.errors import InvalidDesiredState, UserError
from reconciler.ops.files import write_atomically
from reconciler.telemetry import scrub


@dataclass(frozen=True, slots=True)
class Imported:
    """The desired file's text, its apps, the warnings (one line each, without ``warning:``), and where it was
    written (None: nowhere)."""

    text: str
    apps: tuple[str, ...]
    warnings: tuple[str, ...]
    written: Path | None


def _refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} exists; --force replaces it")


def import_compose(
    path: Path,
    *,
    environ: Mapping[str, str],
    env_file: Path | None = None,
    profiles: Sequence[str] = (),
    out: Path | None = None,
    force: bool = False,
) -> Imported:
    """Convert the compose file ``path``; with ``out``, write the result there."""
    if out is not None and not force:
        _refuse_existing(out)
    try:
        data = compose_file.read_compose(path)
    except InvalidDesiredState as exc:
        raise ComposeError(exc.errors) from None
    beside = path.parent / ".env"
    variables: dict[str, str] = {}
    if env_file is not None:
        variables = compose_file.read_env_file(env_file)
    elif beside.is_file():
        variables = compose_file.read_env_file(beside)
    variables.update(environ)
    if not profiles and variables.get("COMPOSE_PROFILES"):  # as compose reads them
        profiles = [name.strip() for name in variables["COMPOSE_PROFILES"].split(",") if name.strip()]
    folder = str(path.resolve().parent)
    converted = convert(data, variables, folder, profiles)
    name = out.name if out is not None else "desired-state.yaml"
    text = compose_file.render(converted.desired, f"imported from {path.name} by reconcile import compose")
    try:
        parsed, positions = parse_yaml(text, filename=name)
        load_desired(parsed, positions, filename=name)
    except InvalidDesiredState as exc:
        raise ComposeError(
            [f"the converted file does not validate: {line} (if the compose file is right there, this is a bug of"
             " reconcile import compose: report it)" for line in exc.errors]
        ) from None  # fmt: skip
    warnings = list(converted.warnings)
    if out is None and scrub.redact_url(text) != text:
        warnings.append("a URL password in the output is masked on the terminal (***): write the file with -o")
    written = write_atomically(out, text.encode(), force=force) if out is not None else None
    return Imported(text, tuple(converted.desired["apps"]), tuple(warnings), written)
