"""One pass of ``reconcile``, end to end (``run``): read the desired state from a commit, check it
(``reconciler.trust``), observe the engine, resolve images, plan, and, unless dry, apply the plan
(``reconciler.deploy``) under the state directory's lock. A dry run takes no lock and changes nothing.
It may import every package below it (``deploy``, ``trust``, ``adapters``, ``state``, ``telemetry``,
``core``, ``errors``); never the operations, the agent or the CLI, which call it.
"""
