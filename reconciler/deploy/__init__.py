"""Deploys: a plan carried out on the engine, each deploy a sequence of named steps, health-gated,
journaled, and rolled back or resumed as ``applier.RULES`` says (``applier``), with the one container
swap (``swap``), Swarm services (``services``) and the proxy of routed apps (``proxy``). Nothing of an
app is touched before its new release exists, and what ran before is kept to roll back to. It may
import only ``reconciler.core``, ``reconciler.errors``, ``reconciler.adapters``, ``reconciler.state``
and ``reconciler.telemetry``; never the policy checks of ``reconciler.trust``, a pass, the operations,
the agent or the CLI.
"""
