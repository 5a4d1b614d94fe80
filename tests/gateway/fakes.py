"""Small in-process backends for testing the gateway's own logic: real
grpc.aio servers (the platform's GrpcServer, with health) implementing the
generated servicer interfaces with canned, recorded behaviour."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as epb_grpc
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.inference.v1 import inference_service_pb2_grpc as ipb_grpc
from lodestar.runtime.errors import InvalidArgument, LodestarError, NotFound
from lodestar.runtime.server import GrpcServer, ServiceRegistration
from lodestar.runtime.settings import ServerSettings
from lodestar.vector.v1 import analytics_service_pb2 as apb
from lodestar.vector.v1 import analytics_service_pb2_grpc as apb_grpc
from lodestar.vector.v1 import vector_service_pb2 as vpb
from lodestar.vector.v1 import vector_service_pb2_grpc as vpb_grpc

DIMENSION = 4


# The file of the fake vector service's snapshot snap-1.
SNAPSHOT_FILE = bytes(range(256)) * 12


def fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:DIMENSION]]


@dataclass
class Recorder:
    """Requests (and their metadata) each fake received, by method."""

    calls: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    # Errors raised by the next calls (any method), first first.
    fail_next: list[LodestarError] = field(default_factory=list)
    delay_s: float = 0.0
    # Set by every call (tests clear it to wait for the next one).
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def record(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        metadata = {k: str(v) for k, v in (context.invocation_metadata() or ())}
        metadata["time_remaining"] = str(context.time_remaining())
        self.calls.append((method, request, metadata))
        self.called.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_next:
            raise self.fail_next.pop(0)

    def last(self, method: str) -> Any:
        for name, request, _ in reversed(self.calls):
            if name == method:
                return request
        raise AssertionError(f"{method} was not called; calls: {[c[0] for c in self.calls]}")

    def last_metadata(self, method: str) -> dict[str, str]:
        for name, _, metadata in reversed(self.calls):
            if name == method:
                return metadata
        raise AssertionError(f"{method} was not called")

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeEmbedding(epb_grpc.EmbeddingServiceServicer):
    def __init__(self) -> None:
        self.recorder = Recorder()

    async def EmbedTexts(
        self, request: epb.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> epb.EmbedTextsResponse:
        await self.recorder.record("EmbedTexts", request, context)
        return epb.EmbedTextsResponse(
            embeddings=[
                epb.Embedding(values=fake_vector(t), token_count=len(t.split()))
                for t in request.texts
            ],
            model="fake-embed",
            dimension=DIMENSION,
        )

    async def GetModelInfo(
        self, request: epb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> epb.GetModelInfoResponse:
        await self.recorder.record("GetModelInfo", request, context)
        return epb.GetModelInfoResponse(
            model=epb.ModelInfo(name="fake-embed", dimension=DIMENSION, max_texts_per_request=64)
        )


def _collection(name: str) -> vpb.Collection:
    return vpb.Collection(
        name=name,
        config=vpb.CollectionConfig(dimension=DIMENSION, distance=vpb.DISTANCE_COSINE),
        points_count=3,
        status=vpb.COLLECTION_STATUS_READY,
    )


# The one document the fake holds (chunk 0 of its only version).
FAKE_DOCUMENT_ID = "doc-1"


def _names_document(filter: vpb.Filter) -> bool:
    return any(
        c.field.key == "document_id" and c.field.match.keyword == FAKE_DOCUMENT_ID
        for c in filter.must
    )


def _document_head() -> vpb.Point:
    point = vpb.Point(id=vpb.PointId(uuid="6f1c4d2e-0000-5000-8000-000000000001"))
    point.payload.update(
        {
            "document_id": FAKE_DOCUMENT_ID,
            "document_version": "v1",
            "chunk_index": 0,
            "chunk_count": 1,
            "title": "Fake",
            "source": "fake.txt",
            "text": "hello",
        }
    )
    return point


def _scored(request_with_vector: bool) -> vpb.ScoredPoint:
    point = vpb.ScoredPoint(id=vpb.PointId(num=1), score=0.5)
    point.payload.update({"text": "hello", "n": 3})
    if request_with_vector:
        point.vector.extend([0.1] * DIMENSION)
    return point


class FakeVector(vpb_grpc.VectorServiceServicer):
    """Answers every RPC; point 404 does not exist; collection 'missing' neither."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder or Recorder()

    async def _rec(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        await self.recorder.record(method, request, context)

    async def CreateCollection(self, request: Any, context: Any) -> Any:
        await self._rec("CreateCollection", request, context)
        collection = _collection(request.name)
        collection.config.CopyFrom(request.config)
        return vpb.CreateCollectionResponse(collection=collection)

    async def GetCollection(self, request: Any, context: Any) -> Any:
        await self._rec("GetCollection", request, context)
        if request.name == "missing":
            raise NotFound(
                f"collection {request.name!r} does not exist", reason="COLLECTION_NOT_FOUND"
            )
        return vpb.GetCollectionResponse(collection=_collection(request.name))

    async def ListCollections(self, request: Any, context: Any) -> Any:
        await self._rec("ListCollections", request, context)
        return vpb.ListCollectionsResponse(
            collections=[_collection(n) for n in ("alpha", "docs-1", "docs-2")]
        )

    async def UpdateCollection(self, request: Any, context: Any) -> Any:
        await self._rec("UpdateCollection", request, context)
        return vpb.UpdateCollectionResponse(collection=_collection(request.name))

    async def DeleteCollection(self, request: Any, context: Any) -> Any:
        await self._rec("DeleteCollection", request, context)
        return vpb.DeleteCollectionResponse()

    async def UpsertPoints(self, request: Any, context: Any) -> Any:
        await self._rec("UpsertPoints", request, context)
        for i, point in enumerate(request.points):
            if len(point.vector) != DIMENSION:
                raise InvalidArgument(
                    f"points[{i}].vector has {len(point.vector)} dimensions, expected {DIMENSION}",
                    field=f"points[{i}].vector",
                    reason="DIMENSION_MISMATCH",
                )
        return vpb.UpsertPointsResponse(ids=[p.id for p in request.points])

    async def GetPoints(self, request: Any, context: Any) -> Any:
        await self._rec("GetPoints", request, context)
        points = []
        for point_id in request.ids:
            if point_id.num == 404:
                continue
            point = vpb.Point(id=point_id)
            if request.with_vector:
                point.vector.extend([0.25] * DIMENSION)
            if request.with_payload:
                point.payload.update({"tenant": request.tenant, "n": 1})
            points.append(point)
        return vpb.GetPointsResponse(points=points)

    async def UpdatePoints(self, request: Any, context: Any) -> Any:
        await self._rec("UpdatePoints", request, context)
        if any(u.id.num == 404 for u in request.updates):
            raise NotFound("point 404 does not exist", reason="POINT_NOT_FOUND")
        return vpb.UpdatePointsResponse(updated_count=len(request.updates))

    async def DeletePoints(self, request: Any, context: Any) -> Any:
        await self._rec("DeletePoints", request, context)
        count = sum(1 for i in request.selector.ids if i.num != 404)
        if not request.selector.ids and _names_document(request.selector.filter):
            count = 1
        return vpb.DeletePointsResponse(deleted_count=count)

    async def BatchUpdatePoints(self, request: Any, context: Any) -> Any:
        await self._rec("BatchUpdatePoints", request, context)
        results = []
        for op in request.operations:
            if op.WhichOneof("kind") == "upsert":
                results.append(
                    vpb.OperationResult(
                        affected_count=len(op.upsert.points), ids=[p.id for p in op.upsert.points]
                    )
                )
            else:
                results.append(vpb.OperationResult(affected_count=1))
        return vpb.BatchUpdatePointsResponse(results=results)

    async def ListPoints(self, request: Any, context: Any) -> Any:
        await self._rec("ListPoints", request, context)
        if _names_document(request.filter):
            return vpb.ListPointsResponse(points=[_document_head()])
        return vpb.ListPointsResponse()

    async def CountPoints(self, request: Any, context: Any) -> Any:
        await self._rec("CountPoints", request, context)
        return vpb.CountPointsResponse(count=3)

    async def SearchPoints(self, request: Any, context: Any) -> Any:
        await self._rec("SearchPoints", request, context)
        return vpb.SearchPointsResponse(points=[_scored(request.with_vector)], time_ms=0.25)

    async def BatchSearchPoints(self, request: Any, context: Any) -> Any:
        await self._rec("BatchSearchPoints", request, context)
        return vpb.BatchSearchPointsResponse(
            results=[
                vpb.SearchPointsResponse(points=[_scored(s.with_vector)], time_ms=0.1)
                for s in request.searches
            ]
        )

    async def RecommendPoints(self, request: Any, context: Any) -> Any:
        await self._rec("RecommendPoints", request, context)
        return vpb.RecommendPointsResponse(points=[_scored(request.with_vector)], time_ms=0.3)

    async def ClusterPoints(self, request: Any, context: Any) -> Any:
        await self._rec("ClusterPoints", request, context)
        return vpb.ClusterPointsResponse(
            clusters=[
                vpb.Cluster(
                    id=0,
                    centroid=[0.5] * DIMENSION,
                    size=3,
                    member_ids=[vpb.PointId(num=1)],
                    representatives=[_scored(False)],
                )
            ],
            total_points=3,
            sampled_points=3,
        )

    async def CreateSnapshot(self, request: Any, context: Any) -> Any:
        await self._rec("CreateSnapshot", request, context)
        return vpb.CreateSnapshotResponse(
            snapshot=vpb.Snapshot(name="snap-1", collection=request.collection, size_bytes=10)
        )

    async def ListSnapshots(self, request: Any, context: Any) -> Any:
        await self._rec("ListSnapshots", request, context)
        return vpb.ListSnapshotsResponse(
            snapshots=[vpb.Snapshot(name="snap-1", collection=request.collection)]
        )

    async def RestoreSnapshot(self, request: Any, context: Any) -> Any:
        await self._rec("RestoreSnapshot", request, context)
        return vpb.RestoreSnapshotResponse(
            collection=_collection(request.target_collection or request.collection)
        )

    async def DeleteSnapshot(self, request: Any, context: Any) -> Any:
        await self._rec("DeleteSnapshot", request, context)
        return vpb.DeleteSnapshotResponse()

    async def DownloadSnapshot(
        self, request: Any, context: Any
    ) -> AsyncIterator[vpb.DownloadSnapshotResponse]:
        """Snapshot snap-1 is SNAPSHOT_FILE, in three pieces; no other snapshot exists."""
        await self._rec("DownloadSnapshot", request, context)
        if request.snapshot != "snap-1":
            raise NotFound(
                f"collection {request.collection!r} has no snapshot {request.snapshot!r}",
                reason="SNAPSHOT_NOT_FOUND",
            )
        info = vpb.Snapshot(
            name="snap-1", collection=request.collection, size_bytes=len(SNAPSHOT_FILE)
        )
        third = len(SNAPSHOT_FILE) // 3
        for start in range(0, len(SNAPSHOT_FILE), third):
            piece = vpb.DownloadSnapshotResponse(data=SNAPSHOT_FILE[start : start + third])
            if start == 0:
                piece.snapshot.CopyFrom(info)
            yield piece


class FakeAnalytics(apb_grpc.AnalyticsServiceServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def GetSearchAnalytics(self, request: Any, context: Any) -> Any:
        await self.recorder.record("GetSearchAnalytics", request, context)
        reply = apb.GetSearchAnalyticsResponse(
            total=apb.SearchStats(search_count=2, latency_p50_ms=1.5),
            popular_queries=[apb.QueryCount(query_text="hello", count=2)],
        )
        for i in range(2 if request.bucket_width_seconds else 0):
            bucket = reply.timeline.add(
                search_count=i + 1, latency_p50_ms=1.5, latency_p99_ms=2.0 * (i + 1)
            )
            bucket.start_time.seconds = 1_735_689_600 + i * request.bucket_width_seconds
        return reply

    async def GetVectorAnalytics(self, request: Any, context: Any) -> Any:
        await self.recorder.record("GetVectorAnalytics", request, context)
        return apb.GetVectorAnalyticsResponse(
            collections=[apb.CollectionGrowth(collection="alpha", points_count=3)], total_points=3
        )

    async def RecordUsage(self, request: Any, context: Any) -> Any:
        await self.recorder.record("RecordUsage", request, context)
        return apb.RecordUsageResponse()

    async def GetUsageAnalytics(self, request: Any, context: Any) -> Any:
        await self.recorder.record("GetUsageAnalytics", request, context)
        return apb.GetUsageAnalyticsResponse(
            usage=[apb.UsageStats(subject="alice", route="POST /api/v1/generate", request_count=1)]
        )


class FakeInference(ipb_grpc.InferenceServiceServicer):
    def __init__(self) -> None:
        self.recorder = Recorder()
        self.completion_tokens = 5
        self.stream_tokens = 5
        self.stream_delay_s = 0.0
        # Before the first token only: a generation waiting in the queue.
        self.first_token_delay_s = 0.0
        self.stream_started = asyncio.Event()
        self.stream_cancelled = asyncio.Event()

    def _answer(self, request: Any) -> ipb.GenerateTextResponse:
        return ipb.GenerateTextResponse(
            text="Hello from the fake model",
            finish_reason=ipb.FINISH_REASON_STOP,
            usage=ipb.Usage(
                prompt_tokens=3,
                completion_tokens=self.completion_tokens,
                total_tokens=3 + self.completion_tokens,
            ),
            model="fake-llm",
            timing=ipb.Timing(time_to_first_token_ms=1.0, total_ms=2.0),
        )

    async def GenerateText(self, request: Any, context: Any) -> Any:
        await self.recorder.record("GenerateText", request, context)
        return self._answer(request)

    async def StreamGenerateText(
        self, request: Any, context: Any
    ) -> AsyncIterator[ipb.StreamGenerateTextResponse]:
        await self.recorder.record("StreamGenerateText", request, context)
        self.stream_started.set()
        try:
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            for i in range(self.stream_tokens):
                if self.stream_delay_s:
                    await asyncio.sleep(self.stream_delay_s)
                yield ipb.StreamGenerateTextResponse(delta=f"tok{i} ", model="fake-llm")
        except asyncio.CancelledError:
            self.stream_cancelled.set()
            raise
        yield ipb.StreamGenerateTextResponse(
            finish_reason=ipb.FINISH_REASON_STOP,
            usage=ipb.Usage(
                prompt_tokens=3,
                completion_tokens=self.stream_tokens,
                total_tokens=3 + self.stream_tokens,
            ),
            model="fake-llm",
            timing=ipb.Timing(time_to_first_token_ms=1.0, total_ms=5.0),
        )

    async def BatchGenerateText(self, request: Any, context: Any) -> Any:
        await self.recorder.record("BatchGenerateText", request, context)
        results = []
        for item in request.requests:
            if item.prompt == "bad":
                results.append(
                    ipb.BatchGenerateTextResult(
                        error=ipb.ItemError(
                            code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                            message="prompt may not be 'bad'",
                            reason="BAD_PROMPT",
                        )
                    )
                )
            else:
                results.append(ipb.BatchGenerateTextResult(response=self._answer(item)))
        return ipb.BatchGenerateTextResponse(results=results)

    async def CountTokens(self, request: Any, context: Any) -> Any:
        await self.recorder.record("CountTokens", request, context)
        return ipb.CountTokensResponse(token_count=3, context_size=2048)

    async def GetModelInfo(self, request: Any, context: Any) -> Any:
        await self.recorder.record("GetModelInfo", request, context)
        return ipb.GetModelInfoResponse(model=ipb.ModelInfo(name="fake-llm", context_size=2048))


@dataclass
class FakeBackends:
    """The three fake services and their servers."""

    embedding: FakeEmbedding
    vector: FakeVector
    inference: FakeInference
    servers: dict[str, GrpcServer]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"

    async def stop(self) -> None:
        for server in self.servers.values():
            await server.stop(0)


async def start_vector_fake(vector: FakeVector, port: int = 0) -> GrpcServer:
    analytics = FakeAnalytics(vector.recorder)
    server = GrpcServer(
        ServerSettings(port=port, shutdown_grace_s=0),
        [
            ServiceRegistration(
                "lodestar.vector.v1.VectorService",
                lambda s: vpb_grpc.add_VectorServiceServicer_to_server(vector, s),
            ),
            ServiceRegistration(
                "lodestar.vector.v1.AnalyticsService",
                lambda s: apb_grpc.add_AnalyticsServiceServicer_to_server(analytics, s),
            ),
        ],
    )
    await server.start()
    return server


async def start_fakes() -> FakeBackends:
    embedding = FakeEmbedding()
    vector = FakeVector()
    inference = FakeInference()
    servers = {
        "embedding": GrpcServer(
            ServerSettings(port=0, shutdown_grace_s=0),
            [
                ServiceRegistration(
                    "lodestar.embedding.v1.EmbeddingService",
                    lambda s: epb_grpc.add_EmbeddingServiceServicer_to_server(embedding, s),
                )
            ],
        ),
        "inference": GrpcServer(
            ServerSettings(port=0, shutdown_grace_s=0),
            [
                ServiceRegistration(
                    "lodestar.inference.v1.InferenceService",
                    lambda s: ipb_grpc.add_InferenceServiceServicer_to_server(inference, s),
                )
            ],
        ),
    }
    for server in servers.values():
        await server.start()
    servers["vector"] = await start_vector_fake(vector)
    return FakeBackends(embedding, vector, inference, servers)
