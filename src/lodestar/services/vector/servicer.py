"""VectorService over gRPC: validation and protobuf conversion around ``VectorStore``."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any, Final

import grpc

from lodestar import limits
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector import convert, filter_convert
from lodestar.services.vector.models import (
    CollectionConfig,
    DeleteOp,
    DeletePayloadKeysOp,
    Operation,
    PointId,
    PointRecord,
    RecommendStrategy,
    SearchQuery,
    SetPayloadOp,
    UpsertOp,
)
from lodestar.services.vector.servicer_snapshots import SnapshotServicer
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.store import Example, PointChange, Search, VectorStore
from lodestar.vector.v1 import vector_service_pb2 as pb

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["VectorService"].full_name

_Context = grpc.aio.ServicerContext[Any, Any]


def _invalid(field: str, message: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field, reason=reason)


class VectorServicer(SnapshotServicer):
    """Every VectorService RPC (the snapshots' in ``SnapshotServicer``); bad input is
    INVALID_ARGUMENT naming the field."""

    def __init__(self, store: VectorStore, settings: VectorSettings) -> None:
        self._store = store
        self._settings = settings

    # --- collections ------------------------------------------------------------------------

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: _Context
    ) -> pb.CreateCollectionResponse:
        name = convert.collection_name(request.name, "name")
        if not request.HasField("config"):
            raise _invalid("config", "a collection needs a config with its dimension")
        config = convert.collection_config(request.config)
        info = await self._store.create_collection(name, config)
        return pb.CreateCollectionResponse(collection=convert.collection_to_pb(info))

    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: _Context
    ) -> pb.GetCollectionResponse:
        info = await self._store.get_collection(convert.collection_name(request.name, "name"))
        return pb.GetCollectionResponse(collection=convert.collection_to_pb(info))

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: _Context
    ) -> pb.ListCollectionsResponse:
        size = convert.page_size(request.page_size)
        state = convert.decode_page_token(request.page_token, "collections")
        after = state.get("a", "")
        if not isinstance(after, str):
            raise _invalid("page_token", "not a page token from a previous response")
        page, last = await self._store.list_collections(after, size)
        return pb.ListCollectionsResponse(
            collections=[convert.collection_to_pb(c) for c in page],
            next_page_token=convert.encode_page_token({"k": "collections", "a": last})
            if last
            else "",
        )

    async def UpdateCollection(
        self, request: pb.UpdateCollectionRequest, context: _Context
    ) -> pb.UpdateCollectionResponse:
        name = convert.collection_name(request.name, "name")
        update = convert.collection_update(request)
        await self._store.config(name)
        info = await self._store.update_collection(name, update)
        return pb.UpdateCollectionResponse(collection=convert.collection_to_pb(info))

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: _Context
    ) -> pb.DeleteCollectionResponse:
        await self._store.delete_collection(convert.collection_name(request.name, "name"))
        return pb.DeleteCollectionResponse()

    # --- point writes ----------------------------------------------------------------------

    async def _collection(self, name: str, field: str = "collection") -> CollectionConfig:
        return await self._store.config(convert.collection_name(name, field))

    def _check_batch(self, count: int, field: str) -> None:
        if count == 0:
            raise _invalid(field, "at least one is required", "EMPTY_BATCH")
        if count > self._settings.max_batch_points:
            raise _invalid(
                field,
                f"at most {self._settings.max_batch_points} points per request; got {count}",
                "BATCH_TOO_LARGE",
            )

    def _points(
        self, points: Sequence[pb.Point], config: CollectionConfig, field: str
    ) -> tuple[list[PointRecord], list[PointId], list[PointId]]:
        """Points to write, every id (generated where absent) and the ids clients chose."""
        vectors = convert.vectors(
            [p.vector for p in points], config.dimension, field + "[{}].vector"
        )
        ids: list[PointId] = []
        explicit: list[PointId] = []
        records: list[PointRecord] = []
        for i, (point, vector) in enumerate(zip(points, vectors, strict=True)):
            kind = point.id.WhichOneof("kind")
            point_id: PointId
            if kind == "num":  # the common case, without building the field's path
                point_id = point.id.num
                explicit.append(point_id)
            elif kind is not None:
                point_id = convert.point_id(point.id, f"{field}[{i}].id")
                explicit.append(point_id)
            else:
                point_id = str(uuid.uuid4())
            payload = (
                convert.payload(point.payload, f"{field}[{i}].payload")
                if point.HasField("payload")
                else None
            )
            ids.append(point_id)
            records.append(PointRecord(point_id, vector, payload))
        return records, ids, explicit

    async def UpsertPoints(
        self, request: pb.UpsertPointsRequest, context: _Context
    ) -> pb.UpsertPointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        self._check_batch(len(request.points), "points")
        records, ids, explicit = self._points(request.points, config, "points")
        await self._store.apply(request.collection, [UpsertOp(records)], tenant, [""], [explicit])
        return pb.UpsertPointsResponse(ids=[convert.point_id_to_pb(i) for i in ids])

    async def GetPoints(
        self, request: pb.GetPointsRequest, context: _Context
    ) -> pb.GetPointsResponse:
        await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        ids = convert.point_ids(request.ids, "ids")
        found = await self._store.get_points(
            request.collection,
            ids,
            with_payload=request.with_payload,
            with_vector=request.with_vector,
            tenant=tenant,
        )
        return pb.GetPointsResponse(points=[convert.record_to_pb(p) for p in found])

    async def UpdatePoints(
        self, request: pb.UpdatePointsRequest, context: _Context
    ) -> pb.UpdatePointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        self._check_batch(len(request.updates), "updates")
        changes = []
        for i, update in enumerate(request.updates):
            field = f"updates[{i}]"
            if not update.HasField("id"):
                raise _invalid(f"{field}.id", "the point to update is required", "MISSING_ID")
            vector = (
                convert.vector(update.vector, config.dimension, f"{field}.vector")
                if len(update.vector)
                else None
            )
            payload = (
                convert.payload(update.payload, f"{field}.payload")
                if update.HasField("payload")
                else None
            )
            if vector is None and payload is None:
                raise _invalid(field, "set a vector, a payload or both", "EMPTY_UPDATE")
            changes.append(
                PointChange(
                    convert.point_id(update.id, f"{field}.id"),
                    vector,
                    payload,
                    update.replace_payload,
                )
            )
        updated = await self._store.update_points(request.collection, changes, tenant)
        return pb.UpdatePointsResponse(updated_count=updated)

    def _selector_op(
        self,
        kind: str,
        message: Any,
        config: CollectionConfig,
        field: str,
    ) -> Operation:
        """A set-payload, delete-payload-keys or delete operation from its request part."""
        if not message.HasField("selector"):
            raise _invalid(f"{field}selector", "select points by ids, by a filter, or both")
        selector = filter_convert.selector(
            message.selector, config.payload_schema, f"{field}selector"
        )
        if kind == "delete":
            return DeleteOp(selector)
        if kind == "set_payload":
            payload = convert.payload(message.payload, f"{field}payload")
            return SetPayloadOp(selector, payload, message.overwrite)
        if not message.keys:
            raise _invalid(f"{field}keys", "name at least one payload key", "EMPTY_KEYS")
        keys = tuple(
            convert.payload_key(k, f"{field}keys[{i}]") for i, k in enumerate(message.keys)
        )
        return DeletePayloadKeysOp(selector, keys)

    async def SetPayload(
        self, request: pb.SetPayloadRequest, context: _Context
    ) -> pb.SetPayloadResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        operation = self._selector_op("set_payload", request, config, "")
        await self._store.apply(request.collection, [operation], tenant, [""])
        return pb.SetPayloadResponse()

    async def DeletePayloadKeys(
        self, request: pb.DeletePayloadKeysRequest, context: _Context
    ) -> pb.DeletePayloadKeysResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        operation = self._selector_op("delete_payload_keys", request, config, "")
        await self._store.apply(request.collection, [operation], tenant, [""])
        return pb.DeletePayloadKeysResponse()

    async def DeletePoints(
        self, request: pb.DeletePointsRequest, context: _Context
    ) -> pb.DeletePointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        operation = self._selector_op("delete", request, config, "")
        (deleted,) = await self._store.apply(request.collection, [operation], tenant, [""])
        return pb.DeletePointsResponse(deleted_count=deleted)

    async def BatchUpdatePoints(
        self, request: pb.BatchUpdatePointsRequest, context: _Context
    ) -> pb.BatchUpdatePointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        if not request.operations:
            raise _invalid("operations", "at least one operation is required", "EMPTY_BATCH")
        if len(request.operations) > limits.MAX_OPERATIONS:
            raise _invalid(
                "operations",
                f"at most {limits.MAX_OPERATIONS} operations per batch",
                "BATCH_TOO_LARGE",
            )
        total = sum(len(op.upsert.points) for op in request.operations if op.HasField("upsert"))
        if total > self._settings.max_batch_points:
            raise _invalid(
                "operations",
                f"at most {self._settings.max_batch_points} points per request; got {total}",
                "BATCH_TOO_LARGE",
            )
        operations: list[Operation] = []
        fields: list[str] = []
        explicit_ids: list[list[PointId]] = []
        upsert_ids: dict[int, list[PointId]] = {}
        for i, step in enumerate(request.operations):
            field = f"operations[{i}]"
            kind = step.WhichOneof("kind")
            explicit: list[PointId] = []
            if kind == "upsert":
                self._check_batch(len(step.upsert.points), f"{field}.upsert.points")
                records, ids, explicit = self._points(
                    step.upsert.points, config, f"{field}.upsert.points"
                )
                upsert_ids[i] = ids
                operation: Operation = UpsertOp(records)
            elif kind is not None:
                operation = self._selector_op(kind, getattr(step, kind), config, f"{field}.{kind}.")
            else:
                raise _invalid(
                    field,
                    "an operation needs upsert, delete, set_payload or delete_payload_keys",
                    "EMPTY_OPERATION",
                )
            operations.append(operation)
            fields.append(f"{field}.{kind}.")
            explicit_ids.append(explicit)
        counts = await self._store.apply(
            request.collection, operations, tenant, fields, explicit_ids
        )
        return pb.BatchUpdatePointsResponse(
            results=[
                pb.OperationResult(
                    affected_count=count,
                    ids=[convert.point_id_to_pb(x) for x in upsert_ids.get(i, [])],
                )
                for i, count in enumerate(counts)
            ]
        )

    # --- point reads ------------------------------------------------------------------------

    async def ListPoints(
        self, request: pb.ListPointsRequest, context: _Context
    ) -> pb.ListPointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        size = convert.page_size(request.page_size)
        filter = filter_convert.optional_filter(request, config.payload_schema)
        state = convert.decode_page_token(request.page_token, "points")
        offset: PointId | None = None
        if state:
            if state.get("c") != request.collection:
                raise _invalid("page_token", "the token belongs to another collection")
            offset = convert.point_id_from_state(state)
        points, next_offset = await self._store.list_points(
            request.collection,
            filter=filter,
            page_size=size,
            offset=offset,
            with_payload=request.with_payload,
            with_vector=request.with_vector,
            tenant=tenant,
        )
        token = ""
        if next_offset is not None:
            token = convert.encode_page_token(
                {"k": "points", "c": request.collection, **convert.point_id_state(next_offset)}
            )
        return pb.ListPointsResponse(
            points=[convert.record_to_pb(p) for p in points], next_page_token=token
        )

    async def CountPoints(
        self, request: pb.CountPointsRequest, context: _Context
    ) -> pb.CountPointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        filter = filter_convert.optional_filter(request, config.payload_schema)
        count = await self._store.count(request.collection, filter, tenant)
        return pb.CountPointsResponse(count=count)

    # --- search -------------------------------------------------------------------------------

    def _search_query(
        self, request: pb.SearchPointsRequest, config: CollectionConfig, prefix: str = ""
    ) -> SearchQuery:
        if not request.vector:
            raise _invalid(f"{prefix}vector", "a query vector is required", "MISSING_VECTOR")
        vector = convert.vector(request.vector, config.dimension, f"{prefix}vector")
        ef, exact = convert.search_params(request.params, f"{prefix}params")
        return SearchQuery(
            vector=vector,
            filter=filter_convert.optional_filter(request, config.payload_schema, f"{prefix}filter")
            if request.HasField("filter")
            else None,
            limit=convert.limit(request.limit, f"{prefix}limit"),
            offset=convert.offset(request.offset, f"{prefix}offset"),
            score_threshold=convert.score_threshold(request, f"{prefix}score_threshold"),
            with_payload=request.with_payload,
            with_vector=request.with_vector,
            hnsw_ef=ef,
            exact=exact,
        )

    async def SearchPoints(
        self, request: pb.SearchPointsRequest, context: _Context
    ) -> pb.SearchPointsResponse:
        config = await self._collection(request.collection)
        query = self._search_query(request, config)
        hits, ms = await self._store.search(
            request.collection,
            query,
            tenant=convert.tenant(request.tenant),
            query_text=request.query_text,
        )
        response = pb.SearchPointsResponse(time_ms=ms)
        convert.add_hits(hits, response.points)
        return response

    async def BatchSearchPoints(
        self, request: pb.BatchSearchPointsRequest, context: _Context
    ) -> pb.BatchSearchPointsResponse:
        count = len(request.searches)
        if count == 0:
            raise _invalid("searches", "at least one search is required", "EMPTY_BATCH")
        if count > self._settings.max_batch_searches:
            raise _invalid(
                "searches",
                f"at most {self._settings.max_batch_searches} searches per call; got {count}",
                "BATCH_TOO_LARGE",
            )
        configs: dict[str, CollectionConfig] = {}
        searches: list[Search] = []
        for i, item in enumerate(request.searches):
            prefix = f"searches[{i}]."
            name = convert.collection_name(item.collection, f"{prefix}collection")
            if name not in configs:
                configs[name] = await self._store.config(name)
            searches.append(
                Search(
                    collection=name,
                    query=self._search_query(item, configs[name], prefix),
                    tenant=convert.tenant(item.tenant, f"{prefix}tenant"),
                    query_text=item.query_text,
                )
            )
        results = await self._store.search_batch(searches)
        response = pb.BatchSearchPointsResponse()
        for hits, ms in results:
            convert.add_hits(hits, response.results.add(time_ms=ms).points)
        return response

    def _examples(
        self, values: Sequence[pb.RecommendExample], config: CollectionConfig, field: str
    ) -> list[Example]:
        examples = []
        for i, value in enumerate(values):
            path = f"{field}[{i}]"
            kind = value.WhichOneof("kind")
            if kind == "id":
                examples.append(Example(f"{path}.id", id=convert.point_id(value.id, f"{path}.id")))
            elif kind == "vector":
                vector = convert.vector(value.vector.values, config.dimension, f"{path}.vector")
                examples.append(Example(f"{path}.vector", vector=vector))
            else:
                raise _invalid(path, "an example needs an id or a vector", "EMPTY_EXAMPLE")
        return examples

    async def RecommendPoints(
        self, request: pb.RecommendPointsRequest, context: _Context
    ) -> pb.RecommendPointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        if not request.positive:
            raise _invalid("positive", "at least one positive example is required", "NO_EXAMPLES")
        if len(request.positive) + len(request.negative) > limits.MAX_EXAMPLES:
            raise _invalid("positive", f"at most {limits.MAX_EXAMPLES} examples", "TOO_MANY")
        strategy = (
            RecommendStrategy.BEST_SCORE
            if request.strategy == pb.RECOMMEND_STRATEGY_BEST_SCORE
            else RecommendStrategy.AVERAGE_VECTOR
        )
        query = SearchQuery(
            vector=[],
            filter=filter_convert.optional_filter(request, config.payload_schema),
            limit=convert.limit(request.limit),
            offset=convert.offset(request.offset),
            score_threshold=convert.score_threshold(request),
            with_payload=request.with_payload,
            with_vector=request.with_vector,
        )
        hits, ms = await self._store.recommend(
            request.collection,
            positives=self._examples(request.positive, config, "positive"),
            negatives=self._examples(request.negative, config, "negative"),
            strategy=strategy,
            query=query,
            tenant=tenant,
        )
        response = pb.RecommendPointsResponse(time_ms=ms)
        convert.add_hits(hits, response.points)
        return response

    async def ClusterPoints(
        self, request: pb.ClusterPointsRequest, context: _Context
    ) -> pb.ClusterPointsResponse:
        config = await self._collection(request.collection)
        tenant = convert.tenant(request.tenant)
        filter = filter_convert.optional_filter(request, config.payload_schema)
        density = request.algorithm == pb.CLUSTER_ALGORITHM_DENSITY
        num_clusters = request.num_clusters or limits.DEFAULT_CLUSTERS
        if not density and not limits.MIN_CLUSTERS <= num_clusters <= limits.MAX_CLUSTERS:
            raise _invalid(
                "num_clusters",
                f"must be between {limits.MIN_CLUSTERS} and {limits.MAX_CLUSTERS}; "
                f"got {num_clusters}",
                "OUT_OF_RANGE",
            )
        sample_size = request.sample_size or min(
            limits.DEFAULT_CLUSTER_SAMPLE, self._settings.max_cluster_sample
        )
        if sample_size > self._settings.max_cluster_sample:
            raise _invalid(
                "sample_size",
                f"must be at most {self._settings.max_cluster_sample}; got {sample_size}",
                "OUT_OF_RANGE",
            )
        representatives = request.representatives or limits.DEFAULT_REPRESENTATIVES
        if representatives > limits.MAX_REPRESENTATIVES:
            raise _invalid(
                "representatives",
                f"must be at most {limits.MAX_REPRESENTATIVES}; got {representatives}",
                "OUT_OF_RANGE",
            )
        eps: float | None = None
        if request.HasField("density_eps"):
            eps = request.density_eps
            if not math.isfinite(eps) or eps <= 0:
                raise _invalid("density_eps", "must be a positive number", "OUT_OF_RANGE")
        min_samples: int | None = None
        if request.HasField("density_min_samples"):
            min_samples = request.density_min_samples
            if not 2 <= min_samples <= limits.MAX_MIN_SAMPLES:
                raise _invalid(
                    "density_min_samples",
                    f"must be between 2 and {limits.MAX_MIN_SAMPLES}; got {min_samples}",
                    "OUT_OF_RANGE",
                )
        result = await self._store.cluster(
            request.collection,
            filter=filter,
            tenant=tenant,
            density=density,
            num_clusters=num_clusters,
            sample_size=sample_size,
            representatives=representatives,
            with_payload=request.with_payload,
            seed=request.seed % 2**32 if request.HasField("seed") else None,
            eps=eps,
            min_samples=min_samples,
        )
        clusters = []
        for index, group in enumerate(result.clustering.groups):
            cluster = pb.Cluster(id=index, centroid=group.centroid, size=len(group.member_ids))
            if request.with_member_ids:
                cluster.member_ids.extend(convert.point_id_to_pb(i) for i in group.member_ids)
            for point_id, score in group.representatives:
                hit = cluster.representatives.add(id=convert.point_id_to_pb(point_id), score=score)
                convert.payload_to_pb(result.payloads.get(point_id), hit.payload)
            clusters.append(cluster)
        return pb.ClusterPointsResponse(
            clusters=clusters,
            total_points=result.total_points,
            sampled_points=result.sampled_points,
            noise_points=result.clustering.noise,
        )
