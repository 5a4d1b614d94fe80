"""The shared server bootstrap: health, reflection, error mapping, draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as pb_grpc
from lodestar.runtime.context import current_request_id
from lodestar.runtime.errors import ErrorDetails, InvalidArgument, http_status_for
from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.runtime.settings import ServerSettings

SERVICE = "lodestar.embedding.v1.EmbeddingService"


class _Servicer(pb_grpc.EmbeddingServiceServicer):
    """A tiny servicer whose behaviour is chosen by the first text."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def EmbedTexts(
        self, request: pb.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedTextsResponse:
        first = request.texts[0] if request.texts else ""
        if first == "bad":
            raise InvalidArgument("texts[0] may not be 'bad'", field="texts[0]", reason="BAD_TEXT")
        if first == "boom":
            raise RuntimeError("secret internal detail")
        if first == "slow":
            await self.release.wait()
        if first == "request-id":
            return pb.EmbedTextsResponse(model=current_request_id())
        return pb.EmbedTextsResponse(model="echo", dimension=len(first))


@pytest.fixture
async def running() -> AsyncIterator[tuple[GrpcServer, _Servicer, grpc.aio.Channel]]:
    servicer = _Servicer()
    server = GrpcServer(
        ServerSettings(port=0, shutdown_grace_s=5),
        [
            ServiceRegistration(
                SERVICE, lambda s: pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, s)
            )
        ],
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, servicer, channel
    await channel.close()
    await server.stop(0)


async def test_health_reports_serving(
    running: tuple[GrpcServer, _Servicer, grpc.aio.Channel],
) -> None:
    _, _, channel = running
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(
    running: tuple[GrpcServer, _Servicer, grpc.aio.Channel],
) -> None:
    _, _, channel = running
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for reply in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in reply.list_services_response.service]
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


async def test_domain_error_becomes_invalid_argument_with_details(
    running: tuple[GrpcServer, _Servicer, grpc.aio.Channel],
) -> None:
    _, _, channel = running
    stub = pb_grpc.EmbeddingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(pb.EmbedTextsRequest(texts=["bad"]))
    details = ErrorDetails.from_rpc_error(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "BAD_TEXT"
    assert details.field_violations == [("texts[0]", "texts[0] may not be 'bad'")]
    assert http_status_for(details.code) == 400


async def test_unexpected_error_is_internal_without_leaking(
    running: tuple[GrpcServer, _Servicer, grpc.aio.Channel],
) -> None:
    _, _, channel = running
    stub = pb_grpc.EmbeddingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.EmbedTexts(
            pb.EmbedTextsRequest(texts=["boom"]), metadata=[("x-request-id", "r-42")]
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (caught.value.details() or "")
    assert "r-42" in (caught.value.details() or "")


async def test_each_call_sees_its_own_request_id(
    running: tuple[GrpcServer, _Servicer, grpc.aio.Channel],
) -> None:
    _, _, channel = running
    stub = pb_grpc.EmbeddingServiceStub(channel)
    request = pb.EmbedTextsRequest(texts=["request-id"])
    first = await stub.EmbedTexts(request, metadata=[("x-request-id", "r-1")])
    second = await stub.EmbedTexts(request, metadata=[("x-request-id", "r-2")])
    generated = [(await stub.EmbedTexts(request)).model for _ in range(2)]
    assert (first.model, second.model) == ("r-1", "r-2")
    # Without one, every call gets a new id.
    assert all(len(g) == 32 for g in generated)
    assert generated[0] != generated[1]


async def test_stop_turns_health_not_serving_and_drains_in_flight_call(
    running: tuple[GrpcServer, _Servicer, grpc.aio.Channel],
) -> None:
    server, servicer, channel = running
    stub = pb_grpc.EmbeddingServiceStub(channel)
    in_flight = asyncio.ensure_future(stub.EmbedTexts(pb.EmbedTextsRequest(texts=["slow"])))
    await asyncio.sleep(0.2)
    stopping = asyncio.create_task(server.stop(5))
    await asyncio.sleep(0.2)
    # The drain waits for the in-flight call rather than cutting it off.
    assert not stopping.done()
    servicer.release.set()
    reply = await in_flight
    assert reply.dimension == len("slow")
    await stopping
