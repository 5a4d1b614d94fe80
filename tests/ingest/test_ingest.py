"""Ingest end to end through the real embedding and vector services over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from lodestar.embedding.v1 import embedding_service_pb2 as embedding_pb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as embedding_grpc
from lodestar.ingest import IngestOptions, Ingestor, ingest_main
from lodestar.ingest.chunking import ChunkingOptions, format_for_name, split_text
from lodestar.ingest.sinks import GrpcSink, IngestError, UsageError
from lodestar.ingest.sources import discover, read_source
from lodestar.vector.v1 import vector_service_pb2 as vector_pb
from lodestar.vector.v1 import vector_service_pb2_grpc as vector_grpc
from tests.ingest.conftest import CORPUS_TOPICS, Services, write_corpus

CHUNKING = ChunkingOptions(600, 80)


@pytest.fixture
def collection() -> str:
    return f"ingest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def vector(services: Services) -> AsyncIterator[vector_grpc.VectorServiceAsyncStub]:
    async with grpc.aio.insecure_channel(services.vector_address) as channel:
        yield vector_grpc.VectorServiceStub(channel)


def options(collection: str, tmp_path: Path, **overrides: Any) -> IngestOptions:
    base: dict[str, Any] = {
        "collection": collection,
        "create": True,
        "chunking": CHUNKING,
        "batch_size": 8,
        "concurrency": 3,
        "checkpoint_path": tmp_path / "state.sqlite3",
        "progress": False,
    }
    return IngestOptions(**(base | overrides))


async def ingest(
    services: Services, paths: Sequence[Path | str], opts: IngestOptions, sink: Any = None
) -> Any:
    sink = sink or services.sink()
    try:
        return await Ingestor(opts, sink).run(discover([str(p) for p in paths]))
    finally:
        await sink.close()


def expected_chunks(paths: Sequence[Path]) -> dict[str, list[str]]:
    """Chunk texts per source, in order, computed without any service."""
    out = {}
    for ref in discover([str(p) for p in paths]):
        document = read_source(ref)
        assert not hasattr(document, "reason")
        chunks = split_text(document.text, format_for_name(ref.source), CHUNKING)  # type: ignore[union-attr]
        out[ref.source] = [c.text for c in chunks]
    return out


async def count(vector: vector_grpc.VectorServiceAsyncStub, collection: str) -> int:
    reply = await vector.CountPoints(vector_pb.CountPointsRequest(collection=collection))
    return int(reply.count)


async def stored_chunks(
    vector: vector_grpc.VectorServiceAsyncStub, collection: str
) -> dict[str, list[str]]:
    """Stored chunk texts per source, in chunk order."""
    found: dict[str, list[tuple[int, str]]] = {}
    token = ""
    while True:
        page = await vector.ListPoints(
            vector_pb.ListPointsRequest(
                collection=collection, page_size=1000, page_token=token, with_payload=True
            )
        )
        for point in page.points:
            payload = json_format.MessageToDict(point.payload)
            found.setdefault(payload["source"], []).append(
                (int(payload["chunk_index"]), payload["text"])
            )
        token = page.next_page_token
        if not token:
            return {source: [t for _, t in sorted(chunks)] for source, chunks in found.items()}


async def test_ingest_stores_every_chunk_with_its_payload(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    (corpus / "empty.md").write_text("  \n")
    (corpus / "latin1.txt").write_bytes("déjà vu".encode("latin-1"))
    (corpus / "broken.md").symlink_to(corpus / "no-such-target.md")
    report = await ingest(services, [corpus], options(collection, tmp_path))

    expected = expected_chunks(
        [*(corpus / f"{name}.rst" for name in CORPUS_TOPICS), corpus / "guide.md"]
    )
    total = sum(len(v) for v in expected.values())
    assert report.collection_created
    assert report.files_total == 12
    assert report.files_ingested == 9
    assert report.files_empty == 1
    assert sorted(Path(s).name for s, _ in report.skipped) == ["broken.md", "latin1.txt"]
    assert report.chunks == report.chunks_new == total
    assert report.chunks_present == 0
    assert await stored_chunks(vector, collection) == expected

    guide = (corpus / "guide.md").resolve().as_posix()
    reply = await vector.ListPoints(
        vector_pb.ListPointsRequest(
            collection=collection,
            filter=vector_pb.Filter(
                must=[
                    vector_pb.Condition(
                        field=vector_pb.FieldCondition(
                            key="source", match=vector_pb.Match(keyword=guide)
                        )
                    )
                ]
            ),
            page_size=1000,
            with_payload=True,
        )
    )
    payloads = sorted(
        (json_format.MessageToDict(p.payload) for p in reply.points),
        key=lambda p: int(p["chunk_index"]),
    )
    assert [int(p["chunk_index"]) for p in payloads] == list(range(len(expected[guide])))
    # Every chunk belongs to the file's document (one id, one version).
    assert len({p["document_id"] for p in payloads}) == 1
    assert len({p["document_version"] for p in payloads}) == 1
    assert payloads[0]["title"] == "guide.md"
    first = payloads[0]
    assert first["source"] == guide
    assert first["heading_path"] == ["Loops", "for"]
    assert first["heading"] == "for"
    assert first["text"].startswith("# Loops")
    assert len(first["content_hash"]) == 64
    assert first["ingested_at"].endswith("Z")
    assert any(p.get("heading") == "continue" for p in payloads)

    # The collection was made for the served model, with the ingest payload indexes.
    info = await vector.GetCollection(vector_pb.GetCollectionRequest(name=collection))
    assert info.collection.config.dimension == 384
    assert info.collection.config.embedding_model == "all-MiniLM-L6-v2"
    assert "source" in info.collection.config.payload_schema


async def test_questions_find_the_right_source(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    await ingest(services, [corpus], options(collection, tmp_path))
    async with grpc.aio.insecure_channel(services.embedding_address) as channel:
        embedder = embedding_grpc.EmbeddingServiceStub(channel)
        questions = {
            "How do I delete a variable binding or a list item?": "del.rst",
            "What happens when an assertion fails with optimization enabled?": "assert.rst",
            "How does a with statement call __enter__ and __exit__ of a context manager?": (
                "with.rst"
            ),
        }
        reply = await embedder.EmbedTexts(embedding_pb.EmbedTextsRequest(texts=list(questions)))
    for (question, source), embedding in zip(questions.items(), reply.embeddings, strict=True):
        hits = await vector.SearchPoints(
            vector_pb.SearchPointsRequest(
                collection=collection, vector=embedding.values, limit=3, with_payload=True
            )
        )
        sources = [Path(str(h.payload["source"])).name for h in hits.points]
        assert source in sources, f"{question!r} found {sources}"


async def test_running_again_creates_no_duplicates(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    first = await ingest(services, [corpus], options(collection, tmp_path))
    stored = await count(vector, collection)
    assert stored == first.chunks_new > 0

    # With the checkpoint: every file is unchanged and skipped before chunking.
    again = await ingest(services, [corpus], options(collection, tmp_path, create=False))
    assert (again.files_unchanged, again.chunks, again.chunks_new) == (first.files_ingested, 0, 0)
    assert await count(vector, collection) == stored

    # Without it: every file is put again as a new version of its document,
    # which replaces the previous one: still no duplicates.
    again = await ingest(services, [corpus], options(collection, tmp_path, checkpoint_path=None))
    assert again.chunks_new == again.chunks == stored
    assert again.chunks_pruned == stored
    assert await count(vector, collection) == stored


class _CrashingSink(GrpcSink):
    """The real sink, but the process 'dies' after a number of stored batches."""

    def __init__(self, services: Services, batches: int) -> None:
        super().__init__(services.embedding_address, services.vector_address)
        self.left = batches

    async def upsert(self, request: vector_pb.UpsertPointsRequest) -> None:
        if self.left == 0:
            raise IngestError("simulated crash")
        self.left -= 1
        await super().upsert(request)


class _CountingSink(GrpcSink):
    def __init__(self, services: Services) -> None:
        super().__init__(services.embedding_address, services.vector_address)
        self.embedded = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.embedded += len(texts)
        return await super().embed(texts)


async def test_an_interrupted_run_resumes_where_it_stopped(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    expected = expected_chunks([corpus])
    total = sum(len(v) for v in expected.values())
    opts = options(collection, tmp_path, batch_size=4, concurrency=1)
    with pytest.raises(IngestError, match="simulated crash"):
        await ingest(services, [corpus], opts, _CrashingSink(services, batches=6))
    # Only whole documents are stored: the file cut off left nothing behind.
    stored = await stored_chunks(vector, collection)
    assert stored
    assert all(expected[source] == chunks for source, chunks in stored.items())
    kept = sum(len(v) for v in stored.values())
    assert kept < total

    counting = _CountingSink(services)
    resumed = await ingest(services, [corpus], opts, counting)
    # Files finished before the crash are skipped by the checkpoint; the rest is put.
    assert resumed.files_unchanged == len(stored)
    assert counting.embedded == resumed.chunks_new == total - kept
    assert await stored_chunks(vector, collection) == expected


async def test_a_changed_file_replaces_its_old_chunks(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    target = corpus / "while.rst"
    await ingest(services, [corpus], options(collection, tmp_path))
    before = await stored_chunks(vector, collection)

    text = target.read_text()
    target.write_text(text.replace('The "while" statement', "The while loop statement", 1))
    again = await ingest(services, [corpus], options(collection, tmp_path))

    now = expected_chunks([corpus])
    source = target.resolve().as_posix()
    assert again.files_unchanged == len(now) - 1
    assert again.files_ingested == 1
    assert again.chunks_pruned == len(before[source])
    assert await stored_chunks(vector, collection) == now
    assert before != now

    # Emptying the file removes all of its chunks.
    target.write_text("")
    emptied = await ingest(services, [corpus], options(collection, tmp_path))
    assert emptied.files_empty == 1
    assert emptied.chunks_pruned == len(now[target.resolve().as_posix()])


async def test_missing_collection_needs_create(
    services: Services, corpus: Path, collection: str, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="--create"):
        await ingest(services, [corpus], options(collection, tmp_path, create=False))


async def test_a_collection_of_another_dimension_is_refused(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    await vector.CreateCollection(
        vector_pb.CreateCollectionRequest(
            name=collection, config=vector_pb.CollectionConfig(dimension=8)
        )
    )
    with pytest.raises(UsageError, match="8-dimensional"):
        await ingest(services, [corpus], options(collection, tmp_path))


async def test_chunk_size_above_the_service_limit_is_refused(
    services: Services, corpus: Path, collection: str, tmp_path: Path
) -> None:
    opts = options(collection, tmp_path, chunking=ChunkingOptions(20_000, 100))
    with pytest.raises(UsageError, match="10000 characters"):
        await ingest(services, [corpus], opts)


# --- the command ---------------------------------------------------------------------------


def run_command(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = ingest_main(argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def test_the_command_ingests_files_and_stdin(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    corpus: Path,
    collection: str,
    tmp_path: Path,
) -> None:
    argv = [
        str(corpus / "assert.rst"),
        "-",
        "--collection",
        collection,
        "--create",
        "--embedding-address",
        services.embedding_address,
        "--vector-address",
        services.vector_address,
        "--state",
        str(tmp_path / "state.sqlite3"),
        "--stdin-name",
        "piped-notes",
        "--json",
    ]
    piped = b"# Notes\n\nLodestar keeps its memories in a vector database.\n"
    # The command runs its own event loop; the services keep serving on this one.
    status, out, err = await asyncio.to_thread(run_command, argv, piped)
    assert status == 0, err
    summary = json.loads(out)
    assert summary["collection_created"] is True
    assert summary["files"]["ingested"] == 2
    assert summary["chunks"]["new"] == summary["chunks"]["total"] == await count(vector, collection)
    hits = await vector.ListPoints(
        vector_pb.ListPointsRequest(collection=collection, page_size=100, with_payload=True)
    )
    assert "piped-notes" in {p.payload["source"] for p in hits.points}

    status, out, err = await asyncio.to_thread(run_command, argv[:-1], piped)
    assert status == 0, err
    assert "2 unchanged since the last run" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--chunk-size", "100", "--chunk-overlap", "80"], "at most half"),
        (["--batch-size", "0"], "--batch-size"),
        (["--encoding", "klingon"], "unknown encoding"),
        (["--via", "gateway"], "needs a token"),
    ],
)
def test_bad_arguments_exit_2(
    extra: list[str], message: str, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest_main([str(corpus), "--collection", "c", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        ingest_main([str(tmp_path / "nope"), "--collection", "c"])
    assert exit_info.value.code == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_an_unreachable_service_exits_1(corpus: Path, tmp_path: Path) -> None:
    status, _, err = run_command(
        [
            str(corpus),
            "--collection",
            "c",
            "--embedding-address",
            "127.0.0.1:1",
            "--connect-timeout",
            "0.5",
            "--no-progress",
            "--no-checkpoint",
        ]
    )
    assert status == 1
    assert "embedding service at 127.0.0.1:1 is unreachable" in err


async def test_sigterm_stops_the_command_with_a_summary(
    services: Services,
    vector: vector_grpc.VectorServiceAsyncStub,
    tmp_path: Path,
    collection: str,
) -> None:
    corpus = write_corpus(tmp_path / "all", tuple(sorted(topics)))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lodestar.cli",
        "ingest",
        str(corpus),
        "--collection",
        collection,
        "--create",
        "--embedding-address",
        services.embedding_address,
        "--vector-address",
        services.vector_address,
        "--state",
        str(tmp_path / "state.sqlite3"),
        "--batch-size",
        "8",
        "--concurrency",
        "1",
        "--no-progress",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120):
            while process.returncode is None:
                with contextlib.suppress(grpc.aio.AioRpcError):  # not created yet
                    if await count(vector, collection) >= 8:
                        break
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 143, err.decode()
    assert out.decode().startswith("ingest interrupted")
    # What was stored stays, as whole documents: the file cut off left nothing behind.
    expected = expected_chunks([corpus])
    stored = await stored_chunks(vector, collection)
    assert all(expected[source] == chunks for source, chunks in stored.items())
    assert sum(len(v) for v in stored.values()) < sum(len(v) for v in expected.values())
