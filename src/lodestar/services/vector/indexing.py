"""The background optimizer: builds a collection's indexes on a copy, away from requests.

qdrant-edge builds HNSW indexes only in ``optimize()``, which holds the Python GIL
for the whole build (seconds to minutes) and would freeze every request. So after
writes settle (``optimize_delay_s``, or at the latest ``optimize_max_wait_s`` after a
write), a collection whose unindexed vectors pass ``indexing_threshold_kb`` (or whose
index configuration changed, or that has many deleted points) is copied to its next
generation (writes wait for the copy; reads never wait), the copy is optimized in a
child process (``optimizer.py``), and then, with writes held again, it is opened, the
writes made meanwhile are replayed into it, ``collection.json`` names it and it
replaces the old shard.
Searches see every write all along, through the old shard until the swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

import qdrant_edge as qe

from lodestar.services.vector.files import atomic_write
from lodestar.services.vector.models import CollectionConfig, config_to_dict
from lodestar.services.vector.settings import VectorSettings
from lodestar.services.vector.shards import (
    META_FILE,
    Collection,
    Shard,
    copy_shard,
    generation_dir,
    retire,
)

_log = logging.getLogger(__name__)

_RETRY_AFTER_FAILURE_S: Final = 30.0
# Deleted points that make a compaction worth a run.
_VACUUM_MIN_DELETED: Final = 1_000
# Niceness of the optimizer process, so that index builds yield the CPU to requests.
_OPTIMIZER_NICE: Final = 10


class BackgroundOptimizer:
    """Schedules and runs the index builds of the embedded backend's collections;
    ``on_optimized`` is told the name of each collection whose build was swapped in."""

    def __init__(self, settings: VectorSettings, on_optimized: Callable[[str], None]) -> None:
        self._settings = settings
        self._on_optimized = on_optimized
        self._closing = False

    def written(self, collection: Collection) -> None:
        """Note a write (or a new shard): a build follows once writes settle."""
        now = time.monotonic()
        if not collection.dirty:
            collection.dirty_since = now
        collection.last_write = now
        collection.dirty = True
        task = collection.optimizer_task
        if (task is None or task.done()) and not self._closing:
            collection.optimizer_task = asyncio.get_running_loop().create_task(
                self._loop(collection), name=f"optimize:{collection.name}"
            )

    def needed(self, collection: Collection, points: int, indexed: int) -> bool:
        """Whether a collection with these counts is due for a build."""
        unindexed_kb = max(points - indexed, 0) * collection.meta.config.dimension * 4 / 1024
        return (
            collection.config_changed
            or unindexed_kb >= self._settings.indexing_threshold_kb
            or collection.deleted_since_optimize >= _VACUUM_MIN_DELETED
        )

    async def stop(self, collection: Collection) -> None:
        """Stop a collection's build, if one runs (its copy is dropped)."""
        task = collection.optimizer_task
        if collection.worker is not None and collection.worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                collection.worker.kill()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self, collections: Sequence[Collection]) -> None:
        """Stop every build and start no more."""
        self._closing = True
        for collection in collections:
            await self.stop(collection)

    async def _loop(self, collection: Collection) -> None:
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
                info = collection.shard.engine.info()
                if not self.needed(collection, info.points_count, info.indexed_vectors_count):
                    continue
                await self._optimize(collection)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("optimizing collection %r failed; retrying later", collection.name)
                collection.dirty = True
                await asyncio.sleep(_RETRY_AFTER_FAILURE_S)

    async def _optimize(self, collection: Collection) -> None:
        generation = collection.new_generation()
        path = collection.directory / generation_dir(generation)
        collection.optimizing = True
        started = time.perf_counter()
        swapped = False
        try:
            async with collection.write_lock:
                source = collection.shard
                await asyncio.to_thread(copy_shard, source, path)
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

                engine = await asyncio.to_thread(open_and_replay)
                collection.meta = meta
                collection.shard = Shard(engine, path)
                retire(source)
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
        self, collection: Collection, path: Path, config: CollectionConfig
    ) -> bool:
        options = {
            "collection": config_to_dict(config),
            "indexing_threshold_kb": self._settings.indexing_threshold_kb,
            "indexing_threads": self._settings.indexing_threads,
            "search_threads": self._settings.search_threads,
            "nice": _OPTIMIZER_NICE,
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
