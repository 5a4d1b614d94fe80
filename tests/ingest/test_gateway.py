"""Ingest through the gateway's REST API (``--via gateway``), in front of the real services."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format

from lodestar.auth.tokens import mint_token
from lodestar.documents.formats import DocumentFormat, ParsedDocument
from lodestar.documents.pipeline import DocumentInput, WriteOptions
from lodestar.ingest import IngestOptions, Ingestor, ingest_main
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.ingest.sinks import GatewaySink, IngestError, RetryPolicy
from lodestar.ingest.sources import discover
from lodestar.services.gateway.app import create_app
from lodestar.services.gateway.server import bound_port, create_server
from lodestar.services.gateway.settings import GatewaySettings
from lodestar.vector.v1 import vector_service_pb2 as vector_pb
from lodestar.vector.v1 import vector_service_pb2_grpc as vector_grpc
from tests.ingest.conftest import Services, write_corpus


@dataclass(frozen=True)
class Gateway:
    url: str
    settings: GatewaySettings

    def token(self, *roles: str) -> str:
        return mint_token(self.settings, "ingest-bot", list(roles), 600)


@pytest.fixture(scope="session")
async def gateway(services: Services) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        port=0,
        embedding_addresses=services.embedding_address,
        vector_addresses=services.vector_address,
        # Ingest never generates text; nothing listens here.
        inference_addresses="127.0.0.1:9",
        access_log=False,
        shutdown_grace_s=1,
    )
    server = create_server(settings, create_app(settings))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield Gateway(f"http://127.0.0.1:{bound_port(server)}", settings)
    server.should_exit = True
    await task


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A smaller corpus than the gRPC tests': four files."""
    return write_corpus(tmp_path / "corpus", ("break", "global", "pass"))


@pytest.fixture
def collection() -> str:
    return f"gw-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def vector(services: Services) -> AsyncIterator[vector_grpc.VectorServiceAsyncStub]:
    async with grpc.aio.insecure_channel(services.vector_address) as channel:
        yield vector_grpc.VectorServiceStub(channel)


async def count(vector: vector_grpc.VectorServiceAsyncStub, collection: str) -> int:
    reply = await vector.CountPoints(vector_pb.CountPointsRequest(collection=collection))
    return int(reply.count)


def options(collection: str, tmp_path: Path, **overrides: Any) -> IngestOptions:
    base: dict[str, Any] = {
        "collection": collection,
        "create": True,
        "chunking": ChunkingOptions(600, 80),
        "batch_size": 16,
        "concurrency": 2,
        "checkpoint_path": tmp_path / "state.sqlite3",
        "progress": False,
    }
    return IngestOptions(**(base | overrides))


async def ingest(gateway: Gateway, token: str, paths: list[Path], opts: IngestOptions) -> Any:
    sink = GatewaySink(gateway.url, token)
    try:
        return await Ingestor(opts, sink).run(discover([str(p) for p in paths]))
    finally:
        await sink.close()


