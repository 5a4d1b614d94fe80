"""The analytics SQLite file: schema, rows, retention and the aggregate queries.

Plain functions over one connection; ``AnalyticsStore`` decides which thread runs
them on which connection. The file is in WAL mode, so a query (each on its own
connection) reads while the writer commits.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from lodestar import limits
from lodestar.auth.permissions import matches_collection_patterns
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.vector.analytics_models import (
    CollectionGrowth,
    QueryCount,
    QueryDayCount,
    SearchAnalytics,
    SearchBucket,
    SearchStats,
    SizeSample,
    UsageAnalytics,
    UsageRecord,
    UsageStats,
    VectorAnalytics,
)

DATABASE_FILE: Final = "analytics.sqlite3"
SCHEMA_VERSION: Final = 1
MAX_LABEL_CHARS: Final = 512

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

SearchRow = tuple[float, str, float, int, str]
SizeRow = tuple[float, str, int, int]
UsageRow = tuple[float, str, str, int, int, int, float]

# --- connections ---------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection for one query, closed afterwards."""
    conn = connect(path)
    try:
        conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        conn.close()


def create_schema(conn: sqlite3.Connection) -> None:
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


# --- rows and writes -------------------------------------------------------------------

_MAX_INTEGER: Final = 2**63 - 1


def normalize_query(text: str) -> str:
    """Case-folded, whitespace-collapsed, truncated: how popular queries are grouped."""
    return " ".join(text.split()).casefold()[: limits.MAX_QUERY_TEXT_CHARS]


def _count(value: Any) -> int:
    """A non-negative integer SQLite can hold."""
    return min(max(0, int(value)), _MAX_INTEGER)


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return max(0.0, number)


# The row builders raise TypeError, ValueError, AttributeError or OverflowError for
# a malformed record, so that the writer can skip that one record alone.


def search_row(ts: float, collection: Any, latency: Any, count: Any, text: str) -> SearchRow:
    """A search's row; an empty ``text`` keeps its query out of the popular ones."""
    query = normalize_query(text) if text else ""
    return (ts, str(collection)[:MAX_LABEL_CHARS], _finite(latency), _count(count), query)


def size_row(ts: float, name: Any, value: tuple[Any, Any]) -> SizeRow:
    points, size = value
    return (ts, str(name)[:MAX_LABEL_CHARS], _count(points), _count(size))


def usage_row(now: float, event: UsageRecord) -> UsageRow:
    return (
        now if event.time is None else float(event.time),
        str(event.subject)[:MAX_LABEL_CHARS],
        str(event.route)[:MAX_LABEL_CHARS],
        int(event.status_code),
        _count(event.prompt_tokens),
        _count(event.completion_tokens),
        _finite(event.latency_ms),
    )


def insert(
    conn: sqlite3.Connection,
    searches: list[SearchRow],
    sizes: list[SizeRow],
    usage: list[UsageRow],
) -> None:
    """Store the rows in one transaction: all of them or none."""
    with _transaction(conn):
        conn.executemany(
            "INSERT INTO searches (ts, collection, latency_ms, result_count,"
            " query_norm) VALUES (?, ?, ?, ?, ?)",
            searches,
        )
        conn.executemany(
            "INSERT INTO sizes (ts, collection, points_count, disk_bytes) VALUES (?, ?, ?, ?)",
            sizes,
        )
        conn.executemany(
            "INSERT INTO usage (ts, subject, route, status_code, prompt_tokens,"
            " completion_tokens, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            usage,
        )


def prune(conn: sqlite3.Connection, cutoff: float, max_rows: int) -> int:
    """Delete rows older than ``cutoff`` and all but the newest ``max_rows`` per table;
    the number of rows deleted."""
    removed = 0
    with _transaction(conn):
        for table in _TABLES:
            removed += conn.execute(f"DELETE FROM {table} WHERE ts < ?", (cutoff,)).rowcount
            # Row ids only grow, so the oldest inserts are the lowest ids.
            removed += conn.execute(
                f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",
                (max_rows,),
            ).rowcount
    return removed


