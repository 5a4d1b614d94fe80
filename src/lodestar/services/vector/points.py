"""Reads, searches and writes of points on one qdrant-edge shard.

Plain functions over an ``EdgeShard``, called on the event loop (``embedded.py`` says
why).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

import qdrant_edge as qe

from lodestar.services.vector import edge
from lodestar.services.vector.models import (
    DeleteOp,
    DeletePayloadKeysOp,
    Filter,
    HasId,
    Operation,
    PointId,
    PointRecord,
    RecommendQuery,
    ScoredHit,
    SearchQuery,
    SetPayloadOp,
    UpdateVectorsOp,
    UpsertOp,
    with_must,
)

_SCROLL_CHUNK: Final = 1_000


def apply(
    engine: qe.EdgeShard, operations: Sequence[Operation], applied: list[qe.UpdateOperation]
) -> list[int]:
    """Apply operations in order; returns the points each affected, and ``applied``
    collects the engine operations that succeeded (for a copy to replay)."""
    counts: list[int] = []
    for operation in operations:
        count, edge_operation = _edge_operation(engine, operation)
        if edge_operation is not None:
            engine.update(edge_operation)
            applied.append(edge_operation)
        counts.append(count)
    return counts


def _edge_operation(
    engine: qe.EdgeShard, operation: Operation
) -> tuple[int, qe.UpdateOperation | None]:
    if isinstance(operation, UpsertOp):
        return len(operation.points), upsert(operation.points)
    if isinstance(operation, UpdateVectorsOp):
        vectors = [qe.PointVectors(i, edge.engine_vector(v)) for i, v in operation.points]
        return len(vectors), qe.UpdateOperation.update_vectors(vectors)
    selector = edge.edge_filter(operation.selector.as_filter())
    count = engine.count(qe.CountRequest(exact=True, filter=selector))
    if count == 0 or selector is None:
        return 0, None
    if isinstance(operation, DeleteOp):
        return count, qe.UpdateOperation.delete_points_by_filter(selector)
    if isinstance(operation, SetPayloadOp):
        if operation.overwrite:
            return count, qe.UpdateOperation.overwrite_payload_by_filter(
                selector, operation.payload
            )
        return count, qe.UpdateOperation.set_payload_by_filter(selector, operation.payload)
    if isinstance(operation, DeletePayloadKeysOp):
        return count, qe.UpdateOperation.delete_payload_by_filter(selector, list(operation.keys))
    raise TypeError(f"unknown operation {operation!r}")


def upsert(points: Sequence[PointRecord]) -> qe.UpdateOperation:
    return qe.UpdateOperation.upsert_points(
        [qe.Point(p.id, edge.engine_vector(p.vector or []), p.payload) for p in points]
    )


def retrieve(
    engine: qe.EdgeShard,
    ids: Sequence[PointId],
    *,
    with_payload: bool,
    with_vector: bool,
    filter: Filter | None,
) -> list[PointRecord]:
    if not ids:
        return []
    if filter is None:
        found = engine.retrieve(list(ids), with_payload, with_vector)
    else:
        request = qe.ScrollRequest(
            limit=len(ids),
            filter=edge.edge_filter(with_must(filter, HasId(tuple(ids)))),
            with_payload=with_payload,
            with_vector=with_vector,
        )
        found = engine.scroll(request)[0]
    return edge.records(found, with_payload, with_vector)


def scroll(
    engine: qe.EdgeShard,
    *,
    filter: Filter | None,
    limit: int,
    offset: PointId | None,
    with_payload: bool,
    with_vector: bool,
) -> tuple[list[PointRecord], PointId | None]:
    request = qe.ScrollRequest(
        offset=offset,
        limit=limit,
        filter=edge.edge_filter(filter),
        with_payload=with_payload,
        with_vector=with_vector,
    )
    found, next_offset = engine.scroll(request)
    return (
        edge.records(found, with_payload, with_vector),
        None if next_offset is None else edge.point_id(next_offset),
    )


def scroll_all(engine: qe.EdgeShard) -> Iterator[list[PointRecord]]:
    """Every point with its payload and vector, in chunks."""
    offset: Any = None
    while True:
        found, offset = engine.scroll(
            qe.ScrollRequest(
                offset=offset, limit=_SCROLL_CHUNK, with_payload=True, with_vector=True
            )
        )
        yield edge.records(found, True, True)
        if offset is None:
            return


def count(engine: qe.EdgeShard, filter: Filter | None) -> int:
    return engine.count(qe.CountRequest(exact=True, filter=edge.edge_filter(filter)))


def search_batch(
    engine: qe.EdgeShard, queries: Sequence[SearchQuery], ef_search: int | None
) -> list[list[ScoredHit]]:
    """Each query's hits, from one engine call however many queries there are."""
    requests = [edge.query_request(q, ef_search) for q in queries]
    if len(requests) == 1:
        found = [engine.query(requests[0])]
    else:
        found = engine.query_batch(qe.QueryBatchRequest(requests))
    return [
        edge.hits(f, q.with_payload, q.with_vector) for f, q in zip(found, queries, strict=True)
    ]


def recommend(
    engine: qe.EdgeShard, query: RecommendQuery, ef_search: int | None
) -> list[ScoredHit]:
    found = engine.query(edge.recommend_request(query, ef_search))
    return edge.hits(found, query.with_payload, query.with_vector)


def sample(engine: qe.EdgeShard, filter: Filter | None, limit: int) -> list[PointRecord]:
    request = qe.QueryRequest(
        limit=limit,
        query=qe.Sample.Random,
        filter=edge.edge_filter(filter),
        with_payload=False,
        with_vector=True,
    )
    found = engine.query(request)
    return [PointRecord(h.id, h.vector, None) for h in edge.hits(found, False, True)]
