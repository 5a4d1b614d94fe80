"""The remote backend: a Qdrant server or cluster through qdrant-client (async, gRPC preferred).

The service's own view of a collection travels in Qdrant's collection metadata
(``remote_convert``), so every service replica reads the same configuration. Snapshots
are Qdrant's native snapshots. qdrant-client's local mode (``location=":memory:"``
or a path; used by the tests) has no snapshots and no payload indexes: there the
portable snapshot files stand in, and indexes are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Final

import grpc
import httpx
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from lodestar.runtime.errors import AlreadyExists, NotFound, Unavailable
from lodestar.services.vector.filters import to_qdrant_filter
from lodestar.services.vector.models import (
    TENANT_KEY,
    CollectionConfig,
    CollectionInfo,
    CollectionUpdate,
    DeleteOp,
    DeletePayloadKeysOp,
    FieldType,
    Filter,
    HasId,
    Operation,
    PointId,
    PointRecord,
    RecommendQuery,
    ScoredHit,
    SearchQuery,
    SetPayloadOp,
    SnapshotInfo,
    UpdateVectorsOp,
    UpsertOp,
    with_must,
)
from lodestar.services.vector.remote_convert import (
    client_filter,
    collection_exists,
    collection_not_found,
    collection_status,
    config_of,
    field_index,
    hnsw_diff,
    metadata,
    plain_vector,
    point_id,
    point_record,
    qdrant_errors,
    quantization_config,
    query_request,
    recommend_query,
    scored_hit,
    search_params,
    snapshot_info,
    vector_params,
)
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.snapshots import PortableSnapshots, snapshot_not_found

_SCROLL_CHUNK: Final = 1_000
# Seconds a collection's configuration is trusted for request validation: other
# service replicas see a change to it (a new payload index, say) within this time.
_CONFIG_CACHE_S: Final = 5.0


class RemoteBackend:
    """Collections in a Qdrant server (or qdrant-client's local mode, for tests)."""

    kind = "remote"

    def __init__(
        self, settings: VectorSettings, *, client: AsyncQdrantClient | None = None
    ) -> None:
        self._settings = settings
        self._client = client or AsyncQdrantClient(
            url=settings.qdrant_url,
            api_key=self._api_key(),
            prefer_grpc=settings.prefer_grpc,
            grpc_port=settings.qdrant_grpc_port,
            timeout=max(1, round(settings.qdrant_timeout_s)),
            check_compatibility=False,
        )
        inner = getattr(self._client, "_client", None)
        self.local = type(inner).__module__.startswith("qdrant_client.local")
        self._portable = PortableSnapshots(settings.snapshots_path) if self.local else None
        self._configs: dict[str, tuple[float, CollectionConfig]] = {}

    def _api_key(self) -> str | None:
        key = self._settings.qdrant_api_key
        return key.get_secret_value() if key else None

    # --- plumbing ------------------------------------------------------------------------

    # Every call to Qdrant runs inside this, so callers only see the service's errors.
    _errors = staticmethod(qdrant_errors)

    async def _require(self, name: str) -> None:
        async with self._errors(name):
            exists = await self._client.collection_exists(name)
        if not exists:
            self._configs.pop(name, None)
            raise collection_not_found(name)

    # --- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        async with self._errors():
            await self._client.get_collections()  # fails early when Qdrant is unreachable

    async def close(self) -> None:
        await self._client.close()

    # --- collections ----------------------------------------------------------------------

    async def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo:
        await self._create(name, config, datetime.now(UTC))
        return await self.get_collection(name)

    async def _create(self, name: str, config: CollectionConfig, create_time: datetime) -> None:
        async with self._errors():
            if await self._client.collection_exists(name):
                raise collection_exists(name)
            try:
                await self._client.create_collection(
                    name,
                    vectors_config=vector_params(config),
                    hnsw_config=hnsw_diff(config.hnsw),
                    quantization_config=quantization_config(config.quantization),
                    metadata=metadata(config, create_time),
                )
            except (UnexpectedResponse, grpc.aio.AioRpcError, ValueError):
                if await self._client.collection_exists(name):
                    raise collection_exists(name) from None
                raise
        await self._create_indexes(name, {TENANT_KEY: FieldType.KEYWORD, **config.payload_schema})
        self._configs[name] = (time.monotonic(), config)

    async def _create_indexes(self, name: str, schema: dict[str, FieldType]) -> None:
        if self.local:
            return  # local mode has no payload indexes (filters still work)
        async with self._errors(name):
            for key, kind in sorted(schema.items()):
                await self._client.create_payload_index(
                    name, key, field_schema=field_index(key, kind)
                )

    async def get_collection(self, name: str) -> CollectionInfo:
        await self._require(name)
        async with self._errors(name):
            info = await self._client.get_collection(name)
        config, create_time = config_of(info)
        self._configs[name] = (time.monotonic(), config)
        return CollectionInfo(
            name=name,
            config=config,
            points_count=info.points_count or 0,
            indexed_vectors_count=info.indexed_vectors_count or 0,
            status=collection_status(info),
            disk_bytes=0,
            create_time=create_time,
        )

    async def collection_config(self, name: str) -> CollectionConfig:
        cached = self._configs.get(name)
        if cached is not None and time.monotonic() - cached[0] < _CONFIG_CACHE_S:
            return cached[1]
        return (await self.get_collection(name)).config

    async def list_collections(self) -> list[str]:
        async with self._errors():
            response = await self._client.get_collections()
        return sorted(c.name for c in response.collections)

    async def update_collection(self, name: str, update: CollectionUpdate) -> CollectionInfo:
        current = await self.get_collection(name)
        config = current.config
        schema = dict(config.payload_schema)
        async with self._errors(name):
            for key in update.remove_payload_fields:
                if schema.pop(key, None) is not None and not self.local:
                    await self._client.delete_payload_index(name, key)
            added = {k: t for k, t in update.add_payload_fields.items() if schema.get(k) is not t}
            for key in added:
                if key in schema and not self.local:
                    await self._client.delete_payload_index(name, key)
            schema.update(added)
        await self._create_indexes(name, added)
        hnsw = config.hnsw.merged(update.hnsw) if update.hnsw is not None else config.hnsw
        quantization = (
            update.quantization if update.quantization is not None else config.quantization
        )
        new_config = CollectionConfig(
            dimension=config.dimension,
            distance=config.distance,
            payload_schema=schema,
            hnsw=hnsw,
            quantization=quantization,
            embedding_model=config.embedding_model,
        )
        async with self._errors(name):
            await self._client.update_collection(
                name,
                hnsw_config=hnsw_diff(hnsw) if update.hnsw is not None else None,
                quantization_config=quantization_config(update.quantization),
                metadata=metadata(new_config, current.create_time or datetime.now(UTC)),
            )
        self._configs.pop(name, None)
        return await self.get_collection(name)

    async def delete_collection(self, name: str) -> None:
        await self._require(name)
        async with self._errors(name):
            await self._client.delete_collection(name)
        self._configs.pop(name, None)

    # --- writes --------------------------------------------------------------------------------

    async def apply(self, collection: str, operations: Sequence[Operation]) -> list[int]:
        counts: list[int] = []
        async with self._errors(collection):
            for operation in operations:
                counts.append(await self._apply_one(collection, operation))
        return counts

    async def _apply_one(self, collection: str, operation: Operation) -> int:
        client = self._client
        if isinstance(operation, UpsertOp):
            points = operation.points
            await client.upsert(
                collection,
                points=qm.Batch(
                    ids=[p.id for p in points],
                    vectors=[list(p.vector or ()) for p in points],
                    payloads=[p.payload or {} for p in points],
                ),
                wait=True,
            )
            return len(points)
        if isinstance(operation, UpdateVectorsOp):
            await client.update_vectors(
                collection,
                points=[qm.PointVectors(id=i, vector=list(v)) for i, v in operation.points],
                wait=True,
            )
            return len(operation.points)
        selector = to_qdrant_filter(operation.selector.as_filter())
        count = (await client.count(collection, count_filter=selector, exact=True)).count
        if count == 0:
            return 0
        chosen = qm.FilterSelector(filter=selector)
        if isinstance(operation, DeleteOp):
            await client.delete(collection, points_selector=chosen, wait=True)
        elif isinstance(operation, SetPayloadOp):
            if operation.overwrite:
                await client.overwrite_payload(collection, operation.payload, chosen, wait=True)
            else:
                await client.set_payload(collection, operation.payload, chosen, wait=True)
        elif isinstance(operation, DeletePayloadKeysOp):
            await client.delete_payload(collection, list(operation.keys), chosen, wait=True)
        return count

    # --- reads ---------------------------------------------------------------------------------

    async def retrieve(
        self,
        collection: str,
        ids: Sequence[PointId],
        *,
        with_payload: bool,
        with_vector: bool,
        filter: Filter | None = None,
    ) -> list[PointRecord]:
        if not ids:
            return []
        async with self._errors(collection):
            if filter is None:
                found = await self._client.retrieve(
                    collection, list(ids), with_payload=with_payload, with_vectors=with_vector
                )
            else:
                found, _ = await self._client.scroll(
                    collection,
                    scroll_filter=to_qdrant_filter(
                        with_must(filter, HasId(tuple(ids))) or Filter()
                    ),
                    limit=len(ids),
                    with_payload=with_payload,
                    with_vectors=with_vector,
                )
        return [point_record(r, with_payload, with_vector) for r in found]

    async def scroll(
        self,
        collection: str,
        *,
        filter: Filter | None,
        limit: int,
        offset: PointId | None,
        with_payload: bool,
        with_vector: bool,
    ) -> tuple[list[PointRecord], PointId | None]:
        async with self._errors(collection):
            found, next_offset = await self._client.scroll(
                collection,
                scroll_filter=client_filter(filter),
                limit=limit,
                offset=offset,
                with_payload=with_payload,
                with_vectors=with_vector,
            )
        return (
            [point_record(r, with_payload, with_vector) for r in found],
            None if next_offset is None else point_id(next_offset),
        )

    async def count(self, collection: str, filter: Filter | None) -> int:
        async with self._errors(collection):
            result = await self._client.count(
                collection,
                count_filter=client_filter(filter),
                exact=True,
            )
        return result.count

    async def search(self, collection: str, query: SearchQuery) -> list[ScoredHit]:
        return (await self.search_batch(collection, [query]))[0]

    async def search_batch(
        self, collection: str, queries: Sequence[SearchQuery]
    ) -> list[list[ScoredHit]]:
        ef = (await self.collection_config(collection)).hnsw.ef_search
        async with self._errors(collection):
            if len(queries) == 1:
                query = queries[0]
                request = query_request(query, ef, self.local)
                response = await self._client.query_points(
                    collection,
                    query=list(query.vector),
                    query_filter=request.filter,
                    search_params=request.params,
                    limit=query.limit,
                    offset=request.offset,
                    score_threshold=query.score_threshold,
                    with_payload=query.with_payload,
                    with_vectors=query.with_vector,
                )
                responses = [response]
            else:
                responses = await self._client.query_batch_points(
                    collection, requests=[query_request(q, ef, self.local) for q in queries]
                )
        return [
            [scored_hit(p, q.with_payload, q.with_vector) for p in r.points]
            for r, q in zip(responses, queries, strict=True)
        ]

    async def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredHit]:
        ef = (await self.collection_config(collection)).hnsw.ef_search
        async with self._errors(collection):
            response = await self._client.query_points(
                collection,
                query=recommend_query(query),
                query_filter=client_filter(query.filter),
                search_params=search_params(ef, False, self.local),
                limit=query.limit,
                offset=query.offset or None,
                score_threshold=query.score_threshold,
                with_payload=query.with_payload,
                with_vectors=query.with_vector,
            )
        return [scored_hit(p, query.with_payload, query.with_vector) for p in response.points]

    async def sample(self, collection: str, filter: Filter | None, limit: int) -> list[PointRecord]:
        async with self._errors(collection):
            response = await self._client.query_points(
                collection,
                query=qm.SampleQuery(sample=qm.Sample.RANDOM),
                query_filter=client_filter(filter),
                limit=limit,
                with_payload=False,
                with_vectors=True,
            )
        return [PointRecord(point_id(p.id), plain_vector(p.vector), None) for p in response.points]

    # --- snapshots --------------------------------------------------------------------------------

    async def create_snapshot(self, collection: str) -> SnapshotInfo:
        await self._require(collection)
        if self._portable is not None:
            config = await self.collection_config(collection)
            chunks = [chunk async for chunk in self._scroll_all(collection)]
            return await asyncio.to_thread(self._portable.write, collection, config, chunks)
        async with self._errors(collection):
            description = await self._client.create_snapshot(collection, wait=True)
        if description is None:
            raise Unavailable("Qdrant did not report the snapshot it made")
        return snapshot_info(collection, description)

    async def _scroll_all(self, collection: str) -> AsyncIterator[list[PointRecord]]:
        offset: PointId | None = None
        while True:
            chunk, offset = await self.scroll(
                collection,
                filter=None,
                limit=_SCROLL_CHUNK,
                offset=offset,
                with_payload=True,
                with_vector=True,
            )
            yield chunk
            if offset is None:
                return

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        if self._portable is not None:
            return await asyncio.to_thread(self._portable.infos, collection)
        async with self._errors(collection):
            descriptions = await self._client.list_snapshots(collection)
        snapshots = [snapshot_info(collection, d) for d in descriptions]
        snapshots.sort(
            key=lambda s: (s.create_time or datetime.min.replace(tzinfo=UTC), s.name), reverse=True
        )
        return snapshots

    async def delete_snapshot(self, collection: str, snapshot: str) -> None:
        if self._portable is not None:
            await asyncio.to_thread(self._portable.delete, collection, snapshot)
            return
        await self._native_snapshot(collection, snapshot)
        async with self._errors(collection):
            await self._client.delete_snapshot(collection, snapshot, wait=True)

    async def read_snapshot(self, collection: str, snapshot: str, offset: int, size: int) -> bytes:
        if self._portable is not None:
            return await asyncio.to_thread(self._portable.read, collection, snapshot, offset, size)
        await self._native_snapshot(collection, snapshot)
        # Qdrant serves a snapshot's file over HTTP only; a range request reads one piece.
        base = self._settings.qdrant_url.rstrip("/")
        key = self._api_key()
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
        if key:
            headers["api-key"] = key
        url = f"{base}/collections/{collection}/snapshots/{snapshot}"
        async with self._errors(collection):
            try:
                async with (
                    httpx.AsyncClient(timeout=self._settings.qdrant_timeout_s) as client,
                    client.stream("GET", url, headers=headers) as response,
                ):
                    if response.status_code == 416:  # the offset is at or past the end
                        return b""
                    if response.status_code == 404:
                        raise snapshot_not_found(collection, snapshot)
                    if response.status_code not in (200, 206):
                        await response.aread()
                        raise UnexpectedResponse.for_response(response)
                    # A server that ignores the range sends the whole file: skip to the piece.
                    skip = offset if response.status_code == 200 else 0
                    piece = bytearray()
                    async for block in response.aiter_bytes():
                        dropped = min(skip, len(block))
                        skip -= dropped
                        piece += block[dropped:][: size - len(piece)]
                        if len(piece) >= size:
                            break
                    return bytes(piece)
            except httpx.HTTPError as error:
                raise Unavailable(
                    f"Qdrant is unreachable: {error}", reason="BACKEND_UNAVAILABLE"
                ) from None

    async def _native_snapshot(self, collection: str, snapshot: str) -> SnapshotInfo:
        for info in await self.list_snapshots(collection):
            if info.name == snapshot:
                return info
        raise snapshot_not_found(collection, snapshot)

    async def restore_snapshot(self, collection: str, snapshot: str, target: str) -> CollectionInfo:
        if target != collection:
            async with self._errors():
                if await self._client.collection_exists(target):
                    raise AlreadyExists(
                        f"collection {target!r} already exists; restore into a new name or "
                        f"into {collection!r} itself",
                        reason="COLLECTION_EXISTS",
                        metadata={"collection": target},
                    )
        if self._portable is not None:
            await self._restore_portable(collection, snapshot, target)
        else:
            info = await self._native_snapshot(collection, snapshot)
            base = self._settings.qdrant_url.rstrip("/")
            async with self._errors(target):
                await self._client.recover_snapshot(
                    target,
                    location=f"{base}/collections/{collection}/snapshots/{snapshot}",
                    api_key=self._api_key(),
                    checksum=info.checksum or None,
                    wait=True,
                )
        self._configs.pop(target, None)
        return await self.get_collection(target)

    async def _restore_portable(self, collection: str, snapshot: str, target: str) -> None:
        assert self._portable is not None
        header, chunks = await asyncio.to_thread(self._portable.open, collection, snapshot)
        points = await asyncio.to_thread(list, chunks)
        create_time = datetime.now(UTC)
        async with self._errors():
            if await self._client.collection_exists(target):
                existing = await self.get_collection(target)
                create_time = existing.create_time or create_time
                await self._client.delete_collection(target)
        self._configs.pop(target, None)
        await self._create(target, header.config, create_time)
        for chunk in points:
            await self.apply(target, [UpsertOp(chunk)])

    async def sizes(self) -> dict[str, tuple[int, int]]:
        sizes: dict[str, tuple[int, int]] = {}
        for name in await self.list_collections():
            with contextlib.suppress(NotFound):
                info = await self.get_collection(name)
                sizes[name] = (info.points_count, info.disk_bytes)
        return sizes
