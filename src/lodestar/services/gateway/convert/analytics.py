"""``lodestar.vector.v1`` analytics messages → JSON-ready dicts."""

from __future__ import annotations

from typing import Any

from lodestar.runtime.protojson import timestamp_to_datetime
from lodestar.vector.v1 import analytics_service_pb2 as pb


def _search_stats(stats: pb.SearchStats) -> dict[str, Any]:
    return {
        "collection": stats.collection,
        "search_count": stats.search_count,
        "latency_p50_ms": stats.latency_p50_ms,
        "latency_p95_ms": stats.latency_p95_ms,
        "latency_p99_ms": stats.latency_p99_ms,
        "zero_result_rate": stats.zero_result_rate,
        "mean_result_count": stats.mean_result_count,
    }


def search_analytics_from_proto(response: pb.GetSearchAnalyticsResponse) -> dict[str, Any]:
    return {
        "total": _search_stats(response.total),
        "collections": [_search_stats(s) for s in response.collections],
        "popular_queries": [
            {"query_text": q.query_text, "count": q.count} for q in response.popular_queries
        ],
        "timeline": [
            {
                "start_time": timestamp_to_datetime(b.start_time),
                "search_count": b.search_count,
                "latency_p50_ms": b.latency_p50_ms,
                "latency_p95_ms": b.latency_p95_ms,
                "latency_p99_ms": b.latency_p99_ms,
                "zero_result_rate": b.zero_result_rate,
            }
            for b in response.timeline
        ],
    }


def vector_analytics_from_proto(response: pb.GetVectorAnalyticsResponse) -> dict[str, Any]:
    return {
        "collections": [
            {
                "collection": c.collection,
                "points_count": c.points_count,
                "disk_bytes": c.disk_bytes,
                "samples": [
                    {
                        "time": timestamp_to_datetime(s.time) if s.HasField("time") else None,
                        "points_count": s.points_count,
                        "disk_bytes": s.disk_bytes,
                    }
                    for s in c.samples
                ],
            }
            for c in response.collections
        ],
        "total_points": response.total_points,
        "total_disk_bytes": response.total_disk_bytes,
    }


def _usage(stats: pb.UsageStats) -> dict[str, Any]:
    return {
        "subject": stats.subject,
        "route": stats.route,
        "request_count": stats.request_count,
        "error_count": stats.error_count,
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
    }


def usage_analytics_from_proto(response: pb.GetUsageAnalyticsResponse) -> dict[str, Any]:
    return {"usage": [_usage(u) for u in response.usage], "total": _usage(response.total)}
