"""REST models ⇄ ``lodestar.vector.v1`` messages.

Texts are embedded before conversion: converters that build points or queries
take the vectors as an argument (``vectors[i]`` for the i-th text), so that
they stay pure functions of their inputs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from lodestar.runtime.protojson import (
    datetime_to_timestamp,
    dict_to_struct,
    struct_to_dict,
    timestamp_to_datetime,
)
from lodestar.services.gateway.schemas import vector as rest
from lodestar.vector.v1 import vector_service_pb2 as pb

# --- ids ---------------------------------------------------------------------------------


def point_id_to_proto(point_id: int | UUID) -> pb.PointId:
    if isinstance(point_id, int):
        return pb.PointId(num=point_id)
    return pb.PointId(uuid=str(point_id))


def point_id_from_proto(point_id: pb.PointId) -> int | str:
    if point_id.WhichOneof("kind") == "num":
        return point_id.num
    return point_id.uuid


def new_point_id() -> pb.PointId:
    """Ids are given by the gateway, so that retrying an upsert never duplicates."""
    return pb.PointId(uuid=str(uuid.uuid4()))


# --- filters -----------------------------------------------------------------------------


def _match_to_proto(match: rest.Match, out: pb.Match) -> None:
    if match.keyword is not None:
        out.keyword = match.keyword
    elif match.integer is not None:
        out.integer = match.integer
    elif match.boolean is not None:
        out.boolean = match.boolean
    elif match.text is not None:
        out.text = match.text
    elif match.any is not None:
        _values_to_proto(match.any, out.any_keywords, out.any_integers)
    elif match.except_ is not None:
        _values_to_proto(match.except_, out.except_keywords, out.except_integers)


def _values_to_proto(
    values: Sequence[str] | Sequence[int], keywords: pb.Keywords, integers: pb.Integers
) -> None:
    if values and isinstance(values[0], int):
        integers.values.extend(int(v) for v in values)
        integers.SetInParent()
    else:
        keywords.values.extend(str(v) for v in values)
        keywords.SetInParent()


def _condition_to_proto(condition: rest.Condition, out: pb.Condition) -> None:
    if condition.key is not None:
        field = out.field
        field.key = condition.key
        if condition.match is not None:
            _match_to_proto(condition.match, field.match)
        elif condition.range is not None:
            bounds = condition.range
            rng = field.range
            rng.SetInParent()
            if bounds.gt is not None:
                rng.gt = bounds.gt
            if bounds.gte is not None:
                rng.gte = bounds.gte
            if bounds.lt is not None:
                rng.lt = bounds.lt
            if bounds.lte is not None:
                rng.lte = bounds.lte
        elif condition.datetime_range is not None:
            times = condition.datetime_range
            drange = field.datetime_range
            drange.SetInParent()
            for name in ("gt", "gte", "lt", "lte"):
                moment = getattr(times, name)
                if moment is not None:
                    datetime_to_timestamp(moment, getattr(drange, name))
    elif condition.is_empty is not None:
        out.is_empty.key = condition.is_empty.key
    elif condition.has_id is not None:
        out.has_id.ids.extend(point_id_to_proto(i) for i in condition.has_id)
        out.has_id.SetInParent()
    elif condition.filter is not None:
        filter_to_proto(condition.filter, out.filter)


def filter_to_proto(flt: rest.Filter, out: pb.Filter | None = None) -> pb.Filter:
    message = pb.Filter() if out is None else out
    for conditions, target in (
        (flt.must, message.must),
        (flt.should, message.should),
        (flt.must_not, message.must_not),
    ):
        for condition in conditions:
            _condition_to_proto(condition, target.add())
    message.SetInParent()
    return message


def _selector_to_proto(selector: rest.Selector, out: pb.PointsSelector) -> None:
    if selector.ids:
        out.ids.extend(point_id_to_proto(i) for i in selector.ids)
    if selector.filter is not None:
        filter_to_proto(selector.filter, out.filter)
    out.SetInParent()


# --- points ------------------------------------------------------------------------------


def texts_of(points: Iterable[rest.PointIn]) -> list[str]:
    """The texts to embed, in point order."""
    return [p.text for p in points if p.text is not None]


def points_to_proto(
    points: Sequence[rest.PointIn],
    embedded: Sequence[Sequence[float]],
    *,
    text_key: str,
) -> list[pb.Point]:
    """Points with their vectors (the i-th text's vector is ``embedded[i]``)."""
    out: list[pb.Point] = []
    next_text = 0
    for point in points:
        message = pb.Point(
            id=point_id_to_proto(point.id) if point.id is not None else new_point_id()
        )
        payload = point.payload
        if point.text is not None:
            message.vector.extend(embedded[next_text])
            next_text += 1
            if text_key and (payload is None or text_key not in payload):
                payload = {**(payload or {}), text_key: point.text}
        else:
            assert point.vector is not None
            message.vector.extend(point.vector)
        if payload is not None:
            dict_to_struct(payload, message.payload)
        out.append(message)
    return out


def upsert_to_proto(
    body: rest.InsertRequest, embedded: Sequence[Sequence[float]], *, tenant: str, text_key: str
) -> pb.UpsertPointsRequest:
    return pb.UpsertPointsRequest(
        collection=body.collection,
        points=points_to_proto(body.points, embedded, text_key=text_key),
        tenant=tenant,
    )


def point_from_proto(point: pb.Point, *, with_payload: bool, with_vector: bool) -> rest.Point:
    return rest.Point(
        id=point_id_from_proto(point.id),
        vector=list(point.vector) if with_vector else None,
        payload=struct_to_dict(point.payload) if with_payload else None,
    )


def scored_point_data(
    point: pb.ScoredPoint, *, with_payload: bool, with_vector: bool
) -> dict[str, Any]:
    """A hit as ``rest.ScoredPoint`` data: the fields the model would serialise
    (those it would leave None are left out)."""
    data: dict[str, Any] = {"id": point_id_from_proto(point.id), "score": point.score}
    if with_payload:
        data["payload"] = struct_to_dict(point.payload)
    if with_vector:
        data["vector"] = list(point.vector)
    return data


def update_point_to_proto(
    collection: str,
    point_id: int | UUID,
    body: rest.UpdatePointRequest,
    vector: Sequence[float] | None,
    *,
    tenant: str,
) -> pb.UpdatePointsRequest:
    update = pb.PointUpdate(id=point_id_to_proto(point_id), replace_payload=body.replace_payload)
    if vector is not None:
        update.vector.extend(vector)
    if body.payload is not None:
        dict_to_struct(body.payload, update.payload)
    return pb.UpdatePointsRequest(collection=collection, updates=[update], tenant=tenant)


def batch_to_proto(
    body: rest.BatchRequest,
    embedded: Sequence[Sequence[float]],
    *,
    tenant: str,
    text_key: str,
) -> pb.BatchUpdatePointsRequest:
    """Operations in order; ``embedded`` holds the vectors of every upsert's
    texts, in operation then point order."""
    request = pb.BatchUpdatePointsRequest(collection=body.collection, tenant=tenant)
    offset = 0
    for operation in body.operations:
        message = request.operations.add()
        if operation.upsert is not None:
            points = operation.upsert.points
            count = len(texts_of(points))
            message.upsert.points.extend(
                points_to_proto(points, embedded[offset : offset + count], text_key=text_key)
            )
            message.upsert.SetInParent()
            offset += count
        elif operation.delete is not None:
            _selector_to_proto(operation.delete, message.delete.selector)
        elif operation.set_payload is not None:
            op = operation.set_payload
            _selector_to_proto(op, message.set_payload.selector)
            dict_to_struct(op.payload, message.set_payload.payload)
            message.set_payload.overwrite = op.overwrite
        elif operation.delete_payload_keys is not None:
            keys_op = operation.delete_payload_keys
            _selector_to_proto(keys_op, message.delete_payload_keys.selector)
            message.delete_payload_keys.keys.extend(keys_op.keys)
    return request


def batch_texts(body: rest.BatchRequest) -> list[str]:
    texts: list[str] = []
    for operation in body.operations:
        if operation.upsert is not None:
            texts.extend(texts_of(operation.upsert.points))
    return texts


def batch_from_proto(response: pb.BatchUpdatePointsResponse) -> rest.BatchResponse:
    return rest.BatchResponse(
        results=[
            rest.OperationResult(
                affected_count=r.affected_count, ids=[point_id_from_proto(i) for i in r.ids]
            )
            for r in response.results
        ]
    )


# --- search ------------------------------------------------------------------------------


def search_to_proto(
    body: rest.SearchRequest, vector: Sequence[float], *, tenant: str
) -> pb.SearchPointsRequest:
    request = pb.SearchPointsRequest(
        collection=body.collection,
        vector=vector,
        limit=body.limit,
        offset=body.offset,
        with_payload=body.with_payload,
        with_vector=body.with_vector,
        query_text=body.text or "",
        tenant=tenant,
    )
    if body.filter is not None:
        filter_to_proto(body.filter, request.filter)
    if body.score_threshold is not None:
        request.score_threshold = body.score_threshold
    if body.hnsw_ef is not None or body.exact:
        request.params.exact = body.exact
        if body.hnsw_ef is not None:
            request.params.hnsw_ef = body.hnsw_ef
    return request


def hits_from_proto(
    response: pb.SearchPointsResponse | pb.RecommendPointsResponse,
    *,
    with_payload: bool,
    with_vector: bool,
) -> dict[str, Any]:
    """A search or recommend answer as ``rest.SearchResponse`` data, ready to
    serialise. Built without the model (the busiest answers; the model is their
    schema, and a test holds the two to the same JSON)."""
    return {
        "points": [
            scored_point_data(p, with_payload=with_payload, with_vector=with_vector)
            for p in response.points
        ],
        "time_ms": response.time_ms,
    }


_STRATEGY = {
    rest.RecommendStrategy.AVERAGE_VECTOR: pb.RECOMMEND_STRATEGY_AVERAGE_VECTOR,
    rest.RecommendStrategy.BEST_SCORE: pb.RECOMMEND_STRATEGY_BEST_SCORE,
}


def example_texts(body: rest.RecommendRequest) -> list[str]:
    return [
        e.text
        for e in (*body.positive, *body.negative)
        if isinstance(e, rest.Example) and e.text is not None
    ]


def _example_to_proto(
    example: rest.ExampleIn, embedded: Sequence[Sequence[float]], cursor: list[int]
) -> pb.RecommendExample:
    if not isinstance(example, rest.Example):
        return pb.RecommendExample(id=point_id_to_proto(example))
    if example.id is not None:
        return pb.RecommendExample(id=point_id_to_proto(example.id))
    if example.vector is not None:
        return pb.RecommendExample(vector=pb.Vector(values=example.vector))
    vector = embedded[cursor[0]]
    cursor[0] += 1
    return pb.RecommendExample(vector=pb.Vector(values=vector))


def recommend_to_proto(
    body: rest.RecommendRequest, embedded: Sequence[Sequence[float]], *, tenant: str
) -> pb.RecommendPointsRequest:
    cursor = [0]
    request = pb.RecommendPointsRequest(
        collection=body.collection,
        positive=[_example_to_proto(e, embedded, cursor) for e in body.positive],
        negative=[_example_to_proto(e, embedded, cursor) for e in body.negative],
        strategy=_STRATEGY[body.strategy],
        limit=body.limit,
        offset=body.offset,
        with_payload=body.with_payload,
        with_vector=body.with_vector,
        tenant=tenant,
    )
    if body.filter is not None:
        filter_to_proto(body.filter, request.filter)
    if body.score_threshold is not None:
        request.score_threshold = body.score_threshold
    return request


_ALGORITHM = {
    rest.ClusterAlgorithm.KMEANS: pb.CLUSTER_ALGORITHM_KMEANS,
    rest.ClusterAlgorithm.DENSITY: pb.CLUSTER_ALGORITHM_DENSITY,
}


def cluster_to_proto(body: rest.ClusterRequest, *, tenant: str) -> pb.ClusterPointsRequest:
    request = pb.ClusterPointsRequest(
        collection=body.collection,
        algorithm=_ALGORITHM[body.algorithm],
        num_clusters=body.num_clusters,
        sample_size=body.sample_size,
        representatives=body.representatives,
        with_member_ids=body.with_member_ids,
        with_payload=body.with_payload,
        tenant=tenant,
    )
    if body.filter is not None:
        filter_to_proto(body.filter, request.filter)
    if body.seed is not None:
        request.seed = body.seed
    return request


def cluster_from_proto(
    response: pb.ClusterPointsResponse, *, with_payload: bool
) -> rest.ClusterResponse:
    return rest.ClusterResponse(
        clusters=[
            rest.Cluster(
                id=c.id,
                centroid=list(c.centroid),
                size=c.size,
                member_ids=[point_id_from_proto(i) for i in c.member_ids],
                representatives=[
                    rest.ScoredPoint.model_validate(
                        scored_point_data(p, with_payload=with_payload, with_vector=False)
                    )
                    for p in c.representatives
                ],
            )
            for c in response.clusters
        ],
        total_points=response.total_points,
        sampled_points=response.sampled_points,
        noise_points=response.noise_points,
    )


# --- collections -------------------------------------------------------------------------

_DISTANCE_TO_PROTO = {
    rest.Distance.COSINE: pb.DISTANCE_COSINE,
    rest.Distance.DOT: pb.DISTANCE_DOT,
    rest.Distance.EUCLID: pb.DISTANCE_EUCLID,
    rest.Distance.MANHATTAN: pb.DISTANCE_MANHATTAN,
}
_DISTANCE_FROM_PROTO = {v: k for k, v in _DISTANCE_TO_PROTO.items()}
_FIELD_TYPE_TO_PROTO = {
    rest.PayloadFieldType.KEYWORD: pb.PAYLOAD_FIELD_TYPE_KEYWORD,
    rest.PayloadFieldType.TEXT: pb.PAYLOAD_FIELD_TYPE_TEXT,
    rest.PayloadFieldType.INTEGER: pb.PAYLOAD_FIELD_TYPE_INTEGER,
    rest.PayloadFieldType.FLOAT: pb.PAYLOAD_FIELD_TYPE_FLOAT,
    rest.PayloadFieldType.DATETIME: pb.PAYLOAD_FIELD_TYPE_DATETIME,
    rest.PayloadFieldType.BOOL: pb.PAYLOAD_FIELD_TYPE_BOOL,
}
_FIELD_TYPE_FROM_PROTO = {v: k for k, v in _FIELD_TYPE_TO_PROTO.items()}
_STATUS_FROM_PROTO = {
    pb.COLLECTION_STATUS_READY: rest.CollectionStatus.READY,
    pb.COLLECTION_STATUS_OPTIMIZING: rest.CollectionStatus.OPTIMIZING,
    pb.COLLECTION_STATUS_ERROR: rest.CollectionStatus.ERROR,
}


def _hnsw_to_proto(hnsw: rest.HnswConfig, out: pb.HnswConfig) -> None:
    out.SetInParent()
    if hnsw.m is not None:
        out.m = hnsw.m
    if hnsw.ef_construct is not None:
        out.ef_construct = hnsw.ef_construct
    if hnsw.full_scan_threshold is not None:
        out.full_scan_threshold = hnsw.full_scan_threshold
    if hnsw.ef_search is not None:
        out.ef_search = hnsw.ef_search


def _quantization_to_proto(quantization: rest.Quantization, out: pb.QuantizationConfig) -> None:
    if quantization.scalar is not None:
        out.scalar.always_ram = quantization.scalar.always_ram
        if quantization.scalar.quantile is not None:
            out.scalar.quantile = quantization.scalar.quantile
        out.scalar.SetInParent()
    elif quantization.binary is not None:
        out.binary.always_ram = quantization.binary.always_ram
        out.binary.SetInParent()


def create_collection_to_proto(
    body: rest.CreateCollectionRequest, *, dimension: int, embedding_model: str
) -> pb.CreateCollectionRequest:
    config = pb.CollectionConfig(
        dimension=dimension,
        distance=_DISTANCE_TO_PROTO[body.distance],
        payload_schema={k: _FIELD_TYPE_TO_PROTO[v] for k, v in body.payload_schema.items()},
        embedding_model=embedding_model,
    )
    if body.hnsw is not None:
        _hnsw_to_proto(body.hnsw, config.hnsw)
    if body.quantization is not None:
        _quantization_to_proto(body.quantization, config.quantization)
    return pb.CreateCollectionRequest(name=body.name, config=config)


def update_collection_to_proto(
    name: str, body: rest.UpdateCollectionRequest
) -> pb.UpdateCollectionRequest:
    request = pb.UpdateCollectionRequest(
        name=name,
        add_payload_fields={k: _FIELD_TYPE_TO_PROTO[v] for k, v in body.add_payload_fields.items()},
        remove_payload_fields=body.remove_payload_fields,
    )
    if body.hnsw is not None:
        _hnsw_to_proto(body.hnsw, request.hnsw)
    if body.quantization is not None:
        _quantization_to_proto(body.quantization, request.quantization)
    return request


def _quantization_from_proto(config: pb.QuantizationConfig) -> dict[str, object] | None:
    kind = config.WhichOneof("kind")
    if kind == "scalar":
        scalar: dict[str, object] = {"always_ram": config.scalar.always_ram}
        if config.scalar.HasField("quantile"):
            scalar["quantile"] = config.scalar.quantile
        return {"scalar": scalar}
    if kind == "binary":
        return {"binary": {"always_ram": config.binary.always_ram}}
    return None


def collection_from_proto(collection: pb.Collection) -> rest.Collection:
    config = collection.config
    hnsw = {
        name: getattr(config.hnsw, name)
        for name in ("m", "ef_construct", "full_scan_threshold", "ef_search")
        if config.hnsw.HasField(name)
    }
    return rest.Collection(
        name=collection.name,
        config=rest.CollectionConfig(
            dimension=config.dimension,
            distance=_DISTANCE_FROM_PROTO.get(config.distance, rest.Distance.COSINE),
            payload_schema={
                k: _FIELD_TYPE_FROM_PROTO[v]
                for k, v in config.payload_schema.items()
                if v in _FIELD_TYPE_FROM_PROTO
            },
            hnsw=hnsw,
            quantization=_quantization_from_proto(config.quantization),
            embedding_model=config.embedding_model,
        ),
        points_count=collection.points_count,
        indexed_vectors_count=collection.indexed_vectors_count,
        status=_STATUS_FROM_PROTO.get(collection.status, rest.CollectionStatus.UNKNOWN),
        disk_bytes=collection.disk_bytes,
        create_time=timestamp_to_datetime(collection.create_time)
        if collection.HasField("create_time")
        else None,
    )


def snapshot_from_proto(snapshot: pb.Snapshot) -> rest.Snapshot:
    return rest.Snapshot(
        name=snapshot.name,
        collection=snapshot.collection,
        size_bytes=snapshot.size_bytes,
        create_time=timestamp_to_datetime(snapshot.create_time)
        if snapshot.HasField("create_time")
        else None,
        checksum=snapshot.checksum,
    )
