"""A real Docker registry (Debian's `docker-registry`, distribution v2) on 127.0.0.1, for tests.

Guarantees:
- `Registry.start()` returns once `GET /v2/` answers (200, or 401 with auth); the process
  listens on 127.0.0.1 only, keeps its blobs in the directory it was given, and logs to
  `<dir>/registry.log`. `stop()` ends that process (and only it) and never raises.
- With `username`/`password`, the registry demands HTTP basic auth (htpasswd, bcrypt made by
  `htpasswd -B` from apache2-utils); `docker_config_dir()` writes a Docker config that holds
  those credentials, for code under test run with `DOCKER_CONFIG=<that dir>`.
- `push()` raises `RegistryError` when the engine reports an error in the push stream (the
  SDK itself does not raise for those).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import docker.errors

from .net import end_process, free_port, http_get, http_request

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class RegistryError(RuntimeError):
    """The registry did not start, or a push or a manifest request failed."""


class Registry:
    """One `docker-registry serve` process; see the module docstring."""

    def __init__(
        self,
        client: Any,
        directory: Path,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.client = client
        self.directory = directory
        self.username = username
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "registry.log"

    @property
    def host(self) -> str:
        """The "127.0.0.1:PORT" part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def auth_config(self) -> dict[str, str] | None:
        """What the Docker SDK takes as `auth_config`, or None without auth."""
        if self.username is None or self.password is None:
            return None
        return {"username": self.username, "password": self.password}

    def ref(self, repo: str, tag: str) -> str:
        return f"{self.host}/{repo}:{tag}"

    # -- process -------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> Registry:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RegistryError("docker-registry is not installed: apt-get install -y docker-registry")
        self.directory.mkdir(parents=True, exist_ok=True)
        htpasswd = self._write_htpasswd() if self.username is not None else None
        last_log = ""
        for _attempt in range(3):  # a free port can be taken between free_port() and bind
            self.port = free_port()
            config = self.directory / "config.yml"
            config.write_text(self._config(htpasswd))
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [binary, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
            last_log = self.log_path.read_text(errors="replace")[-2000:]
        raise RegistryError(f"docker-registry did not answer on 127.0.0.1; log tail:\n{last_log}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        ready = {200, 401} if self.username is not None else {200}
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                status, _ = http_get(f"{self.url}/v2/", timeout=1.0)
            except OSError:
                status = 0
            if status in ready:
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        end_process(process)

    def _write_htpasswd(self) -> Path:
        assert self.username is not None and self.password is not None
        binary = shutil.which("htpasswd")
        if binary is None:
            raise RegistryError("htpasswd is not installed: apt-get install -y apache2-utils")
        line = subprocess.run(
            [binary, "-Bbn", self.username, self.password],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        path = self.directory / "htpasswd"
        path.write_text(line + "\n")
        return path

    def _config(self, htpasswd: Path | None) -> str:
        # JSON is YAML: no quoting surprises in paths.
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.directory / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "reconciler-tests-only"},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "reconciler-tests", "path": str(htpasswd)}}
        return json.dumps(config, indent=2) + "\n"

    # -- images --------------------------------------------------------------------------------

    def push(self, local_ref: str, repo: str, tag: str) -> str:
        """Tag `local_ref` as "<host>/<repo>:<tag>", push it, return that ref."""
        target = f"{self.host}/{repo}"
        self.client.api.tag(local_ref, target, tag)
        kwargs: dict[str, Any] = {"stream": True, "decode": True}
        if self.auth_config is not None:
            kwargs["auth_config"] = self.auth_config
        for message in self.client.api.push(target, tag, **kwargs):
            if "error" in message:
                raise RegistryError(f"push of {target}:{tag} failed: {message['error']}")
        return f"{target}:{tag}"

    def delete_local(self, ref: str) -> None:
        """Remove the tag `ref` from the engine (untag; the image goes when no tag is left)."""
        with contextlib.suppress(docker.errors.ImageNotFound):
            self.client.api.remove_image(ref, force=True)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"}
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        return headers

    def manifest_digest(self, repo: str, tag: str) -> str:
        """The registry's `Docker-Content-Digest` for repo:tag ("sha256:...")."""
        url = f"{self.url}/v2/{repo}/manifests/{tag}"
        try:
            response = http_request(url, headers=self._headers(), timeout=5.0)
        except OSError as exc:
            raise RegistryError(f"GET {url}: {exc}") from exc
        digest = {k.lower(): v for k, v in response.headers.items()}.get("docker-content-digest")
        if response.status != 200 or not digest:
            raise RegistryError(f"GET {url}: HTTP {response.status} {response.body[:300]!r}")
        return digest

    def delete_manifest(self, repo: str, tag: str) -> str:
        """Delete repo:tag's manifest from the registry (a pull of it then fails); return its digest."""
        digest = self.manifest_digest(repo, tag)
        url = f"{self.url}/v2/{repo}/manifests/{digest}"
        try:
            response = http_request(url, method="DELETE", headers=self._headers(), timeout=5.0)
        except OSError as exc:
            raise RegistryError(f"DELETE {url}: {exc}") from exc
        if response.status != 202:
            raise RegistryError(f"DELETE {url}: HTTP {response.status} {response.body[:300]!r}")
        return digest

    def docker_config_dir(self, directory: Path) -> Path:
        """Write `<directory>/docker-config-<port>/config.json` with this registry's credentials.

        Returns the folder, for `DOCKER_CONFIG=<folder>` or `docker --config <folder>`. Without
        auth the config has no entry for this registry.
        """
        folder = directory / f"docker-config-{self.port}"
        folder.mkdir(parents=True, exist_ok=True)
        auths: dict[str, dict[str, str]] = {}
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            auths[self.host] = {"auth": token}
        (folder / "config.json").write_text(json.dumps({"auths": auths}, indent=2) + "\n")
        return folder
