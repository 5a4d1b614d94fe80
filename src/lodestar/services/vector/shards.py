"""A collection of the embedded backend on disk and in memory: its generations of shards.

Layout under ``data_dir/collections/<name>/``: ``collection.json`` (the configuration
and the current generation, replaced atomically) and ``gen-NNNNNN/``, the shard itself
(segments, payload indexes, write-ahead log). A new generation (an optimized copy, a
restore) becomes current when ``collection.json`` names it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import qdrant_edge as qe

from lodestar.services.vector.models import CollectionConfig, config_from_dict, config_to_dict

_log = logging.getLogger(__name__)

META_FILE: Final = "collection.json"


def generation_dir(generation: int) -> str:
    return f"gen-{generation:06d}"


@dataclass(frozen=True)
class Meta:
    """What ``collection.json`` holds."""

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
    def from_json(cls, data: bytes) -> Meta:
        raw = json.loads(data)
        return cls(
            config=config_from_dict(raw["config"]),
            create_time=datetime.fromisoformat(raw["create_time"]),
            generation=int(raw["generation"]),
        )


@dataclass(eq=False)
class Shard:
    """One open generation of a collection."""

    engine: qe.EdgeShard
    path: Path


@dataclass(eq=False)
class Collection:
    """A collection's current shard and the state of its writes and index builds.

    The engine's calls run on the event loop; ``write_lock`` orders the writes with the
    steps of an index build or a restore that must see no write in between."""

    name: str
    directory: Path
    meta: Meta
    shard: Shard
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


def copy_shard(shard: Shard, destination: Path) -> None:
    """Copy ``shard``'s files to ``destination`` (in a worker thread, with the collection's
    write lock held, so that the copy holds every write so far and no other)."""
    shard.engine.flush()
    shutil.rmtree(destination, ignore_errors=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(shard.path, destination)


def retire(shard: Shard) -> None:
    """Close a shard that is no longer current and remove its files, off the event loop.
    No call can be using it: the engine's calls run on the loop, and none awaits with it."""

    def close() -> None:
        try:
            shard.engine.close()
        finally:
            shutil.rmtree(shard.path, ignore_errors=True)

    task = asyncio.get_running_loop().run_in_executor(None, close)
    task.add_done_callback(_log_failure("closing a retired shard"))


def _log_failure(what: str) -> Callable[[asyncio.Future[Any]], None]:
    def report(future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            _log.error("%s failed: %s", what, future.exception())

    return report