async def test_ingest_through_the_gateway_is_idempotent(
    gateway: Gateway,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    token = gateway.token("operator")
    first = await ingest(gateway, token, [corpus], options(collection, tmp_path))
    assert first.collection_created
    assert first.files_ingested == 4
    assert first.chunks_new == first.chunks > 0
    assert first.chunks_truncated is None  # the gateway does not say
    assert await count(vector, collection) == first.chunks

    info = await vector.GetCollection(vector_pb.GetCollectionRequest(name=collection))
    assert info.collection.config.dimension == 384  # the gateway took the model's

    unchanged = await ingest(gateway, token, [corpus], options(collection, tmp_path))
    assert unchanged.files_unchanged == 4
    assert unchanged.chunks == 0

    # Without the checkpoint every file is sent again, and replaces its document.
    resent = await ingest(
        gateway, token, [corpus], options(collection, tmp_path, checkpoint_path=None)
    )
    assert resent.chunks == first.chunks
    assert await count(vector, collection) == first.chunks

    points = await vector.ListPoints(
        vector_pb.ListPointsRequest(collection=collection, page_size=5, with_payload=True)
    )
    payload = json_format.MessageToDict(points.points[0].payload)
    assert payload["source"].endswith((".rst", ".md"))
    assert payload["text"]
    assert len(payload["content_hash"]) == 64


async def test_a_changed_file_is_pruned_through_the_gateway(
    gateway: Gateway,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    token = gateway.token("operator")
    target = corpus / "pass.rst"
    first = await ingest(gateway, token, [corpus], options(collection, tmp_path))
    target.write_text("Nothing happens when a pass statement is executed.")
    again = await ingest(gateway, token, [corpus], options(collection, tmp_path))
    assert again.files_ingested == 1
    assert again.chunks_pruned >= 1
    assert await count(vector, collection) == first.chunks - again.chunks_pruned + 1


async def test_a_token_without_delete_replaces_files_but_keeps_emptied_ones_with_a_note(
    gateway: Gateway,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    user = gateway.token("user")  # InsertVectors, but neither DeleteVectors nor ManageCollections
    with pytest.raises(IngestError, match="403"):
        await ingest(gateway, user, [corpus], options(collection, tmp_path))

    await ingest(gateway, gateway.token("operator"), [corpus], options(collection, tmp_path))
    before = await count(vector, collection)
    target = corpus / "pass.rst"

    async def run() -> tuple[Any, str]:
        stream = io.StringIO()
        sink = GatewaySink(gateway.url, user)
        try:
            report = await Ingestor(
                options(collection, tmp_path, create=False), sink, progress_stream=stream
            ).run(discover([str(corpus)]))
        finally:
            await sink.close()
        return report, stream.getvalue()

    # Uploading a new version replaces the old one: that needs InsertVectors only.
    target.write_text("Nothing happens when a pass statement is executed.")
    report, _ = await run()
    assert report.files_ingested == 1
    assert report.chunks_pruned >= 1
    replaced = await count(vector, collection)
    assert replaced == before - report.chunks_pruned + 1
    # Deleting an emptied file's document needs DeleteVectors: kept, with a note.
    target.write_text("")
    report, notes = await run()
    assert report.files_empty == 1
    assert report.chunks_pruned == 0
    assert "lacks DeleteVectors" in notes
    assert await count(vector, collection) == replaced


async def test_the_command_via_gateway(
    gateway: Gateway,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LODESTAR_TOKEN", gateway.token("operator"))
    argv = [
        str(corpus),
        "--collection",
        collection,
        "--create",
        "--via",
        "gateway",
        "--gateway-url",
        gateway.url,
        "--state",
        str(tmp_path / "state.sqlite3"),
        "--json",
        "--no-progress",
    ]
    out, err = io.StringIO(), io.StringIO()
    status = await asyncio.to_thread(ingest_main, argv, stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["files"]["ingested"] == 4
    assert summary["chunks"]["new"] == await count(vector, collection)

    bad = [*argv[:-2], "--token", "not-a-jwt", "--no-checkpoint"]
    out, err = io.StringIO(), io.StringIO()
    status = await asyncio.to_thread(ingest_main, bad, stdout=out, stderr=err)
    assert status == 1
    assert "401" in err.getvalue()


# --- retries (a scripted transport: the logic around the HTTP calls) ------------------------


def _document() -> DocumentInput:
    return DocumentInput(
        "d1", "/notes/a.txt", "a.txt", ParsedDocument("hello", DocumentFormat.TEXT), 5
    )


_STORED = {
    "document": {
        "id": "d1",
        "version": "v",
        "title": "a.txt",
        "source": "/notes/a.txt",
        "format": "text",
        "chunks": 1,
        "bytes": 5,
        "created_at": "",
        "updated_at": "",
        "status": "ready",
    },
    "replaced_chunks": 0,
}


async def test_rate_limited_uploads_are_retried_after_the_advised_delay() -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "0.05"}, json={"error": {"code": "X"}}),
        httpx.Response(503, json={"error": {"code": "UNAVAILABLE", "message": "later"}}),
        httpx.Response(201, json=_STORED),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    sink = GatewaySink(
        "http://gateway.test",
        "t",
        retry=RetryPolicy(attempts=3, first_delay_s=0.01),
        transport=httpx.MockTransport(handler),
    )
    try:
        result = await sink.put("docs", _document(), WriteOptions())
    finally:
        await sink.close()
    assert result.document.chunks == 1
    assert len(seen) == 3
    assert seen[0].url.path == "/api/v1/collections/docs/documents"
    body = seen[-1].read()
    assert b"hello" in body
    assert b'name="id"' in body


async def test_errors_that_retrying_cannot_fix_are_fatal_at_once() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, json={"error": {"code": "PERMISSION_DENIED", "message": "no"}})

    sink = GatewaySink("http://gateway.test", "t", transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(IngestError, match="403 PERMISSION_DENIED: no"):
            await sink.put("docs", _document(), WriteOptions())
    finally:
        await sink.close()
    assert calls == 1


async def test_the_checkpoint_scope_follows_the_tokens_tenant() -> None:
    settings = GatewaySettings()
    tokens = (
        mint_token(settings, "bot", ["user"], 600, tenant="acme"),
        mint_token(settings, "bot", ["user"], 600),
        "not-a-jwt",
    )
    sinks = [GatewaySink("http://gateway.test/", token) for token in tokens]
    try:
        scopes = [sink.destination for sink in sinks]
    finally:
        for sink in sinks:
            await sink.close()
    assert scopes == [
        "http://gateway.test#tenant=acme",
        "http://gateway.test#tenant=",
        "http://gateway.test#tenant=",
    ]
