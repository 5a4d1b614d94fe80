"""Fixtures of the embedding tests: the real model (loaded once) and a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.server import GrpcServer
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.server import create_server
from lodestar.services.embedding.settings import EmbeddingSettings, bundled_model_path

MAX_TEXTS = 64
MAX_CHARS = 4000


@pytest.fixture(scope="session")
def engine() -> EmbeddingEngine:
    return EmbeddingEngine.load(bundled_model_path())


@pytest.fixture(scope="session")
def settings() -> EmbeddingSettings:
    return EmbeddingSettings(
        port=0,
        metrics_port=None,
        shutdown_grace_s=5,
        max_batch_size=16,
        max_wait_ms=2,
        max_texts_per_request=MAX_TEXTS,
        max_text_chars=MAX_CHARS,
    )


@pytest.fixture(scope="session")
async def server(engine: EmbeddingEngine, settings: EmbeddingSettings) -> AsyncIterator[GrpcServer]:
    server = create_server(settings, engine)
    await server.start()
    yield server
    await server.stop(5)


@pytest.fixture(scope="session")
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.EmbeddingServiceAsyncStub:
    return pb_grpc.EmbeddingServiceStub(channel)
