"""The pipeline's own logic (batching, completion, progress) over an in-memory sink.

The services themselves are exercised in test_ingest.py; here a recording sink
stands in for them so that batch composition and call order can be checked exactly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from lodestar.ingest import IngestOptions, Ingestor
from lodestar.ingest.chunking import ChunkingOptions
from lodestar.ingest.sinks import (
    CollectionState,
    ModelSpec,
    PointToWrite,
    PruneNotPermitted,
    WriteResult,
)
from lodestar.ingest.sources import discover
from tests.ingest.test_chunking import prose


class RecordingSink:
    destination = "memory://"
    can_lookup = True

    def __init__(self, *, max_texts: int | None = None, may_prune: bool = True) -> None:
        self.max_texts = max_texts
        self.may_prune = may_prune
        self.stored: dict[str, PointToWrite] = {}
        self.batches: list[list[str]] = []
        self.pruned: list[tuple[str, int]] = []

    async def model(self) -> ModelSpec:
        return ModelSpec("test-model", 3, self.max_texts, 5000, 256)

    async def collection(self, name: str, *, create: bool, model: ModelSpec) -> CollectionState:
        return CollectionState(name, 3, len(self.stored), "epoch", False)

    async def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        return {i for i in ids if i in self.stored}

    async def write(self, collection: str, points: Sequence[PointToWrite]) -> WriteResult:
        self.batches.append([p.text for p in points])
        self.stored.update((p.id, p) for p in points)
        return WriteResult(len(points), 0)

    async def prune(self, collection: str, source: str, keep: Sequence[str]) -> int:
        if not self.may_prune:
            raise PruneNotPermitted("no DeleteVectors")
        stale = [
            i for i, p in self.stored.items() if p.payload["source"] == source and i not in keep
        ]
        for i in stale:
            del self.stored[i]
        self.pruned.append((source, len(stale)))
        return len(stale)

    async def close(self) -> None:
        return None


def make_files(directory: Path) -> Path:
    directory.mkdir()
    for i, paragraphs in enumerate((30, 2, 12)):
        (directory / f"doc{i}.txt").write_text(prose(paragraphs, seed=i))
    return directory


async def test_batches_group_chunks_of_similar_length(tmp_path: Path) -> None:
    files = make_files(tmp_path / "docs")
    sink = RecordingSink(max_texts=8)  # the model's limit wins over --batch-size
    opts = IngestOptions(
        collection="c", chunking=ChunkingOptions(300, 40), batch_size=32, concurrency=1
    )
    stream = io.StringIO()
    report = await Ingestor(opts, sink, progress_stream=stream).run(discover([str(files)]))

    assert report.chunks == report.chunks_new == len(sink.stored)
    assert all(len(batch) <= 8 for batch in sink.batches)
    assert sum(len(batch) for batch in sink.batches) == report.chunks
    # Within a window, batches go out shortest first, each sorted by length.
    lengths = [[len(text) for text in batch] for batch in sink.batches]
    assert all(batch == sorted(batch) for batch in lengths)
    assert lengths[0][-1] <= lengths[1][0]
    # Every file was completed exactly once, after its last chunk.
    assert sorted(Path(source).name for source, _ in sink.pruned) == [
        "doc0.txt",
        "doc1.txt",
        "doc2.txt",
    ]
    bar = stream.getvalue()
    assert "files 3/3" in bar
    assert f"{report.chunks}/{report.chunks}" in bar
    assert "chunk/s" in bar


async def test_without_delete_permission_the_run_goes_on_with_a_note(tmp_path: Path) -> None:
    files = make_files(tmp_path / "docs")
    sink = RecordingSink(may_prune=False)
    stream = io.StringIO()
    opts = IngestOptions(collection="c", chunking=ChunkingOptions(300, 40), progress=False)
    report = await Ingestor(opts, sink, progress_stream=stream).run(discover([str(files)]))
    assert report.files_ingested == 3
    assert stream.getvalue().count("no DeleteVectors") == 1  # said once, not per file
