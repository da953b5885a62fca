"""Deploys: a plan carried out on the engine, each deploy a sequence of named steps, health-gated,
journaled, and rolled back or resumed as ``core.steps.RULES`` says. ``applier`` runs the steps (the one
entry: ``Applier``), ``prober`` probes (needing the engine only, so read-only code probes with it too),
``rollback`` takes releases back (and holds the one routed switch-back), ``recovery`` gives verdicts
after the fact, ``rows`` shares the journal between the deploys of a pass, with the one container swap
(``swap``), Swarm services (``services``) and the proxy of routed apps (``proxy``). Nothing of an app is
touched before its new release exists, and what ran before is kept to roll back to. It may import only
``reconciler.core``, ``reconciler.errors``, ``reconciler.adapters``, ``reconciler.state`` and
``reconciler.telemetry``, and nothing of the docker SDK (the engine's calls are ``adapters.docker``'s);
never the policy checks of ``reconciler.trust``, a pass, the operations, the agent or the CLI.
"""
