"""The operations a person runs on one host or a fleet, besides a pass: ``reconcile status``, commits
that change a version (``edits``), break-glass rollback, stable promotion, the fleet's drift and push
rollouts, and the light controls (validate, history, suspend, resume, retry, completion). Each is a
function that returns records or raises a ``ReconcileError``; none prints. It may import every package
below it (``converge``, ``deploy``, ``trust``, ``adapters``, ``state``, ``telemetry``, ``core``,
``errors``); never the agent or the CLI, which call it.
"""
