# The reconcile agent as a container image: it follows a git branch and converges the host's Docker
# engine (mounted socket) to the desired-state.yaml committed there. examples/agent/compose.yaml runs it.
#
#   docker build -t reconciler-agent .
#   docker build --build-arg RECONCILER_COMMIT="$(git rev-parse HEAD)" -t reconciler-agent .
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module; the default is the official
# slim Python image. git, an ssh client and tini are installed with apt when BASE lacks them (a base
# made by `debootstrap --include=python3,python3-venv,git,openssh-client,ca-certificates,tini` has them
# all, and the build then needs no apt).
#
# Python packages come from PyPI, or offline from a wheelhouse in the build context:
#   pip wheel --wheel-dir wheelhouse . "setuptools>=68"     # on a machine that reaches PyPI
# Any wheelhouse/*.whl present makes the build use only those (pip --no-index).
#
# Plain Dockerfile syntax: the classic builder and BuildKit both build it. Nothing secret is ever
# needed to build it, and .dockerignore sends only the package's sources (and the wheelhouse).
ARG BASE=python:3.11-slim

# --- 1. the wheel, installed with its dependencies into a venv ------------------------------------------
FROM ${BASE} AS build
# The commit the image is built from: the context has no .git (see setup.py).
ARG RECONCILER_COMMIT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . .
RUN set -eu; \
    if ls wheelhouse/*.whl >/dev/null 2>&1; then set -- --no-index --find-links=/src/wheelhouse; else set --; fi; \
    python3 -m venv /opt/reconciler; \
    RECONCILER_COMMIT="$RECONCILER_COMMIT" /opt/reconciler/bin/pip wheel --quiet "$@" --no-deps --wheel-dir=/dist .; \
    /opt/reconciler/bin/pip install --quiet "$@" /dist/reconciler-*.whl; \
    /opt/reconciler/bin/pip uninstall --quiet --yes pip setuptools; \
    # gettext reads the compiled catalogues (.mo): their sources are 1.5 MB of apprise's translations.
    find /opt/reconciler -type f \( -name '*.po' -o -name '*.pot' \) -delete; \
    # The libraries' own test suites (tornado's is 2.9 MB) are never imported by them.
    find /opt/reconciler/lib -depth -type d \( -path '*/tornado/test' -o -path '*/acme/_internal/tests' \
      -o -path '*/gitdb/test' -o -path '*/smmap/test' \) -exec rm -rf {} +; \
    /opt/reconciler/bin/reconcile --version

# --- 2. the agent --------------------------------------------------------------------------------------
FROM ${BASE}
# Docs, man pages and translations left out, as the official slim images do (copyrights kept).
RUN set -eu; \
    if ! { command -v git && command -v ssh && command -v tini; } >/dev/null; then \
      printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
        'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/locale/*' \
        >/etc/dpkg/dpkg.cfg.d/reconciler-slim; \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends \
        git openssh-client tini ca-certificates; \
      rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    fi
# The venv as the build stage made it: same base, so the same python3 at the same path.
COPY --from=build /opt/reconciler /opt/reconciler
ENV PATH=/opt/reconciler/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECONCILE_STATE_DIR=/var/lib/reconciler \
    GIT_TERMINAL_PROMPT=0
# The journal, the git mirror and the lock: keep this volume across containers, or the agent forgets
# what it deployed, what failed and what is stable.
VOLUME ["/var/lib/reconciler"]
LABEL org.opencontainers.image.title="reconciler agent" \
      org.opencontainers.image.description="Converge a Docker host to the desired-state.yaml committed in git."
# tini as PID 1 forwards SIGTERM (docker stop: the agent finishes its step, exits 0, and leaves every
# container running) and reaps what git and ssh leave behind (a detached `git gc --auto`).
ENTRYPOINT ["tini", "--", "reconcile"]
CMD ["agent"]
