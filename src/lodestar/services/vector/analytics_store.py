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
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from lodestar import limits

_log = logging.getLogger(__name__)

DATABASE_FILE: Final = "analytics.sqlite3"
SCHEMA_VERSION: Final = 1
MAX_LABEL_CHARS: Final = 512
# Rows committed per transaction at most; a larger backlog takes several.
_WRITE_BATCH: Final = 5_000
# How long a record waits for others to share its commit. Flushes, queries, prunes,
# closing and a full batch end the wait at once.
_LINGER_S: Final = 0.5

RECORDS_DROPPED = Counter(
    "lodestar_vector_analytics_records_dropped_total",
    "Analytics records dropped because the writer queue was full or the store closed.",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS searches (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    collection TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    result_count INTEGER NOT NULL,
    query_norm TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS searches_ts ON searches (ts);
CREATE INDEX IF NOT EXISTS searches_collection_ts ON searches (collection, ts);
CREATE TABLE IF NOT EXISTS sizes (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    collection TEXT NOT NULL,
    points_count INTEGER NOT NULL,
    disk_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sizes_ts ON sizes (ts);
CREATE INDEX IF NOT EXISTS sizes_collection_ts ON sizes (collection, ts);
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    subject TEXT NOT NULL,
    route TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE INDEX IF NOT EXISTS usage_subject_ts ON usage (subject, ts);
"""
_TABLES: Final = ("searches", "sizes", "usage")


# --- results -----------------------------------------------------------------


@dataclass(frozen=True)
class SearchStats:
    """Searches summarised; ``collection`` is empty for totals over every collection."""

    collection: str
    search_count: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    zero_result_rate: float
    mean_result_count: float


@dataclass(frozen=True)
class QueryCount:
    query_text: str
    count: int


@dataclass(frozen=True)
class SearchAnalytics:
    total: SearchStats
    collections: tuple[SearchStats, ...]
    popular_queries: tuple[QueryCount, ...]


@dataclass(frozen=True)
class SizeSample:
    time: float
    points_count: int
    disk_bytes: int


@dataclass(frozen=True)
class CollectionGrowth:
    collection: str
    points_count: int
    disk_bytes: int
    samples: tuple[SizeSample, ...]  # oldest first


@dataclass(frozen=True)
class VectorAnalytics:
    collections: tuple[CollectionGrowth, ...]
    total_points: int
    total_disk_bytes: int


@dataclass(frozen=True)
class UsageRecord:
    """One request answered by a gateway. ``time`` (unix seconds) defaults to now."""

    subject: str
    route: str
    status_code: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    time: float | None = None


@dataclass(frozen=True)
class UsageStats:
    subject: str
    route: str
    request_count: int
    error_count: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class UsageAnalytics:
    usage: tuple[UsageStats, ...]
    total: UsageStats


def normalize_query(text: str) -> str:
    """Case-folded, whitespace-collapsed, truncated: how popular queries are grouped
    (by the first ``limits.MAX_QUERY_TEXT_CHARS`` characters)."""
    return " ".join(text.split()).casefold()[: limits.MAX_QUERY_TEXT_CHARS]


# --- the store -----------------------------------------------------------------

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
        with self._connect() as conn:
            _create_schema(conn)
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
    ) -> SearchAnalytics:
        """Volume, nearest-rank latency percentiles, zero-result rate and popular queries."""
        self._settle()
        where, params = _where(start_time=start_time, column="collection", value=collection)
        with self._read() as conn:
            per_collection: list[SearchStats] = []
            latencies: list[npt.NDArray[np.float64]] = []
            rows = conn.execute(
                "SELECT collection, COUNT(*), SUM(result_count = 0), SUM(result_count) "
                f"FROM searches {where} GROUP BY collection ORDER BY collection",
                params,
            ).fetchall()
            for name, count, zero, results in rows:
                # Percentiles in numpy: SQLite's window functions are several times slower.
                values = np.fromiter(
                    (
                        v
                        for (v,) in conn.execute(
                            f"SELECT latency_ms FROM searches {where}"
                            f"{' AND' if where else ' WHERE'} collection = ?",
                            (*params, name),
                        )
                    ),
                    dtype=np.float64,
                    count=int(count),
                )
                latencies.append(values)
                per_collection.append(_search_stats(name, values, int(zero), int(results)))
            total = _search_stats(
                collection or "",
                np.concatenate(latencies) if latencies else np.empty(0),
                sum(int(row[2]) for row in rows),
                sum(int(row[3]) for row in rows),
            )
            popular: list[QueryCount] = []
            if top_queries > 0:
                popular = [
                    QueryCount(text, int(count))
                    for text, count in conn.execute(
                        f"SELECT query_norm, COUNT(*) AS c FROM searches {where}"
                        f"{' AND' if where else ' WHERE'} query_norm != '' "
                        "GROUP BY query_norm ORDER BY c DESC, query_norm LIMIT ?",
                        (*params, top_queries),
                    )
                ]
        return SearchAnalytics(total, tuple(per_collection), tuple(popular))

    def vector_analytics(
        self,
        *,
        collection: str | None = None,
        start_time: float | None = None,
        current: Mapping[str, tuple[int, int]] | None = None,
    ) -> VectorAnalytics:
        """Sizes and their samples, oldest first, at most ``max_samples`` per collection.

        ``current`` (the live sizes) decides which collections are reported; without
        it, every collection with a sample is, at its latest sampled size.
        """
        self._settle()
        with self._read() as conn:
            latest: dict[str, tuple[int, int]]
            if current is not None:
                latest = dict(current)
            else:
                latest = {
                    name: (int(points), int(size))
                    for name, _, points, size in conn.execute(
                        "SELECT collection, MAX(ts), points_count, disk_bytes FROM sizes "
                        "GROUP BY collection"
                    )
                }
            names = sorted(n for n in latest if not collection or n == collection)
            growth = [
                CollectionGrowth(
                    name, latest[name][0], latest[name][1], self._samples(conn, name, start_time)
                )
                for name in names
            ]
        return VectorAnalytics(
            tuple(growth),
            sum(g.points_count for g in growth),
            sum(g.disk_bytes for g in growth),
        )

    def usage_analytics(
        self, *, subject: str | None = None, start_time: float | None = None
    ) -> UsageAnalytics:
        """Requests, errors (status >= 400) and tokens per subject and route, and their sum."""
        self._settle()
        where, params = _where(start_time=start_time, column="subject", value=subject)
        with self._read() as conn:
            usage = [
                UsageStats(s, r, int(n), int(e), int(p), int(c))
                for s, r, n, e, p, c in conn.execute(
                    "SELECT subject, route, COUNT(*), SUM(status_code >= 400), "
                    f"SUM(prompt_tokens), SUM(completion_tokens) FROM usage {where} "
                    "GROUP BY subject, route ORDER BY subject, route",
                    params,
                )
            ]
        total = UsageStats(
            subject or "",
            "",
            sum(u.request_count for u in usage),
            sum(u.error_count for u in usage),
            sum(u.prompt_tokens for u in usage),
            sum(u.completion_tokens for u in usage),
        )
        return UsageAnalytics(tuple(usage), total)

    def row_counts(self) -> dict[str, int]:
        """Rows kept per table (for retention checks and operators)."""
        self._settle()
        with self._read() as conn:
            return {
                t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in _TABLES
            }

    def _samples(
        self, conn: sqlite3.Connection, name: str, start_time: float | None
    ) -> tuple[SizeSample, ...]:
        since = -math.inf if start_time is None else start_time
        count, first, last = conn.execute(
            "SELECT COUNT(*), MIN(ts), MAX(ts) FROM sizes WHERE collection = ? AND ts >= ?",
            (name, since),
        ).fetchone()
        if not count:
            return ()
        if count <= self.max_samples or last <= first:
            rows = conn.execute(
                "SELECT ts, points_count, disk_bytes FROM sizes "
                "WHERE collection = ? AND ts >= ? ORDER BY ts, id",
                (name, since),
            ).fetchall()
            if count > self.max_samples:
                rows = rows[-self.max_samples :]
        else:
            # Too many to send: the last sample of each of max_samples equal time buckets
            # (SQLite takes the bare columns from the row that holds MAX(ts)).
            scale = self.max_samples / (last - first)
            rows = conn.execute(
                "SELECT MAX(ts), points_count, disk_bytes FROM sizes "
                "WHERE collection = ? AND ts >= ? "
                "GROUP BY MIN(CAST((ts - ?) * ? AS INTEGER), ?) ORDER BY 1",
                (name, since, first, scale, self.max_samples - 1),
            ).fetchall()
        return tuple(SizeSample(float(ts), int(p), int(b)) for ts, p, b in rows)

    def _settle(self) -> None:
        # Read-your-writes; a failed or slow commit (logged by the writer) must not
        # stop people from reading what is already stored.
        with suppress(sqlite3.Error, TimeoutError):
            self.flush(timeout=5.0)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("PRAGMA query_only = ON")
            yield conn
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        return conn

    # --- the writer thread ------------------------------------------------------

    def _write_loop(self) -> None:
        conn = self._connect()
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
        searches: list[tuple[float, str, float, int, str]] = []
        sizes: list[tuple[float, str, int, int]] = []
        usage: list[tuple[float, str, str, int, int, int, float]] = []
        skipped = 0
        # One malformed record must not cost the whole batch: each is converted alone.
        bad = (TypeError, ValueError, AttributeError, OverflowError)
        for item in batch:
            kind = item[0]
            if kind == _SEARCH:
                try:
                    searches.append(self._search_row(item))
                except bad:
                    skipped += 1
            elif kind == _SIZES:
                _, ts, by_collection = item
                for name, value in by_collection.items():
                    try:
                        sizes.append(_size_row(ts, name, value))
                    except bad:
                        skipped += 1
            elif kind == _USAGE:
                _, now, events = item
                for event in events:
                    try:
                        usage.append(_usage_row(now, event))
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
            with _transaction(conn):
                conn.executemany(
                    "INSERT INTO searches (ts, collection, latency_ms, result_count,"
                    " query_norm) VALUES (?, ?, ?, ?, ?)",
                    searches,
                )
                conn.executemany(
                    "INSERT INTO sizes (ts, collection, points_count, disk_bytes)"
                    " VALUES (?, ?, ?, ?)",
                    sizes,
                )
                conn.executemany(
                    "INSERT INTO usage (ts, subject, route, status_code, prompt_tokens,"
                    " completion_tokens, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    usage,
                )
        except Exception:
            RECORDS_DROPPED.inc(len(searches) + len(sizes) + len(usage))
            raise

    def _search_row(self, item: tuple[Any, ...]) -> tuple[float, str, float, int, str]:
        _, ts, collection, latency, count, text = item
        query = normalize_query(text) if self._store_query_text and text else ""
        return (ts, str(collection)[:MAX_LABEL_CHARS], _finite(latency), _count(count), query)

    def _prune(self, conn: sqlite3.Connection) -> None:
        cutoff = self._clock() - self.retention_s
        removed = 0
        with _transaction(conn):
            for table in _TABLES:
                removed += conn.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,)).rowcount
                # Row ids only grow, so the oldest inserts are the lowest ids.
                removed += conn.execute(
                    f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",
                    (self.max_rows,),
                ).rowcount
        if removed:
            _log.info("analytics: retention removed %d rows", removed)


# --- helpers ------------------------------------------------------------------


_MAX_INTEGER: Final = 2**63 - 1


def _count(value: Any) -> int:
    """A non-negative integer SQLite can hold."""
    return min(max(0, int(value)), _MAX_INTEGER)


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return max(0.0, number)


def _size_row(ts: float, name: Any, value: tuple[Any, Any]) -> tuple[float, str, int, int]:
    points, size = value
    return (ts, str(name)[:MAX_LABEL_CHARS], _count(points), _count(size))


def _usage_row(now: float, event: UsageRecord) -> tuple[float, str, str, int, int, int, float]:
    return (
        now if event.time is None else float(event.time),
        str(event.subject)[:MAX_LABEL_CHARS],
        str(event.route)[:MAX_LABEL_CHARS],
        int(event.status_code),
        _count(event.prompt_tokens),
        _count(event.completion_tokens),
        _finite(event.latency_ms),
    )


def _create_schema(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise RuntimeError(f"analytics database cannot use WAL mode (got {mode})")
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"analytics database has schema version {version}; this build reads "
            f"up to {SCHEMA_VERSION}"
        )
    conn.executescript(_SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _where(
    *, start_time: float | None, column: str, value: str | None
) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    if value:
        clauses.append(f"{column} = ?")
        params.append(value)
    if start_time is not None:
        clauses.append("ts >= ?")
        params.append(start_time)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


_PERCENTILES: Final = (50, 95, 99)


def nearest_ranks(values: npt.NDArray[np.float64]) -> tuple[float, float, float]:
    """p50, p95 and p99 by nearest rank (an observed value: the ceil(p·n/100)-th smallest)."""
    n = len(values)
    if n == 0:
        return (0.0, 0.0, 0.0)
    ranks = [max(1, (p * n + 99) // 100) - 1 for p in _PERCENTILES]
    picked = np.partition(values, ranks)
    return (float(picked[ranks[0]]), float(picked[ranks[1]]), float(picked[ranks[2]]))


def _search_stats(
    name: str, latencies: npt.NDArray[np.float64], zero: int, results: int
) -> SearchStats:
    count = len(latencies)
    p50, p95, p99 = nearest_ranks(latencies)
    return SearchStats(
        collection=name,
        search_count=count,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        zero_result_rate=zero / count if count else 0.0,
        mean_result_count=results / count if count else 0.0,
    )
