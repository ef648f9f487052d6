# syntax=docker/dockerfile:1
# annotation-proxy: build with `docker build -t annotation-proxy .` (or `docker compose up`, see docs/image.md).
# Dependencies come from deploy/requirements.lock (pinned; regenerate with deploy/lock.sh), as wheels only:
# nothing is compiled, so neither stage needs a compiler.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# The pinned dependencies first: this layer stays cached while only the proxy's code changes.
COPY deploy/requirements.lock ./
# --no-deps: the lock is the whole set; `pip check` below fails the build if it is not.
RUN /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: --no-deps --requirement requirements.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# The proxy as a wheel, installed without resolving anything again: the lock decided every version.
# Then pip and setuptools leave the virtualenv: the final image installs nothing.
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/annotation_proxy-*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes --quiet pip setuptools

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="annotation-proxy" \
      org.opencontainers.image.description="Caching reverse proxy for Label Studio's GET /api/annotations/{id}/" \
      org.opencontainers.image.licenses="Apache-2.0"
# Not "proxy": Debian's base-passwd already has a user and a group of that name (uid and gid 13), in every
# Debian-based image. The base's own pip, setuptools and wheel go too (python:*-slim has them; a Debian
# python3 has none): the final image installs nothing.
RUN groupadd --gid 10001 annotation-proxy \
    && useradd --uid 10001 --gid annotation-proxy --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin annotation-proxy \
    && if python -m pip --version >/dev/null 2>&1; then \
         python -m pip uninstall --yes --quiet pip setuptools wheel; \
       fi
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# No curl in the slim image: the proxy's own Python asks /healthz (non-2xx or no answer: unhealthy).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PROXY_PORT', '8080') + '/healthz', timeout=2)"]
# PROXY_HOST=0.0.0.0 above: start-up refuses to run without PROXY_CLIENT_KEYS, PROXY_CLIENT_KEYS_FILE or
# PROXY_ALLOW_ANONYMOUS=true. SIGTERM drains requests for PROXY_SHUTDOWN_TIMEOUT seconds, then exits.
ENTRYPOINT ["annotation-proxy"]
