"""The embedded backend: the Qdrant engine in-process (qdrant-edge), one shard per collection.

The service runs it in a child process of its own by default (``engine_process.py``);
everything below describes the process that runs it. This module keeps the catalog
(collections on disk, ``shards.py``) and the snapshots; ``points.py`` reads, searches
and writes points, ``indexing.py`` builds indexes in the background.

Durability: ``EdgeShard.update`` appends the operation to the shard's write-ahead log,
a memory-mapped file, before applying it, so an acknowledged write lives in the
kernel's page cache and survives a crash (``kill -9``) of the process;
``fsync_writes`` also flushes it to the disk before acknowledging, for power loss. On
start the engine replays the log.

Calls: the engine holds the GIL for most of a read, search or write, so those run on
the event loop, one after another (a worker thread would add a hand-off each way and
run little beside them); work on files (copies, snapshots, loading and closing shards,
fsync) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final

import qdrant_edge as qe

from lodestar.runtime.errors import AlreadyExists, NotFound
from lodestar.services.vector import edge, points
from lodestar.services.vector.files import atomic_write, lock_directory, tree_bytes
from lodestar.services.vector.indexing import BackgroundOptimizer
from lodestar.services.vector.metrics import OPTIMIZER_RUNS
from lodestar.services.vector.models import (
    CollectionConfig,
    CollectionInfo,
    CollectionStatus,
    CollectionUpdate,
    DeleteOp,
    Filter,
    Operation,
    PointId,
    PointRecord,
    RecommendQuery,
    ScoredHit,
    SearchQuery,
    SnapshotInfo,
)
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.shards import (
    META_FILE,
    Collection,
    Meta,
    Shard,
    copy_shard,
    generation_dir,
    retire,
)
from lodestar.services.vector.snapshots import PortableSnapshots

_log = logging.getLogger(__name__)

_COLLECTIONS_DIR: Final = "collections"
_TMP_DIR: Final = "tmp"


class EmbeddedBackend:
    """Collections as qdrant-edge shards under ``settings.data_dir``."""

    kind = "embedded"

    def __init__(
        self, settings: VectorSettings, *, on_optimized: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        self._root = settings.data_dir / _COLLECTIONS_DIR
        self._tmp = settings.data_dir / _TMP_DIR
        self._snapshots = PortableSnapshots(settings.snapshots_path)
        self._collections: dict[str, Collection] = {}
        self._catalog_lock = asyncio.Lock()
        # Told the name of each collection whose index build finished and was swapped in.
        self._optimizer = BackgroundOptimizer(settings, on_optimized or _count_optimizer_run)
        self._lock: int | None = None

    def _get(self, name: str) -> Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(
                f"collection {name!r} does not exist",
                reason="COLLECTION_NOT_FOUND",
                metadata={"collection": name},
            )
        return collection

    def _engine(self, name: str) -> qe.EdgeShard:
        return self._get(name).shard.engine

    def _ef_search(self, name: str) -> int | None:
        return self._get(name).meta.config.hnsw.ef_search

    # --- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        # One process per data directory: two engines on one shard would corrupt it.
        self._lock = await asyncio.to_thread(
            lock_directory, self._settings.data_dir, self._settings.data_lock_wait_s
        )
        self._root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        for directory in sorted(self._root.iterdir()):
            if directory.name.startswith(".") or not directory.is_dir():
                # A collection whose deletion was interrupted.
                shutil.rmtree(directory, ignore_errors=True)
                continue
            meta_path = directory / META_FILE
            if not meta_path.is_file():
                _log.warning("removing %s: its creation never finished", directory)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            meta = Meta.from_json(meta_path.read_bytes())
            current = generation_dir(meta.generation)
            for stale in directory.glob("gen-*"):
                if stale.name != current:
                    # An optimizer copy or a restore that did not finish.
                    shutil.rmtree(stale, ignore_errors=True)
            path = directory / current
            engine = await asyncio.to_thread(qe.EdgeShard.load, str(path))
            collection = Collection(directory.name, directory, meta, Shard(engine, path))
            self._collections[directory.name] = collection
            self._optimizer.written(collection)
        _log.info("embedded backend: %d collections under %s", len(self._collections), self._root)

    async def close(self) -> None:
        await self._optimizer.close(list(self._collections.values()))
        for collection in list(self._collections.values()):
            async with collection.write_lock:
                await asyncio.to_thread(collection.shard.engine.close)
        self._collections.clear()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # --- collections -------------------------------------------------------------------------

    async def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo:
        async with self._catalog_lock:
            if name in self._collections:
                raise AlreadyExists(
                    f"collection {name!r} already exists",
                    reason="COLLECTION_EXISTS",
                    metadata={"collection": name},
                )
            collection = await self._build(name, config, datetime.now(UTC), chunks=iter(()))
            self._collections[name] = collection
            self._optimizer.written(collection)
        return await self.get_collection(name)

    async def _build(
        self,
        name: str,
        config: CollectionConfig,
        create_time: datetime,
        chunks: Iterator[list[PointRecord]],
        *,
        generation: int = 1,
    ) -> Collection:
        """A new shard generation holding the points of ``chunks``, with
        ``collection.json`` pointing at it.

        The caller registers the result (or takes its shard) and marks it written."""
        directory = self._root / name
        path = directory / generation_dir(generation)
        meta = Meta(config, create_time, generation)
        engine_config = edge.edge_config(
            config,
            indexing_threshold_kb=self._settings.indexing_threshold_kb,
            indexing_threads=self._settings.indexing_threads,
            search_threads=self._settings.search_threads or None,
        )

        def build() -> qe.EdgeShard:
            if generation == 1:
                shutil.rmtree(directory, ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
            directory.mkdir(parents=True, exist_ok=True)
            engine = qe.EdgeShard.create(str(path), engine_config)
            try:
                for operation in edge.index_operations(config.payload_schema):
                    engine.update(operation)
                for chunk in chunks:
                    engine.update(points.upsert(chunk))
                engine.flush()
                atomic_write(directory / META_FILE, meta.to_json())
            except BaseException:
                engine.close()
                shutil.rmtree(path if generation > 1 else directory, ignore_errors=True)
                raise
            return engine

        engine = await asyncio.to_thread(build)
        return Collection(name, directory, meta, Shard(engine, path))

    async def get_collection(self, name: str) -> CollectionInfo:
        collection = self._get(name)
        info = collection.shard.engine.info()
        disk = await asyncio.to_thread(tree_bytes, collection.shard.path)
        return CollectionInfo(
            name=name,
            config=collection.meta.config,
            points_count=info.points_count,
            indexed_vectors_count=info.indexed_vectors_count,
            status=self._status(collection, info.points_count, info.indexed_vectors_count),
            disk_bytes=disk,
            create_time=collection.meta.create_time,
        )

    def _status(self, collection: Collection, points: int, indexed: int) -> CollectionStatus:
        if collection.optimizing or self._optimizer.needed(collection, points, indexed):
            return CollectionStatus.OPTIMIZING
        return CollectionStatus.READY

    async def collection_config(self, name: str) -> CollectionConfig:
        return self._get(name).meta.config

    async def list_collections(self) -> list[str]:
        return sorted(self._collections)

    async def update_collection(self, name: str, update: CollectionUpdate) -> CollectionInfo:
        collection = self._get(name)
        async with collection.write_lock:
            self._get(name)
            config = collection.meta.config
            schema = dict(config.payload_schema)
            operations: list[qe.UpdateOperation] = []
            for key in update.remove_payload_fields:
                if schema.pop(key, None) is not None:
                    operations.append(qe.UpdateOperation.delete_field_index(key))
            for key, kind in sorted(update.add_payload_fields.items()):
                if schema.get(key) is kind:
                    continue
                if key in schema:
                    operations.append(qe.UpdateOperation.delete_field_index(key))
                operations.append(
                    qe.UpdateOperation.create_field_index(key, edge.field_index(kind))
                )
                schema[key] = kind
            hnsw = config.hnsw.merged(update.hnsw) if update.hnsw is not None else config.hnsw
            quantization = (
                update.quantization if update.quantization is not None else config.quantization
            )
            new_config = replace(
                config, payload_schema=schema, hnsw=hnsw, quantization=quantization
            )
            rebuild = (hnsw.m, hnsw.ef_construct, hnsw.full_scan_threshold) != (
                config.hnsw.m,
                config.hnsw.ef_construct,
                config.hnsw.full_scan_threshold,
            ) or quantization != config.quantization
            meta = replace(collection.meta, config=new_config)
            for operation in operations:
                collection.shard.engine.update(operation)
            await asyncio.to_thread(atomic_write, collection.directory / META_FILE, meta.to_json())
            if collection.delta is not None:
                collection.delta.extend(operations)
            collection.meta = meta
            if rebuild:
                collection.config_changed = True
                self._optimizer.written(collection)
        return await self.get_collection(name)

    async def delete_collection(self, name: str) -> None:
        async with self._catalog_lock:
            collection = self._get(name)
            await self._optimizer.stop(collection)
            async with collection.write_lock:
                collection.removed = True
                del self._collections[name]
                shard = collection.shard
                # Renamed first so that a crash mid-removal cannot bring back half of it.
                grave = self._root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"

                def remove() -> None:
                    shard.engine.close()
                    collection.directory.rename(grave)
                    shutil.rmtree(grave, ignore_errors=True)

                await asyncio.to_thread(remove)

    # --- points ------------------------------------------------------------------------------

    async def apply(self, collection: str, operations: Sequence[Operation]) -> list[int]:
        target = self._get(collection)
        async with target.write_lock:
            if target.removed:
                self._get("")  # raises NotFound: deleted while this write waited
            engine = target.shard.engine
            applied: list[qe.UpdateOperation] = []
            try:
                counts = points.apply(engine, operations, applied)
                if self._settings.fsync_writes:
                    await asyncio.to_thread(engine.flush)
            finally:
                if target.delta is not None:
                    target.delta.extend(applied)
                if applied:
                    self._optimizer.written(target)
        target.deleted_since_optimize += sum(
            count for op, count in zip(operations, counts, strict=True) if isinstance(op, DeleteOp)
        )
        return counts

    async def retrieve(
        self,
        collection: str,
        ids: Sequence[PointId],
        *,
        with_payload: bool,
        with_vector: bool,
        filter: Filter | None = None,
    ) -> list[PointRecord]:
        return points.retrieve(
            self._engine(collection),
            ids,
            with_payload=with_payload,
            with_vector=with_vector,
            filter=filter,
        )

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
        return points.scroll(
            self._engine(collection),
            filter=filter,
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vector=with_vector,
        )

    async def count(self, collection: str, filter: Filter | None) -> int:
        return points.count(self._engine(collection), filter)

    async def search(self, collection: str, query: SearchQuery) -> list[ScoredHit]:
        return (await self.search_batch(collection, [query]))[0]

    async def search_batch(
        self, collection: str, queries: Sequence[SearchQuery]
    ) -> list[list[ScoredHit]]:
        return points.search_batch(self._engine(collection), queries, self._ef_search(collection))

    async def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredHit]:
        return points.recommend(self._engine(collection), query, self._ef_search(collection))

    async def sample(self, collection: str, filter: Filter | None, limit: int) -> list[PointRecord]:
        return points.sample(self._engine(collection), filter, limit)

    # --- snapshots ---------------------------------------------------------------------------

    async def create_snapshot(self, collection: str) -> SnapshotInfo:
        target = self._get(collection)
        copy_path = self._tmp / f"snapshot-{uuid.uuid4().hex}"
        async with target.write_lock:
            self._get(collection)
            await asyncio.to_thread(copy_shard, target.shard, copy_path)
            config = target.meta.config

        def export() -> SnapshotInfo:
            engine = qe.EdgeShard.load(str(copy_path))
            try:
                return self._snapshots.write(collection, config, points.scroll_all(engine))
            finally:
                engine.close()
                shutil.rmtree(copy_path, ignore_errors=True)

        return await asyncio.to_thread(export)

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        return await asyncio.to_thread(self._snapshots.infos, collection)

    async def delete_snapshot(self, collection: str, snapshot: str) -> None:
        await asyncio.to_thread(self._snapshots.delete, collection, snapshot)

    async def read_snapshot(self, collection: str, snapshot: str, offset: int, size: int) -> bytes:
        return await asyncio.to_thread(self._snapshots.read, collection, snapshot, offset, size)

    async def restore_snapshot(self, collection: str, snapshot: str, target: str) -> CollectionInfo:
        header, chunks = await asyncio.to_thread(self._snapshots.open, collection, snapshot)
        async with self._catalog_lock:
            existing = self._collections.get(target)
            if existing is None:
                built = await self._build(target, header.config, datetime.now(UTC), chunks)
                self._collections[target] = built
                self._optimizer.written(built)
            elif target != collection:
                raise AlreadyExists(
                    f"collection {target!r} already exists; restore into a new name or into "
                    f"{collection!r} itself",
                    reason="COLLECTION_EXISTS",
                    metadata={"collection": target},
                )
            else:
                await self._optimizer.stop(existing)
                async with existing.write_lock:
                    built = await self._build(
                        target,
                        header.config,
                        existing.meta.create_time,
                        chunks,
                        generation=existing.new_generation(),
                    )
                    old = existing.shard
                    existing.shard = built.shard
                    existing.meta = built.meta
                    existing.delta = None
                    existing.config_changed = False
                    existing.deleted_since_optimize = 0
                    retire(old)
                    self._optimizer.written(existing)
        return await self.get_collection(target)

    # --- observability -----------------------------------------------------------------------

    async def sizes(self) -> dict[str, tuple[int, int]]:
        sizes: dict[str, tuple[int, int]] = {}
        for name, collection in list(self._collections.items()):
            with contextlib.suppress(NotFound):
                points_count = self._engine(name).info().points_count
                sizes[name] = (
                    points_count,
                    await asyncio.to_thread(tree_bytes, collection.shard.path),
                )
        return sizes


def _count_optimizer_run(collection: str) -> None:
    OPTIMIZER_RUNS.labels(collection).inc()
