"""Bulk ingest: files and standard input → overlapping chunks → embeddings → a collection.

``lodestar ingest PATH... --collection NAME`` runs :func:`ingest_main`; the
pieces are usable on their own: :mod:`.chunking` (splitting and chunk ids),
:mod:`.sources` (finding and reading files), :mod:`.sinks` (gRPC services or
the gateway), :mod:`.pipeline` (the concurrent run) and :mod:`.checkpoint`.
"""

from lodestar.ingest.cli import ingest_main
from lodestar.ingest.pipeline import IngestOptions, Ingestor, IngestReport

__all__ = ["IngestOptions", "IngestReport", "Ingestor", "ingest_main"]
