"""Service models ⇄ qdrant-edge types (configuration, points, operations, results)."""

from __future__ import annotations

import array
import uuid
from collections.abc import Sequence
from typing import Any, Final, cast

import numpy as np
import qdrant_edge as qe

from lodestar.services.vector.filters import to_edge_filter
from lodestar.services.vector.models import (
    TENANT_KEY,
    BinaryQuantization,
    CollectionConfig,
    Distance,
    FieldType,
    Filter,
    HnswOptions,
    PointId,
    PointRecord,
    RecommendQuery,
    RecommendStrategy,
    ScalarQuantization,
    ScoredHit,
    SearchQuery,
    Vector,
)

# Qdrant's defaults, made explicit so that a collection's config says what it runs with.
DEFAULT_M: Final = 16
DEFAULT_EF_CONSTRUCT: Final = 100
DEFAULT_FULL_SCAN_THRESHOLD_KB: Final = 10_000


def index_params(hnsw: HnswOptions) -> tuple[int, int, int]:
    """``(m, ef_construct, full_scan_threshold)``: the collection's own, else Qdrant's
    defaults; both backends build their index from these."""
    return (
        DEFAULT_M if hnsw.m is None else hnsw.m,
        DEFAULT_EF_CONSTRUCT if hnsw.ef_construct is None else hnsw.ef_construct,
        DEFAULT_FULL_SCAN_THRESHOLD_KB
        if hnsw.full_scan_threshold is None
        else hnsw.full_scan_threshold,
    )


_DISTANCES: Final = {
    Distance.COSINE: qe.Distance.Cosine,
    Distance.DOT: qe.Distance.Dot,
    Distance.EUCLID: qe.Distance.Euclid,
    Distance.MANHATTAN: qe.Distance.Manhattan,
}


def engine_vector(value: Vector) -> list[float]:
    """A vector as the engine takes it. The engine reads any sequence of floats (an
    ``array.array`` is cheapest to make); its type stubs only name lists."""
    return cast("list[float]", value)


def edge_config(
    config: CollectionConfig,
    *,
    indexing_threshold_kb: int,
    indexing_threads: int,
    search_threads: int | None = None,
) -> qe.EdgeConfig:
    """The engine configuration of a collection; ``search_threads`` sizes its search pool
    (None: the engine's choice, one per CPU)."""
    m, ef_construct, full_scan_threshold = index_params(config.hnsw)
    quantization: qe.QuantizationConfigType | None = None
    if isinstance(config.quantization, ScalarQuantization):
        quantization = qe.ScalarQuantizationConfig(
            qe.ScalarType.Int8,
            quantile=config.quantization.quantile,
            always_ram=config.quantization.always_ram,
        )
    elif isinstance(config.quantization, BinaryQuantization):
        quantization = qe.BinaryQuantizationConfig(always_ram=config.quantization.always_ram)
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=config.dimension, distance=_DISTANCES[config.distance]),
        hnsw_config=qe.HnswIndexConfig(
            m=m,
            ef_construct=ef_construct,
            full_scan_threshold=full_scan_threshold,
            max_indexing_threads=indexing_threads,
        ),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb),
        max_search_threads=search_threads,
    )


def field_index(kind: FieldType) -> qe.PayloadSchemaType | qe.TextIndexParams:
    if kind is FieldType.TEXT:
        return qe.TextIndexParams(lowercase=True)
    return {
        FieldType.KEYWORD: qe.PayloadSchemaType.Keyword,
        FieldType.INTEGER: qe.PayloadSchemaType.Integer,
        FieldType.FLOAT: qe.PayloadSchemaType.Float,
        FieldType.DATETIME: qe.PayloadSchemaType.Datetime,
        FieldType.BOOL: qe.PayloadSchemaType.Bool,
    }[kind]


def index_operations(schema: dict[str, FieldType]) -> list[qe.UpdateOperation]:
    """Payload indexes of a schema, plus the tenant index every collection has."""
    operations = [
        qe.UpdateOperation.create_field_index(TENANT_KEY, qe.KeywordIndexParams(is_tenant=True))
    ]
    for key, kind in sorted(schema.items()):
        if key != TENANT_KEY:
            operations.append(qe.UpdateOperation.create_field_index(key, field_index(kind)))
    return operations


def point_id(value: Any) -> PointId:
    """An engine id as the service's id (UUIDs as canonical text)."""
    if isinstance(value, int):
        return value
    return str(value) if isinstance(value, uuid.UUID) else str(uuid.UUID(str(value)))


def _vector(value: Any) -> Vector | None:
    """A stored vector as float32 values in one buffer, as the engine keeps them: the
    cheapest form to carry across processes (one buffer, not an object per value)."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("")
    return array.array("f", value) if value is not None else None


def records(
    values: Sequence[qe.Record], with_payload: bool, with_vector: bool
) -> list[PointRecord]:
    return [
        PointRecord(
            point_id(r.id),
            _vector(r.vector) if with_vector else None,
            (r.payload or {}) if with_payload else None,
        )
        for r in values
    ]


def hits(
    values: Sequence[qe.ScoredPoint], with_payload: bool, with_vector: bool
) -> list[ScoredHit]:
    return [
        ScoredHit(
            point_id(p.id),
            p.score,
            (p.payload or {}) if with_payload else None,
            _vector(p.vector) if with_vector else None,
        )
        for p in values
    ]


def edge_filter(value: Filter | None) -> qe.Filter | None:
    return None if value is None else to_edge_filter(value)


def query_request(query: SearchQuery, ef_search: int | None) -> qe.QueryRequest:
    ef = query.hnsw_ef if query.hnsw_ef is not None else ef_search
    params = qe.SearchParams(hnsw_ef=ef, exact=query.exact) if ef or query.exact else None
    return qe.QueryRequest(
        limit=query.limit,
        offset=query.offset or None,
        query=qe.Query.Nearest(engine_vector(query.vector)),
        filter=edge_filter(query.filter),
        score_threshold=query.score_threshold,
        with_payload=query.with_payload,
        with_vector=query.with_vector,
        params=params,
    )


def average_vector(positives: Sequence[Vector], negatives: Sequence[Vector]) -> list[float]:
    """Qdrant's average-vector strategy: the positives' mean, pushed away from the negatives'."""
    mean = np.mean(np.asarray(positives, dtype=np.float64), axis=0)
    if negatives:
        mean = mean + (mean - np.mean(np.asarray(negatives, dtype=np.float64), axis=0))
    result: list[float] = mean.astype(np.float32).tolist()
    return result


def recommend_request(query: RecommendQuery, ef_search: int | None) -> qe.QueryRequest:
    edge_query: qe.Query
    if query.strategy is RecommendStrategy.BEST_SCORE:
        edge_query = qe.Query.RecommendBestScore(
            qe.RecommendQuery(
                positives=[engine_vector(v) for v in query.positives],
                negatives=[engine_vector(v) for v in query.negatives],
            )
        )
    else:
        edge_query = qe.Query.Nearest(average_vector(query.positives, query.negatives))
    return qe.QueryRequest(
        limit=query.limit,
        offset=query.offset or None,
        query=edge_query,
        filter=edge_filter(query.filter),
        score_threshold=query.score_threshold,
        with_payload=query.with_payload,
        with_vector=query.with_vector,
        params=qe.SearchParams(hnsw_ef=ef_search) if ef_search else None,
    )
