"""``reconcile agent``: the long-running loop that follows a branch and keeps the host converged to it
(``loop``), and its one HTTP listener for ``/metrics``, ``/healthz`` and push webhooks (``listener``).
What cannot be reached changes nothing that runs (it is said once, retried, and its recovery said
once), and a bug in a pass never stops the agent. It may import every package below it (``ops``,
``converge``, ``deploy``, ``trust``, ``adapters``, ``state``, ``telemetry``, ``core``, ``errors``);
only the CLI imports it.
"""
