"""Unit tests of the remote backend's logic around qdrant-client: error mapping and
native snapshots. The client here is a small fake (a real Qdrant server is not
available to the tests); the behavioural suite covers the rest against
qdrant-client's local mode."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from lodestar.runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidArgument,
    LodestarError,
    NotFound,
    Unavailable,
)
from lodestar.services.vector.models import CollectionConfig, Distance
from lodestar.services.vector.remote import RemoteBackend
from lodestar.services.vector.remote_convert import metadata
from tests.vector.conftest import vector_settings

CONFIG = CollectionConfig(dimension=3, distance=Distance.DOT)


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="boom")


class _FakeServer:
    """The snapshot part of AsyncQdrantClient, as a server answers it."""

    def __init__(self) -> None:
        self.snapshots = [
            qm.SnapshotDescription(
                name="docs-1.snapshot", creation_time="2024-01-01T00:00:00", size=10, checksum="aa"
            ),
            qm.SnapshotDescription(
                name="docs-2.snapshot", creation_time="2024-02-01T00:00:00", size=20, checksum="bb"
            ),
        ]
        self.recovered: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.existing = {"docs"}

    async def list_snapshots(self, collection_name: str) -> list[qm.SnapshotDescription]:
        return list(self.snapshots)

    async def create_snapshot(
        self, collection_name: str, wait: bool = True
    ) -> qm.SnapshotDescription:
        return self.snapshots[-1]

    async def delete_snapshot(
        self, collection_name: str, snapshot_name: str, wait: bool = True
    ) -> bool:
        self.deleted.append(snapshot_name)
        return True

    async def collection_exists(self, collection_name: str) -> bool:
        return collection_name in self.existing

    async def recover_snapshot(self, collection_name: str, **kwargs: Any) -> bool:
        self.recovered.append({"collection": collection_name, **kwargs})
        self.existing.add(collection_name)
        return True

    async def get_collection(self, collection_name: str) -> qm.CollectionInfo:
        # A real answer, taken from qdrant-client's local mode.
        local = AsyncQdrantClient(location=":memory:")
        await local.create_collection(
            collection_name,
            vectors_config=qm.VectorParams(size=3, distance=qm.Distance.DOT),
            metadata=metadata(CONFIG, datetime(2024, 1, 1, tzinfo=UTC)),
        )
        info = await local.get_collection(collection_name)
        await local.close()
        return info


@pytest.fixture
def backend(tmp_path: Path) -> RemoteBackend:
    settings = vector_settings(
        tmp_path, backend="remote", qdrant_url="http://qdrant:6333/", qdrant_api_key="k"
    )
    backend = RemoteBackend(settings, client=_FakeServer())  # type: ignore[arg-type]
    assert not backend.local
    return backend


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (UnexpectedResponse(404, "Not Found", b"{}", httpx.Headers()), NotFound),
        (UnexpectedResponse(409, "Conflict", b"{}", httpx.Headers()), AlreadyExists),
        (UnexpectedResponse(400, "Bad Request", b"{}", httpx.Headers()), InvalidArgument),
        (UnexpectedResponse(503, "Unavailable", b"{}", httpx.Headers()), Unavailable),
        (_RpcError(grpc.StatusCode.NOT_FOUND), NotFound),
        (_RpcError(grpc.StatusCode.UNAVAILABLE), Unavailable),
        (_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), DeadlineExceeded),
        (_RpcError(grpc.StatusCode.INVALID_ARGUMENT), InvalidArgument),
        (ResponseHandlingException(ConnectionError("refused")), Unavailable),
    ],
)
async def test_errors_become_service_errors(
    backend: RemoteBackend, raised: Exception, expected: type[LodestarError]
) -> None:
    with pytest.raises(expected) as error:
        async with backend._errors("docs"):
            raise raised
    if expected is NotFound:
        assert error.value.reason == "COLLECTION_NOT_FOUND"


async def test_native_snapshots(backend: RemoteBackend) -> None:
    server: _FakeServer = backend._client  # type: ignore[assignment]
    listed = await backend.list_snapshots("docs")
    assert [s.name for s in listed] == ["docs-2.snapshot", "docs-1.snapshot"]  # newest first
    assert listed[0].checksum == "bb"
    assert listed[0].create_time is not None
    assert listed[0].create_time.tzinfo is not None

    with pytest.raises(NotFound):
        await backend.delete_snapshot("docs", "docs-9.snapshot")
    await backend.delete_snapshot("docs", "docs-1.snapshot")
    assert server.deleted == ["docs-1.snapshot"]

    server.existing.add("taken")
    with pytest.raises(AlreadyExists):
        await backend.restore_snapshot("docs", "docs-2.snapshot", "taken")
    with pytest.raises(NotFound):
        await backend.restore_snapshot("docs", "docs-9.snapshot", "copy")
    restored = await backend.restore_snapshot("docs", "docs-2.snapshot", "copy")
    assert restored.name == "copy"
    assert restored.config == CONFIG
    (call,) = server.recovered
    assert call["collection"] == "copy"
    assert call["location"] == "http://qdrant:6333/collections/docs/snapshots/docs-2.snapshot"
    assert call["checksum"] == "bb"
    assert call["api_key"] == "k"


class _SnapshotFiles:
    """Qdrant's HTTP download of a snapshot file, with range requests (or, with
    ``ranges`` off, the whole file every time, as a server without them answers)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.ranges = True
        self.api_keys: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        path = head[0].split()[1]
        headers = dict(line.split(": ", 1) for line in head[1:] if line)
        headers = {k.lower(): v for k, v in headers.items()}
        self.api_keys.append(headers.get("api-key", ""))
        data = self.files.get(path)
        if data is None:
            status, body = "404 Not Found", b"{}"
        elif not self.ranges or "range" not in headers:
            status, body = "200 OK", data
        else:
            first, last = (int(v) for v in headers["range"].removeprefix("bytes=").split("-"))
            if first >= len(data):
                status, body = "416 Range Not Satisfiable", b""
            else:
                status, body = "206 Partial Content", data[first : last + 1]
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()


async def test_native_snapshot_files_are_read_a_piece_at_a_time(tmp_path: Path) -> None:
    data = bytes(range(20))  # docs-2.snapshot's size in the fake listing
    files = _SnapshotFiles({"/collections/docs/snapshots/docs-2.snapshot": data})
    server = await asyncio.start_server(files.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = vector_settings(
        tmp_path, backend="remote", qdrant_url=f"http://127.0.0.1:{port}", qdrant_api_key="k"
    )
    backend = RemoteBackend(settings, client=_FakeServer())  # type: ignore[arg-type]
    try:
        for ranges in (True, False):
            files.ranges = ranges
            pieces = [
                await backend.read_snapshot("docs", "docs-2.snapshot", o, 8) for o in (0, 8, 16)
            ]
            assert pieces == [data[0:8], data[8:16], data[16:20]], ranges
        files.ranges = True
        assert await backend.read_snapshot("docs", "docs-2.snapshot", 20, 8) == b""
        assert set(files.api_keys) == {"k"}
        with pytest.raises(NotFound) as missing:
            await backend.read_snapshot("docs", "docs-9.snapshot", 0, 8)
        assert missing.value.reason == "SNAPSHOT_NOT_FOUND"
        # Listed, but gone from the server by the time it is read.
        del files.files["/collections/docs/snapshots/docs-2.snapshot"]
        with pytest.raises(NotFound) as gone:
            await backend.read_snapshot("docs", "docs-2.snapshot", 0, 8)
        assert gone.value.reason == "SNAPSHOT_NOT_FOUND"
    finally:
        server.close()
        await server.wait_closed()
