"""Files a command writes for the user (``import compose -o``, ``secrets encrypt -i/-o``), whole or not at all.

Guarantees: the data goes to a temporary file beside the target, is flushed to disk, given its mode, then
moved into place in one step: a reader sees the old file or the new one, never a part. Without ``force`` an
existing target is never replaced (the file is linked into place, which fails if one appeared meanwhile).
Every failure is one ``UserError`` naming the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from reconciler.errors import UserError


def write_atomically(out: Path, data: bytes, *, force: bool, mode: int | None = None) -> Path:
    """``data`` as the file ``out`` (``mode``: its permissions; default ``0600``, as ``mkstemp`` makes it)."""
    folder = out.parent if str(out.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UserError(f"{out}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
            if mode is not None:
                os.fchmod(stream.fileno(), mode)
        if force:
            os.replace(temporary, out)
        else:
            os.link(temporary, out)  # fails if out appeared since the check: never replaced without --force
    except FileExistsError:
        raise UserError(f"{out} exists; --force replaces it") from None
    except OSError as exc:
        raise UserError(f"{out}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return out
