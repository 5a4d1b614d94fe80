"""The ingest run's own logic (documents, batch limits, progress, notes) over a
recording sink.

The services themselves are exercised in test_ingest.py, and the document
pipeline's writes in tests/documents; here a recording sink stands in for them.
"""

from __future__ import annotations

import io
from pathlib import Path

from lodestar.documents.model import DocumentInfo, document_id_for
from lodestar.documents.pipeline import (
    DocumentInput,
    Progress,
    PutResult,
    WriteOptions,
    plan_chunks,
)
from lodestar.ingest import IngestOptions, Ingestor
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.ingest.sinks import CollectionState, ModelSpec, PruneNotPermitted
from lodestar.ingest.sources import discover
from tests.ingest.test_chunking import prose


class RecordingSink:
    destination = "memory://"

    def __init__(self, *, max_texts: int | None = None, may_delete: bool = True) -> None:
        self.max_texts = max_texts
        self.may_delete = may_delete
        self.documents: dict[str, DocumentInput] = {}
        self.options: list[WriteOptions] = []
        self.deleted: list[str] = []

    async def model(self) -> ModelSpec:
        return ModelSpec("test-model", 3, self.max_texts, 5000, 256)

    async def collection(self, name: str, *, create: bool, model: ModelSpec) -> CollectionState:
        return CollectionState(name, 3, 0, "epoch", False)

    async def put(
        self,
        collection: str,
        document: DocumentInput,
        options: WriteOptions,
        progress: Progress | None = None,
    ) -> PutResult:
        chunks = len(plan_chunks(document, options.chunking))
        if progress is not None:
            await progress(chunks // 2, chunks)
            await progress(chunks, chunks)
        self.documents[document.id] = document
        self.options.append(options)
        info = DocumentInfo(
            document.id, "v", document.title, document.source, "text", chunks, 0, "", ""
        )
        return PutResult(info, 0)

    async def delete_document(self, collection: str, document_id: str) -> int:
        if not self.may_delete:
            raise PruneNotPermitted("no DeleteVectors")
        self.deleted.append(document_id)
        return 0

    async def close(self) -> None:
        return None


def make_files(directory: Path) -> Path:
    directory.mkdir()
    for i, paragraphs in enumerate((30, 2, 12)):
        (directory / f"doc{i}.txt").write_text(prose(paragraphs, seed=i))
    return directory


async def test_every_file_is_put_as_its_document(tmp_path: Path) -> None:
    files = make_files(tmp_path / "docs")
    sink = RecordingSink(max_texts=8)  # the model's limit wins over --batch-size
    opts = IngestOptions(
        collection="c", chunking=ChunkingOptions(300, 40), batch_size=32, concurrency=1
    )
    stream = io.StringIO()
    report = await Ingestor(opts, sink, progress_stream=stream).run(discover([str(files)]))

    sources = sorted(d.source for d in sink.documents.values())
    assert [Path(s).name for s in sources] == ["doc0.txt", "doc1.txt", "doc2.txt"]
    assert set(sink.documents) == {document_id_for(s) for s in sources}
    assert all(o.batch_size == 8 and o.chunking == opts.chunking for o in sink.options)
    assert report.files_ingested == 3
    assert report.chunks == report.chunks_new > 3
    bar = stream.getvalue()
    assert "files 3/3" in bar
    assert f"{report.chunks}/{report.chunks}" in bar
    assert "chunk/s" in bar


async def test_without_delete_permission_the_run_goes_on_with_a_note(tmp_path: Path) -> None:
    files = make_files(tmp_path / "docs")
    (files / "empty1.txt").write_text(" ")
    (files / "empty2.txt").write_text("\n")
    sink = RecordingSink(may_delete=False)
    stream = io.StringIO()
    opts = IngestOptions(collection="c", chunking=ChunkingOptions(300, 40), progress=False)
    report = await Ingestor(opts, sink, progress_stream=stream).run(discover([str(files)]))
    assert report.files_ingested == 3
    assert report.files_empty == 2
    assert stream.getvalue().count("no DeleteVectors") == 1  # said once, not per file
