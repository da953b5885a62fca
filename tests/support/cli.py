"""Running the product's command line as a real subprocess.

Guarantees: `run_cli` runs `python -m reconciler ARGS` with the interpreter running the tests,
no stdin, text output captured, and an environment that is the tests' own minus every
`RECONCILE_*`/`RECONCILER_*` variable, plus the overrides given (a None value removes a
variable). It never raises for a non-zero exit: tests read `returncode`.
Each test gets its own `RECONCILE_INSTANCE` (from the running test's id), so one test's
`reconcile` never prunes the containers of another test or of anything else on the engine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

STRIPPED_PREFIXES = ("RECONCILE_", "RECONCILER_")


def test_instance() -> str:
    """A reconciler instance name of the running test's own (stable within the test)."""
    test_id = os.environ.get("PYTEST_CURRENT_TEST", "no-test").rsplit(" (", 1)[0]
    # The checkout too: the same test run from two worktrees on one engine must not share a proxy.
    return "test-" + hashlib.sha256(f"{__file__}:{test_id}".encode()).hexdigest()[:12]


def cli_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """os.environ without RECONCILE_*/RECONCILER_*, then `overrides` (None deletes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env["RECONCILE_INSTANCE"] = test_instance()
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
