"""Fixtures of the vector tests: real servers on port 0, one per backend.

The embedded servers run the real Qdrant engine (qdrant-edge) under a temporary
data directory: ``engine-process`` in a child process (the default), ``embedded``
in the service's own process. The remote server talks to qdrant-client's in-memory
mode, which speaks the client API of a Qdrant server. The behavioural suite runs
against all three (the ``stub`` fixture is parametrised); every test makes its own
collections.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from qdrant_client import AsyncQdrantClient

from lodestar.runtime.errors import ErrorDetails
from lodestar.runtime.server import GrpcServer
from lodestar.services.vector.backend import VectorBackend
from lodestar.services.vector.embedded import EmbeddedBackend
from lodestar.services.vector.engine_process import EngineProcess
from lodestar.services.vector.remote import RemoteBackend
from lodestar.services.vector.server import create_server
from lodestar.services.vector.settings import VectorSettings
from lodestar.vector.v1 import analytics_service_pb2_grpc as analytics_grpc
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc

MAX_BATCH_POINTS = 500
BACKENDS = ("embedded", "engine-process", "remote")


def vector_settings(data_dir: Path, **overrides: object) -> VectorSettings:
    values: dict[str, object] = {
        "port": 0,
        "metrics_port": None,
        "shutdown_grace_s": 5,
        "data_dir": data_dir,
        "max_batch_points": MAX_BATCH_POINTS,
        "max_batch_searches": 20,
        "optimize_delay_s": 0.1,
        "indexing_threshold_kb": 64,
        "indexing_threads": 1,
    }
    values.update(overrides)
    return VectorSettings(**values)  # type: ignore[arg-type]


class Running:
    """A started server and a channel to it."""

    def __init__(
        self, server: GrpcServer, channel: grpc.aio.Channel, kind: str, settings: VectorSettings
    ) -> None:
        self.server = server
        self.channel = channel
        self.kind = kind
        self.settings = settings
        self.stub = pb_grpc.VectorServiceStub(channel)
        self.analytics = analytics_grpc.AnalyticsServiceStub(channel)


async def _start(settings: VectorSettings, kind: str) -> Running:
    backend: VectorBackend
    if kind == "embedded":
        backend = EmbeddedBackend(settings)
    elif kind == "engine-process":
        backend = EngineProcess(settings)
    else:
        backend = RemoteBackend(settings, client=AsyncQdrantClient(location=":memory:"))
    server = await create_server(settings, backend=backend)
    port = await server.start()
    return Running(server, grpc.aio.insecure_channel(f"127.0.0.1:{port}"), kind, settings)


@pytest.fixture(scope="session")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Running]]:
    running = {
        kind: await _start(vector_settings(tmp_path_factory.mktemp(f"vector-{kind}")), kind)
        for kind in BACKENDS
    }
    yield running
    for item in running.values():
        await item.channel.close()
        await item.server.stop(5)


@pytest.fixture(params=BACKENDS)
def running(request: pytest.FixtureRequest, servers: dict[str, Running]) -> Running:
    return servers[request.param]


@pytest.fixture
def stub(running: Running) -> pb_grpc.VectorServiceStub:
    return running.stub


@pytest.fixture
def name() -> Callable[[], str]:
    """Fresh collection names, so that tests sharing a server never collide."""
    return lambda: f"c-{uuid.uuid4().hex[:12]}"


CreateCollection = Callable[..., Awaitable[str]]


@pytest.fixture
def collection(stub: pb_grpc.VectorServiceStub, name: Callable[[], str]) -> CreateCollection:
    async def create(
        dimension: int = 4,
        distance: pb.Distance.ValueType = pb.DISTANCE_COSINE,
        schema: dict[str, pb.PayloadFieldType.ValueType] | None = None,
    ) -> str:
        collection_name = name()
        await stub.CreateCollection(
            pb.CreateCollectionRequest(
                name=collection_name,
                config=pb.CollectionConfig(
                    dimension=dimension, distance=distance, payload_schema=schema or {}
                ),
            )
        )
        return collection_name

    return create


async def rpc_error(call: Awaitable[object]) -> tuple[grpc.StatusCode, ErrorDetails]:
    """The status and decoded details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), ErrorDetails.from_rpc_error(raised.value)


async def expect_invalid(call: Awaitable[object], field: str, reason: str | None = None) -> None:
    code, details = await rpc_error(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert [f for f, _ in details.field_violations] == [field], details
    if reason is not None:
        assert details.reason == reason, details
