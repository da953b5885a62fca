"""The adapters: one module per outside system that the reconciler reads or drives (the Docker engine,
git, YAML text, env files on the engine's host). Each is the only place that talks to its system, and
no error of a library or the OS leaves one: every failure is a ``ReconcileError`` saying what to do.
They decide nothing (the core does) and may import only ``reconciler.core``, ``reconciler.errors``,
``reconciler.state`` (the state directory's private files) and ``reconciler.telemetry`` (``scrub``);
never deploys, a pass, the operations, the agent or the CLI.
"""
