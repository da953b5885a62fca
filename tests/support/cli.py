"""Running the product's command line as a real subprocess.

Guarantees: `run_cli` runs `python -m reconciler ARGS` with the interpreter running the tests,
no stdin, text output captured, and an environment that is the tests' own minus every
`RECONCILE_*`/`RECONCILER_*` variable, plus the overrides given (a None value removes a
variable). It never raises for a non-zero exit: tests read `returncode`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

STRIPPED_PREFIXES = ("RECONCILE_", "RECONCILER_")


def cli_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """os.environ without RECONCILE_*/RECONCILER_*, then `overrides` (None deletes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(
    *args: str | Path,
    cwd: str | Path | None = None,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`python -m reconciler *args`; see the module docstring."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *(str(a) for a in args)],
        cwd=cwd,
        env=cli_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
