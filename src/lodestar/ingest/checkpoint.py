"""The local checkpoint: which files are already fully stored.

One SQLite file (default ``$XDG_STATE_HOME/lodestar/ingest.sqlite3``, else
``~/.local/state/lodestar/ingest.sqlite3``; ``--state`` or
``LODESTAR_INGEST_STATE`` to move it) records, per *scope*, each source whose
chunks were all stored, with the SHA-256 of the bytes it was read from. A file
whose bytes still hash the same is skipped without being chunked or embedded.

The scope is the destination (vector service address or gateway URL, and
tenant), the collection with its creation time (a collection deleted and made
again starts afresh) and the chunking rules (a new chunk size re-ingests
everything). A row is written only after the file's last chunk is acknowledged,
so an interrupted run leaves no false entries; the files it had in flight are
chunked again on the next run, and the vector service's GetPoints tells which
of their chunks are already stored.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingested_files (
    scope TEXT NOT NULL,
    source TEXT NOT NULL,
    file_hash TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (scope, source)
)
"""


def default_state_path() -> Path:
    """Where the checkpoint lives unless ``--state`` says otherwise."""
    override = os.environ.get("LODESTAR_INGEST_STATE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lodestar" / "ingest.sqlite3"


def checkpoint_scope(
    destination: str, tenant: str, collection: str, collection_epoch: str, chunking: str
) -> str:
    return "\x1f".join((destination, tenant, collection, collection_epoch, chunking))


class Checkpoint:
    """Completed files of one scope, backed by SQLite (safe to interrupt at any point)."""

    def __init__(self, path: Path, scope: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._scope = scope
        self._db = sqlite3.connect(path, isolation_level=None)
        # WAL keeps each commit cheap; NORMAL sync is enough for a cache whose
        # loss only costs a re-check.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(_SCHEMA)

    def is_done(self, source: str, file_hash: str) -> bool:
        row = self._db.execute(
            "SELECT file_hash FROM ingested_files WHERE scope = ? AND source = ?",
            (self._scope, source),
        ).fetchone()
        return row is not None and row[0] == file_hash

    def record(self, source: str, file_hash: str, chunks: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO ingested_files (scope, source, file_hash, chunks, ingested_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                self._scope,
                source,
                file_hash,
                chunks,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            ),
        )

    def forget(self, source: str) -> None:
        self._db.execute(
            "DELETE FROM ingested_files WHERE scope = ? AND source = ?", (self._scope, source)
        )

    def close(self) -> None:
        self._db.close()
