"""Analytics read from the vector service's persistent records."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from starlette.responses import Response

from lodestar import limits
from lodestar.auth.permissions import Permission
from lodestar.runtime.protojson import datetime_to_timestamp
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import analytics as convert
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.common import Moment, OptionalCollectionName
from lodestar.vector.v1 import analytics_service_pb2 as pb

router = api_router("analytics")

Since = Annotated[
    Moment | None, Query(description="Only records at or after this time (RFC 3339).")
]
Collection = Annotated[
    OptionalCollectionName, Query(description="One collection's records; empty for all.")
]


@router.get("/analytics/vectors", summary="Collection sizes and growth")
async def vector_analytics(
    call: Annotated[Call, Depends(require(Permission.VIEW_ANALYTICS, RouteClass.READ))],
    collection: Collection = "",
    since: Since = None,
) -> Response:
    request = pb.GetVectorAnalyticsRequest(collection=collection)
    if since is not None:
        datetime_to_timestamp(since, request.start_time)
    response = await call.backends.analytics.vector_analytics(request, call.options)
    return respond_json(convert.vector_analytics_from_proto(response))


@router.get("/analytics/search", summary="Search volume, latency and popular queries")
async def search_analytics(
    call: Annotated[Call, Depends(require(Permission.VIEW_ANALYTICS, RouteClass.READ))],
    collection: Collection = "",
    since: Since = None,
    top_queries: Annotated[
        int, Query(ge=1, le=limits.MAX_TOP_QUERIES)
    ] = limits.DEFAULT_TOP_QUERIES,
    interval: Annotated[
        int | None,
        Query(
            ge=1,
            le=limits.MAX_BUCKET_WIDTH_S,
            description="Seconds per `timeline` bucket; without it, no timeline. The "
            f"timeline runs from `since` (or the oldest search) to now, in at most "
            f"{limits.MAX_TIMELINE_BUCKETS} buckets (400 past that with `since`).",
        ),
    ] = None,
) -> Response:
    """Totals and per collection; with `interval`, the same figures over time
    (`timeline`: bucket start, count, p50/p95/p99 and zero-result rate, oldest first)."""
    request = pb.GetSearchAnalyticsRequest(
        collection=collection, top_queries=top_queries, bucket_width_seconds=interval or 0
    )
    if since is not None:
        datetime_to_timestamp(since, request.start_time)
    response = await call.backends.analytics.search_analytics(request, call.options)
    return respond_json(convert.search_analytics_from_proto(response))


@router.get("/analytics/usage", summary="Usage per subject and route")
async def usage_analytics(
    call: Annotated[Call, Depends(require(Permission.VIEW_ANALYTICS, RouteClass.READ))],
    subject: Annotated[str, Query(max_length=256)] = "",
    since: Since = None,
) -> Response:
    request = pb.GetUsageAnalyticsRequest(subject=subject)
    if since is not None:
        datetime_to_timestamp(since, request.start_time)
    response = await call.backends.analytics.usage_analytics(request, call.options)
    return respond_json(convert.usage_analytics_from_proto(response))
