# syntax=docker/dockerfile:1.7
# One image for every aigw service: `docker run aigw gateway|registry|keypool|budget|chatd|migrate`.
# Build from the repository root:  docker build -t aigw:latest .
# No secret is baked in: configuration comes from AIGW_* env vars at run time.

ARG PYTHON_VERSION=3.12
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------- build: resolve from uv.lock, install into /app/.venv
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src

# Dependencies first (only the lock and the project files), so code changes reuse this layer.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY libs/testing/pyproject.toml libs/testing/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/registry/pyproject.toml services/registry/
COPY services/keypool/pyproject.toml services/keypool/
COPY services/budget/pyproject.toml services/budget/
COPY services/chatd/pyproject.toml services/chatd/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace

# Then the code: the workspace packages as real (non-editable) installs, so the runtime stage needs no source.
COPY libs ./libs
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
 && /app/.venv/bin/aigw --help >/dev/null

# ---------------------------------------------------------------- runtime: slim, non-root, read-only friendly
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG AIGW_UID=10001
RUN groupadd --system --gid ${AIGW_UID} aigw \
 && useradd --system --uid ${AIGW_UID} --gid aigw --home-dir /var/lib/aigw --create-home --shell /usr/sbin/nologin aigw
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AIGW_DATA_DIR=/var/lib/aigw \
    AIGW_LOG_FORMAT=json \
    AIGW_GATEWAY_ADDR=0.0.0.0:8080 \
    AIGW_REGISTRY_ADDR=0.0.0.0:8081 \
    AIGW_KEYPOOL_ADDR=0.0.0.0:8082 \
    AIGW_BUDGET_ADDR=0.0.0.0:8083 \
    AIGW_CHATD_ADDR=0.0.0.0:8084 \
    AIGW_CONSOLE_ADDR=0.0.0.0:8085
WORKDIR /var/lib/aigw
VOLUME ["/var/lib/aigw"]
USER ${AIGW_UID}:${AIGW_UID}
EXPOSE 8080 8081 8082 8083 8084 8085
# The service handles SIGTERM itself: /readyz turns 503, in-flight requests drain (AIGW_SHUTDOWN_GRACE), connections close.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aigw"]
CMD ["gateway"]
