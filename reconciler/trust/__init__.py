"""What a commit must pass before it is applied: its signature by an allowed key
(``--require-signed-by``: ``signatures``) and the server's policy file (``--policy``:
``server_policy``; the pure rules are ``reconciler.core.guard``). A refusal is a ``ReconcileError``
whose every line says where and why, and a refused commit is refused whole. It may import only
``reconciler.core``, ``reconciler.errors``, ``reconciler.adapters`` (the YAML reader; the engine's type)
and the packages those may import; never deploys, a pass, the operations, the agent or the CLI.
"""
