"""A local HAProxy image for tests, made from the host's Debian haproxy, with no registry.

Guarantees:
- `build_haproxy_image(client, prefix)` returns "<prefix>/haproxy:2.6", an image on the engine
  laid out like the official `haproxy` image where tests look: `haproxy` on PATH as
  /usr/local/sbin/haproxy, the config read from /usr/local/etc/haproxy/haproxy.cfg (an empty
  folder in the image, meant to be bind-mounted), CMD `haproxy -f
  /usr/local/etc/haproxy/haproxy.cfg`. It does not copy the official image's entrypoint
  (`-W -db` is not added), its `USER haproxy` or its `STOPSIGNAL SIGUSR1`: say them on the
  command line or in `docker run` when a test needs them.
- The host binary runs unchanged: every library `ldd` lists, the dynamic loader included, is
  copied (symlinks resolved) to the path `ldd` printed. /etc/passwd and /etc/group have root
  and `haproxy` (uid and gid 99, owner of /var/lib/haproxy) so `user haproxy` in a config
  works; /tmp (1777) and /run exist. There is no shell and nothing else.
- The image has the label `RUN_LABEL=<prefix>`, so cleanup finds it.
- Built once: when the ref already names an image with that label and value, it is returned
  as is. No haproxy on the host: `HaproxyMissing`, saying what to install.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

import docker.errors

from .engine import RUN_LABEL
from .images import _add_file, _quote, import_rootfs

HAPROXY_CANDIDATES = (Path("/usr/sbin/haproxy"), Path("/usr/local/sbin/haproxy"))
TAG = "2.6"
IMAGE_BINARY = "usr/local/sbin/haproxy"
CONFIG_DIR = "usr/local/etc/haproxy"
HAPROXY_UID = 99
PASSWD = b"root:x:0:0:root:/:/bin/false\nhaproxy:x:99:99::/var/lib/haproxy:/bin/false\n"
GROUP = b"root:x:0:\nhaproxy:x:99:\n"
# Folders whose mode or owner matters; parents of copied files are added 0755 root-owned.
DIRECTORIES = (("tmp", 0o1777, 0), ("run", 0o755, 0), ("var/lib/haproxy", 0o755, HAPROXY_UID),
               (CONFIG_DIR, 0o755, 0))  # fmt: skip
CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"CMD {json.dumps(['haproxy', '-f', f'/{CONFIG_DIR}/haproxy.cfg'])}",
)


class HaproxyMissing(RuntimeError):
    """No haproxy binary on this machine, or one whose libraries cannot all be found."""


def find_haproxy() -> Path:
    """The host's haproxy binary, or HaproxyMissing saying what to install."""
    found = shutil.which("haproxy")
    for path in (Path(found) if found else None, *HAPROXY_CANDIDATES):
        if path is not None and path.is_file():
            return path
    raise HaproxyMissing("no haproxy on this machine: apt-get install -y haproxy")


def shared_libraries(binary: Path) -> list[PurePosixPath]:
    """The absolute paths `ldd` prints for `binary`, the dynamic loader included."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError as exc:
        raise HaproxyMissing("no ldd to list haproxy's libraries: apt-get install -y libc-bin") from exc
    paths: list[PurePosixPath] = []
    for line in out.splitlines():
        name, arrow, target = line.strip().partition("=>")
        if arrow and target.strip().startswith("not found"):
            raise HaproxyMissing(f"{binary} needs {name.strip()}, which is not installed")
        # "libx.so => /path (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path
        # because the kernel maps it, so it needs no file in the image.
        word = (target if arrow else name).split()
        if word and word[0].startswith("/"):
            paths.append(PurePosixPath(word[0]))
    return paths


def build_haproxy_image(client: Any, prefix: str) -> str:
    """Build (or reuse) the HAProxy image of this run and return its "repo:tag"."""
    repo = f"{prefix}/haproxy"
    ref = f"{repo}:{TAG}"
    if _labels(client, ref).get(RUN_LABEL) == prefix:
        return ref
    rootfs = _rootfs(find_haproxy())
    changes = [*CHANGES, f"LABEL {RUN_LABEL}={_quote(prefix)}"]
    import_rootfs(client, rootfs, repo, TAG, changes)
    return ref


def _labels(client: Any, ref: str) -> dict[str, str]:
    try:
        config = client.api.inspect_image(ref).get("Config") or {}
    except docker.errors.ImageNotFound:
        return {}
    return dict(config.get("Labels") or {})


def _rootfs(binary: Path) -> bytes:
    # Read the whole file behind each path: a symlink in the image would point at a file that
    # is not there.
    files: dict[str, tuple[bytes, int]] = {IMAGE_BINARY: (binary.read_bytes(), 0o755)}
    for lib in shared_libraries(binary):
        files[str(lib).lstrip("/")] = (Path(lib).resolve().read_bytes(), 0o755)
    files["etc/passwd"] = (PASSWD, 0o644)
    files["etc/group"] = (GROUP, 0o644)

    special = {name: (mode, uid) for name, mode, uid in DIRECTORIES}
    folders: set[str] = set(special)
    for name in [*files, *special]:
        folders.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        # Sorted so every folder comes before what it holds.
        for name in sorted(folders):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode, info.uid = special.get(name, (0o755, 0))
            info.gid = info.uid
            tar.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            _add_file(tar, name, data, mode)
    return buf.getvalue()
