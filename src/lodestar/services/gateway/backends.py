"""Typed clients of the backend services, over replica pools.

Each method says once whether its RPC is idempotent (safe to retry on
UNAVAILABLE). Upserts count as idempotent because the gateway gives every new
point its id before sending it. Generation has no side effects, so it is
retried too (before the first token, for streams).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as epb_grpc
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.gateway.resilience import CallOptions, ReplicaPool
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import analytics_service_pb2_grpc as apb_grpc
from lodestar.vector.v1 import vector_service_pb2 as vpb
from lodestar.vector.v1 import vector_service_pb2_grpc as vpb_grpc

EMBEDDING_SERVICE = "lodestar.embedding.v1.EmbeddingService"
VECTOR_SERVICE = "lodestar.vector.v1.VectorService"
INFERENCE_SERVICE = "lodestar.inference.v1.InferenceService"

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class VectorStubs:
    vector: vpb_grpc.VectorServiceAsyncStub
    analytics: apb_grpc.AnalyticsServiceAsyncStub


def _vector_stubs(channel: grpc.aio.Channel) -> VectorStubs:
    return VectorStubs(vpb_grpc.VectorServiceStub(channel), apb_grpc.AnalyticsServiceStub(channel))


def _embedding_stub(channel: grpc.aio.Channel) -> epb_grpc.EmbeddingServiceAsyncStub:
    return epb_grpc.EmbeddingServiceStub(channel)


def _inference_stub(channel: grpc.aio.Channel) -> ipb_grpc.InferenceServiceAsyncStub:
    return ipb_grpc.InferenceServiceStub(channel)


class EmbeddingClient:
    """Embeds texts, in batches of at most ``batch_size`` per call."""

    _MODEL_INFO_TTL_S = 60.0

    def __init__(self, pool: ReplicaPool[epb_grpc.EmbeddingServiceAsyncStub], batch_size: int):
        self.pool = pool
        self._batch_size = batch_size
        self._model_info: tuple[epb.ModelInfo, float] | None = None

    async def embed(self, texts: Sequence[str], options: CallOptions) -> list[list[float]]:
        """One vector per text, in order."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            response = await self._embed_chunk(texts[start : start + self._batch_size], options)
            vectors.extend(list(e.values) for e in response.embeddings)
        if len(vectors) != len(texts):
            raise InvalidArgument(
                f"the embedding service returned {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors

    async def _embed_chunk(
        self, texts: Sequence[str], options: CallOptions
    ) -> epb.EmbedTextsResponse:
        request = epb.EmbedTextsRequest(texts=list(texts))
        return await self.pool.unary(
            "EmbedTexts",
            lambda s, t, md: s.EmbedTexts(request, timeout=t, metadata=md),
            options,
            idempotent=True,
        )

    async def model_info(self, options: CallOptions) -> epb.ModelInfo:
        cached = self._model_info
        if cached is not None and time.monotonic() - cached[1] < self._MODEL_INFO_TTL_S:
            return cached[0]
        response = await self.pool.unary(
            "GetModelInfo",
            lambda s, t, md: s.GetModelInfo(epb.GetModelInfoRequest(), timeout=t, metadata=md),
            options,
            idempotent=True,
        )
        self._model_info = (response.model, time.monotonic())
        return response.model


class VectorClient:
    def __init__(self, pool: ReplicaPool[VectorStubs]) -> None:
        self.pool = pool

    async def create_collection(
        self, r: vpb.CreateCollectionRequest, o: CallOptions
    ) -> vpb.CreateCollectionResponse:
        return await self.pool.unary(
            "CreateCollection",
            lambda s, t, md: s.vector.CreateCollection(r, timeout=t, metadata=md),
            o,
            idempotent=False,
        )

    async def get_collection(
        self, r: vpb.GetCollectionRequest, o: CallOptions
    ) -> vpb.GetCollectionResponse:
        return await self.pool.unary(
            "GetCollection",
            lambda s, t, md: s.vector.GetCollection(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def list_collections(
        self, r: vpb.ListCollectionsRequest, o: CallOptions
    ) -> vpb.ListCollectionsResponse:
        return await self.pool.unary(
            "ListCollections",
            lambda s, t, md: s.vector.ListCollections(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def update_collection(
        self, r: vpb.UpdateCollectionRequest, o: CallOptions
    ) -> vpb.UpdateCollectionResponse:
        return await self.pool.unary(
            "UpdateCollection",
            lambda s, t, md: s.vector.UpdateCollection(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def delete_collection(
        self, r: vpb.DeleteCollectionRequest, o: CallOptions
    ) -> vpb.DeleteCollectionResponse:
        return await self.pool.unary(
            "DeleteCollection",
            lambda s, t, md: s.vector.DeleteCollection(r, timeout=t, metadata=md),
            o,
            idempotent=False,
        )

    async def upsert_points(
        self, r: vpb.UpsertPointsRequest, o: CallOptions
    ) -> vpb.UpsertPointsResponse:
        return await self.pool.unary(
            "UpsertPoints",
            lambda s, t, md: s.vector.UpsertPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def get_points(self, r: vpb.GetPointsRequest, o: CallOptions) -> vpb.GetPointsResponse:
        return await self.pool.unary(
            "GetPoints",
            lambda s, t, md: s.vector.GetPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def update_points(
        self, r: vpb.UpdatePointsRequest, o: CallOptions
    ) -> vpb.UpdatePointsResponse:
        return await self.pool.unary(
            "UpdatePoints",
            lambda s, t, md: s.vector.UpdatePoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def delete_points(
        self, r: vpb.DeletePointsRequest, o: CallOptions
    ) -> vpb.DeletePointsResponse:
        return await self.pool.unary(
            "DeletePoints",
            lambda s, t, md: s.vector.DeletePoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def batch_update_points(
        self, r: vpb.BatchUpdatePointsRequest, o: CallOptions
    ) -> vpb.BatchUpdatePointsResponse:
        return await self.pool.unary(
            "BatchUpdatePoints",
            lambda s, t, md: s.vector.BatchUpdatePoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def list_points(self, r: vpb.ListPointsRequest, o: CallOptions) -> vpb.ListPointsResponse:
        return await self.pool.unary(
            "ListPoints",
            lambda s, t, md: s.vector.ListPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def count_points(
        self, r: vpb.CountPointsRequest, o: CallOptions
    ) -> vpb.CountPointsResponse:
        return await self.pool.unary(
            "CountPoints",
            lambda s, t, md: s.vector.CountPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def search_points(
        self, r: vpb.SearchPointsRequest, o: CallOptions
    ) -> vpb.SearchPointsResponse:
        return await self.pool.unary(
            "SearchPoints",
            lambda s, t, md: s.vector.SearchPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def batch_search_points(
        self, r: vpb.BatchSearchPointsRequest, o: CallOptions
    ) -> vpb.BatchSearchPointsResponse:
        return await self.pool.unary(
            "BatchSearchPoints",
            lambda s, t, md: s.vector.BatchSearchPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def recommend_points(
        self, r: vpb.RecommendPointsRequest, o: CallOptions
    ) -> vpb.RecommendPointsResponse:
        return await self.pool.unary(
            "RecommendPoints",
            lambda s, t, md: s.vector.RecommendPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def cluster_points(
        self, r: vpb.ClusterPointsRequest, o: CallOptions
    ) -> vpb.ClusterPointsResponse:
        return await self.pool.unary(
            "ClusterPoints",
            lambda s, t, md: s.vector.ClusterPoints(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def create_snapshot(
        self, r: vpb.CreateSnapshotRequest, o: CallOptions
    ) -> vpb.CreateSnapshotResponse:
        return await self.pool.unary(
            "CreateSnapshot",
            lambda s, t, md: s.vector.CreateSnapshot(r, timeout=t, metadata=md),
            o,
            idempotent=False,
        )

    async def list_snapshots(
        self, r: vpb.ListSnapshotsRequest, o: CallOptions
    ) -> vpb.ListSnapshotsResponse:
        return await self.pool.unary(
            "ListSnapshots",
            lambda s, t, md: s.vector.ListSnapshots(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def restore_snapshot(
        self, r: vpb.RestoreSnapshotRequest, o: CallOptions
    ) -> vpb.RestoreSnapshotResponse:
        return await self.pool.unary(
            "RestoreSnapshot",
            lambda s, t, md: s.vector.RestoreSnapshot(r, timeout=t, metadata=md),
            o,
            idempotent=False,
        )

    async def delete_snapshot(
        self, r: vpb.DeleteSnapshotRequest, o: CallOptions
    ) -> vpb.DeleteSnapshotResponse:
        return await self.pool.unary(
            "DeleteSnapshot",
            lambda s, t, md: s.vector.DeleteSnapshot(r, timeout=t, metadata=md),
            o,
            idempotent=False,
        )


class AnalyticsClient:
    """The analytics service, served by the vector service's replicas."""

    def __init__(self, pool: ReplicaPool[VectorStubs]) -> None:
        self.pool = pool

    async def search_analytics(
        self, r: apb.GetSearchAnalyticsRequest, o: CallOptions
    ) -> apb.GetSearchAnalyticsResponse:
        return await self.pool.unary(
            "GetSearchAnalytics",
            lambda s, t, md: s.analytics.GetSearchAnalytics(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def vector_analytics(
        self, r: apb.GetVectorAnalyticsRequest, o: CallOptions
    ) -> apb.GetVectorAnalyticsResponse:
        return await self.pool.unary(
            "GetVectorAnalytics",
            lambda s, t, md: s.analytics.GetVectorAnalytics(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def usage_analytics(
        self, r: apb.GetUsageAnalyticsRequest, o: CallOptions
    ) -> apb.GetUsageAnalyticsResponse:
        return await self.pool.unary(
            "GetUsageAnalytics",
            lambda s, t, md: s.analytics.GetUsageAnalytics(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def record_usage(
        self, r: apb.RecordUsageRequest, o: CallOptions
    ) -> apb.RecordUsageResponse:
        # Not retried: a retry after a lost reply would count the events twice.
        return await self.pool.unary(
            "RecordUsage",
            lambda s, t, md: s.analytics.RecordUsage(r, timeout=t, metadata=md),
            o,
            idempotent=False,
        )


class InferenceClient:
    def __init__(self, pool: ReplicaPool[ipb_grpc.InferenceServiceAsyncStub]) -> None:
        self.pool = pool

    async def generate(
        self, r: ipb.GenerateTextRequest, o: CallOptions
    ) -> ipb.GenerateTextResponse:
        return await self.pool.unary(
            "GenerateText",
            lambda s, t, md: s.GenerateText(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    def stream(
        self, r: ipb.StreamGenerateTextRequest, o: CallOptions
    ) -> AsyncIterator[ipb.StreamGenerateTextResponse]:
        return self.pool.stream(
            "StreamGenerateText",
            lambda s, t, md: s.StreamGenerateText(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def batch_generate(
        self, r: ipb.BatchGenerateTextRequest, o: CallOptions
    ) -> ipb.BatchGenerateTextResponse:
        return await self.pool.unary(
            "BatchGenerateText",
            lambda s, t, md: s.BatchGenerateText(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def count_tokens(
        self, r: ipb.CountTokensRequest, o: CallOptions
    ) -> ipb.CountTokensResponse:
        return await self.pool.unary(
            "CountTokens",
            lambda s, t, md: s.CountTokens(r, timeout=t, metadata=md),
            o,
            idempotent=True,
        )

    async def model_info(self, o: CallOptions) -> ipb.GetModelInfoResponse:
        return await self.pool.unary(
            "GetModelInfo",
            lambda s, t, md: s.GetModelInfo(ipb.GetModelInfoRequest(), timeout=t, metadata=md),
            o,
            idempotent=True,
        )


class Backends:
    """Every backend the gateway calls: pools and typed clients."""

    def __init__(self, settings: GatewaySettings) -> None:
        def pool(
            backend: str,
            service: str,
            addresses: Sequence[str],
            make: Callable[[grpc.aio.Channel], S],
        ) -> ReplicaPool[S]:
            return ReplicaPool(
                backend,
                service,
                addresses,
                make,
                failure_threshold=settings.breaker_failure_threshold,
                open_s=settings.breaker_open_s,
                probe_timeout_s=settings.probe_timeout_s,
                reconnect_backoff_max_s=settings.reconnect_backoff_max_s,
            )

        self.embedding_pool = pool(
            "embedding", EMBEDDING_SERVICE, settings.embedding_addresses, _embedding_stub
        )
        self.vector_pool = pool("vector", VECTOR_SERVICE, settings.vector_addresses, _vector_stubs)
        self.inference_pool = pool(
            "inference", INFERENCE_SERVICE, settings.inference_addresses, _inference_stub
        )
        self.embedding = EmbeddingClient(self.embedding_pool, settings.embed_batch_size)
        self.vector = VectorClient(self.vector_pool)
        self.analytics = AnalyticsClient(self.vector_pool)
        self.inference = InferenceClient(self.inference_pool)

    @property
    def pools(self) -> list[ReplicaPool[Any]]:
        return [self.embedding_pool, self.vector_pool, self.inference_pool]

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()
