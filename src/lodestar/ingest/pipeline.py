"""The ingest pipeline: read → chunk → put each file as a document.

Every file is put through the one document pipeline (``lodestar.documents``):
chunked by the ingest chunker, embedded and stored as a new version of the
document whose id derives from the file's source, committed, and the
previous version's chunks deleted; several files are in flight at once, and
each file's batches too, which keeps the embedding service's forward passes
full. A file whose put was cut off leaves its previous version whole, and is
put again by the next run.

Completed files are recorded in the checkpoint with the hash of their bytes and
skipped while unchanged. A file emptied since the last run has its document
deleted. Standard input is checkpointed by its content hash like a file, and
each distinct input is a document of its own (its id includes its hash).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from lodestar.documents.formats import DocumentFormat, ParsedDocument
from lodestar.documents.model import document_id_for
from lodestar.documents.pipeline import DocumentInput, EmptyDocument, WriteOptions, plan_chunks
from lodestar.ingest.checkpoint import Checkpoint, checkpoint_scope
from lodestar.ingest.chunking import ChunkingOptions, TextFormat
from lodestar.ingest.progress import Progress
from lodestar.ingest.sinks import IngestError, PruneNotPermitted, Sink, UsageError
from lodestar.ingest.sources import DEFAULT_PATTERNS, Document, SourceRef, read_source


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
        self._write = WriteOptions(options.chunking, options.batch_size, options.concurrency)

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
            truncated = getattr(self.sink, "truncated", None)
            self.report.chunks_truncated = truncated if isinstance(truncated, int) else None
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
        self._write = WriteOptions(options.chunking, batch_size, options.concurrency)
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
        # Files in flight at once: each is one document put (its own batches
        # run concurrently too), so a few keep the embedding service busy.
        slots = asyncio.Semaphore(max(1, options.concurrency // 2))
        try:
            async with asyncio.TaskGroup() as group:
                for ref in sources:
                    await slots.acquire()
                    task = group.create_task(self._file(ref))
                    task.add_done_callback(lambda _: slots.release())
        except* IngestError as errors:
            raise errors.exceptions[0] from None

    async def _file(self, ref: SourceRef) -> None:
        options, progress = self.options, self._require_progress()
        loaded = await asyncio.to_thread(
            read_source, ref, encoding=options.encoding, stdin=self._stdin
        )
        if not isinstance(loaded, Document):
            self.report.skipped.append((ref.source, loaded.reason))
            progress.message(f"skipped {ref.source}: {loaded.reason}")
            progress.file_passed(_size(ref))
            return
        document = loaded
        if self._checkpoint is not None and self._checkpoint.is_done(
            ref.source, document.file_hash
        ):
            self.report.files_unchanged += 1
            progress.file_passed(document.size_bytes)
            return
        # Standard input is a new document each time: its id includes its content.
        source_id = f"{ref.source}\x00{document.file_hash}" if ref.is_stdin else ref.source
        put = DocumentInput(
            id=document_id_for(source_id),
            source=ref.source,
            title=PurePath(ref.source).name or ref.source,
            parsed=ParsedDocument(document.text, _FORMATS[ref.format]),
            size_bytes=document.size_bytes,
        )
        try:
            chunks = plan_chunks(put, options.chunking)
        except EmptyDocument:
            self.report.files_empty += 1
            progress.file_passed(document.size_bytes)
            await self._remove(put.id, ref)
            self._record(ref, document, 0)
            return
        self.report.chunks += len(chunks)
        progress.file_chunked(document.size_bytes, len(chunks))
        reported = 0

        async def advance(done: int, total: int) -> None:
            nonlocal reported
            if done > reported:
                progress.chunks_done(done - reported)
                reported = done

        result = await self.sink.put(options.collection, put, self._write, advance)
        self.report.chunks_new += result.document.chunks
        self.report.chunks_pruned += result.replaced
        self._record(ref, document, result.document.chunks)
        self.report.files_ingested += 1
        progress.file_done()

    async def _remove(self, document_id: str, ref: SourceRef) -> None:
        """An emptied file: its stored chunks go."""
        if not self._prune or ref.is_stdin:
            return
        try:
            self.report.chunks_pruned += await self.sink.delete_document(
                self.options.collection, document_id
            )
        except PruneNotPermitted as error:
            if self._prune:  # said once, though files run side by side
                self._prune = False
                self._require_progress().message(f"note: {error}")

    def _record(self, ref: SourceRef, document: Document, chunks: int) -> None:
        if self._checkpoint is not None:
            self._checkpoint.record(ref.source, document.file_hash, chunks)

    def _require_progress(self) -> Progress:
        if self._progress is None:
            raise RuntimeError("progress is set up at the start of a run")
        return self._progress


_FORMATS = {
    TextFormat.PLAIN: DocumentFormat.TEXT,
    TextFormat.MARKDOWN: DocumentFormat.MARKDOWN,
    TextFormat.RST: DocumentFormat.RST,
}


def _size(ref: SourceRef) -> int:
    if ref.path is None:
        return 0
    try:
        return ref.path.stat().st_size
    except OSError:
        return 0
