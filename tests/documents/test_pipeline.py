"""The document pipeline's writes over an in-memory vector store: commit last,
a failure leaves the previous version whole, a new version replaces the old."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from lodestar.documents.formats import DocumentFormat, parse_document
from lodestar.documents.pipeline import DocumentInput, WriteOptions, put_document
from lodestar.documents.store import DocumentStore
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.runtime.protojson import struct_to_dict
from lodestar.vector.v1 import vector_service_pb2 as vpb


def _matches(condition: vpb.Condition, payload: dict[str, Any]) -> bool:
    kind = condition.WhichOneof("kind")
    if kind == "filter":
        return _filter(condition.filter, payload)
    if kind == "is_empty":
        return payload.get(condition.is_empty.key) in (None, "", [])
    match = condition.field.match
    if match.WhichOneof("kind") == "any_keywords":
        return payload.get(condition.field.key) in match.any_keywords.values
    value = match.keyword if match.WhichOneof("kind") == "keyword" else match.integer
    return payload.get(condition.field.key) == value


def _filter(f: vpb.Filter, payload: dict[str, Any]) -> bool:
    return all(_matches(c, payload) for c in f.must) and not any(
        _matches(c, payload) for c in f.must_not
    )


class MemoryCalls:
    """Just the vector calls the store makes; ``fail_after`` upserts then fail."""

    def __init__(self) -> None:
        self.points: dict[str, dict[str, Any]] = {}
        self.upserts: list[list[int]] = []
        self.fail_after: int | None = None
        # Set to interleave concurrent puts at random.
        self.jitter: random.Random | None = None

    async def _pause(self) -> None:
        if self.jitter is not None:
            for _ in range(self.jitter.randrange(4)):
                await asyncio.sleep(0)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        await self._pause()
        return [[1.0, 0.0, 0.0] for _ in texts]

    async def upsert(self, request: vpb.UpsertPointsRequest) -> None:
        if self.fail_after is not None and len(self.upserts) >= self.fail_after:
            raise RuntimeError("the vector service went away")
        positions = []
        for point in request.points:
            payload = struct_to_dict(point.payload)
            self.points[point.id.uuid] = payload
            positions.append(payload["chunk_index"])
        self.upserts.append(positions)

    async def list(self, request: vpb.ListPointsRequest) -> vpb.ListPointsResponse:
        await self._pause()
        found = [
            vpb.Point(id=vpb.PointId(uuid=i))
            for i, payload in self.points.items()
            if _filter(request.filter, payload)
        ]
        for point in found:
            point.payload.update(self.points[point.id.uuid])
        return vpb.ListPointsResponse(points=found)

    async def delete(self, request: vpb.DeletePointsRequest) -> int:
        await self._pause()
        doomed = [i for i, p in self.points.items() if _filter(request.selector.filter, p)]
        for i in doomed:
            del self.points[i]
        return len(doomed)

    def versions(self) -> set[str]:
        return {p["document_version"] for p in self.points.values()}


def document(paragraphs: int, word: str) -> DocumentInput:
    text = "\n\n".join(f"Paragraph {i} says {word} about the harbour." for i in range(paragraphs))
    return DocumentInput(
        "d", "notes.txt", "Notes", parse_document(text.encode(), DocumentFormat.TEXT), len(text)
    )


OPTIONS = WriteOptions(ChunkingOptions(100, 20), batch_size=4, concurrency=2)


async def test_chunk_zero_is_written_last_and_carries_the_metadata() -> None:
    calls = MemoryCalls()
    store = DocumentStore(calls, "c")
    seen: list[tuple[int, int]] = []

    async def progress(done: int, total: int) -> None:
        seen.append((done, total))

    result = await put_document(store, document(20, "hello"), OPTIONS, progress)
    assert calls.upserts[-1] == [0]
    assert all(0 not in batch and len(batch) <= 4 for batch in calls.upserts[:-1])
    assert seen[0] == (0, result.document.chunks)
    assert seen[-1] == (result.document.chunks, result.document.chunks)
    current = await store.current("d")
    assert current == result.document
    assert current.title == "Notes"
    assert current.bytes > 0


async def test_a_failure_midway_leaves_the_previous_version_whole() -> None:
    calls = MemoryCalls()
    store = DocumentStore(calls, "c")
    first = await put_document(store, document(20, "hello"), OPTIONS)
    before = dict(calls.points)
    calls.fail_after = len(calls.upserts) + 2
    with pytest.raises(RuntimeError, match="went away"):
        await put_document(store, document(30, "changed"), OPTIONS)
    assert calls.points == before
    assert (await store.current("d")) == first.document

    calls.fail_after = None
    second = await put_document(store, document(30, "changed"), OPTIONS)
    assert calls.versions() == {second.document.version}
    assert second.replaced == first.document.chunks
    assert len(calls.points) == second.document.chunks
    assert second.document.created_at == first.document.created_at
    chunks = await store.chunks("d", second.document.version)
    assert [c.position for c in chunks] == list(range(second.document.chunks))
    assert await store.delete("d") == second.document.chunks
    assert calls.points == {}


@pytest.mark.parametrize("seed", range(40))
async def test_concurrent_puts_leave_exactly_one_whole_version(seed: int) -> None:
    calls = MemoryCalls()
    store = DocumentStore(calls, "c")
    await put_document(store, document(9, "first"), OPTIONS)
    calls.jitter = random.Random(seed)
    sizes = [5, 12, 23, 31]
    results = await asyncio.gather(
        *(put_document(store, document(n, f"v{n}"), OPTIONS) for n in sizes)
    )
    (version,) = calls.versions()
    current = await store.current("d")
    assert current is not None
    assert current.version == version
    chunks = await store.chunks("d", version)
    assert [c.position for c in chunks] == list(range(current.chunks))
    assert len(calls.points) == current.chunks
    # The survivor is the greatest version, and its put knows it was not superseded.
    winner = max(results, key=lambda r: r.document.version)
    assert winner.document.version == version
    assert not winner.superseded