# --- queries ---------------------------------------------------------------------------
#
# ``collections`` (names or shell-style patterns, as a token's allow-list; empty: every
# collection) restricts every query at its source: totals, percentiles, popular
# queries, timelines and growth are computed over the matching collections alone, so
# that a figure never tells of a collection its reader may not see.


def search_analytics(
    conn: sqlite3.Connection,
    *,
    collection: str | None,
    start_time: float | None,
    top_queries: int,
    collections: Sequence[str] = (),
) -> SearchAnalytics:
    where, params = _search_where(conn, collection, collections, start_time)
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


def search_timeline(
    conn: sqlite3.Connection,
    *,
    collection: str | None,
    start_time: float | None,
    end_time: float,
    bucket_width_s: int,
    max_buckets: int = limits.MAX_TIMELINE_BUCKETS,
    collections: Sequence[str] = (),
) -> list[SearchBucket]:
    """Searches per bucket of ``bucket_width_s`` seconds (buckets start at multiples of
    the width since the epoch), oldest first, empty buckets included: from the bucket
    holding ``start_time`` (without one: the oldest search's, at most ``max_buckets``
    back) to the one holding ``end_time``. More buckets than ``max_buckets`` from an
    explicit ``start_time`` is INVALID_ARGUMENT: the answer must stay small."""
    width = bucket_width_s
    last = math.floor(end_time / width)
    where, params = _search_where(conn, collection, collections, start_time)
    if start_time is not None:
        first = math.floor(start_time / width)
        if last - first + 1 > max_buckets:
            raise InvalidArgument(
                f"bucket_width_seconds {width} makes {last - first + 1} buckets from "
                f"start_time to now; at most {max_buckets}: widen the buckets or start later",
                field="bucket_width_seconds",
                reason="TOO_MANY_BUCKETS",
                metadata={"max_buckets": str(max_buckets)},
            )
    else:
        (oldest,) = conn.execute(f"SELECT MIN(ts) FROM searches {where}", params).fetchone()
        if oldest is None:
            return []
        first = max(math.floor(float(oldest) / width), last - max_buckets + 1)
    if first > last:
        return []
    rows = np.array(
        conn.execute(
            f"SELECT ts, latency_ms, result_count = 0 FROM searches {where}"
            f"{' AND' if where else ' WHERE'} ts >= ? AND ts < ? ORDER BY ts",
            (*params, first * width, (last + 1) * width),
        ).fetchall(),
        dtype=np.float64,
    ).reshape(-1, 3)
    # Rows are in time order, so each bucket's rows are one slice.
    index = np.floor(rows[:, 0] / width).astype(np.int64) - first
    bounds = np.searchsorted(index, np.arange(last - first + 2))
    timeline = []
    for i in range(last - first + 1):
        bucket = rows[bounds[i] : bounds[i + 1]]
        count = len(bucket)
        p50, p95, p99 = nearest_ranks(bucket[:, 1].copy())
        zero = float(bucket[:, 2].sum()) / count if count else 0.0
        timeline.append(SearchBucket(float((first + i) * width), count, p50, p95, p99, zero))
    return timeline


_DAY_S: Final = 86_400


def query_days(
    conn: sqlite3.Connection,
    *,
    collection: str | None,
    start_time: float | None,
    limit: int,
    collections: Sequence[str] = (),
) -> list[QueryDayCount]:
    """Searches counted per (query text, UTC day), the largest counts first."""
    where, params = _search_where(conn, collection, collections, start_time)
    return [
        QueryDayCount(text, float(day) * _DAY_S, int(count))
        for text, day, count in conn.execute(
            f"SELECT query_norm, CAST(ts / {_DAY_S} AS INTEGER) AS day, COUNT(*) AS c "
            f"FROM searches {where}{' AND' if where else ' WHERE'} query_norm != '' "
            "GROUP BY query_norm, day ORDER BY c DESC, day DESC, query_norm LIMIT ?",
            (*params, limit),
        )
    ]


