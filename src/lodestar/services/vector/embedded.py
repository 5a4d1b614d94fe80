"""The embedded backend: the Qdrant engine in-process (qdrant-edge), one shard per collection.

The service runs it in a child process of its own by default (``engine_process.py``);
everything below describes the process that runs it.

Layout under ``data_dir/collections/<name>/``: ``collection.json`` (the
configuration and the current generation, replaced atomically) and
``gen-NNNNNN/``, the shard itself (segments, payload indexes, write-ahead log).

Durability: ``EdgeShard.update`` appends the operation to the shard's
write-ahead log, a memory-mapped file, before applying it, so an acknowledged
write lives in the kernel's page cache and survives a crash (``kill -9``) of the
process; ``fsync_writes`` also flushes it to the disk before acknowledging, for
power loss. On start the engine replays the log.

Indexes: the engine builds HNSW only in ``optimize()``, which holds the GIL
while it runs. After writes settle (``optimize_delay_s``, or at the latest
``optimize_max_wait_s`` after a write) a collection whose
unindexed vectors pass ``indexing_threshold_kb`` is copied to the next
generation (writes wait for the copy; reads never wait), the copy is optimized
in a child process (``optimizer.py``), and then, with writes held again, it is
opened, the writes made meanwhile are replayed into it, ``collection.json``
points at it and it replaces the old shard. Searches see every write all along,
through the old shard until the swap.

Writes: ``EdgeShard.update`` holds the GIL while it writes, so a worker thread
would run nothing alongside it; upserts of up to ``_INLINE_WRITE_POINTS`` points
are therefore applied on the event loop, which saves the hand-off to a worker and
back. Larger upserts, and deletes and payload changes (which first count the
points they select), run on worker threads.

Searches: plain searches that the engine answers in under ``inline_search_ms``
run on the event loop (a hand-off to a worker thread and back costs more CPU
than they do); the rest run on worker threads, and searches that arrive while
those are busy go to the engine together as one ``query_batch``. The engine
keeps the GIL for most of a search, so searches do not overlap each other, nor
the event loop's own work, whichever thread runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import qdrant_edge as qe

from lodestar.runtime.errors import AlreadyExists, NotFound
from lodestar.services.vector import edge
from lodestar.services.vector.files import atomic_write, lock_directory, tree_bytes
from lodestar.services.vector.metrics import OPTIMIZER_RUNS
from lodestar.services.vector.models import (
    CollectionConfig,
    CollectionInfo,
    CollectionStatus,
    CollectionUpdate,
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
    SnapshotInfo,
    UpdateVectorsOp,
    UpsertOp,
    config_from_dict,
    config_to_dict,
    with_must,
)
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.snapshots import PortableSnapshots

_log = logging.getLogger(__name__)

T = TypeVar("T")

META_FILE: Final = "collection.json"
_COLLECTIONS_DIR: Final = "collections"
_TMP_DIR: Final = "tmp"
_SCROLL_CHUNK: Final = 1_000
_RETRY_AFTER_FAILURE_S: Final = 30.0
_MAX_SEARCH_BATCH: Final = 64
# Upserts of at most this many points are applied on the event loop (see the module doc).
_INLINE_WRITE_POINTS: Final = 1_000
# Deleted points that make a compaction worth a run.
_VACUUM_MIN_DELETED: Final = 1_000


def _generation_dir(generation: int) -> str:
    return f"gen-{generation:06d}"


@dataclass(frozen=True)
class _Meta:
    config: CollectionConfig
    create_time: datetime
    generation: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "config": config_to_dict(self.config),
                "create_time": self.create_time.isoformat(),
                "generation": self.generation,
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Meta:
        raw = json.loads(data)
        return cls(
            config=config_from_dict(raw["config"]),
            create_time=datetime.fromisoformat(raw["create_time"]),
            generation=int(raw["generation"]),
        )


# A query waiting for the engine: the request, who waits for it, whether it is plain.
_PendingQuery = tuple[qe.QueryRequest, "asyncio.Future[list[qe.ScoredPoint]]", bool]


class _Shard:
    """One open generation of a collection; closed once retired and unused."""

    def __init__(self, engine: qe.EdgeShard, path: Path) -> None:
        self.engine = engine
        self.path = path
        self.users = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.retired = False
        self.remove_files = False
        # Searches waiting for an engine call, and engine calls running.
        self.pending: list[_PendingQuery] = []
        self.searching = 0
        # Moving average of the engine time of a plain search, in seconds (None: unknown).
        self.search_seconds: float | None = None

    def observe_search(self, seconds: float) -> None:
        previous = self.search_seconds
        self.search_seconds = seconds if previous is None else 0.9 * previous + 0.1 * seconds


@dataclass(eq=False)
class _Collection:
    name: str
    directory: Path
    meta: _Meta
    shard: _Shard
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Writes applied while an optimizer works on a copy, to replay into that copy.
    delta: list[qe.UpdateOperation] | None = None
    last_write: float = 0.0
    # When the oldest write not yet considered for an index build happened.
    dirty_since: float = 0.0
    dirty: bool = False
    config_changed: bool = False
    deleted_since_optimize: int = 0
    optimizing: bool = False
    optimizer_task: asyncio.Task[None] | None = None
    worker: asyncio.subprocess.Process | None = None
    removed: bool = False
    # Generation numbers handed out in this process (optimizer copies, restores).
    last_generation: int = 0

    def __post_init__(self) -> None:
        self.last_generation = max(self.last_generation, self.meta.generation)

    def new_generation(self) -> int:
        self.last_generation += 1
        return self.last_generation


class EmbeddedBackend:
    """Collections as qdrant-edge shards under ``settings.data_dir``."""

    kind = "embedded"

    def __init__(
        self, settings: VectorSettings, *, on_optimized: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        # Told the name of each collection whose index build finished and was swapped in.
        self._on_optimized = on_optimized or _count_optimizer_run
        self._root = settings.data_dir / _COLLECTIONS_DIR
        self._tmp = settings.data_dir / _TMP_DIR
        self._snapshots = PortableSnapshots(settings.snapshots_path)
        self._collections: dict[str, _Collection] = {}
        self._catalog_lock = asyncio.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=settings.engine_threads, thread_name_prefix="vector-engine"
        )
        self._closing = False
        self._lock: int | None = None
        self._search_slots = settings.search_slots or os.cpu_count() or 2
        self._inline_budget_s = settings.inline_search_ms / 1000

    # --- plumbing ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _get(self, name: str) -> _Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(
                f"collection {name!r} does not exist",
                reason="COLLECTION_NOT_FOUND",
                metadata={"collection": name},
            )
        return collection

    def _use(self, shard: _Shard, count: int = 1) -> None:
        shard.users += count
        shard.idle.clear()

    def _release(self, shard: _Shard, count: int = 1) -> None:
        shard.users -= count
        if shard.users == 0:
            shard.idle.set()
            if shard.retired:
                self._dispose(shard)

    async def _read(self, name: str, fn: Callable[[qe.EdgeShard], T]) -> T:
        """Run a read on the collection's current shard, off the event loop."""
        shard = self._get(name).shard
        self._use(shard)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, shard.engine)
        finally:
            self._release(shard)

    async def _query(
        self, name: str, request: qe.QueryRequest, *, plain: bool = False
    ) -> list[qe.ScoredPoint]:
        """Run a query on the collection's shard.

        A ``plain`` query (unfiltered approximate search) runs right here when such
        queries take the engine less than ``inline_search_ms``: handing it to a
        worker thread and back costs more CPU than the search itself, and the
        event loop is held only that long. Other queries run on worker threads,
        at most ``search_slots`` engine calls per shard at once; queries arriving
        while they are all busy wait, and the next free slot takes them all in one
        ``query_batch`` (one trip to a worker thread instead of one each).
        """
        shard = self._get(name).shard
        if (
            plain
            and shard.search_seconds is not None
            and shard.search_seconds < self._inline_budget_s
        ):
            # Cheaper than the hand-off: run it here (the engine holds the GIL either way).
            started = time.perf_counter()
            found = shard.engine.query(request)
            shard.observe_search(time.perf_counter() - started)
            return found
        future: asyncio.Future[list[qe.ScoredPoint]] = asyncio.get_running_loop().create_future()
        shard.pending.append((request, future, plain))
        self._use(shard)
        if shard.searching < self._search_slots:
            self._dispatch(shard)
        return await future

    def _dispatch(self, shard: _Shard) -> None:
        batch = shard.pending[:_MAX_SEARCH_BATCH]
        del shard.pending[:_MAX_SEARCH_BATCH]
        shard.searching += 1
        job = asyncio.get_running_loop().run_in_executor(
            self._pool, _run_queries, shard.engine, [request for request, _, _ in batch]
        )
        job.add_done_callback(functools.partial(self._searched, shard, batch))

    def _searched(
        self,
        shard: _Shard,
        batch: list[_PendingQuery],
        job: asyncio.Future[tuple[list[list[qe.ScoredPoint]], float]],
    ) -> None:
        shard.searching -= 1
        error = asyncio.CancelledError() if job.cancelled() else job.exception()
        results, seconds = job.result() if error is None else ([], 0.0)
        if error is None and all(plain for _, _, plain in batch):
            shard.observe_search(seconds / len(batch))
        for i, (_, future, _) in enumerate(batch):
            if future.done():  # the caller went away
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(results[i])
        if shard.pending:
            self._dispatch(shard)
        self._release(shard, len(batch))

    def _retire(self, shard: _Shard, *, remove_files: bool) -> None:
        shard.retired = True
        shard.remove_files = remove_files
        if shard.users == 0:
            self._dispose(shard)

    def _dispose(self, shard: _Shard) -> None:
        def close() -> None:
            try:
                shard.engine.close()
            finally:
                if shard.remove_files:
                    shutil.rmtree(shard.path, ignore_errors=True)

        task = asyncio.get_running_loop().run_in_executor(self._pool, close)
        task.add_done_callback(_log_failure("closing a retired shard"))

    def _edge_config(self, config: CollectionConfig) -> qe.EdgeConfig:
        return edge.edge_config(
            config,
            indexing_threshold_kb=self._settings.indexing_threshold_kb,
            indexing_threads=self._settings.indexing_threads,
            search_threads=self._settings.search_threads or None,
        )

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
            meta = _Meta.from_json(meta_path.read_bytes())
            current = _generation_dir(meta.generation)
            for stale in directory.glob("gen-*"):
                if stale.name != current:
                    # An optimizer copy or a restore that did not finish.
                    shutil.rmtree(stale, ignore_errors=True)
            path = directory / current
            engine = await self._run(qe.EdgeShard.load, str(path))
            collection = _Collection(directory.name, directory, meta, _Shard(engine, path))
            self._collections[directory.name] = collection
            self._mark_written(collection)
        _log.info("embedded backend: %d collections under %s", len(self._collections), self._root)

    async def close(self) -> None:
        self._closing = True
        for collection in list(self._collections.values()):
            await self._stop_optimizer(collection)
        for collection in list(self._collections.values()):
            async with collection.write_lock:
                await self._run(collection.shard.engine.close)
        self._collections.clear()
        self._pool.shutdown(wait=True)
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
            collection = await self._build(name, config, datetime.now(UTC), points=iter(()))
            self._collections[name] = collection
            self._mark_written(collection)
        return await self.get_collection(name)

    async def _build(
        self,
        name: str,
        config: CollectionConfig,
        create_time: datetime,
        points: Iterator[list[PointRecord]],
        *,
        generation: int = 1,
    ) -> _Collection:
        """A new shard generation holding ``points``, with ``collection.json`` pointing at it.

        The caller registers the result (or takes its shard) and marks it written."""
        directory = self._root / name
        path = directory / _generation_dir(generation)
        meta = _Meta(config, create_time, generation)
        if generation == 1:
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)

        def build() -> qe.EdgeShard:
            engine = qe.EdgeShard.create(str(path), self._edge_config(config))
            try:
                for operation in edge.index_operations(config.payload_schema):
                    engine.update(operation)
                for chunk in points:
                    engine.update(
                        qe.UpdateOperation.upsert_points(
                            [
                                qe.Point(p.id, edge.engine_vector(p.vector or []), p.payload)
                                for p in chunk
                            ]
                        )
                    )
                engine.flush()
                atomic_write(directory / META_FILE, meta.to_json())
            except BaseException:
                engine.close()
                shutil.rmtree(path if generation > 1 else directory, ignore_errors=True)
                raise
            return engine

        engine = await self._run(build)
        return _Collection(name, directory, meta, _Shard(engine, path))

    async def get_collection(self, name: str) -> CollectionInfo:
        collection = self._get(name)
        info = await self._read(name, lambda e: e.info())
        disk = await self._run(tree_bytes, collection.shard.path)
        return CollectionInfo(
            name=name,
            config=collection.meta.config,
            points_count=info.points_count,
            indexed_vectors_count=info.indexed_vectors_count,
            status=self._status(collection, info.points_count, info.indexed_vectors_count),
            disk_bytes=disk,
            create_time=collection.meta.create_time,
        )

    def _status(self, collection: _Collection, points: int, indexed: int) -> CollectionStatus:
        if collection.optimizing or self._needs_optimize(collection, points, indexed):
            return CollectionStatus.OPTIMIZING
        return CollectionStatus.READY

    def _needs_optimize(self, collection: _Collection, points: int, indexed: int) -> bool:
        unindexed_kb = max(points - indexed, 0) * collection.meta.config.dimension * 4 / 1024
        return (
            collection.config_changed
            or unindexed_kb >= self._settings.indexing_threshold_kb
            or collection.deleted_since_optimize >= _VACUUM_MIN_DELETED
        )

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

            def apply() -> None:
                for operation in operations:
                    collection.shard.engine.update(operation)
                atomic_write(collection.directory / META_FILE, meta.to_json())

            await self._run(apply)
            if collection.delta is not None:
                collection.delta.extend(operations)
            collection.meta = meta
            if rebuild:
                collection.config_changed = True
                self._mark_written(collection)
        return await self.get_collection(name)

    async def delete_collection(self, name: str) -> None:
        async with self._catalog_lock:
            collection = self._get(name)
            await self._stop_optimizer(collection)
            async with collection.write_lock:
                collection.removed = True
                del self._collections[name]
                shard = collection.shard
                await shard.idle.wait()  # reads already running finish first
                shard.retired = True
                # Renamed first so that a crash mid-removal cannot bring back half of it.
                grave = self._root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"

                def remove() -> None:
                    shard.engine.close()
                    collection.directory.rename(grave)
                    shutil.rmtree(grave, ignore_errors=True)

                await self._run(remove)

    # --- writes ---------------------------------------------------------------------------------

    async def apply(self, collection: str, operations: Sequence[Operation]) -> list[int]:
        target = self._get(collection)
        async with target.write_lock:
            if target.removed:
                self._get("")  # raises NotFound: deleted while this write waited
            engine = target.shard.engine
            applied: list[qe.UpdateOperation] = []
            try:
                if _inline_write(operations):
                    counts = _apply_operations(engine, operations, applied)
                else:
                    counts = await self._run(_apply_operations, engine, operations, applied)
                if self._settings.fsync_writes:
                    await self._run(engine.flush)
            finally:
                if target.delta is not None:
                    target.delta.extend(applied)
                if applied:
                    self._mark_written(target)
        target.deleted_since_optimize += sum(
            count for op, count in zip(operations, counts, strict=True) if isinstance(op, DeleteOp)
        )
        return counts

    # --- reads ------------------------------------------------------------------------------------

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
        if filter is None:
            found = await self._read(
                collection, lambda e: e.retrieve(list(ids), with_payload, with_vector)
            )
        else:
            request = qe.ScrollRequest(
                limit=len(ids),
                filter=edge.edge_filter(with_must(filter, HasId(tuple(ids)))),
                with_payload=with_payload,
                with_vector=with_vector,
            )
            found = await self._read(collection, lambda e: e.scroll(request)[0])
        return edge.records(found, with_payload, with_vector)

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
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=edge.edge_filter(filter),
            with_payload=with_payload,
            with_vector=with_vector,
        )
        found, next_offset = await self._read(collection, lambda e: e.scroll(request))
        return (
            edge.records(found, with_payload, with_vector),
            None if next_offset is None else edge.point_id(next_offset),
        )

    async def count(self, collection: str, filter: Filter | None) -> int:
        request = qe.CountRequest(exact=True, filter=edge.edge_filter(filter))
        return await self._read(collection, lambda e: e.count(request))

    async def search(self, collection: str, query: SearchQuery) -> list[ScoredHit]:
        target = self._get(collection)
        request = edge.query_request(query, target.meta.config.hnsw.ef_search)
        plain = query.filter is None and not query.exact and query.limit + query.offset <= 100
        found = await self._query(collection, request, plain=plain)
        return edge.hits(found, query.with_payload, query.with_vector)

    async def search_batch(
        self, collection: str, queries: Sequence[SearchQuery]
    ) -> list[list[ScoredHit]]:
        target = self._get(collection)
        ef = target.meta.config.hnsw.ef_search
        batch = qe.QueryBatchRequest([edge.query_request(q, ef) for q in queries])
        found = await self._read(collection, lambda e: e.query_batch(batch))
        return [
            edge.hits(f, q.with_payload, q.with_vector) for f, q in zip(found, queries, strict=True)
        ]

    async def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredHit]:
        target = self._get(collection)
        request = edge.recommend_request(query, target.meta.config.hnsw.ef_search)
        found = await self._read(collection, lambda e: e.query(request))
        return edge.hits(found, query.with_payload, query.with_vector)

    async def sample(self, collection: str, filter: Filter | None, limit: int) -> list[PointRecord]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Sample.Random,
            filter=edge.edge_filter(filter),
            with_payload=False,
            with_vector=True,
        )
        found = await self._read(collection, lambda e: e.query(request))
        return [PointRecord(h.id, h.vector, None) for h in edge.hits(found, False, True)]

    # --- snapshots ------------------------------------------------------------------------------

    async def _copy_shard(self, collection: _Collection, destination: Path) -> _Shard:
        """Copy the collection's current shard to ``destination`` (writes wait; reads don't).

        Returns the shard that was copied. Call with the collection's write lock held.
        """
        source = collection.shard

        def copy() -> None:
            source.engine.flush()
            shutil.rmtree(destination, ignore_errors=True)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source.path, destination)

        await self._run(copy)
        return source

    async def create_snapshot(self, collection: str) -> SnapshotInfo:
        target = self._get(collection)
        copy_path = self._tmp / f"snapshot-{uuid.uuid4().hex}"
        async with target.write_lock:
            self._get(collection)
            await self._copy_shard(target, copy_path)
            config = target.meta.config

        def export() -> SnapshotInfo:
            engine = qe.EdgeShard.load(str(copy_path))
            try:
                return self._snapshots.write(collection, config, _scroll_all(engine))
            finally:
                engine.close()
                shutil.rmtree(copy_path, ignore_errors=True)

        return await self._run(export)

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        return await self._run(self._snapshots.infos, collection)

    async def delete_snapshot(self, collection: str, snapshot: str) -> None:
        await self._run(self._snapshots.delete, collection, snapshot)

    async def restore_snapshot(self, collection: str, snapshot: str, target: str) -> CollectionInfo:
        header, chunks = await self._run(self._snapshots.open, collection, snapshot)
        async with self._catalog_lock:
            existing = self._collections.get(target)
            if existing is None:
                built = await self._build(target, header.config, datetime.now(UTC), chunks)
                self._collections[target] = built
                self._mark_written(built)
            elif target != collection:
                raise AlreadyExists(
                    f"collection {target!r} already exists; restore into a new name or into "
                    f"{collection!r} itself",
                    reason="COLLECTION_EXISTS",
                    metadata={"collection": target},
                )
            else:
                await self._stop_optimizer(existing)
                async with existing.write_lock:
                    generation = existing.new_generation()
                    built = await self._build(
                        target,
                        header.config,
                        existing.meta.create_time,
                        chunks,
                        generation=generation,
                    )
                    old = existing.shard
                    existing.shard = built.shard
                    existing.meta = built.meta
                    existing.delta = None
                    existing.config_changed = False
                    existing.deleted_since_optimize = 0
                    self._retire(old, remove_files=True)
                    self._mark_written(existing)
        return await self.get_collection(target)

    async def sizes(self) -> dict[str, tuple[int, int]]:
        sizes: dict[str, tuple[int, int]] = {}
        for name, collection in list(self._collections.items()):
            with contextlib.suppress(NotFound):
                info = await self._read(name, lambda e: e.info())
                sizes[name] = (
                    info.points_count,
                    await self._run(tree_bytes, collection.shard.path),
                )
        return sizes

    # --- background optimization ------------------------------------------------------------

    def _mark_written(self, collection: _Collection) -> None:
        now = time.monotonic()
        if not collection.dirty:
            collection.dirty_since = now
        collection.last_write = now
        collection.dirty = True
        task = collection.optimizer_task
        if (task is None or task.done()) and not self._closing:
            collection.optimizer_task = asyncio.get_running_loop().create_task(
                self._optimizer_loop(collection), name=f"optimize:{collection.name}"
            )

    async def _stop_optimizer(self, collection: _Collection) -> None:
        task = collection.optimizer_task
        if collection.worker is not None and collection.worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                collection.worker.kill()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _optimizer_loop(self, collection: _Collection) -> None:
        delay = self._settings.optimize_delay_s
        max_wait = self._settings.optimize_max_wait_s
        while collection.dirty and not collection.removed and not self._closing:
            now = time.monotonic()
            wait = min(
                delay - (now - collection.last_write), max_wait - (now - collection.dirty_since)
            )
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            collection.dirty = False
            try:
                info = await self._read(collection.name, lambda e: e.info())
                if not self._needs_optimize(
                    collection, info.points_count, info.indexed_vectors_count
                ):
                    continue
                await self._optimize(collection)
            except NotFound:
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("optimizing collection %r failed; retrying later", collection.name)
                collection.dirty = True
                await asyncio.sleep(_RETRY_AFTER_FAILURE_S)

    async def _optimize(self, collection: _Collection) -> None:
        generation = collection.new_generation()
        path = collection.directory / _generation_dir(generation)
        collection.optimizing = True
        started = time.perf_counter()
        swapped = False
        try:
            async with collection.write_lock:
                source = await self._copy_shard(collection, path)
                collection.delta = []
                config = collection.meta.config
                config_changed, collection.config_changed = collection.config_changed, False
                deleted, collection.deleted_since_optimize = collection.deleted_since_optimize, 0
            try:
                changed = await self._run_worker(collection, path, config)
            except BaseException:
                collection.config_changed |= config_changed
                collection.deleted_since_optimize += deleted
                raise
            async with collection.write_lock:
                if collection.removed or collection.shard is not source:
                    return  # deleted or restored meanwhile: this copy is stale
                if not changed and not config_changed:
                    return
                delta, collection.delta = collection.delta or [], None
                meta = replace(collection.meta, generation=generation)

                def open_and_replay() -> qe.EdgeShard:
                    engine = qe.EdgeShard.load(str(path))
                    try:
                        for operation in delta:
                            engine.update(operation)
                        engine.flush()
                        atomic_write(collection.directory / META_FILE, meta.to_json())
                    except BaseException:
                        engine.close()
                        raise
                    return engine

                engine = await self._run(open_and_replay)
                collection.meta = meta
                collection.shard = _Shard(engine, path)
                self._retire(source, remove_files=True)
                swapped = True
            self._on_optimized(collection.name)
            _log.info(
                "collection %r optimized in %.1fs (%d writes replayed)",
                collection.name,
                time.perf_counter() - started,
                len(delta),
            )
        finally:
            collection.delta = None
            collection.optimizing = False
            if not swapped:
                shutil.rmtree(path, ignore_errors=True)

    async def _run_worker(
        self, collection: _Collection, path: Path, config: CollectionConfig
    ) -> bool:
        options = {
            "collection": config_to_dict(config),
            "indexing_threshold_kb": self._settings.indexing_threshold_kb,
            "indexing_threads": self._settings.indexing_threads,
            "search_threads": self._settings.search_threads,
            "nice": self._settings.optimizer_nice,
            "parent": os.getpid(),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lodestar.services.vector.optimizer",
            str(path),
            json.dumps(options),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        collection.worker = process
        try:
            stdout, stderr = await process.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:
            collection.worker = None
        if process.returncode != 0:
            raise RuntimeError(
                f"optimizer exited with {process.returncode}: "
                f"{stderr.decode(errors='replace')[-2000:]}"
            )
        return bool(json.loads(stdout.decode().strip().splitlines()[-1])["optimized"])


def _count_optimizer_run(collection: str) -> None:
    OPTIMIZER_RUNS.labels(collection).inc()


def _log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    def report(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            _log.error("%s failed: %s", what, future.exception())

    return report


def _run_queries(
    engine: qe.EdgeShard, requests: list[qe.QueryRequest]
) -> tuple[list[list[qe.ScoredPoint]], float]:
    """The engine's answers, and the seconds the engine took."""
    started = time.perf_counter()
    if len(requests) == 1:
        found = [engine.query(requests[0])]
    else:
        found = engine.query_batch(qe.QueryBatchRequest(requests))
    return found, time.perf_counter() - started


def _scroll_all(engine: qe.EdgeShard) -> Iterator[list[PointRecord]]:
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


def _inline_write(operations: Sequence[Operation]) -> bool:
    """Whether to apply these on the event loop: upserts only, and few points."""
    points = 0
    for operation in operations:
        if not isinstance(operation, UpsertOp | UpdateVectorsOp):
            return False
        points += len(operation.points)
    return points <= _INLINE_WRITE_POINTS


def _apply_operations(
    engine: qe.EdgeShard, operations: Sequence[Operation], applied: list[qe.UpdateOperation]
) -> list[int]:
    """Apply operations in order (in a worker thread); ``applied`` collects what succeeded."""
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
        points = [
            qe.Point(p.id, edge.engine_vector(p.vector or []), p.payload) for p in operation.points
        ]
        return len(points), qe.UpdateOperation.upsert_points(points)
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
