# syntax=docker/dockerfile:1.7
# The embedding service: sentence-transformers on CPU torch, with the bundled
# all-MiniLM-L6-v2 model. Build from the repository root:
#
#   docker build -f deploy/docker/embedding.Dockerfile -t lodestar/embedding:0.1.0 .

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lodestar/bin:$PATH
# The CPU build of torch, from PyTorch's own index: the default wheel pulls the
# CUDA stack (gigabytes this image never uses).
RUN python -m venv /opt/lodestar \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Only this service's extra: no llama.cpp, no Qdrant, no web framework.
RUN pip install --no-cache-dir "./[embedding]"

FROM python:3.11.14-slim-bookworm
RUN groupadd --system --gid 10001 lodestar \
    && useradd --system --uid 10001 --gid lodestar --home-dir /home/lodestar \
       --create-home --shell /usr/sbin/nologin lodestar
COPY --from=build /opt/lodestar /opt/lodestar
ENV PATH=/opt/lodestar/bin:$PATH \
    HOME=/home/lodestar \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    LODESTAR_EMBEDDING_HOST=0.0.0.0
WORKDIR /home/lodestar
USER 10001:10001
EXPOSE 50051 9101
ENTRYPOINT ["python", "-m", "lodestar.services.embedding"]
