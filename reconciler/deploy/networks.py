"""The instance's networks: made before the deploys that join them, pruned once no app of the file names them.

Guarantees:
- ``ensure`` creates each Docker network the apps of a pass join (``core.stack.wanted_networks``) that is
  not there yet, labelled as ours: this instance, its name in the file, and (but for the ``default`` one,
  which the instance's sources and its proxy share) the source that declared it. ``internal: true`` makes a
  network with no route out of the host. A network of ours whose ``internal`` differs from the file is made
  again when no container is on it, and left with a note while one is.
- ``prune`` removes this source's networks that no app of the file names any more, once nothing is on them;
  one still in use stays, with a note naming who is on it. The instance's default network goes, without a
  word, once no app of the file joins it, the file has no proxy and nothing is on it. Never a network of
  another source or instance, nor one without our labels: networks are looked up by our labels, never by
  name alone.
- Each line it returns says what it did (``network backend: created``); nothing is said of what was in line,
  nor of the default network's creation (the instance's own, as the proxy's network is).
"""

from __future__ import annotations

from reconciler.adapters.protocols import DockerEngine
from reconciler.core.labels import NETWORK, SOURCE, owner_of
from reconciler.core.model import DesiredState
from reconciler.core.stack import DEFAULT_NETWORK, docker_network, wanted_networks


def _labels(desired: DesiredState, name: str) -> dict[str, str]:
    labels = {NETWORK: name}
    if name != DEFAULT_NETWORK and desired.source is not None:
        labels.update({f"{SOURCE}.{key}": value for key, value in desired.source.model_dump().items()})
    return labels


def ensure(engine: DockerEngine, desired: DesiredState, *, dry: bool = False) -> list[str]:
    """Create the networks the apps of ``desired`` join (see the module's docstring); what was done (``dry``:
    what would be, and nothing is)."""
    wanted = wanted_networks(desired.apps, desired.networks, engine.instance)
    if not wanted:
        return []
    have = {row.name: row for row in engine.networks_of_instance()}
    said: list[str] = []
    for docker_name, (name, internal) in sorted(wanted.items()):
        row = have.get(docker_name)
        if row is not None and row.internal == internal:
            continue
        if row is not None and row.attached:
            said.append(
                f"network {name} ({docker_name}): internal is {str(row.internal).lower()}, the file says"
                f" {str(internal).lower()}; left as it is while {', '.join(row.attached)} use it"
            )
            continue
        # The default network is the instance's own, there for every app as the proxy's is: made without a word.
        quiet = name == DEFAULT_NETWORK and row is None
        if dry:
            if not quiet:
                said.append(f"network {name} ({docker_name}): {'to make again' if row is not None else 'to create'}")
            continue
        if row is not None:
            engine.remove_network(docker_name)
        engine.ensure_network(docker_name, internal=internal, labels=_labels(desired, name))
        if not quiet:
            said.append(f"network {name} ({docker_name}): {'made again' if row is not None else 'created'}")
    return said


def prune(engine: DockerEngine, desired: DesiredState, *, dry: bool = False) -> list[str]:
    """Remove this source's networks that no app of ``desired`` joins (see the module's docstring); ``dry``:
    say what would go, and remove nothing."""
    wanted = wanted_networks(desired.apps, desired.networks, engine.instance)
    said: list[str] = []
    for row in engine.networks_of_instance():
        name = row.labels.get(NETWORK, "")
        if row.name == docker_network(engine.instance, DEFAULT_NETWORK):
            # The instance's own: removed without a word once no app nor proxy of the instance is on it.
            if row.name not in wanted and desired.proxy is None and not row.attached and not dry:
                engine.remove_network(row.name)
            continue
        if not name or row.name in wanted:
            continue
        owner = owner_of(row.labels)
        if desired.source is not None and (owner is None or not desired.source.same(owner)):
            continue
        if row.attached:
            said.append(f"network {name} ({row.name}): not in the file; left while {', '.join(row.attached)} use it")
            continue
        if dry:
            said.append(f"network {name} ({row.name}): to remove (not in the file)")
            continue
        engine.remove_network(row.name)
        said.append(f"network {name} ({row.name}): removed (not in the file)")
    return said