def vector_analytics(
    conn: sqlite3.Connection,
    *,
    collection: str | None,
    start_time: float | None,
    current: Mapping[str, tuple[int, int]] | None,
    max_samples: int,
    collections: Sequence[str] = (),
) -> VectorAnalytics:
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
    names = sorted(
        n
        for n in latest
        if (not collection or n == collection)
        and (not collections or matches_collection_patterns(n, collections))
    )
    growth = [
        CollectionGrowth(
            name,
            latest[name][0],
            latest[name][1],
            _samples(conn, name, start_time, max_samples),
        )
        for name in names
    ]
    return VectorAnalytics(
        tuple(growth),
        sum(g.points_count for g in growth),
        sum(g.disk_bytes for g in growth),
    )


def _samples(
    conn: sqlite3.Connection, name: str, start_time: float | None, max_samples: int
) -> tuple[SizeSample, ...]:
    since = -math.inf if start_time is None else start_time
    count, first, last = conn.execute(
        "SELECT COUNT(*), MIN(ts), MAX(ts) FROM sizes WHERE collection = ? AND ts >= ?",
        (name, since),
    ).fetchone()
    if not count:
        return ()
    if count <= max_samples or last <= first:
        rows = conn.execute(
            "SELECT ts, points_count, disk_bytes FROM sizes "
            "WHERE collection = ? AND ts >= ? ORDER BY ts, id",
            (name, since),
        ).fetchall()
        if count > max_samples:
            rows = rows[-max_samples:]
    else:
        # Too many to send: the last sample of each of max_samples equal time buckets
        # (SQLite takes the bare columns from the row that holds MAX(ts)).
        scale = max_samples / (last - first)
        rows = conn.execute(
            "SELECT MAX(ts), points_count, disk_bytes FROM sizes "
            "WHERE collection = ? AND ts >= ? "
            "GROUP BY MIN(CAST((ts - ?) * ? AS INTEGER), ?) ORDER BY 1",
            (name, since, first, scale, max_samples - 1),
        ).fetchall()
    return tuple(SizeSample(float(ts), int(p), int(b)) for ts, p, b in rows)


def usage_analytics(
    conn: sqlite3.Connection, *, subject: str | None, start_time: float | None
) -> UsageAnalytics:
    where, params = _where(start_time=start_time, column="subject", value=subject)
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


def row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in _TABLES}


def _search_where(
    conn: sqlite3.Connection,
    collection: str | None,
    collections: Sequence[str],
    start_time: float | None,
) -> tuple[str, tuple[Any, ...]]:
    """The searches of ``collection`` (if any) among those matching ``collections``
    (if any) since ``start_time`` (if any), as a WHERE clause and its parameters."""
    names = None
    if collections:
        names = [
            n for n in _search_collections(conn) if matches_collection_patterns(n, collections)
        ]
    return _where(start_time=start_time, column="collection", value=collection, among=names)


def _search_collections(conn: sqlite3.Connection) -> list[str]:
    """Every collection with a search record, by stepping through the collection index
    (one lookup per collection rather than a scan of every search)."""
    return [
        name
        for (name,) in conn.execute(
            "WITH RECURSIVE names(name) AS ("
            " SELECT MIN(collection) FROM searches"
            " UNION ALL SELECT (SELECT MIN(collection) FROM searches WHERE collection > name)"
            " FROM names WHERE name IS NOT NULL"
            ") SELECT name FROM names WHERE name IS NOT NULL"
        )
    ]


def _where(
    *,
    start_time: float | None,
    column: str,
    value: str | None,
    among: Sequence[str] | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """``column`` equal to ``value`` (if any) and one of ``among`` (if not None; an
    empty list selects nothing), at or after ``start_time`` (if any)."""
    clauses: list[str] = []
    params: list[Any] = []
    if value:
        clauses.append(f"{column} = ?")
        params.append(value)
    if among is not None:
        # One parameter however many names: SQLite caps the number of parameters.
        clauses.append(f"{column} IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(among)))
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
