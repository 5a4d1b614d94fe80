"""The one interface both vector backends implement.

``EmbeddedBackend`` runs the Qdrant engine in-process (qdrant-edge);
``RemoteBackend`` talks to a Qdrant server or cluster (qdrant-client). Callers
(the engine layer above) have already validated input against the collection's
configuration; backends raise ``NotFound``/``AlreadyExists`` for collections and
snapshots and never see protobuf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from lodestar.services.vector.models import (
    CollectionConfig,
    CollectionInfo,
    CollectionUpdate,
    Filter,
    Operation,
    PointId,
    PointRecord,
    RecommendQuery,
    ScoredHit,
    SearchQuery,
    SnapshotInfo,
)


@runtime_checkable
class VectorBackend(Protocol):
    """Collections of points with filtered similarity search and snapshots."""

    kind: str

    async def open(self) -> None:
        """Load what exists (embedded) or connect (remote)."""

    async def close(self) -> None:
        """Persist and release everything; the backend is unusable afterwards."""

    # --- collections
    async def create_collection(self, name: str, config: CollectionConfig) -> CollectionInfo: ...

    async def get_collection(self, name: str) -> CollectionInfo: ...

    async def collection_config(self, name: str) -> CollectionConfig:
        """The configuration, cheaply: it validates every request."""

    async def list_collections(self) -> list[str]:
        """Every collection name, sorted."""

    async def update_collection(self, name: str, update: CollectionUpdate) -> CollectionInfo: ...

    async def delete_collection(self, name: str) -> None: ...

    # --- points
    async def apply(self, collection: str, operations: Sequence[Operation]) -> list[int]:
        """Apply write operations in order; returns the points each one affected.

        Returns only once every operation is durable (it survives a crash of the
        process).
        """

    async def retrieve(
        self,
        collection: str,
        ids: Sequence[PointId],
        *,
        with_payload: bool,
        with_vector: bool,
        filter: Filter | None = None,
    ) -> list[PointRecord]:
        """Points with these ids (that also match ``filter``), in any order."""

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
        """A page of points in id order from ``offset``, and the next page's first id."""

    async def count(self, collection: str, filter: Filter | None) -> int: ...

    async def search(self, collection: str, query: SearchQuery) -> list[ScoredHit]: ...

    async def search_batch(
        self, collection: str, queries: Sequence[SearchQuery]
    ) -> list[list[ScoredHit]]: ...

    async def recommend(self, collection: str, query: RecommendQuery) -> list[ScoredHit]: ...

    async def sample(self, collection: str, filter: Filter | None, limit: int) -> list[PointRecord]:
        """Up to ``limit`` points chosen uniformly at random, with vectors."""

    # --- snapshots
    async def create_snapshot(self, collection: str) -> SnapshotInfo: ...

    async def list_snapshots(self, collection: str) -> list[SnapshotInfo]:
        """Newest first."""

    async def restore_snapshot(self, collection: str, snapshot: str, target: str) -> CollectionInfo:
        """Restore ``snapshot`` of ``collection`` into ``target`` (replaced when it is
        ``collection`` itself, created otherwise)."""

    async def delete_snapshot(self, collection: str, snapshot: str) -> None: ...

    async def read_snapshot(self, collection: str, snapshot: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the snapshot's file from ``offset``; fewer only at its
        end. A snapshot is never changed once written, so pieces read one by one make
        up the file."""

    # --- observability
    async def sizes(self) -> dict[str, tuple[int, int]]:
        """Each collection's (points, disk bytes)."""
