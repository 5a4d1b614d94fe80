"""Typed clients of the backend services, over replica pools.

Whether each RPC is idempotent is declared once, in ``IDEMPOTENT``; every
call goes through the pool's one path for unary calls or for server streams
(``resilience.ReplicaPool``), which applies the deadline, the breakers,
failover and, for idempotent RPCs only, the retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from lodestar.auth.rpc import AUTHORIZATION_METADATA
from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as epb_grpc
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lodestar.runtime.errors import InvalidArgument
from lodestar.runtime.tls import watch_certificates
from lodestar.services.gateway.deadline import CallOptions, Metadata
from lodestar.services.gateway.identity import GatewayIdentity
from lodestar.services.gateway.resilience import ReplicaPool, Rpc, StubFactory
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import analytics_service_pb2_grpc as apb_grpc
from lodestar.vector.v1 import vector_service_pb2 as vpb
from lodestar.vector.v1 import vector_service_pb2_grpc as vpb_grpc

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)

EMBEDDING_SERVICE = epb.DESCRIPTOR.services_by_name["EmbeddingService"]
VECTOR_SERVICE = vpb.DESCRIPTOR.services_by_name["VectorService"]
ANALYTICS_SERVICE = apb.DESCRIPTOR.services_by_name["AnalyticsService"]
INFERENCE_SERVICE = ipb.DESCRIPTOR.services_by_name["InferenceService"]

# Whether each RPC may be sent again after UNAVAILABLE, when the first attempt
# may have done its work and only the reply was lost. By service, then method;
# every RPC of every backend service has an entry (a test checks it).
IDEMPOTENT: Mapping[str, Mapping[str, bool]] = {
    EMBEDDING_SERVICE.full_name: {"EmbedTexts": True, "GetModelInfo": True},
    VECTOR_SERVICE.full_name: {
        # A second attempt would answer ALREADY_EXISTS or NOT_FOUND for the
        # first one's success.
        "CreateCollection": False,
        "DeleteCollection": False,
        "GetCollection": True,
        "ListCollections": True,
        "UpdateCollection": True,
        # The gateway gives every new point its id before sending it, so an
        # upsert sent twice writes the same points.
        "UpsertPoints": True,
        "GetPoints": True,
        "UpdatePoints": True,
        "SetPayload": True,
        "DeletePayloadKeys": True,
        "DeletePoints": True,
        "BatchUpdatePoints": True,
        "ListPoints": True,
        "CountPoints": True,
        "SearchPoints": True,
        "BatchSearchPoints": True,
        "RecommendPoints": True,
        "ClusterPoints": True,
        # A second attempt would write a second snapshot, or restore or
        # delete one the first attempt already handled.
        "CreateSnapshot": False,
        "ListSnapshots": True,
        "RestoreSnapshot": False,
        "DeleteSnapshot": False,
        # Reads a file that never changes (retried only before its first message).
        "DownloadSnapshot": True,
    },
    ANALYTICS_SERVICE.full_name: {
        "GetSearchAnalytics": True,
        "GetVectorAnalytics": True,
        "GetUsageAnalytics": True,
        "ListSearchQueries": True,
        # A second attempt would count the same events twice.
        "RecordUsage": False,
    },
    # Generation has no side effects (streams are retried only before their
    # first message).
    INFERENCE_SERVICE.full_name: {
        "GenerateText": True,
        "StreamGenerateText": True,
        "BatchGenerateText": True,
        "CountTokens": True,
        "GetModelInfo": True,
    },
}

# The generated stub class of each backend service.
_STUBS: Mapping[str, StubFactory] = {
    EMBEDDING_SERVICE.full_name: epb_grpc.EmbeddingServiceStub,
    VECTOR_SERVICE.full_name: vpb_grpc.VectorServiceStub,
    ANALYTICS_SERVICE.full_name: apb_grpc.AnalyticsServiceStub,
    INFERENCE_SERVICE.full_name: ipb_grpc.InferenceServiceStub,
}


OwnMetadata = Callable[[], Metadata]


def _credentials(options: CallOptions, own: OwnMetadata | None) -> CallOptions:
    """``options``, with the gateway's own credentials where they carry no caller's
    (a call made for no request, such as a usage record; see ``identity``)."""
    if own is None or any(key == AUTHORIZATION_METADATA for key, _ in options.metadata):
        return options
    return replace(options, metadata=options.metadata + own())


@dataclass(frozen=True, slots=True)
class Unary(Generic[Req, Resp]):
    """A unary RPC bound to its pool: ``await client.rpc(request, options)``."""

    pool: ReplicaPool
    rpc: Rpc[Req, Resp]
    own: OwnMetadata | None = None

    def __call__(self, request: Req, options: CallOptions) -> Coroutine[Any, Any, Resp]:
        return self.pool.unary(self.rpc, request, _credentials(options, self.own))


@dataclass(frozen=True, slots=True)
class ServerStream(Generic[Req, Resp]):
    """A server-streaming RPC bound to its pool: ``async for m in client.rpc(...)``."""

    pool: ReplicaPool
    rpc: Rpc[Req, Resp]
    own: OwnMetadata | None = None

    def __call__(self, request: Req, options: CallOptions) -> AsyncIterator[Resp]:
        return self.pool.stream(self.rpc, request, _credentials(options, self.own))


class _Service:
    """Binds RPCs of one service to the pool that serves it. An RPC is named
    by its request and response messages (``<Method>Request`` and
    ``<Method>Response``, the protos' lint rule), which also type the call;
    a pair that is not an RPC of the service fails here, at startup."""

    def __init__(
        self, pool: ReplicaPool, service: ServiceDescriptor, own: OwnMetadata | None = None
    ) -> None:
        self._pool = pool
        self._service = service
        self._own = own

    def _rpc(self, request: type[Req], response: type[Resp], streams: bool) -> Rpc[Req, Resp]:
        name = request.DESCRIPTOR.name.removesuffix("Request")
        method = self._service.methods_by_name.get(name)
        if (
            method is None
            or method.input_type.full_name != request.DESCRIPTOR.full_name
            or method.output_type.full_name != response.DESCRIPTOR.full_name
            or method.server_streaming != streams
        ):
            kind = "server-streaming" if streams else "unary"
            raise TypeError(
                f"{self._service.full_name} has no {kind} RPC from"
                f" {request.DESCRIPTOR.full_name} to {response.DESCRIPTOR.full_name}"
            )
        service = self._service.full_name
        return Rpc(service, name, IDEMPOTENT[service][name])

    def unary(self, request: type[Req], response: type[Resp]) -> Unary[Req, Resp]:
        return Unary(self._pool, self._rpc(request, response, streams=False), self._own)

    def stream(self, request: type[Req], response: type[Resp]) -> ServerStream[Req, Resp]:
        return ServerStream(self._pool, self._rpc(request, response, streams=True), self._own)


class EmbeddingClient:
    """Embeds texts, in batches of at most ``batch_size`` per call."""

    _MODEL_INFO_TTL_S = 60.0

    def __init__(self, pool: ReplicaPool, batch_size: int) -> None:
        self.pool = pool
        self._batch_size = batch_size
        self._model_info: tuple[epb.ModelInfo, float] | None = None
        rpc = _Service(pool, EMBEDDING_SERVICE)
        self.embed_texts = rpc.unary(epb.EmbedTextsRequest, epb.EmbedTextsResponse)
        self.get_model_info = rpc.unary(epb.GetModelInfoRequest, epb.GetModelInfoResponse)

    async def embed(self, texts: Sequence[str], options: CallOptions) -> list[list[float]]:
        """One vector per text, in order."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            request = epb.EmbedTextsRequest(texts=texts[start : start + self._batch_size])
            response = await self.embed_texts(request, options)
            vectors.extend(list(e.values) for e in response.embeddings)
        if len(vectors) != len(texts):
            raise InvalidArgument(
                f"the embedding service returned {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors

    async def model_info(self, options: CallOptions) -> epb.ModelInfo:
        """The loaded model's description, cached for a minute."""
        cached = self._model_info
        if cached is not None and time.monotonic() - cached[1] < self._MODEL_INFO_TTL_S:
            return cached[0]
        response = await self.get_model_info(epb.GetModelInfoRequest(), options)
        self._model_info = (response.model, time.monotonic())
        return response.model


class VectorClient:
    """The vector service; ``own`` is the gateway's own credentials, for what it does
    on its own authority (``CallOptions.as_gateway``)."""

    def __init__(self, pool: ReplicaPool, own: OwnMetadata | None = None) -> None:
        self.pool = pool
        service = _Service(pool, VECTOR_SERVICE, own)
        rpc = service.unary
        self.create_collection = rpc(vpb.CreateCollectionRequest, vpb.CreateCollectionResponse)
        self.get_collection = rpc(vpb.GetCollectionRequest, vpb.GetCollectionResponse)
        self.list_collections = rpc(vpb.ListCollectionsRequest, vpb.ListCollectionsResponse)
        self.update_collection = rpc(vpb.UpdateCollectionRequest, vpb.UpdateCollectionResponse)
        self.delete_collection = rpc(vpb.DeleteCollectionRequest, vpb.DeleteCollectionResponse)
        self.upsert_points = rpc(vpb.UpsertPointsRequest, vpb.UpsertPointsResponse)
        self.get_points = rpc(vpb.GetPointsRequest, vpb.GetPointsResponse)
        self.update_points = rpc(vpb.UpdatePointsRequest, vpb.UpdatePointsResponse)
        self.delete_points = rpc(vpb.DeletePointsRequest, vpb.DeletePointsResponse)
        self.batch_update_points = rpc(vpb.BatchUpdatePointsRequest, vpb.BatchUpdatePointsResponse)
        self.list_points = rpc(vpb.ListPointsRequest, vpb.ListPointsResponse)
        self.count_points = rpc(vpb.CountPointsRequest, vpb.CountPointsResponse)
        self.search_points = rpc(vpb.SearchPointsRequest, vpb.SearchPointsResponse)
        self.batch_search_points = rpc(vpb.BatchSearchPointsRequest, vpb.BatchSearchPointsResponse)
        self.recommend_points = rpc(vpb.RecommendPointsRequest, vpb.RecommendPointsResponse)
        self.cluster_points = rpc(vpb.ClusterPointsRequest, vpb.ClusterPointsResponse)
        self.create_snapshot = rpc(vpb.CreateSnapshotRequest, vpb.CreateSnapshotResponse)
        self.list_snapshots = rpc(vpb.ListSnapshotsRequest, vpb.ListSnapshotsResponse)
        self.restore_snapshot = rpc(vpb.RestoreSnapshotRequest, vpb.RestoreSnapshotResponse)
        self.delete_snapshot = rpc(vpb.DeleteSnapshotRequest, vpb.DeleteSnapshotResponse)
        self.download_snapshot = service.stream(
            vpb.DownloadSnapshotRequest, vpb.DownloadSnapshotResponse
        )


class AnalyticsClient:
    """The analytics service, served by the vector service's replicas; ``own`` is
    the gateway's own credentials, for the usage records it writes for no caller."""

    def __init__(self, pool: ReplicaPool, own: OwnMetadata | None = None) -> None:
        self.pool = pool
        rpc = _Service(pool, ANALYTICS_SERVICE, own).unary
        self.search_analytics = rpc(apb.GetSearchAnalyticsRequest, apb.GetSearchAnalyticsResponse)
        self.vector_analytics = rpc(apb.GetVectorAnalyticsRequest, apb.GetVectorAnalyticsResponse)
        self.usage_analytics = rpc(apb.GetUsageAnalyticsRequest, apb.GetUsageAnalyticsResponse)
        self.search_queries = rpc(apb.ListSearchQueriesRequest, apb.ListSearchQueriesResponse)
        self.record_usage = rpc(apb.RecordUsageRequest, apb.RecordUsageResponse)


class InferenceClient:
    def __init__(self, pool: ReplicaPool) -> None:
        self.pool = pool
        rpc = _Service(pool, INFERENCE_SERVICE)
        self.generate = rpc.unary(ipb.GenerateTextRequest, ipb.GenerateTextResponse)
        self.stream = rpc.stream(ipb.StreamGenerateTextRequest, ipb.StreamGenerateTextResponse)
        self.batch_generate = rpc.unary(ipb.BatchGenerateTextRequest, ipb.BatchGenerateTextResponse)
        self.count_tokens = rpc.unary(ipb.CountTokensRequest, ipb.CountTokensResponse)
        self.get_model_info = rpc.unary(ipb.GetModelInfoRequest, ipb.GetModelInfoResponse)

    async def model_info(self, options: CallOptions) -> ipb.GetModelInfoResponse:
        return await self.get_model_info(ipb.GetModelInfoRequest(), options)


class Backends:
    """Every backend the gateway calls: pools and typed clients."""

    def __init__(self, settings: GatewaySettings) -> None:
        identity = GatewayIdentity(settings)

        def pool(backend: str, addresses: Sequence[str], *served: ServiceDescriptor) -> ReplicaPool:
            return ReplicaPool(
                backend,
                served[0].full_name,
                addresses,
                {s.full_name: _STUBS[s.full_name] for s in served},
                failure_threshold=settings.breaker_failure_threshold,
                open_s=settings.breaker_open_s,
                tls=settings,
            )

        self.embedding_pool = pool("embedding", settings.embedding_addresses, EMBEDDING_SERVICE)
        self.vector_pool = pool(
            "vector", settings.vector_addresses, VECTOR_SERVICE, ANALYTICS_SERVICE
        )
        self.inference_pool = pool("inference", settings.inference_addresses, INFERENCE_SERVICE)
        self.embedding = EmbeddingClient(self.embedding_pool, settings.embed_batch_size)
        self.vector = VectorClient(self.vector_pool, identity.metadata)
        self.analytics = AnalyticsClient(self.vector_pool, identity.metadata)
        self.inference = InferenceClient(self.inference_pool)
        # Renewed client certificates go into new channels (built on the event loop).
        self._watch: asyncio.Task[None] | None = None
        if settings.grpc_tls_dir is not None:
            self._watch = asyncio.get_running_loop().create_task(
                watch_certificates(settings.grpc_tls_dir, self.reopen), name="tls-watch"
            )

    def reopen(self) -> None:
        """New channels to every replica, with the certificates as they are now."""
        for pool in self.pools:
            pool.reopen()

    @property
    def pools(self) -> list[ReplicaPool]:
        return [self.embedding_pool, self.vector_pool, self.inference_pool]

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for pool in self.pools:
            await pool.close()
