"""``python -m reconciler`` runs the same CLI as the ``reconcile`` script."""

from reconciler.cli import main

main()
