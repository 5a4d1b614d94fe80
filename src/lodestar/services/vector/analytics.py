"""AnalyticsService: search, size and usage analytics over gRPC.

The vector service records every search into an ``AnalyticsStore`` (a queue
put) and samples collection sizes; gateways report usage through RecordUsage.
Everything lives in one SQLite file under the vector service's data directory,
so every gateway replica reads the same figures and they survive restarts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import grpc
from google.protobuf import timestamp_pb2

from lodestar import limits
from lodestar.runtime import protojson
from lodestar.runtime.errors import InvalidArgument, NotFound, Unavailable
from lodestar.runtime.server import ServiceRegistration
from lodestar.runtime.telemetry import span, tracer
from lodestar.services.vector.analytics_db import DATABASE_FILE, MAX_LABEL_CHARS
from lodestar.services.vector.analytics_models import (
    CollectionGrowth,
    SearchBucket,
    SearchStats,
    UsageRecord,
    UsageStats,
)
from lodestar.services.vector.analytics_store import AnalyticsStore
from lodestar.vector.v1 import analytics_service_pb2 as pb
from lodestar.vector.v1 import analytics_service_pb2_grpc as pb_grpc

__all__ = [
    "SERVICE_NAME",
    "AnalyticsServicer",
    "AnalyticsStore",
    "SizesProvider",
    "UsageRecord",
    "analytics_registration",
    "create_analytics",
    "sample_sizes_periodically",
]

_log = logging.getLogger(__name__)
_trace = tracer(__name__)

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
USAGE_COMMIT_TIMEOUT_S: Final = 30.0
MAX_NAME_CHARS: Final = 255
# Entries of a request's ``collections`` restriction (a token's allow-list) at most.
MAX_COLLECTION_PATTERNS: Final = 1_000

_Context = grpc.aio.ServicerContext
# Live collection sizes: name → (points, disk bytes).
SizesProvider = Callable[[], Awaitable[dict[str, tuple[int, int]]]]


def create_analytics(
    data_dir: Path,
    *,
    retention_days: float = 30.0,
    max_rows: int = 1_000_000,
    store_query_text: bool = True,
) -> AnalyticsStore:
    """Open (or create) the analytics store in ``data_dir``; ``close()`` it on shutdown."""
    return AnalyticsStore(
        data_dir / DATABASE_FILE,
        retention_days=retention_days,
        max_rows=max_rows,
        store_query_text=store_query_text,
    )


def analytics_registration(servicer: AnalyticsServicer) -> ServiceRegistration:
    """The registration to pass to ``GrpcServer`` for this servicer."""
    return ServiceRegistration(
        SERVICE_NAME,
        lambda server: pb_grpc.add_AnalyticsServiceServicer_to_server(servicer, server),
    )


async def sample_sizes_periodically(
    store: AnalyticsStore, sizes_provider: SizesProvider, interval_s: float
) -> None:
    """Record a size sample every ``interval_s`` until cancelled (run it as a task)."""
    while True:
        try:
            store.record_sizes(await sizes_provider())
        except Exception:  # a failed sample must not end the sampling
            _log.exception("analytics: could not sample collection sizes")
        await asyncio.sleep(interval_s)


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    """Transport for AnalyticsService: validation and proto conversion around the store."""

    def __init__(self, store: AnalyticsStore, sizes_provider: SizesProvider | None = None) -> None:
        self._store = store
        self._sizes_provider = sizes_provider

    async def GetSearchAnalytics(
        self,
        request: pb.GetSearchAnalyticsRequest,
        context: _Context[pb.GetSearchAnalyticsRequest, pb.GetSearchAnalyticsResponse],
    ) -> pb.GetSearchAnalyticsResponse:
        collection = _name(request.collection, "collection")
        start = _start_time(request.start_time) if request.HasField("start_time") else None
        top = _count(
            request.top_queries, "top_queries", limits.MAX_TOP_QUERIES, limits.DEFAULT_TOP_QUERIES
        )
        width = request.bucket_width_seconds
        if not 0 <= width <= limits.MAX_BUCKET_WIDTH_S:
            raise InvalidArgument(
                f"bucket_width_seconds must be between 0 and {limits.MAX_BUCKET_WIDTH_S} "
                f"(0: no timeline); got {width}",
                field="bucket_width_seconds",
                reason="OUT_OF_RANGE",
            )
        with span(_trace, "analytics.search"):
            result = await asyncio.to_thread(
                self._store.search_analytics,
                collection=collection or None,
                start_time=start,
                top_queries=top,
                bucket_width_s=width,
                collections=_patterns(request.collections),
            )
        return pb.GetSearchAnalyticsResponse(
            total=_search_stats(result.total),
            collections=[_search_stats(s) for s in result.collections],
            popular_queries=[
                pb.QueryCount(query_text=q.query_text, count=q.count)
                for q in result.popular_queries
            ],
            timeline=[_bucket(b) for b in result.timeline],
        )

    async def ListSearchQueries(
        self,
        request: pb.ListSearchQueriesRequest,
        context: _Context[pb.ListSearchQueriesRequest, pb.ListSearchQueriesResponse],
    ) -> pb.ListSearchQueriesResponse:
        collection = _name(request.collection, "collection")
        start = _start_time(request.start_time) if request.HasField("start_time") else None
        size = _count(
            request.page_size, "page_size", limits.MAX_QUERY_DAYS, limits.DEFAULT_QUERY_DAYS
        )
        with span(_trace, "analytics.search_queries"):
            rows = await asyncio.to_thread(
                self._store.query_days,
                collection=collection or None,
                start_time=start,
                limit=size,
                collections=_patterns(request.collections),
            )
        response = pb.ListSearchQueriesResponse()
        for row in rows:
            entry = response.queries.add(query_text=row.query_text, count=row.count)
            entry.day.FromSeconds(int(row.day))
        return response

    async def GetVectorAnalytics(
        self,
        request: pb.GetVectorAnalyticsRequest,
        context: _Context[pb.GetVectorAnalyticsRequest, pb.GetVectorAnalyticsResponse],
    ) -> pb.GetVectorAnalyticsResponse:
        collection = _name(request.collection, "collection")
        patterns = _patterns(request.collections)
        start = _start_time(request.start_time) if request.HasField("start_time") else None
        current: dict[str, tuple[int, int]] | None = None
        if self._sizes_provider is not None:
            current = await self._sizes_provider()
            if collection and collection not in current:
                raise NotFound(
                    f"collection {collection!r} does not exist",
                    field="collection",
                    reason="COLLECTION_NOT_FOUND",
                )
        with span(_trace, "analytics.vectors"):
            result = await asyncio.to_thread(
                self._store.vector_analytics,
                collection=collection or None,
                start_time=start,
                current=current,
                collections=patterns,
            )
        if collection and not result.collections:
            raise NotFound(
                f"collection {collection!r} has no size records",
                field="collection",
                reason="COLLECTION_NOT_FOUND",
            )
        return pb.GetVectorAnalyticsResponse(
            collections=[_growth(g) for g in result.collections],
            total_points=result.total_points,
            total_disk_bytes=result.total_disk_bytes,
        )

    async def RecordUsage(
        self,
        request: pb.RecordUsageRequest,
        context: _Context[pb.RecordUsageRequest, pb.RecordUsageResponse],
    ) -> pb.RecordUsageResponse:
        if len(request.events) > limits.MAX_USAGE_EVENTS:
            raise InvalidArgument(
                f"events holds {len(request.events)} events; send at most "
                f"{limits.MAX_USAGE_EVENTS} per call",
                field="events",
                reason="TOO_MANY_EVENTS",
            )
        records = [_usage_record(e, f"events[{i}]") for i, e in enumerate(request.events)]
        if records:
            self._store.record_usage(records)
            # Acknowledge only what is committed: the gateway does not resend.
            try:
                await asyncio.wait_for(
                    asyncio.wrap_future(self._store.flush_future()), USAGE_COMMIT_TIMEOUT_S
                )
            except (sqlite3.Error, TimeoutError) as error:
                raise Unavailable(
                    "usage events could not be stored; retry later",
                    reason="ANALYTICS_STORE_UNAVAILABLE",
                ) from error
        return pb.RecordUsageResponse()

    async def GetUsageAnalytics(
        self,
        request: pb.GetUsageAnalyticsRequest,
        context: _Context[pb.GetUsageAnalyticsRequest, pb.GetUsageAnalyticsResponse],
    ) -> pb.GetUsageAnalyticsResponse:
        subject = _label(request.subject, "subject")
        start = _start_time(request.start_time) if request.HasField("start_time") else None
        with span(_trace, "analytics.usage"):
            result = await asyncio.to_thread(
                self._store.usage_analytics, subject=subject or None, start_time=start
            )
        return pb.GetUsageAnalyticsResponse(
            usage=[_usage_stats(u) for u in result.usage], total=_usage_stats(result.total)
        )


# --- validation ----------------------------------------------------------------


def _count(value: int, field: str, most: int, default: int) -> int:
    """``value`` of a count field where 0 means ``default``; OUT_OF_RANGE beyond ``most``."""
    if value < 0 or value > most:
        raise InvalidArgument(
            f"{field} must be between 0 and {most} (0 means {default}); got {value}",
            field=field,
            reason="OUT_OF_RANGE",
        )
    return value or default


def _name(value: str, field: str) -> str:
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; at most {MAX_NAME_CHARS} allowed",
            field=field,
            reason="NAME_TOO_LONG",
        )
    return value


def _patterns(values: Sequence[str]) -> tuple[str, ...]:
    """A ``collections`` restriction, each entry as long as a name at most."""
    if len(values) > MAX_COLLECTION_PATTERNS:
        raise InvalidArgument(
            f"collections holds {len(values)} entries; at most {MAX_COLLECTION_PATTERNS} allowed",
            field="collections",
            reason="TOO_MANY_COLLECTIONS",
        )
    return tuple(_name(v, f"collections[{i}]") for i, v in enumerate(values))


def _label(value: str, field: str) -> str:
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; at most {MAX_LABEL_CHARS} allowed",
            field=field,
            reason="VALUE_TOO_LONG",
        )
    return value


def _timestamp(value: timestamp_pb2.Timestamp, field: str) -> float:
    if not protojson.is_valid_timestamp(value):
        raise InvalidArgument(
            f"{field} is not a valid timestamp (seconds {value.seconds}, nanos {value.nanos})",
            field=field,
            reason="INVALID_TIMESTAMP",
        )
    return protojson.timestamp_to_seconds(value)


def _start_time(value: timestamp_pb2.Timestamp) -> float:
    return _timestamp(value, "start_time")


def _usage_record(event: pb.UsageEvent, field: str) -> UsageRecord:
    route = _label(event.route, f"{field}.route")
    if not route:
        raise InvalidArgument(
            f"{field}.route is empty; send the route template, e.g. 'POST /api/v1/generate'",
            field=f"{field}.route",
            reason="EMPTY_ROUTE",
        )
    if not 100 <= event.status_code <= 599:
        raise InvalidArgument(
            f"{field}.status_code must be an HTTP status (100-599); got {event.status_code}",
            field=f"{field}.status_code",
            reason="INVALID_STATUS_CODE",
        )
    for name in ("prompt_tokens", "completion_tokens"):
        if getattr(event, name) < 0:
            raise InvalidArgument(
                f"{field}.{name} must not be negative; got {getattr(event, name)}",
                field=f"{field}.{name}",
                reason="NEGATIVE_TOKENS",
            )
    if not math.isfinite(event.latency_ms) or event.latency_ms < 0:
        raise InvalidArgument(
            f"{field}.latency_ms must be a finite, non-negative number; got {event.latency_ms}",
            field=f"{field}.latency_ms",
            reason="INVALID_LATENCY",
        )
    return UsageRecord(
        subject=_label(event.subject, f"{field}.subject"),
        route=route,
        status_code=event.status_code,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        latency_ms=event.latency_ms,
        time=_timestamp(event.time, f"{field}.time") if event.HasField("time") else None,
    )


# --- conversion ------------------------------------------------------------------


def _search_stats(stats: SearchStats) -> pb.SearchStats:
    return pb.SearchStats(
        collection=stats.collection,
        search_count=stats.search_count,
        latency_p50_ms=stats.latency_p50_ms,
        latency_p95_ms=stats.latency_p95_ms,
        latency_p99_ms=stats.latency_p99_ms,
        zero_result_rate=stats.zero_result_rate,
        mean_result_count=stats.mean_result_count,
    )


def _bucket(bucket: SearchBucket) -> pb.SearchBucket:
    return pb.SearchBucket(
        start_time=protojson.seconds_to_timestamp(bucket.start),
        search_count=bucket.search_count,
        latency_p50_ms=bucket.latency_p50_ms,
        latency_p95_ms=bucket.latency_p95_ms,
        latency_p99_ms=bucket.latency_p99_ms,
        zero_result_rate=bucket.zero_result_rate,
    )


def _growth(growth: CollectionGrowth) -> pb.CollectionGrowth:
    return pb.CollectionGrowth(
        collection=growth.collection,
        points_count=max(0, growth.points_count),
        disk_bytes=max(0, growth.disk_bytes),
        samples=[
            pb.SizeSample(
                time=protojson.seconds_to_timestamp(s.time),
                points_count=max(0, s.points_count),
                disk_bytes=max(0, s.disk_bytes),
            )
            for s in growth.samples
        ],
    )


def _usage_stats(stats: UsageStats) -> pb.UsageStats:
    return pb.UsageStats(
        subject=stats.subject,
        route=stats.route,
        request_count=stats.request_count,
        error_count=stats.error_count,
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.completion_tokens,
    )
