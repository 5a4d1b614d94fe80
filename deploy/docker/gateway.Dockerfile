# syntax=docker/dockerfile:1.7
# The gateway: REST/SSE and the OpenAI-compatible API over the gRPC services.
# No model runs here, so the image carries no torch and no llama.cpp.
# Build from the repository root:
#
#   docker build -f deploy/docker/gateway.Dockerfile -t lodestar/gateway:0.1.0 .

# The console's third-party scripts (charts, offline API docs), from the pinned
# npm packages that scripts/console_assets.sh names, as `make console-assets` does.
FROM node:22.12.0-bookworm-slim AS console
WORKDIR /console
COPY scripts/console_assets.sh ./
RUN ./console_assets.sh /tmp/npm /console/vendor

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lodestar/bin:$PATH
RUN python -m venv /opt/lodestar
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY --from=console /console/vendor ./src/lodestar/services/gateway/console/static/vendor
# Only this service's extra.
RUN pip install --no-cache-dir "./[gateway]"

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 lodestar \
    && useradd --system --uid 10001 --gid lodestar --home-dir /home/lodestar \
       --create-home --shell /usr/sbin/nologin lodestar
COPY --from=build /opt/lodestar /opt/lodestar
ENV PATH=/opt/lodestar/bin:$PATH \
    HOME=/home/lodestar \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LODESTAR_GATEWAY_HOST=0.0.0.0
WORKDIR /home/lodestar
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "lodestar.services.gateway"]
