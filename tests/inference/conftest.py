"""Fixtures of the inference tests: the real model (loaded once) and real servers.

Two servers share the model: a roomy one (4 concurrent sequences, small decode steps so
that prompts are processed in chunks next to running sequences) and a tight one (one
slot, no queue) for cancellation and overload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime.server import GrpcServer
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.model import LlamaModel
from lodestar.services.inference.server import create_server
from lodestar.services.inference.settings import InferenceSettings, bundled_model_path

CONTEXT_SIZE = 512


@pytest.fixture(scope="session")
def model() -> Iterator[LlamaModel]:
    model = LlamaModel(bundled_model_path())
    yield model
    model.close()


# One compute thread: the test suite shares the CPU with other work, and llama.cpp's
# threads wait for each other at every graph node, so they degrade badly when preempted.
THREADS = 1


def _settings(**overrides: Any) -> InferenceSettings:
    return InferenceSettings(
        port=0,
        metrics_port=None,
        shutdown_grace_s=2,
        context_size=CONTEXT_SIZE,
        threads=THREADS,
        **overrides,
    )


@pytest.fixture(scope="session")
def settings() -> InferenceSettings:
    return _settings(max_concurrent_sequences=4, max_queue_length=8, batch_size=16)


@pytest.fixture(scope="session")
def engine(model: LlamaModel, settings: InferenceSettings) -> Iterator[InferenceEngine]:
    engine = InferenceEngine.from_settings(settings, model)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tight_engine(model: LlamaModel) -> Iterator[InferenceEngine]:
    engine = InferenceEngine.from_settings(
        _settings(max_concurrent_sequences=1, max_queue_length=0), model
    )
    yield engine
    engine.close()


async def _serve(
    settings: InferenceSettings, engine: InferenceEngine
) -> AsyncIterator[grpc.aio.Channel]:
    server: GrpcServer = create_server(settings, engine)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(1)


@pytest.fixture(scope="session")
async def channel(
    settings: InferenceSettings, engine: InferenceEngine
) -> AsyncIterator[grpc.aio.Channel]:
    async for channel in _serve(settings, engine):
        yield channel


@pytest.fixture(scope="session")
async def tight_channel(tight_engine: InferenceEngine) -> AsyncIterator[grpc.aio.Channel]:
    async for channel in _serve(
        _settings(max_concurrent_sequences=1, max_queue_length=0), tight_engine
    ):
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.InferenceServiceAsyncStub:
    return pb_grpc.InferenceServiceStub(channel)


@pytest.fixture
def tight_stub(tight_channel: grpc.aio.Channel) -> pb_grpc.InferenceServiceAsyncStub:
    return pb_grpc.InferenceServiceStub(tight_channel)
