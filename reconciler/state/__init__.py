"""The state directory: the SQLite journal (deploys, failures, stable pointers, flags), the lock, the
agent's pid file, and the modes that keep all of it private (``0700``, files ``0600``). No
``sqlite3.Error`` or ``OSError`` leaves it: each is a ``ReconcileError`` naming the file, and nothing
secret is written there. It may import only ``reconciler.core``, ``reconciler.errors`` and
``reconciler.telemetry`` (``scrub``); never an adapter, deploys, a pass, the operations, the agent or
the CLI.
"""
