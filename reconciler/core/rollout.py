"""The order of a push rollout (``--rollout canary,*``): groups of hosts, each converged before the next. Pure.

Guarantees:
- The spec is groups separated by commas; a group is terms joined by ``+``. A term is a host name, a
  label pair ``KEY=VALUE``, a bare label ``KEY`` (the hosts whose label ``KEY`` is ``"true"``: the
  ``canary: "true"`` convention), or ``*`` (every host not in an earlier group).
- A host is in one group only: the first that names it. A final ``*`` with no host left is dropped; any
  other group that selects only hosts of earlier groups is a ``ValueError`` (a stage the user wrote
  would silently not happen). Hosts that no group names are not part of the rollout at all.
- A term that selects no host of the file is a ``ValueError`` naming it (with the nearest host or label),
  never a silently smaller rollout.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from reconciler.core.fleet import nearest
from reconciler.core.model import HostSpec

EVERY = "*"


def _term_hosts(term: str, hosts: Mapping[str, HostSpec]) -> list[str]:
    if term == EVERY:
        return sorted(hosts)
    if term in hosts:
        return [term]
    key, has_value, value = term.partition("=")
    if not key:
        raise ValueError(f"--rollout: {term!r} is not a host, KEY=VALUE, KEY or *")
    wanted = value if has_value else "true"
    found = [name for name, host in sorted(hosts.items()) if host.labels.get(key) == wanted]
    if not found and (has_value or any(key in host.labels for host in hosts.values())):
        values = sorted({host.labels[key] for host in hosts.values() if key in host.labels})
        raise ValueError(f"--rollout: no host has the label {key}={wanted} ({key} is {', '.join(values)})")
    if not found:
        keys = sorted({key for host in hosts.values() for key in host.labels})
        close = difflib.get_close_matches(term, sorted(hosts) + keys, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else nearest(term, sorted(hosts))
        raise ValueError(f"--rollout: {term!r} is no host and no label of a host{hint}")
    return found


def groups(spec: str, hosts: Mapping[str, HostSpec]) -> list[list[str]]:
    """The hosts of each group of ``spec``, in order; ``ValueError`` for a term that selects no host."""
    ordered: list[list[str]] = []
    taken: set[str] = set()
    for part in spec.split(","):
        terms = [term.strip() for term in part.split("+")]
        if not all(terms):
            raise ValueError(f"--rollout: {spec!r} has an empty group (write groups as a,b+c,*)")
        group: list[str] = []
        for term in terms:
            for host in _term_hosts(term, hosts):
                if host not in taken:
                    taken.add(host)
                    group.append(host)
        if group:
            ordered.append(group)
        elif terms != [EVERY]:
            # A stage the user wrote would silently not happen (``*,canary``: the canary is in group 1).
            raise ValueError(f"--rollout: {part.strip()!r} selects only hosts of earlier groups: it would be no group")
    return ordered
