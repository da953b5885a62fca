"""Matching an image reference against the engine's list of local images. Pure.

Guarantees: names are compared the way the docker CLI shows them (``docker.io/library/`` dropped), so
``nginx:1`` and ``docker.io/library/nginx:1`` are the same image; a digest reference matches only a
local image that records that registry digest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LocalImage:
    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]


def normalize(ref: str) -> str:
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    if ref.startswith("library/"):
        return ref[len("library/") :]
    return ref


def from_engine(rows: Iterable[Mapping[str, Any]]) -> tuple[LocalImage, ...]:
    """The engine's ``GET /images/json`` rows as records."""
    return tuple(
        LocalImage(
            id=str(row.get("Id", "")),
            tags=tuple(normalize(tag) for tag in row.get("RepoTags") or () if tag != "<none>:<none>"),
            digests=tuple(normalize(d) for d in row.get("RepoDigests") or () if not d.startswith("<none>")),
        )
        for row in rows
    )


def find_local(ref: str, images: Iterable[LocalImage]) -> LocalImage | None:
    """The local image that ``ref`` (``repo:tag`` or ``repo@sha256:...``) names, if any."""
    wanted = normalize(ref)
    for image in images:
        if wanted in image.tags or wanted in image.digests:
            return image
    return None


def registry_digest(image: LocalImage, repository: str) -> str:
    """The manifest digest ``image`` was pulled by from ``repository``, or "" for a locally built image."""
    repository = normalize(repository)
    for digest in image.digests:
        name, _, value = digest.partition("@")
        if name == repository:
            return value
    return ""
