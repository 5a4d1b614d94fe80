"""Fixtures of the flows tests: the real stack, in process.

The embedding, vector and inference services run on real gRPC servers on port
0 with the bundled models (each loaded once per session); gateways with the
flows run on uvicorn on free ports in front of them. One inference server has
a roomy context, a second one (sharing the same model) a tight one, for the
context-budget tests.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lodestar.runtime.server import GrpcServer
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.server import create_server as create_embedding_server
from lodestar.services.embedding.settings import EmbeddingSettings
from lodestar.services.embedding.settings import bundled_model_path as embedding_model_path
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.flows.settings import FlowsSettings
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.model import LlamaModel
from lodestar.services.inference.server import create_server as create_inference_server
from lodestar.services.inference.settings import InferenceSettings
from lodestar.services.inference.settings import bundled_model_path as llm_path
from lodestar.services.vector.server import create_server as create_vector_server
from lodestar.services.vector.settings import VectorSettings
from tests.flows import corpus
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway

CONTEXT_SIZE = 1024
SMALL_CONTEXT_SIZE = 512


@dataclass
class Stack:
    embedding: str
    vector: str
    inference: str
    small_inference: str
    vector_data_dir: Path


def vector_settings(data_dir: Path) -> VectorSettings:
    return VectorSettings(
        port=0,
        metrics_port=None,
        shutdown_grace_s=2,
        data_dir=data_dir,
        optimize_delay_s=0.1,
        indexing_threads=1,
        analytics_interval_s=0.5,
    )


def _inference_settings(context_size: int, sequences: int) -> InferenceSettings:
    return InferenceSettings(
        port=0,
        metrics_port=None,
        shutdown_grace_s=2,
        context_size=context_size,
        max_concurrent_sequences=sequences,
        max_queue_length=16,
    )


@pytest.fixture(scope="session")
def llm() -> Iterator[LlamaModel]:
    model = LlamaModel(llm_path())
    yield model
    model.close()


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory, llm: LlamaModel) -> AsyncIterator[Stack]:
    servers: list[GrpcServer] = []
    engines: list[InferenceEngine] = []

    async def start(server: GrpcServer) -> str:
        servers.append(server)
        return f"127.0.0.1:{await server.start()}"

    try:
        embedding = await start(
            create_embedding_server(
                EmbeddingSettings(port=0, metrics_port=None, shutdown_grace_s=2, max_wait_ms=2),
                EmbeddingEngine.load(embedding_model_path()),
            )
        )
        data_dir = tmp_path_factory.mktemp("vector")
        vector = await start(await create_vector_server(vector_settings(data_dir)))
        addresses = []
        for context_size, sequences in ((CONTEXT_SIZE, 2), (SMALL_CONTEXT_SIZE, 1)):
            settings = _inference_settings(context_size, sequences)
            engine = InferenceEngine.from_settings(settings, llm)
            engines.append(engine)
            addresses.append(await start(create_inference_server(settings, engine)))
        yield Stack(embedding, vector, addresses[0], addresses[1], data_dir)
    finally:
        for server in reversed(servers):
            await server.stop(2)
        for engine in engines:
            engine.close()


def flows_settings(**overrides: Any) -> FlowsSettings:
    values: dict[str, Any] = {"feedback_min_similarity": 0.3}
    values.update(overrides)
    return FlowsSettings(**values)


@pytest.fixture(scope="session")
async def gateway(stack: Stack) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(stack.embedding, stack.vector, stack.inference)
    async with run_gateway(settings, flows_settings()) as running:
        yield running


@pytest.fixture(scope="session")
async def small_gateway(stack: Stack) -> AsyncIterator[RunningGateway]:
    """A gateway whose model has a tight context."""
    settings = gateway_settings(stack.embedding, stack.vector, stack.small_inference)
    async with run_gateway(settings, flows_settings()) as running:
        yield running


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as http:
        yield http


@pytest.fixture
def runtime(gateway: RunningGateway) -> FlowsRuntime:
    flows: FlowsRuntime | None = gateway.app.state.gateway.flows
    assert flows is not None
    return flows


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_collection(http: httpx.AsyncClient, headers: dict[str, str], name: str) -> None:
    reply = await http.post(
        "/api/v1/collections",
        json={"name": name, "payload_schema": {"source": "keyword"}},
        headers=headers,
    )
    assert reply.status_code in (200, 201), reply.text


async def insert_texts(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    collection: str,
    points: list[dict[str, object]],
) -> list[int | str]:
    reply = await http.post(
        "/api/v1/vectors/insert", json={"collection": collection, "points": points}, headers=headers
    )
    assert reply.status_code == 200, reply.text
    ids: list[int | str] = reply.json()["ids"]
    return ids


@pytest.fixture(scope="session")
async def docs(gateway: RunningGateway) -> str:
    """A collection holding the corpus, inserted as texts through the REST API."""
    name = fresh("docs")
    async with gateway.client() as http:
        admin = gateway.auth("admin")
        await create_collection(http, admin, name)
        ids = await insert_texts(http, admin, name, corpus.points())
    assert len(ids) == len(corpus.MODULES)
    return name


@contextlib.asynccontextmanager
async def replica(stack: Stack, **flows: Any) -> AsyncIterator[RunningGateway]:
    """One more gateway in front of the same services."""
    settings = gateway_settings(stack.embedding, stack.vector, stack.inference)
    async with run_gateway(settings, flows_settings(**flows)) as running:
        yield running
