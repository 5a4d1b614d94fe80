"""Putting a document: chunk it with the ingest chunker, embed and upsert its
chunks as a new version, commit the version, then delete the versions it
supersedes.

Chunks 1..n are written first, in batches (several in flight), and chunk 0,
which carries the document's metadata, last: its write commits the version
(see ``model``). A failure or cancellation before the commit deletes what was
written of the new version and leaves the previous version as it was.

Puts of one document may run at once (in one gateway, in several replicas, in
workers, in the ingest command) with no lock between them: versions are totally
ordered, the current version is the greatest committed one, and after its
commit a put deletes only versions older than its own, or its own version when
a newer one is already committed. Invariant: no put ever deletes a version
newer than its own but its own, so the greatest committed version stays whole;
and every other version's chunks are deleted by the put that wrote them or by
a newer one that saw them, so that once the puts are done exactly one version
remains, the one its chunk 0 names, with all of its chunks. (The put of an
older version that is still writing when a newer one commits loses chunks to
the newer one's cleanup, and then deletes the rest itself.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lodestar.documents import model
from lodestar.documents.formats import ParsedDocument
from lodestar.documents.model import DocumentInfo
from lodestar.documents.store import ChunkToWrite, DocumentStore
from lodestar.ingest.chunking import Chunk, ChunkingOptions, split_text

# Called with (chunks done, chunks in all) after every batch; it may raise to
# stop the write (a cancelled job), which then cleans up like any failure.
Progress = Callable[[int, int], Awaitable[None]]


class EmptyDocument(ValueError):
    """The document has no text to chunk."""


@dataclass(frozen=True)
class DocumentInput:
    id: str
    source: str
    title: str
    parsed: ParsedDocument
    size_bytes: int
    extra_payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PutResult:
    document: DocumentInfo
    # Chunks of earlier versions deleted once this one was committed.
    replaced: int
    # The version this put wrote was outranked by another put's, committed at
    # the same time, and deleted again.
    superseded: bool = False


@dataclass(frozen=True)
class WriteOptions:
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)
    batch_size: int = 32
    concurrency: int = 4


def plan_chunks(document: DocumentInput, options: ChunkingOptions) -> list[Chunk]:
    """The document's chunks; a paged document is cut page by page, so that a
    chunk (and a citation of it) belongs to one page."""
    parsed = document.parsed
    if not parsed.page_starts:
        chunks = split_text(parsed.text, parsed.chunk_format, options)
    else:
        chunks = []
        ends = [*parsed.page_starts[1:], len(parsed.text) + 2]
        for start, end in zip(parsed.page_starts, ends, strict=True):
            for piece in split_text(parsed.text[start : end - 2], parsed.chunk_format, options):
                chunks.append(
                    Chunk(
                        len(chunks),
                        piece.text,
                        start + piece.start,
                        start + piece.end,
                        piece.heading_path,
                    )
                )
    if not chunks:
        raise EmptyDocument(f"document {document.id!r} has no text to store")
    return chunks


def _payloads(
    document: DocumentInput,
    chunks: Sequence[Chunk],
    version: str,
    created_at: str,
    text_key: str,
) -> list[ChunkToWrite]:
    parsed = document.parsed
    now = model.now_iso()
    out = []
    for chunk in chunks:
        payload: dict[str, Any] = {
            **document.extra_payload,
            model.DOCUMENT_ID: document.id,
            model.DOCUMENT_VERSION: version,
            model.TITLE: document.title,
            model.SOURCE: document.source,
            model.POSITION: chunk.index,
            model.CHUNK_COUNT: len(chunks),
            text_key: chunk.text,
            "content_hash": chunk.content_hash,
            "start": chunk.start,
            "end": chunk.end,
            "ingested_at": now,
        }
        page = parsed.page_at(chunk.start)
        if page is not None:
            payload[model.PAGE] = page
            payload["page_end"] = parsed.page_at(max(chunk.start, chunk.end - 1))
        if chunk.heading_path:
            payload["heading"] = chunk.heading
            payload["heading_path"] = list(chunk.heading_path)
        if chunk.index == 0:
            payload[model.DOCUMENT_FORMAT] = parsed.format.value
            payload[model.DOCUMENT_BYTES] = document.size_bytes
            payload[model.CREATED_AT] = created_at or now
            payload[model.UPDATED_AT] = now
        out.append(
            ChunkToWrite(
                model.chunk_point_id(document.id, version, chunk.index), chunk.text, payload
            )
        )
    return out


async def put_document(
    store: DocumentStore,
    document: DocumentInput,
    options: WriteOptions | None = None,
    progress: Progress | None = None,
) -> PutResult:
    """Store ``document`` as its new current version; see the module docstring."""
    options = options or WriteOptions()
    chunks = plan_chunks(document, options.chunking)
    previous = await store.current(document.id)
    version = model.new_version(previous.version if previous else "")
    points = _payloads(
        document, chunks, version, previous.created_at if previous else "", store.text_key
    )
    total = len(points)
    done = 0
    if progress is not None:
        await progress(0, total)
    # Similar lengths together: a forward pass costs its longest text times its size.
    rest = sorted(points[1:], key=lambda p: len(p.text))
    batches = [rest[i : i + options.batch_size] for i in range(0, len(rest), options.batch_size)]
    limit = asyncio.Semaphore(options.concurrency)

    async def write(batch: list[ChunkToWrite]) -> None:
        nonlocal done
        async with limit:
            await store.write(batch)
            done += len(batch)
            if progress is not None:
                await progress(done, total)

    try:
        async with asyncio.TaskGroup() as group:
            for batch in batches:
                group.create_task(write(batch))
        await write([points[0]])  # the commit
    except BaseException as error:
        with contextlib.suppress(Exception):
            await asyncio.shield(store.delete(document.id, versions=[version]))
        # One failure is reported, as a write of one batch at a time would.
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None
    # Read after the commit: a version committed before this read is seen
    # here, and one committed after it sees this one (see the module docstring).
    others = await store.other_versions(document.id, version)
    older = sorted(v for v in others if v < version)
    superseded = any(committed and v > version for v, committed in others.items())
    replaced = await store.delete(document.id, versions=older) if older else 0
    if superseded:
        await store.delete(document.id, versions=[version])
    return PutResult(DocumentInfo.from_payload(points[0].payload), replaced, superseded)
