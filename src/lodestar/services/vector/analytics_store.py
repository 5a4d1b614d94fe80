"""Persistent search, size and usage analytics in SQLite.

Recording is a queue put: ``record_search`` runs on the event loop after every
search, so it must never wait for a disk. One writer thread drains the queue
and commits batches in WAL mode, which lets queries (each on its own
connection) read while it writes. The writer lets records gather for a moment
before it commits them (one transaction for many searches rather than one
each, and no wake-up of the writer per search). Queries first wait for
everything recorded before them to be committed, so a caller always sees its
own searches.
Retention (an age and a row cap per table) keeps the file bounded.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from prometheus_client import Counter

from lodestar.services.vector import analytics_db as db
from lodestar.services.vector.analytics_models import (
    QueryDayCount,
    SearchAnalytics,
    UsageAnalytics,
    UsageRecord,
    VectorAnalytics,
)

_log = logging.getLogger(__name__)

# Rows committed per transaction at most; a larger backlog takes several.
_WRITE_BATCH: Final = 5_000
# How long a record waits for others to share its commit. Flushes, queries, prunes,
# closing and a full batch end the wait at once.
_LINGER_S: Final = 0.5

RECORDS_DROPPED = Counter(
    "lodestar_vector_analytics_records_dropped_total",
    "Analytics records dropped because the writer queue was full or the store closed.",
)

# Queue items are plain tuples tagged by their first element: building one is
# the whole cost of recording.
_SEARCH: Final = "search"
_SIZES: Final = "sizes"
_USAGE: Final = "usage"
_FLUSH: Final = "flush"
_PRUNE: Final = "prune"
_STOP: Final = "stop"
_RECORDS: Final = frozenset({_SEARCH, _SIZES, _USAGE})


class AnalyticsStore:
    """Search, size and usage records in one SQLite file, written off the caller's thread."""

    def __init__(
        self,
        path: Path,
        *,
        retention_days: float = 30.0,
        max_rows: int = 1_000_000,
        max_pending: int = 100_000,
        prune_interval_s: float = 300.0,
        store_query_text: bool = True,
        max_samples: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if retention_days <= 0:
            raise ValueError("retention_days must be positive")
        if max_rows < 1 or max_pending < 1 or max_samples < 2:
            raise ValueError("max_rows and max_pending must be >= 1, max_samples >= 2")
        self.path = path
        self.retention_s = retention_days * 86_400.0
        self.max_rows = max_rows
        self.max_samples = max_samples
        self._max_pending = max_pending
        self._prune_interval_s = prune_interval_s
        self._store_query_text = store_query_text
        self._clock = clock
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._control = threading.Lock()
        # Set when the writer should stop lingering and commit what is queued.
        self._wake = threading.Event()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        with db.connect(path) as conn:
            db.create_schema(conn)
        self._writer = threading.Thread(
            target=self._write_loop, name="vector-analytics-writer", daemon=True
        )
        self._writer.start()

    # --- recording (cheap, any thread) ------------------------------------------

    def record_search(
        self, collection: str, latency_ms: float, result_count: int, query_text: str = ""
    ) -> None:
        """Queue one search; never blocks. Dropped (and counted) if the writer is far behind."""
        pending = self._queue.qsize()
        if self._closed or pending >= self._max_pending:
            RECORDS_DROPPED.inc()
            return
        self._queue.put((_SEARCH, self._clock(), collection, latency_ms, result_count, query_text))
        if pending + 1 == _WRITE_BATCH:
            self._wake.set()

    def record_sizes(self, sizes: Mapping[str, tuple[int, int]]) -> None:
        """Queue one size sample (points, disk bytes) per collection, stamped now."""
        if not sizes:
            return
        if self._closed or self._queue.qsize() >= self._max_pending:
            RECORDS_DROPPED.inc(len(sizes))
            return
        self._queue.put((_SIZES, self._clock(), dict(sizes)))

    def record_usage(self, events: Iterable[UsageRecord]) -> None:
        """Queue usage events reported by a gateway (``flush`` to know they are stored)."""
        batch = tuple(events)
        if not batch:
            return
        if self._closed:
            RECORDS_DROPPED.inc(len(batch))
            return
        # Usage is reported by other processes and acknowledged to them, so it is
        # not dropped for backlog: the caller flushes and waits instead.
        self._queue.put((_USAGE, self._clock(), batch))

    # --- control --------------------------------------------------------------------

    def flush_future(self) -> Future[None]:
        """A future done once everything recorded so far is committed (or failed to be)."""
        return self._control_request(_FLUSH)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything recorded so far is committed; raises if the commit failed."""
        self.flush_future().result(timeout)

    def prune(self, timeout: float | None = 30.0) -> None:
        """Apply retention now (it also runs every ``prune_interval_s``)."""
        self._control_request(_PRUNE).result(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued and stop the writer. Idempotent; later records are dropped."""
        with self._control:
            if not self._closed:
                self._closed = True
                self._queue.put((_STOP,))
                self._wake.set()
        self._writer.join(timeout)

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def _control_request(self, kind: str) -> Future[None]:
        future: Future[None] = Future()
        # Under the lock, so that no request can be queued behind the stop marker.
        with self._control:
            if self._closed:
                future.set_result(None)
            elif not self._writer.is_alive():
                future.set_exception(sqlite3.OperationalError("analytics writer is not running"))
            else:
                self._queue.put((kind, future))
                self._wake.set()
        return future

    # --- queries (any thread; each sees everything recorded before it) -------------

    def search_analytics(
        self,
        *,
        collection: str | None = None,
        start_time: float | None = None,
        top_queries: int = 10,
        bucket_width_s: int = 0,
        collections: Sequence[str] = (),
    ) -> SearchAnalytics:
        """Volume, nearest-rank latency percentiles, zero-result rate and popular queries;
        with ``bucket_width_s``, the same per bucket of time up to now (``db.search_timeline``).
        ``collections`` (names or patterns; empty: all) restricts every figure."""
        self._settle()
        now = self._clock()
        with db.reading(self.path) as conn:
            # One read transaction: the timeline counts the same searches as the totals.
            conn.execute("BEGIN")
            result = db.search_analytics(
                conn,
                collection=collection,
                start_time=start_time,
                top_queries=top_queries,
                collections=collections,
            )
            if not bucket_width_s:
                return result
            timeline = db.search_timeline(
                conn,
                collection=collection,
                start_time=start_time,
                end_time=now,
                bucket_width_s=bucket_width_s,
                collections=collections,
            )
        return replace(result, timeline=tuple(timeline))

    def query_days(
        self,
        *,
        collection: str | None = None,
        start_time: float | None = None,
        limit: int,
        collections: Sequence[str] = (),
    ) -> list[QueryDayCount]:
        """Searches counted per query text and UTC day, the largest counts first, of the
        collections matching ``collections`` (names or patterns; empty: all)."""
        self._settle()
        with db.reading(self.path) as conn:
            return db.query_days(
                conn,
                collection=collection,
                start_time=start_time,
                limit=limit,
                collections=collections,
            )

    def vector_analytics(
        self,
        *,
        collection: str | None = None,
        start_time: float | None = None,
        current: Mapping[str, tuple[int, int]] | None = None,
        collections: Sequence[str] = (),
    ) -> VectorAnalytics:
        """Sizes and their samples, oldest first, at most ``max_samples`` per collection.

        ``current`` (the live sizes) decides which collections are reported; without
        it, every collection with a sample is, at its latest sampled size. Only those
        matching ``collections`` (names or patterns; empty: all) are, and counted in
        the totals.
        """
        self._settle()
        with db.reading(self.path) as conn:
            return db.vector_analytics(
                conn,
                collection=collection,
                start_time=start_time,
                current=current,
                max_samples=self.max_samples,
                collections=collections,
            )

    def usage_analytics(
        self, *, subject: str | None = None, start_time: float | None = None
    ) -> UsageAnalytics:
        """Requests, errors (status >= 400) and tokens per subject and route, and their sum."""
        self._settle()
        with db.reading(self.path) as conn:
            return db.usage_analytics(conn, subject=subject, start_time=start_time)

    def row_counts(self) -> dict[str, int]:
        """Rows kept per table (for retention checks and operators)."""
        self._settle()
        with db.reading(self.path) as conn:
            return db.row_counts(conn)

    def _settle(self) -> None:
        # Read-your-writes; a failed or slow commit (logged by the writer) must not
        # stop people from reading what is already stored.
        with suppress(sqlite3.Error, TimeoutError):
            self.flush(timeout=5.0)

    # --- the writer thread ------------------------------------------------------

    def _write_loop(self) -> None:
        conn = db.connect(self.path)
        # NORMAL is durable across process crashes in WAL mode; only a power loss can
        # take back the last commits, which analytics can afford.
        conn.execute("PRAGMA synchronous = NORMAL")
        next_prune = 0.0
        stopping = False
        try:
            while not stopping:
                wait = max(0.0, next_prune - time.monotonic())
                batch: list[tuple[Any, ...]] = []
                with suppress(queue.Empty):
                    batch.append(self._queue.get(timeout=wait if wait > 0 else 0.001))
                if batch and batch[0][0] in _RECORDS:
                    # Let more records join this commit, unless someone waits for it.
                    self._wake.wait(_LINGER_S)
                    self._wake.clear()
                while len(batch) < _WRITE_BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = any(item[0] == _STOP for item in batch)
                if stopping:
                    # Nothing can be queued behind the stop marker but records that
                    # raced it; take them too.
                    while True:
                        try:
                            batch.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                prune_due = time.monotonic() >= next_prune
                self._apply(conn, batch, prune_due)
                if prune_due:
                    next_prune = time.monotonic() + self._prune_interval_s
        finally:
            conn.close()

    def _apply(self, conn: sqlite3.Connection, batch: list[tuple[Any, ...]], prune: bool) -> None:
        waiting = [item[1] for item in batch if item[0] in (_FLUSH, _PRUNE)]
        prune = prune or any(item[0] == _PRUNE for item in batch)
        error: BaseException | None = None
        try:
            self._insert(conn, batch)
        except Exception as exc:  # the writer must outlive any one batch
            _log.error("analytics: could not store a batch of records: %s", exc)
            error = exc
        if prune:
            try:
                self._prune(conn)
            except sqlite3.Error as exc:
                _log.error("analytics: retention failed: %s", exc)
        for future in waiting:
            # False when its waiter gave up (e.g. a cancelled RecordUsage call).
            if not future.set_running_or_notify_cancel():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _insert(self, conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        searches: list[db.SearchRow] = []
        sizes: list[db.SizeRow] = []
        usage: list[db.UsageRow] = []
        skipped = 0
        # One malformed record must not cost the whole batch: each is converted alone.
        bad = (TypeError, ValueError, AttributeError, OverflowError)
        for item in batch:
            kind = item[0]
            if kind == _SEARCH:
                try:
                    _, ts, collection, latency, count, text = item
                    query = text if self._store_query_text else ""
                    searches.append(db.search_row(ts, collection, latency, count, query))
                except bad:
                    skipped += 1
            elif kind == _SIZES:
                _, ts, by_collection = item
                for name, value in by_collection.items():
                    try:
                        sizes.append(db.size_row(ts, name, value))
                    except bad:
                        skipped += 1
            elif kind == _USAGE:
                _, now, events = item
                for event in events:
                    try:
                        usage.append(db.usage_row(now, event))
                    except bad:
                        skipped += 1
        # Events reported with a time already outside retention would only be pruned
        # at the next pass; keeping them out makes what is reported not depend on when.
        cutoff = self._clock() - self.retention_s
        usage = [row for row in usage if row[0] >= cutoff]
        if skipped:
            _log.warning("analytics: skipped %d malformed records", skipped)
            RECORDS_DROPPED.inc(skipped)
        if not (searches or sizes or usage):
            return
        try:
            db.insert(conn, searches, sizes, usage)
        except Exception:
            RECORDS_DROPPED.inc(len(searches) + len(sizes) + len(usage))
            raise

    def _prune(self, conn: sqlite3.Connection) -> None:
        cutoff = self._clock() - self.retention_s
        removed = db.prune(conn, cutoff, self.max_rows)
        if removed:
            _log.info("analytics: retention removed %d rows", removed)
