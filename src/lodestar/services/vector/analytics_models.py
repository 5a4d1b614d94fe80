"""What the analytics store records and what its queries answer (plain frozen values)."""

from __future__ import annotations

from dataclasses import dataclass


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
class QueryDayCount:
    query_text: str
    day: float  # the day's start, 00:00 UTC, in seconds since the epoch
    count: int


@dataclass(frozen=True)
class SearchBucket:
    """The searches of one timeline interval, from ``start`` (unix seconds)."""

    start: float
    search_count: int
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    zero_result_rate: float


@dataclass(frozen=True)
class SearchAnalytics:
    total: SearchStats
    collections: tuple[SearchStats, ...]
    popular_queries: tuple[QueryCount, ...]
    timeline: tuple[SearchBucket, ...] = ()  # oldest first; empty without a bucket width


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
