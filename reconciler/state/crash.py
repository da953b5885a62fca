"""Crash files: the traceback of a bug the agent or a fleet command survives, kept where a person looks.

Guarantees:
- ``keep_traceback`` writes the scrubbed traceback to ``STATE/crash-TIME.txt`` (private to the user) and
  keeps the newest ``CRASH_FILES_KEPT``; with ``RECONCILE_DEBUG`` set it goes to stderr instead. It never
  raises: a file that cannot be written is said in the one line it returns, for the event that reports
  the bug.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from reconciler.state.private import write_private
from reconciler.telemetry.scrub import scrub

CRASH_FILES_KEPT = 20  # a bug that crashes every pass must not fill the state directory


def keep_traceback(exc: BaseException, state_dir: Path) -> str:
    """Put a crash's traceback where a person looks for it, and say where: too long for the event line."""
    text = scrub("".join(traceback.format_exception(exc)))
    if os.environ.get("RECONCILE_DEBUG"):
        sys.stderr.write(text)
        sys.stderr.flush()
        return "traceback above on stderr (RECONCILE_DEBUG)"
    now = time.time()
    path = state_dir / f"crash-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1000):03d}Z.txt"
    try:
        write_private(path, text)
        for old in sorted(state_dir.glob("crash-*.txt"))[:-CRASH_FILES_KEPT]:
            old.unlink()
    except OSError as error:
        return f"traceback not written to {path} ({error.strerror or error}); RECONCILE_DEBUG=1 prints it on stderr"
    return f"traceback in {path}"
