"""Test images built locally from busybox-static, with no registry and no Dockerfile.

Guarantees:
- `ImageFactory.build(...)` returns "repo:tag" of an image on the engine that serves, with
  busybox httpd on the given port, `/index.html` (the body, byte for byte, no newline added),
  `/health` ("ok", absent when healthy=False so it answers 404), `/cgi-bin/env` (the
  container's environment, sorted, one VAR=value a line; httpd's CGI variables included), and
  `/cgi-bin/app` (the body again, as a program: `faults` of its answers are 500s, each after
  `delay` seconds; a release that errs or is slow under load, for weighted rollouts). An
  empty `/data` folder is there for volume tests. CMD is httpd in the foreground; with
  exit_at_start=True it is a shell that exits 1 at once; with dies_after=N it serves (httpd in the
  background) for N seconds, then exits 3 (a release that dies after it went live).
- The image has `PATH=/bin` and the label `RUN_LABEL=<run prefix>`, so cleanup finds it.
- Repos are prefixed with the run prefix ("app" -> "<prefix>/app") unless they start with a
  registry host ("127.0.0.1:5000/app") or already with the prefix.
- The busybox root filesystem is read and tarred once per factory; a build appends a few small
  files to a copy and imports it (tens of milliseconds). Same arguments, same ref, image still
  there: the cached ref is returned without building.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors

from .engine import RUN_LABEL

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
APPLETS = (
    "sh", "ash", "httpd", "wget", "sleep", "cat", "echo", "env", "ls", "true", "false", "test", "[",
    "printf", "kill", "ps", "hostname", "nc", "touch", "rm", "mkdir", "grep", "id", "date", "uname",
    "cp", "mv", "ln", "chmod", "head", "tail", "wc", "sed", "tr", "stat", "readlink", "pwd", "sync",
    "sort", "tee", "awk", "seq", "find", "xargs", "dd", "du", "df", "netstat",
)  # fmt: skip
DIRECTORIES = (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("data", 0o755), ("www", 0o755),
               ("www/cgi-bin", 0o755))  # fmt: skip

CGI_ENV = b'#!/bin/sh\necho "Content-Type: text/plain"\necho\nenv | sort\n'


class BusyboxMissing(RuntimeError):
    """No statically linked busybox on this machine."""


def find_static_busybox() -> Path:
    """The path of a statically linked busybox, or BusyboxMissing saying what to install."""
    for path in BUSYBOX_CANDIDATES:
        if path.is_file():
            if _is_static_elf(path.read_bytes()):
                return path
            raise BusyboxMissing(
                f"{path} is dynamically linked and cannot run in an empty image: apt-get install -y busybox-static"
            )
    raise BusyboxMissing("no /bin/busybox: apt-get install -y busybox-static")


def _is_static_elf(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF with no PT_INTERP program header."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    pt_interp = 3
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != pt_interp for i in range(phnum))


def has_registry_host(repo: str) -> bool:
    """Docker's rule: the first path component names a registry if it has '.' or ':' or is localhost."""
    first, sep, _ = repo.partition("/")
    return bool(sep) and ("." in first or ":" in first or first == "localhost")


@dataclass(frozen=True)
class ImageSpec:
    repo: str
    tag: str
    body: str
    healthy: bool
    exit_at_start: bool
    port: int
    env: tuple[tuple[str, str], ...]
    docker_healthcheck: bool
    dies_after: float | None = None
    faults: float = 0.0
    delay: float = 0.0


class ImageBuildError(RuntimeError):
    """The engine refused an import."""


def import_rootfs(client: Any, rootfs: bytes, repo: str, tag: str, changes: list[str]) -> None:
    """``docker import`` of a rootfs tar as ``repo:tag`` with Dockerfile ``changes``; ImageBuildError if refused."""
    ref = f"{repo}:{tag}"
    try:
        result = client.api.import_image_from_data(rootfs, repository=repo, tag=tag, changes=changes)
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"docker import of {ref} failed: {exc}") from exc
    for line in str(result).splitlines():
        if line.strip():
            message = json.loads(line)
            if "error" in message:
                raise ImageBuildError(f"docker import of {ref} failed: {message['error']}")


def _quote(value: str) -> str:
    return json.dumps(value)  # a double-quoted string with \" and \\ escapes: what ENV/LABEL accept


