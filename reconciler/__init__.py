"""reconciler: a declarative GitOps reconciler for Docker hosts."""
