"""What the reconciler tells the outside: the agent's log (one line per event, each condition said
once), Prometheus metrics, notifications, systemd's notify protocol, and ``scrub``, which keeps
secrets out of everything written. Nothing here decides anything or changes the engine, git or the
state directory, and no line, label or notification holds a secret. It may import only
``reconciler.core`` and ``reconciler.errors``: every other package may import it.
"""
