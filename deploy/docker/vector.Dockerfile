# syntax=docker/dockerfile:1.7
# The vector service: the embedded Qdrant engine (qdrant-edge, in a child process) or a Qdrant
# cluster through qdrant-client. Build from the repository root:
#
#   docker build -f deploy/docker/vector.Dockerfile -t lodestar/vector:0.1.0 .

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lodestar/bin:$PATH
RUN python -m venv /opt/lodestar
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Only this service's extra: no torch, no llama.cpp, no web framework.
RUN pip install --no-cache-dir "./[vector]"

FROM python:3.11.14-slim-bookworm
# tini runs as PID 1: it forwards signals to the service and reaps orphans. The service runs the
# engine in a child process, which runs index builds in children of its own; if the engine
# child dies during a build, its build child is re-parented to PID 1 and must be reaped there.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lodestar \
    && useradd --system --uid 10001 --gid lodestar --home-dir /home/lodestar \
       --create-home --shell /usr/sbin/nologin lodestar \
    && install -d -o lodestar -g lodestar /var/lib/lodestar/vector
COPY --from=build /opt/lodestar /opt/lodestar
ENV PATH=/opt/lodestar/bin:$PATH \
    HOME=/home/lodestar \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LODESTAR_VECTOR_HOST=0.0.0.0 \
    LODESTAR_VECTOR_DATA_DIR=/var/lib/lodestar/vector
WORKDIR /home/lodestar
USER 10001:10001
VOLUME ["/var/lib/lodestar/vector"]
EXPOSE 50052 9102
ENTRYPOINT ["tini", "--", "python", "-m", "lodestar.services.vector"]