class ImageFactory:
    """Builds test images; see the module docstring."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._base: bytes | None = None
        self._built: dict[str, tuple[ImageSpec, str]] = {}
        self.build_seconds = 0.0

    def repo(self, name: str) -> str:
        """The full repository for `name`: "<prefix>/name" unless it names a registry host."""
        if has_registry_host(name) or name.startswith(self.prefix):
            return name
        return f"{self.prefix}/{name}"

    def build(
        self,
        repo: str,
        tag: str,
        *,
        body: str | None = None,
        healthy: bool = True,
        exit_at_start: bool = False,
        port: int = 8000,
        env: dict[str, str] | None = None,
        docker_healthcheck: bool = False,
        dies_after: float | None = None,
        faults: float = 0.0,
        delay: float = 0.0,
    ) -> str:
        """Build (or reuse) the image and return its "repo:tag". `body` defaults to `tag`."""
        spec = ImageSpec(
            repo=self.repo(repo),
            tag=tag,
            body=tag if body is None else body,
            healthy=healthy,
            exit_at_start=exit_at_start,
            port=port,
            env=tuple(sorted((env or {}).items())),
            docker_healthcheck=docker_healthcheck,
            dies_after=dies_after,
            faults=faults,
            delay=delay,
        )
        ref = f"{spec.repo}:{spec.tag}"
        cached = self._built.get(ref)
        if cached is not None and cached[0] == spec and self._current_id(ref) == cached[1]:
            return ref
        started = time.monotonic()
        image_id = self._import(spec, ref)
        self.build_seconds += time.monotonic() - started
        self._built[ref] = (spec, image_id)
        return ref

    def image_id(self, ref: str) -> str:
        """The id ("sha256:...") that `ref` names on the engine now."""
        return str(self.client.api.inspect_image(ref)["Id"])

    def _current_id(self, ref: str) -> str | None:
        try:
            return self.image_id(ref)
        except docker.errors.ImageNotFound:
            return None

    def _base_tar(self) -> bytes:
        if self._base is None:
            busybox = find_static_busybox().read_bytes()
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for name, mode in DIRECTORIES:
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.DIRTYPE
                    info.mode = mode
                    tar.addfile(info)
                _add_file(tar, "bin/busybox", busybox, 0o755)
                for applet in APPLETS:
                    info = tarfile.TarInfo(f"bin/{applet}")
                    info.type = tarfile.SYMTYPE
                    info.linkname = "busybox"
                    tar.addfile(info)
                _add_file(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)
                _add_file(tar, "etc/group", b"root:x:0:\n", 0o644)
                _add_file(tar, "www/cgi-bin/env", CGI_ENV, 0o755)
            self._base = buf.getvalue()
        return self._base

    def _rootfs(self, spec: ImageSpec) -> bytes:
        buf = io.BytesIO(self._base_tar())
        with tarfile.open(fileobj=buf, mode="a", format=tarfile.GNU_FORMAT) as tar:
            _add_file(tar, "www/index.html", spec.body.encode(), 0o644)
            _add_file(tar, "www/cgi-bin/app", _app_script(spec), 0o755)
            if spec.healthy:
                _add_file(tar, "www/health", b"ok", 0o644)
        return buf.getvalue()

    def _changes(self, spec: ImageSpec) -> list[str]:
        if spec.exit_at_start:
            cmd = ["/bin/sh", "-c", "echo 'exit_at_start: exiting 1' >&2; exit 1"]
        elif spec.dies_after is not None:
            cmd = ["/bin/sh", "-c", f"httpd -p {spec.port} -h /www; sleep {spec.dies_after:g}; exit 3"]
        else:
            cmd = ["/bin/httpd", "-f", "-p", str(spec.port), "-h", "/www"]
        changes = [
            f"CMD {json.dumps(cmd)}",
            "ENV PATH=/bin",
            f"LABEL {RUN_LABEL}={_quote(self.prefix)}",
            f"EXPOSE {spec.port}/tcp",
        ]
        changes += [f"ENV {key}={_quote(value)}" for key, value in spec.env]
        if spec.docker_healthcheck:
            changes.append(
                "HEALTHCHECK --interval=1s --timeout=2s --retries=1 "
                f"CMD wget -q -O /dev/null http://127.0.0.1:{spec.port}/health || exit 1"
            )
        return changes

    def _import(self, spec: ImageSpec, ref: str) -> str:
        import_rootfs(self.client, self._rootfs(spec), spec.repo, spec.tag, self._changes(spec))
        return self.image_id(ref)


def _app_script(spec: ImageSpec) -> bytes:
    """``/cgi-bin/app``: the body, or a 500 for ``faults`` of the requests (ash's $RANDOM), after ``delay``."""
    lines = ["#!/bin/sh"]
    if spec.delay:
        lines.append(f"sleep {spec.delay:g}")
    if spec.faults:
        permille = round(spec.faults * 1000)
        lines.append(
            f"if [ $((RANDOM % 1000)) -lt {permille} ]; then"
            " printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nfault ';"
            " cat /www/index.html; exit 0; fi"
        )
    lines.append("printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat /www/index.html")
    return ("\n".join(lines) + "\n").encode()


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))
