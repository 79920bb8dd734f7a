# syntax=docker/dockerfile:1
# extauthz: the Envoy ext_authz v3 gRPC service.
#
#   docker build -t extauthz .
#   docker run --rm -p 9191:9191 -v "$PWD/policies:/etc/extauthz/policies:ro" extauthz
#
# Mount points (all read-only): /etc/extauthz/policies (policy *.yaml, watched and hot-reloaded;
# a Kubernetes ConfigMap works as is), /etc/extauthz/bundles (trust bundles, pass them with
# --trust-bundle TD=/etc/extauthz/bundles/FILE), /spiffe-workload-api (SPIFFE Workload API socket).
# With nothing mounted the policy directory is empty, and an empty set denies every request.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: a venv with extauthz
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extauthz ./extauthz
# Only wheels: nothing is compiled, so no compiler is ever installed. The venv's own pip and
# setuptools are removed, and the code is byte-compiled here because the root filesystem is
# read-only at run time.
RUN python -m venv /opt/extauthz \
 && /opt/extauthz/bin/pip install --no-cache-dir --only-binary=:all: . \
 && /opt/extauthz/bin/pip uninstall --yes pip setuptools \
 && python -m compileall -q -j 0 /opt/extauthz

# ---------------------------------------------------------------- runtime: venv + non-root user
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="extauthz" \
      org.opencontainers.image.description="Zero-trust Envoy external authorization (ext_authz v3) service" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/extauthz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPIFFE_ENDPOINT_SOCKET=unix:///spiffe-workload-api/spire-agent.sock
RUN groupadd --system --gid 10001 extauthz \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin extauthz \
 && mkdir -p /etc/extauthz/policies /etc/extauthz/bundles \
 && rm -rf /var/lib/apt/lists/* /root/.cache
COPY --from=build /opt/extauthz /opt/extauthz
VOLUME ["/etc/extauthz/policies", "/etc/extauthz/bundles"]
USER 10001:10001
WORKDIR /etc/extauthz
EXPOSE 9191 9090
# SIGTERM: stop accepting, finish in-flight checks (health turns NOT_SERVING first), exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["extauthz", "healthcheck", "--address", "127.0.0.1:9191"]
ENTRYPOINT ["extauthz", "serve"]
CMD ["--listen", "0.0.0.0:9191", "--policies", "/etc/extauthz/policies", "--metrics", "0.0.0.0:9090", "--audit-log", "-"]
