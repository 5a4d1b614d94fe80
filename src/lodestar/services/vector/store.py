"""What the vector service does, over either backend: tenancy, examples, clustering,
metrics and search analytics. Input here is already validated (see ``convert``).

Tenancy: a request with a tenant stamps payload key ``tenant`` on what it
writes and adds a must-match on it to every read, update and delete, so it
only ever sees that tenant's points; it may not overwrite another tenant's
point by id, nor remove or change its own tenant key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol

import numpy as np
from prometheus_client import Histogram

from lodestar.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from lodestar.runtime.telemetry import span, tracer
from lodestar.services.vector import metrics
from lodestar.services.vector.backend import VectorBackend
from lodestar.services.vector.cluster import Clustering, cluster_points
from lodestar.services.vector.models import (
    TENANT_KEY,
    CollectionConfig,
    CollectionInfo,
    CollectionUpdate,
    DeleteOp,
    DeletePayloadKeysOp,
    Filter,
    HasId,
    Operation,
    Payload,
    PointId,
    PointRecord,
    RecommendQuery,
    RecommendStrategy,
    ScoredHit,
    SearchQuery,
    Selector,
    SetPayloadOp,
    SnapshotInfo,
    UpdateVectorsOp,
    UpsertOp,
    Vector,
    tenant_condition,
    with_must,
)
from lodestar.services.vector.snapshots import snapshot_not_found

_SCROLL_CHUNK: Final = 1_000
_trace = tracer(__name__)


class SearchRecorder(Protocol):
    """Where searches are recorded for analytics (the analytics store)."""

    def record_search(
        self, collection: str, latency_ms: float, result_count: int, query_text: str = ""
    ) -> None: ...


@dataclass(frozen=True)
class Example:
    """A recommendation example: a stored point's id or a raw vector."""

    field: str
    id: PointId | None = None
    vector: Vector | None = None


@dataclass(frozen=True)
class PointChange:
    """UpdatePoints: a new vector and/or payload for an existing point."""

    id: PointId
    vector: Vector | None
    payload: Payload | None
    replace_payload: bool


@dataclass(frozen=True)
class Search:
    """One search of a batch."""

    collection: str
    query: SearchQuery
    tenant: str | None
    query_text: str


@dataclass(frozen=True)
class ClusterResult:
    clustering: Clustering
    total_points: int
    sampled_points: int
    payloads: dict[PointId, Payload]


def _confined(filter: Filter | None, tenant: str | None) -> Filter | None:
    return filter if tenant is None else with_must(filter, tenant_condition(tenant))


def _stamped(payload: Payload | None, tenant: str | None) -> Payload | None:
    if tenant is None:
        return payload
    return {**(payload or {}), TENANT_KEY: tenant}


