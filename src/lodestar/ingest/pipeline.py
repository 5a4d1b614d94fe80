"""The ingest pipeline: read → chunk → (skip stored) → embed → upsert, overlapped.

One task reads and chunks files in order and packs their chunks into batches,
grouping chunks of similar length within a window of a few batches so that
forward passes waste little on padding. ``concurrency`` workers take batches
off a small bounded queue and, for each, ask which ids are already stored,
embed the rest and upsert them. Several batches are thus always in flight,
which keeps the embedding service's forward passes full while files are being
read and points written.

When the last chunk of a file is stored the file is *complete*: chunks left
over from an earlier version of it (same source, ids no longer produced) are
deleted, and the file is recorded in the checkpoint with the hash of its
bytes. Standard input is checkpointed by its content hash like a file but
never pruned: each input may be a different document under the same name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from lodestar.ingest.checkpoint import Checkpoint, checkpoint_scope
from lodestar.ingest.chunking import ChunkingOptions, TextFormat, chunk_ids, split_text
from lodestar.ingest.progress import Progress
from lodestar.ingest.sinks import IngestError, PointToWrite, PruneNotPermitted, Sink, UsageError
from lodestar.ingest.sources import DEFAULT_PATTERNS, Document, SourceRef, read_source

# Chunks are batched by length within a window of this many batches: a forward
# pass costs as much as its longest text times the batch size, and batches of
# chunks in document order would pad short texts to long ones (about half
# again the compute, measured on the Python language reference).
SORT_WINDOW_BATCHES = 8


@dataclass(frozen=True)
class IngestOptions:
    """Everything a run needs besides the sink."""

    collection: str
    create: bool = False
    chunking: ChunkingOptions = field(default_factory=ChunkingOptions)
    batch_size: int = 32
    concurrency: int = 4
    patterns: Sequence[str] = DEFAULT_PATTERNS
    encoding: str = "utf-8"
    stdin_name: str = "stdin"
    format: TextFormat | None = None
    checkpoint_path: Path | None = None
    prune: bool = True
    progress: bool = True
    tenant: str = ""


@dataclass
class IngestReport:
    """What a run did; printed as the summary."""

    collection: str = ""
    collection_created: bool = False
    files_total: int = 0
    files_ingested: int = 0
    files_unchanged: int = 0
    files_empty: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    chunks_new: int = 0
    chunks_present: int = 0
    chunks_truncated: int | None = 0
    chunks_pruned: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False
    error: str | None = None

    @property
    def chunks_done(self) -> int:
        """Chunks stored by this run or found already stored."""
        return self.chunks_new + self.chunks_present

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "collection_created": self.collection_created,
            "files": {
                "total": self.files_total,
                "ingested": self.files_ingested,
                "unchanged": self.files_unchanged,
                "empty": self.files_empty,
                "skipped": [{"source": s, "reason": r} for s, r in self.skipped],
            },
            "chunks": {
                "total": self.chunks,
                "done": self.chunks_done,
                "new": self.chunks_new,
                "already_present": self.chunks_present,
                "truncated": self.chunks_truncated,
                "pruned": self.chunks_pruned,
            },
            "elapsed_s": round(self.elapsed_s, 3),
            "chunks_per_s": round(self.chunks_per_s, 1),
            "interrupted": self.interrupted,
            "error": self.error,
        }

    def summary(self) -> str:
        state = "interrupted" if self.interrupted else "failed" if self.error else "done"
        created = " (created)" if self.collection_created else ""
        lines = [
            f"ingest {state}: collection {self.collection!r}{created}",
            f"  files:  {self.files_total} found, {self.files_ingested} ingested, "
            f"{self.files_unchanged} unchanged since the last run, {self.files_empty} empty, "
            f"{len(self.skipped)} skipped",
            f"  chunks: {self.chunks} read, {self.chunks_new} new, "
            f"{self.chunks_present} already present, {self.chunks_pruned} stale removed",
            f"  time:   {self.elapsed_s:.1f} s, {self.chunks_per_s:.1f} chunks/s",
        ]
        if self.chunks_truncated:
            lines.append(
                f"  note:   {self.chunks_truncated} chunks were longer than the model's input "
                "window and were truncated when embedded; a smaller --chunk-size avoids that"
            )
        lines.extend(f"  skipped {source}: {reason}" for source, reason in self.skipped)
        if self.error:
            lines.append(f"  error:  {self.error}")
        return "\n".join(lines)


@dataclass(eq=False)
class _FileState:
    document: Document
    ids: list[str]
    pending: int


@dataclass(frozen=True)
class _Item:
    file: _FileState
    point: PointToWrite


class Ingestor:
    """One ingest run; ``report`` is filled in as it goes (also when interrupted)."""

    def __init__(
        self,
        options: IngestOptions,
        sink: Sink,
        *,
        stdin: BinaryIO | None = None,
        progress_stream: Any = None,
    ) -> None:
        self.options = options
        self.sink = sink
        self.report = IngestReport(collection=options.collection)
        self._stdin = stdin
        self._progress_stream = progress_stream
        self._checkpoint: Checkpoint | None = None
        self._progress: Progress | None = None
        self._prune = options.prune

    async def run(self, sources: Sequence[SourceRef]) -> IngestReport:
        started = time.perf_counter()
        try:
            await self._run(sources)
        except asyncio.CancelledError:
            self.report.interrupted = True
            raise
        except IngestError as error:
            self.report.error = str(error)
            raise
        finally:
            self.report.elapsed_s = time.perf_counter() - started
            if self._progress is not None:
                self._progress.close()
            if self._checkpoint is not None:
                self._checkpoint.close()
        return self.report

    async def _run(self, sources: Sequence[SourceRef]) -> None:
        options, sink = self.options, self.sink
        model = await sink.model()
        if model.max_text_chars is not None and options.chunking.size > model.max_text_chars:
            raise UsageError(
                f"--chunk-size {options.chunking.size} exceeds the embedding service's limit "
                f"of {model.max_text_chars} characters per text"
            )
        batch_size = options.batch_size
        if model.max_texts_per_request is not None:
            batch_size = min(batch_size, model.max_texts_per_request)
        state = await sink.collection(options.collection, create=options.create, model=model)
        self.report.collection_created = state.created
        if options.checkpoint_path is not None:
            scope = checkpoint_scope(
                sink.destination,
                options.tenant,
                options.collection,
                state.epoch,
                options.chunking.fingerprint,
            )
            self._checkpoint = Checkpoint(options.checkpoint_path, scope)
        self.report.files_total = len(sources)
        self._progress = Progress(
            enabled=options.progress,
            total_files=len(sources),
            total_bytes=sum(_size(ref) for ref in sources),
            chunk_chars=options.chunking.size,
            stream=self._progress_stream,
        )
        queue: asyncio.Queue[list[_Item] | None] = asyncio.Queue(maxsize=options.concurrency * 2)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(options.concurrency):
                    group.create_task(self._work(queue))
                await self._produce(sources, batch_size, queue)
                for _ in range(options.concurrency):
                    await queue.put(None)
        except* IngestError as errors:
            raise errors.exceptions[0] from None

    async def _produce(
        self,
        sources: Sequence[SourceRef],
        batch_size: int,
        queue: asyncio.Queue[list[_Item] | None],
    ) -> None:
        options = self.options
        progress = self._require_progress()
        window: list[_Item] = []
        window_size = batch_size * SORT_WINDOW_BATCHES
        for ref in sources:
            loaded = await asyncio.to_thread(
                read_source, ref, encoding=options.encoding, stdin=self._stdin
            )
            if not isinstance(loaded, Document):
                self.report.skipped.append((ref.source, loaded.reason))
                progress.message(f"skipped {ref.source}: {loaded.reason}")
                progress.file_passed(_size(ref))
                continue
            document = loaded
            if self._checkpoint is not None and self._checkpoint.is_done(
                ref.source, document.file_hash
            ):
                self.report.files_unchanged += 1
                progress.file_passed(document.size_bytes)
                continue
            chunks = await asyncio.to_thread(
                split_text, document.text, ref.format, options.chunking
            )
            ids = chunk_ids(ref.source, chunks)
            file = _FileState(document, ids, len(chunks))
            if not chunks:
                self.report.files_empty += 1
                progress.file_passed(document.size_bytes)
                await self._complete(file, counts_as_ingested=False)
                continue
            self.report.chunks += len(chunks)
            progress.file_chunked(document.size_bytes, len(chunks))
            ingested_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            for chunk, point_id in zip(chunks, ids, strict=True):
                payload: dict[str, Any] = {
                    "source": ref.source,
                    "chunk_index": chunk.index,
                    "chunk_count": len(chunks),
                    "text": chunk.text,
                    "content_hash": chunk.content_hash,
                    "start": chunk.start,
                    "end": chunk.end,
                    "ingested_at": ingested_at,
                }
                if chunk.heading_path:
                    payload["heading"] = chunk.heading
                    payload["heading_path"] = list(chunk.heading_path)
                window.append(_Item(file, PointToWrite(point_id, chunk.text, payload)))
            if len(window) >= window_size:
                window = await _emit_sorted(window, batch_size, queue, final=False)
        await _emit_sorted(window, batch_size, queue, final=True)

    async def _work(self, queue: asyncio.Queue[list[_Item] | None]) -> None:
        collection, sink = self.options.collection, self.sink
        progress = self._require_progress()
        while (batch := await queue.get()) is not None:
            ids = [item.point.id for item in batch]
            present = await sink.existing(collection, ids) if sink.can_lookup else set()
            todo = [item.point for item in batch if item.point.id not in present]
            if todo:
                result = await sink.write(collection, todo)
                if result.truncated is None:
                    self.report.chunks_truncated = None
                elif self.report.chunks_truncated is not None:
                    self.report.chunks_truncated += result.truncated
            self.report.chunks_new += len(todo)
            self.report.chunks_present += len(batch) - len(todo)
            progress.chunks_done(len(batch))
            for item in batch:
                item.file.pending -= 1
                if item.file.pending == 0:
                    await self._complete(item.file, counts_as_ingested=True)

    async def _complete(self, file: _FileState, *, counts_as_ingested: bool) -> None:
        """Every chunk of the file is stored: drop stale ones, record it as done."""
        ref = file.document.ref
        if self._prune and not ref.is_stdin:
            try:
                self.report.chunks_pruned += await self.sink.prune(
                    self.options.collection, ref.source, file.ids
                )
            except PruneNotPermitted as error:
                self._prune = False
                self._require_progress().message(f"note: {error}")
        if self._checkpoint is not None:
            self._checkpoint.record(ref.source, file.document.file_hash, len(file.ids))
        if counts_as_ingested:
            self.report.files_ingested += 1
            self._require_progress().file_done()

    def _require_progress(self) -> Progress:
        if self._progress is None:
            raise RuntimeError("progress is set up at the start of a run")
        return self._progress


async def _emit_sorted(
    window: list[_Item], batch_size: int, queue: asyncio.Queue[list[_Item] | None], *, final: bool
) -> list[_Item]:
    """Queue the window's chunks in batches of similar length; returns what is left
    (less than a batch, kept for the next window unless this is the last one)."""
    window.sort(key=lambda item: len(item.point.text))
    full = len(window) if final else len(window) - len(window) % batch_size
    for start in range(0, full, batch_size):
        await queue.put(window[start : min(start + batch_size, full)])
    return window[full:]


def _size(ref: SourceRef) -> int:
    if ref.path is None:
        return 0
    try:
        return ref.path.stat().st_size
    except OSError:
        return 0
