"""Bulk ingest: files and standard input → overlapping chunks → embeddings → a collection.

``lodestar ingest PATH... --collection NAME`` runs :func:`ingest_main`; the
pieces are usable on their own: :mod:`.chunking` (splitting: the one chunker,
which the document pipeline uses too), :mod:`.sources` (finding and reading
files), :mod:`.sinks` (gRPC services or the gateway), :mod:`.pipeline` (the
concurrent run) and :mod:`.checkpoint`.

The names below are loaded on first use, so that importing the chunker (as
``lodestar.documents`` does) does not load the run, which imports the
document pipeline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IngestOptions", "IngestReport", "Ingestor", "ingest_main"]


def __getattr__(name: str) -> Any:
    if name == "ingest_main":
        from lodestar.ingest.cli import ingest_main

        return ingest_main
    if name in ("IngestOptions", "IngestReport", "Ingestor"):
        from lodestar.ingest import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
