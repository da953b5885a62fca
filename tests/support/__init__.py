"""Helpers for tests that use real parts: a Docker engine, a registry, git repositories.

Fixtures that wrap them live in tests/conftest.py; import the plain helpers from here:

    from tests.support import free_port, wait_http, http_get, run_cli
"""

from .cli import cli_env, run_cli
from .engine import MANAGED_LABEL, RUN_LABEL, AppNames, EngineUnavailable, cleanup_run, connect
from .gitrepo import GitError, GitRemote, run_git
from .images import ImageFactory, has_registry_host
from .net import HttpResponse, free_port, http_get, http_request, wait_http
from .registry import Registry, RegistryError

__all__ = [
    "MANAGED_LABEL",
    "RUN_LABEL",
    "AppNames",
    "EngineUnavailable",
    "GitError",
    "GitRemote",
    "HttpResponse",
    "ImageFactory",
    "Registry",
    "RegistryError",
    "cleanup_run",
    "cli_env",
    "connect",
    "free_port",
    "has_registry_host",
    "http_get",
    "http_request",
    "run_cli",
    "run_git",
    "wait_http",
]