class VectorStore:
    """The service's behaviour on top of a ``VectorBackend``."""

    def __init__(self, backend: VectorBackend, *, recorder: SearchRecorder | None = None) -> None:
        self.backend = backend
        self._recorder = recorder
        self._durations: dict[tuple[str, str], Histogram] = {}

    # --- collections -----------------------------------------------------------------------

    async def config(self, collection: str) -> CollectionConfig:
        return await self.backend.collection_config(collection)

    async def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo:
        return await self.backend.create_collection(name, config)

    async def get_collection(self, name: str) -> CollectionInfo:
        return await self.backend.get_collection(name)

    async def list_collections(
        self, after: str, page_size: int
    ) -> tuple[list[CollectionInfo], str | None]:
        names = [n for n in await self.backend.list_collections() if n > after]
        page: list[CollectionInfo] = []
        for name in names[:page_size]:
            try:
                page.append(await self.backend.get_collection(name))
            except NotFound:
                continue  # deleted while listing
        more = len(names) > page_size
        return page, (names[page_size - 1] if more else None)

    async def update_collection(self, name: str, update: CollectionUpdate) -> CollectionInfo:
        return await self.backend.update_collection(name, update)

    async def delete_collection(self, name: str) -> None:
        await self.backend.delete_collection(name)
        metrics.forget_collection(name)
        for key in [k for k in self._durations if k[0] == name]:
            del self._durations[key]

    # --- writes -----------------------------------------------------------------------------

    async def _refuse_foreign(
        self, collection: str, ids: Sequence[PointId], tenant: str | None, field: str
    ) -> None:
        """A tenant may not overwrite another tenant's (or an untenanted) point by id."""
        if tenant is None or not ids:
            return
        foreign = await self.backend.retrieve(
            collection,
            ids,
            with_payload=False,
            with_vector=False,
            filter=Filter(must_not=(tenant_condition(tenant),)),
        )
        if foreign:
            raise PermissionDenied(
                f"{field}: point {foreign[0].id!r} belongs to another tenant",
                field=field,
                reason="POINT_OF_ANOTHER_TENANT",
            )

    def _tenant_op(self, operation: Operation, tenant: str | None, field: str) -> Operation:
        """An operation confined to (and stamped with) the tenant."""
        if tenant is None:
            return operation
        if isinstance(operation, UpsertOp):
            return UpsertOp(
                [PointRecord(p.id, p.vector, _stamped(p.payload, tenant)) for p in operation.points]
            )
        if isinstance(operation, UpdateVectorsOp):
            return operation  # existence within the tenant is checked by the caller
        selector = Selector(
            ids=operation.selector.ids, filter=_confined(operation.selector.filter, tenant)
        )
        if isinstance(operation, DeleteOp):
            return DeleteOp(selector)
        if isinstance(operation, SetPayloadOp):
            payload = operation.payload
            if operation.overwrite or TENANT_KEY in payload:
                payload = {**payload, TENANT_KEY: tenant}
            return SetPayloadOp(selector, payload, operation.overwrite)
        if TENANT_KEY in operation.keys:
            raise InvalidArgument(
                f"{field}keys: the {TENANT_KEY!r} key confines the point to its tenant and "
                "cannot be deleted",
                field=f"{field}keys",
                reason="TENANT_KEY_PROTECTED",
            )
        return DeletePayloadKeysOp(selector, operation.keys)

    async def apply(
        self,
        collection: str,
        operations: Sequence[Operation],
        tenant: str | None,
        fields: Sequence[str],
        explicit_ids: Sequence[Sequence[PointId]] | None = None,
    ) -> list[int]:
        """Apply operations in order; returns the points each affected.

        ``fields`` are each operation's path prefix in the request, for errors.

        ``explicit_ids`` are the ids clients chose for each upsert (not generated ones).
        """
        for i, operation in enumerate(operations):
            if isinstance(operation, UpsertOp) and tenant is not None:
                ids = explicit_ids[i] if explicit_ids is not None else []
                await self._refuse_foreign(collection, ids, tenant, f"{fields[i]}points")
        confined = [
            self._tenant_op(op, tenant, f) for op, f in zip(operations, fields, strict=True)
        ]
        with span(_trace, "vector.write"):
            counts = await self.backend.apply(collection, confined)
        upserted = sum(
            c for op, c in zip(confined, counts, strict=True) if isinstance(op, UpsertOp)
        )
        deleted = sum(c for op, c in zip(confined, counts, strict=True) if isinstance(op, DeleteOp))
        if upserted:
            metrics.POINTS_UPSERTED.labels(collection).inc(upserted)
        if deleted:
            metrics.POINTS_DELETED.labels(collection).inc(deleted)
        return counts

    async def update_points(
        self, collection: str, changes: Sequence[PointChange], tenant: str | None
    ) -> int:
        ids = [c.id for c in changes]
        found = await self.backend.retrieve(
            collection,
            ids,
            with_payload=False,
            with_vector=False,
            filter=_confined(None, tenant),
        )
        present = {p.id for p in found}
        for i, change in enumerate(changes):
            if change.id not in present:
                raise NotFound(
                    f"updates[{i}].id: collection {collection!r} has no point {change.id!r}",
                    field=f"updates[{i}].id",
                    reason="POINT_NOT_FOUND",
                )
        operations: list[Operation] = []
        vectors = [(c.id, c.vector) for c in changes if c.vector is not None]
        if vectors:
            operations.append(UpdateVectorsOp(vectors))
        for change in changes:
            if change.payload is not None:
                payload = change.payload
                if tenant is not None and (change.replace_payload or TENANT_KEY in payload):
                    payload = {**payload, TENANT_KEY: tenant}
                operations.append(
                    SetPayloadOp(Selector(ids=(change.id,)), payload, change.replace_payload)
                )
        if operations:
            await self.backend.apply(collection, operations)
        return len(changes)

    # --- reads ------------------------------------------------------------------------------

    async def get_points(
        self,
        collection: str,
        ids: Sequence[PointId],
        *,
        with_payload: bool,
        with_vector: bool,
        tenant: str | None,
    ) -> list[PointRecord]:
        found = await self.backend.retrieve(
            collection,
            ids,
            with_payload=with_payload,
            with_vector=with_vector,
            filter=_confined(None, tenant),
        )
        by_id = {p.id: p for p in found}
        ordered: list[PointRecord] = []
        seen: set[PointId] = set()
        for point_id in ids:
            record = by_id.get(point_id)
            if record is not None and point_id not in seen:
                ordered.append(record)
                seen.add(point_id)
        return ordered

    async def list_points(
        self,
        collection: str,
        *,
        filter: Filter | None,
        page_size: int,
        offset: PointId | None,
        with_payload: bool,
        with_vector: bool,
        tenant: str | None,
    ) -> tuple[list[PointRecord], PointId | None]:
        return await self.backend.scroll(
            collection,
            filter=_confined(filter, tenant),
            limit=page_size,
            offset=offset,
            with_payload=with_payload,
            with_vector=with_vector,
        )

    async def count(self, collection: str, filter: Filter | None, tenant: str | None) -> int:
        return await self.backend.count(collection, _confined(filter, tenant))

    def _observe(
        self, collection: str, kind: str, seconds: float, hits: int, query_text: str
    ) -> float:
        histogram = self._durations.get((collection, kind))
        if histogram is None:  # labels() costs a lock and a lookup; searches are hot
            histogram = self._durations[collection, kind] = metrics.SEARCH_DURATION.labels(
                collection, kind
            )
        histogram.observe(seconds)
        metrics.SEARCH_RESULTS.observe(hits)
        latency_ms = seconds * 1000
        if self._recorder is not None:
            self._recorder.record_search(collection, latency_ms, hits, query_text)
        return latency_ms

    async def search(
        self, collection: str, query: SearchQuery, *, tenant: str | None, query_text: str
    ) -> tuple[list[ScoredHit], float]:
        if tenant is not None:
            query = replace(query, filter=_confined(query.filter, tenant))
        started = time.perf_counter()
        with span(_trace, "vector.search", {"vector.collection": collection}):
            hits = await self.backend.search(collection, query)
        elapsed = time.perf_counter() - started
        return hits, self._observe(collection, "search", elapsed, len(hits), query_text)

    async def search_batch(self, searches: Sequence[Search]) -> list[tuple[list[ScoredHit], float]]:
        """Run searches grouped by collection (one engine batch per collection)."""
        groups: dict[str, list[int]] = {}
        for i, search in enumerate(searches):
            groups.setdefault(search.collection, []).append(i)
        results: list[tuple[list[ScoredHit], float]] = [([], 0.0)] * len(searches)

        async def run(collection: str, indexes: list[int]) -> None:
            queries = [
                replace(q.query, filter=_confined(q.query.filter, q.tenant))
                if q.tenant is not None
                else q.query
                for q in (searches[i] for i in indexes)
            ]
            started = time.perf_counter()
            with span(
                _trace,
                "vector.search",
                {"vector.collection": collection, "vector.queries": len(queries)},
            ):
                found = await self.backend.search_batch(collection, queries)
            elapsed = time.perf_counter() - started
            for i, hits in zip(indexes, found, strict=True):
                ms = self._observe(collection, "search", elapsed, len(hits), searches[i].query_text)
                results[i] = (hits, ms)

        await asyncio.gather(*(run(c, idx) for c, idx in groups.items()))
        return results

    async def _example_vectors(
        self, collection: str, examples: Sequence[Example], tenant: str | None
    ) -> tuple[list[Vector], list[PointId]]:
        ids = [e.id for e in examples if e.id is not None]
        found = {
            p.id: p.vector
            for p in await self.backend.retrieve(
                collection,
                ids,
                with_payload=False,
                with_vector=True,
                filter=_confined(None, tenant),
            )
        }
        vectors: list[Vector] = []
        for example in examples:
            if example.vector is not None:
                vectors.append(example.vector)
                continue
            vector = found.get(example.id) if example.id is not None else None
            if vector is None:
                raise NotFound(
                    f"{example.field}: collection {collection!r} has no point {example.id!r}",
                    field=example.field,
                    reason="POINT_NOT_FOUND",
                )
            vectors.append(vector)
        return vectors, ids

    async def recommend(
        self,
        collection: str,
        *,
        positives: Sequence[Example],
        negatives: Sequence[Example],
        strategy: RecommendStrategy,
        query: SearchQuery,
        tenant: str | None,
    ) -> tuple[list[ScoredHit], float]:
        """Recommend from examples; ``query`` carries filter, limit, offset, threshold and
        what to return (its vector is unused). Example points are never recommended."""
        started = time.perf_counter()
        positive, positive_ids = await self._example_vectors(collection, positives, tenant)
        negative, negative_ids = await self._example_vectors(collection, negatives, tenant)
        filter = _confined(query.filter, tenant)
        excluded = tuple(dict.fromkeys([*positive_ids, *negative_ids]))
        if excluded:
            base = filter or Filter()
            filter = Filter(base.must, base.should, (*base.must_not, HasId(excluded)))
        with span(_trace, "vector.recommend", {"vector.collection": collection}):
            hits = await self.backend.recommend(
                collection,
                RecommendQuery(
                    positives=positive,
                    negatives=negative,
                    strategy=strategy,
                    filter=filter,
                    limit=query.limit,
                    offset=query.offset,
                    score_threshold=query.score_threshold,
                    with_payload=query.with_payload,
                    with_vector=query.with_vector,
                ),
            )
        elapsed = time.perf_counter() - started
        return hits, self._observe(collection, "recommend", elapsed, len(hits), "")

    # --- clustering -------------------------------------------------------------------------

    async def cluster(
        self,
        collection: str,
        *,
        filter: Filter | None,
        tenant: str | None,
        density: bool,
        num_clusters: int,
        sample_size: int,
        representatives: int,
        with_payload: bool,
        seed: int | None,
        eps: float | None,
        min_samples: int | None,
    ) -> ClusterResult:
        started = time.perf_counter()
        config = await self.config(collection)
        filter = _confined(filter, tenant)
        total = await self.backend.count(collection, filter)
        if total <= sample_size:
            points = await self._all_points(collection, filter)
        else:
            points = await self.backend.sample(collection, filter, sample_size)
        points = [p for p in points if p.vector is not None]
        ids = [p.id for p in points]
        vectors = np.asarray([p.vector for p in points], dtype=np.float32).reshape(
            len(points), config.dimension
        )
        with span(_trace, "vector.cluster"):
            clustering = await asyncio.to_thread(
                cluster_points,
                ids,
                vectors,
                distance=config.distance,
                density=density,
                num_clusters=num_clusters,
                representatives=representatives,
                seed=seed,
                eps=eps,
                min_samples=min_samples,
            )
        payloads: dict[PointId, Payload] = {}
        if with_payload:
            wanted = [i for g in clustering.groups for i, _ in g.representatives]
            for record in await self.backend.retrieve(
                collection, wanted, with_payload=True, with_vector=False
            ):
                payloads[record.id] = record.payload or {}
        metrics.SEARCH_DURATION.labels(collection, "cluster").observe(time.perf_counter() - started)
        return ClusterResult(clustering, total, len(points), payloads)

    async def _all_points(self, collection: str, filter: Filter | None) -> list[PointRecord]:
        points: list[PointRecord] = []
        offset: PointId | None = None
        while True:
            chunk, offset = await self.backend.scroll(
                collection,
                filter=filter,
                limit=_SCROLL_CHUNK,
                offset=offset,
                with_payload=False,
                with_vector=True,
            )
            points.extend(chunk)
            if offset is None:
                return points

    # --- snapshots and sizes -----------------------------------------------------------------

    async def create_snapshot(self, collection: str) -> SnapshotInfo:
        await self.backend.collection_config(collection)
        return await self.backend.create_snapshot(collection)

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        return await self.backend.list_snapshots(collection)

    async def restore_snapshot(self, collection: str, snapshot: str, target: str) -> CollectionInfo:
        return await self.backend.restore_snapshot(collection, snapshot, target)

    async def delete_snapshot(self, collection: str, snapshot: str) -> None:
        await self.backend.delete_snapshot(collection, snapshot)

    async def snapshot_info(self, collection: str, snapshot: str) -> SnapshotInfo:
        """The snapshot's description; NOT_FOUND when the collection has no such snapshot."""
        for info in await self.backend.list_snapshots(collection):
            if info.name == snapshot:
                return info
        raise snapshot_not_found(collection, snapshot)

    async def read_snapshot(self, collection: str, snapshot: str, offset: int, size: int) -> bytes:
        return await self.backend.read_snapshot(collection, snapshot, offset, size)

    async def sizes(self) -> dict[str, tuple[int, int]]:
        sizes = await self.backend.sizes()
        for name, (points, disk) in sizes.items():
            metrics.COLLECTION_POINTS.labels(name).set(points)
            metrics.STORAGE_BYTES.labels(name).set(disk)
        return sizes
