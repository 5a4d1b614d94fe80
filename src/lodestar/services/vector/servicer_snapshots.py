"""VectorService's snapshot RPCs: create, list, restore, delete and download.

Snapshots are whole-collection backups; the RPCs validate names and convert, the
store and its backend do the work. A download streams the snapshot's file in pieces
of at most ``limits.SNAPSHOT_CHUNK_BYTES``, read one by one (a snapshot never changes
once written), so neither side holds the whole file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from lodestar import limits
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector import convert
from lodestar.services.vector.store import VectorStore
from lodestar.vector.v1 import vector_service_pb2 as pb
from lodestar.vector.v1 import vector_service_pb2_grpc as pb_grpc

_Context = grpc.aio.ServicerContext[Any, Any]


class SnapshotServicer(pb_grpc.VectorServiceServicer):
    """The snapshot RPCs of ``VectorServicer``, over its ``_store``."""

    _store: VectorStore

    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: _Context
    ) -> pb.CreateSnapshotResponse:
        name = convert.collection_name(request.collection)
        snapshot = await self._store.create_snapshot(name)
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot_to_pb(snapshot))

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: _Context
    ) -> pb.ListSnapshotsResponse:
        name = convert.collection_name(request.collection)
        size = convert.page_size(request.page_size)
        state = convert.decode_page_token(request.page_token, "snapshots")
        start = state.get("o", 0)
        if state and (state.get("c") != name or not isinstance(start, int) or start < 0):
            raise InvalidArgument(
                "page_token: not a page token from a previous response", field="page_token"
            )
        snapshots = await self._store.list_snapshots(name)
        page = snapshots[start : start + size]
        more = start + size < len(snapshots)
        return pb.ListSnapshotsResponse(
            snapshots=[convert.snapshot_to_pb(s) for s in page],
            next_page_token=convert.encode_page_token(
                {"k": "snapshots", "c": name, "o": start + size}
            )
            if more
            else "",
        )

    async def RestoreSnapshot(
        self, request: pb.RestoreSnapshotRequest, context: _Context
    ) -> pb.RestoreSnapshotResponse:
        name = convert.collection_name(request.collection)
        snapshot = convert.snapshot_name(request.snapshot)
        target = (
            convert.collection_name(request.target_collection, "target_collection")
            if request.target_collection
            else name
        )
        info = await self._store.restore_snapshot(name, snapshot, target)
        return pb.RestoreSnapshotResponse(collection=convert.collection_to_pb(info))

    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: _Context
    ) -> pb.DeleteSnapshotResponse:
        name = convert.collection_name(request.collection)
        await self._store.delete_snapshot(name, convert.snapshot_name(request.snapshot))
        return pb.DeleteSnapshotResponse()

    async def DownloadSnapshot(
        self, request: pb.DownloadSnapshotRequest, context: _Context
    ) -> AsyncIterator[pb.DownloadSnapshotResponse]:
        name = convert.collection_name(request.collection)
        snapshot = convert.snapshot_name(request.snapshot)
        info = await self._store.snapshot_info(name, snapshot)
        message = pb.DownloadSnapshotResponse(snapshot=convert.snapshot_to_pb(info))
        piece = limits.SNAPSHOT_CHUNK_BYTES
        offset = 0
        while True:
            data = await self._store.read_snapshot(name, snapshot, offset, piece)
            offset += len(data)
            message.data = data
            yield message
            # A short piece is the end; so is the known size (no empty message after it).
            if len(data) < piece or (info.size_bytes and offset >= info.size_bytes):
                return
            message = pb.DownloadSnapshotResponse()
