"""A real vector service that requires tokens, and callers holding various ones."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from lodestar.auth.tokens import mint_token
from lodestar.runtime.errors import ErrorDetails
from lodestar.runtime.server import GrpcServer
from lodestar.services.vector.embedded import EmbeddedBackend
from lodestar.services.vector.server import create_server
from lodestar.services.vector.settings import VectorSettings
from lodestar.vector.v1 import analytics_service_pb2_grpc as analytics_grpc
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc


@dataclass
class SecuredVector:
    """The vector service with tokens required, a channel to it, and token minting."""

    settings: VectorSettings
    server: GrpcServer
    channel: grpc.aio.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def token(self, *roles: str, sub: str = "alice", **claims: Any) -> str:
        return mint_token(self.settings, sub, list(roles), 600, **claims)

    def as_(self, token: str | None) -> Caller:
        return Caller(pb_grpc.VectorServiceStub(self.channel), token)

    def analytics_as(self, token: str | None) -> Caller:
        return Caller(analytics_grpc.AnalyticsServiceStub(self.channel), token)


class Caller:
    """A stub whose every call carries ``token`` (none when None)."""

    def __init__(self, stub: object, token: str | None) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()

    def __getattr__(self, method: str) -> Callable[[Any], Awaitable[Any]]:
        rpc = getattr(self._stub, method)

        def call(request: Any) -> Awaitable[Any]:
            return rpc(request, metadata=self._metadata, timeout=30)  # type: ignore[no-any-return]

        return call


@pytest.fixture(scope="session")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecuredVector]:
    data_dir: Path = tmp_path_factory.mktemp("secured-vector")
    settings = VectorSettings(
        port=0,
        metrics_port=None,
        shutdown_grace_s=1,
        data_dir=data_dir,
        require_token=True,
        optimize_delay_s=0.1,
        indexing_threads=1,
    )
    server = await create_server(settings, backend=EmbeddedBackend(settings))
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield SecuredVector(settings, server, channel)
    await channel.close()
    await server.stop(0)


_names = itertools.count()


@pytest.fixture
async def new_collection(secured: SecuredVector) -> Callable[[str], Awaitable[str]]:
    """Creates (as an admin) a 4-d collection whose name starts with ``prefix``."""
    admin = secured.as_(secured.token("admin"))

    async def create(prefix: str = "c") -> str:
        name = f"{prefix}-{next(_names)}"
        await admin.CreateCollection(
            pb.CreateCollectionRequest(name=name, config=pb.CollectionConfig(dimension=4))
        )
        return name

    return create


async def rpc_error(call: Awaitable[object]) -> ErrorDetails:
    """The decoded status of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return ErrorDetails.from_rpc_error(raised.value)
