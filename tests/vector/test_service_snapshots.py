"""The behavioural suite over real gRPC, against every backend: snapshots: create,
list, restore, delete and download."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterable, Callable

import grpc
import pytest

from lodestar import limits
from lodestar.vector.v1 import vector_service_pb2 as pb
from tests.vector.conftest import CreateCollection, Running, expect_invalid, rpc_error
from tests.vector.suite import SCHEMA, Stub, books, field, ids_of, num, point


async def test_snapshots_create_list_restore_delete(
    stub: Stub, collection: CreateCollection, name: Callable[[], str]
) -> None:
    source = await books(stub, collection)
    first = (await stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=source))).snapshot
    assert first.collection == source
    assert first.size_bytes > 0
    assert first.name
    await stub.DeletePoints(
        pb.DeletePointsRequest(collection=source, selector=pb.PointsSelector(ids=[num(1), num(2)]))
    )
    await asyncio.sleep(0.01)
    second = (await stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=source))).snapshot
    listed = await stub.ListSnapshots(pb.ListSnapshotsRequest(collection=source))
    assert [s.name for s in listed.snapshots] == [second.name, first.name]  # newest first

    copy = name()
    restored = await stub.RestoreSnapshot(
        pb.RestoreSnapshotRequest(collection=source, snapshot=first.name, target_collection=copy)
    )
    assert restored.collection.name == copy
    assert restored.collection.points_count == 6
    assert dict(restored.collection.config.payload_schema) == SCHEMA
    got = await stub.GetPoints(
        pb.GetPointsRequest(collection=copy, ids=[num(1)], with_payload=True, with_vector=True)
    )
    assert got.points[0].payload["title"] == "Dune by Frank Herbert"
    assert list(got.points[0].vector) == pytest.approx([1, 0, 0, 0])
    hits = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=copy,
            vector=[0, 1, 0, 0],
            limit=1,
            filter=pb.Filter(must=[field("genre", keyword="fantasy")]),
        )
    )
    assert ids_of(hits.points) == [3]

    # Restoring into the collection itself replaces its content.
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=source, points=[point(77, [1, 1, 1, 1])])
    )
    back = await stub.RestoreSnapshot(
        pb.RestoreSnapshotRequest(collection=source, snapshot=first.name)
    )
    assert back.collection.points_count == 6
    everything = await stub.ListPoints(pb.ListPointsRequest(collection=source))
    assert ids_of(everything.points) == [1, 2, 3, 4, 5, 6]

    code, _ = await rpc_error(
        stub.RestoreSnapshot(
            pb.RestoreSnapshotRequest(
                collection=source, snapshot=first.name, target_collection=copy
            )
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await stub.DeleteSnapshot(pb.DeleteSnapshotRequest(collection=source, snapshot=first.name))
    listed = await stub.ListSnapshots(pb.ListSnapshotsRequest(collection=source))
    assert [s.name for s in listed.snapshots] == [second.name]
    code, _ = await rpc_error(
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(collection=source, snapshot=first.name))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await rpc_error(
        stub.RestoreSnapshot(pb.RestoreSnapshotRequest(collection=source, snapshot=first.name))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    for bad in ("../../etc/passwd", "a/b.snapshot", ".hidden", ""):
        await expect_invalid(
            stub.DeleteSnapshot(pb.DeleteSnapshotRequest(collection=source, snapshot=bad)),
            "snapshot",
        )
    await expect_invalid(
        stub.RestoreSnapshot(
            pb.RestoreSnapshotRequest(
                collection=source, snapshot=second.name, target_collection="../x"
            )
        ),
        "target_collection",
    )
    code, _ = await rpc_error(
        stub.CreateSnapshot(pb.CreateSnapshotRequest(collection="no-such-collection"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


async def _drain(
    stream: AsyncIterable[pb.DownloadSnapshotResponse],
) -> list[pb.DownloadSnapshotResponse]:
    return [message async for message in stream]


async def test_a_download_streams_the_snapshot_file_in_bounded_pieces(
    running: Running, collection: CreateCollection
) -> None:
    stub = running.stub
    dimension = 1024  # 4 KiB a vector: 300 points make a file of more than one piece
    source = await collection(dimension=dimension)
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=source,
            points=[
                point(i, [float((i * 7 + j) % 13 + 1) for j in range(dimension)], {"n": i})
                for i in range(1, 301)
            ],
        )
    )
    snapshot = (await stub.CreateSnapshot(pb.CreateSnapshotRequest(collection=source))).snapshot
    assert snapshot.size_bytes > limits.SNAPSHOT_CHUNK_BYTES

    messages = await _drain(
        stub.DownloadSnapshot(pb.DownloadSnapshotRequest(collection=source, snapshot=snapshot.name))
    )
    assert len(messages) == math.ceil(snapshot.size_bytes / limits.SNAPSHOT_CHUNK_BYTES)
    assert all(0 < len(m.data) <= limits.SNAPSHOT_CHUNK_BYTES for m in messages)
    assert messages[0].snapshot == snapshot
    assert not any(m.HasField("snapshot") for m in messages[1:])
    data = b"".join(m.data for m in messages)
    assert data == (running.settings.snapshots_path / source / snapshot.name).read_bytes()
    assert len(data) == snapshot.size_bytes
    assert hashlib.sha256(data).hexdigest() == snapshot.checksum

    code, details = await rpc_error(
        _drain(
            stub.DownloadSnapshot(
                pb.DownloadSnapshotRequest(collection=source, snapshot="none.snapshot")
            )
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.reason == "SNAPSHOT_NOT_FOUND"
    await expect_invalid(
        _drain(
            stub.DownloadSnapshot(
                pb.DownloadSnapshotRequest(collection=source, snapshot="../../etc/passwd")
            )
        ),
        "snapshot",
    )
