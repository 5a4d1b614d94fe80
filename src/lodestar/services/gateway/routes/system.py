"""Health and metrics.

``GET /api/v1/health`` without a token is the liveness probe. With a token it
needs HealthCheck and reports each backend replica's gRPC health and circuit
breaker state.

``GET /metrics`` is the Prometheus text at the conventional scrape path. It
needs ViewMetrics (Prometheus can send a bearer token: ``authorization`` in
the scrape config) unless ``LODESTAR_GATEWAY_METRICS_PUBLIC=true``, for
scrapers on a trusted network. ``GET /api/v1/metrics`` is a JSON summary.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from lodestar.auth.permissions import Permission, missing_permission
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import gateway_of
from lodestar.services.gateway.deps import authenticate, require
from lodestar.services.gateway.errors import JSON
from lodestar.services.gateway.metrics import (
    GENERATED_TOKENS,
    HTTP_REQUESTS,
    RATE_LIMIT_REJECTIONS,
)
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.routes.base import api_router

router = api_router("system")
scrape_router = APIRouter(tags=["system"])


_HEALTH = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}


@router.get(
    "/health",
    summary="Liveness, or backend health with HealthCheck",
    responses={
        200: {"content": {JSON: {"schema": _HEALTH}}},
        503: {
            "description": "A backend has no healthy replica (with a token only).",
            "content": {JSON: {"schema": _HEALTH}},
        },
    },
)
async def health(request: Request) -> Response:
    """Without a token: ``{"status": "ok"}`` while the gateway runs. With a
    token (it needs HealthCheck): each backend's replicas, their gRPC health and
    breaker state; status is ``ok``, ``degraded`` (some replica down) or
    ``unavailable`` (a backend with no healthy replica, answered with 503)."""
    gateway = gateway_of(request)
    if request.headers.get("authorization") is None:
        return respond_json({"status": "ok"})
    principal = await authenticate(request, gateway)
    if not principal.has(Permission.HEALTH_CHECK):
        raise missing_permission(Permission.HEALTH_CHECK)
    pools = gateway.backends.pools
    reports = await asyncio.gather(*(pool.health() for pool in pools))
    backends: dict[str, Any] = {}
    overall = "ok"
    for pool, replicas in zip(pools, reports, strict=True):
        healthy = [r for r in replicas if r.serving == "SERVING" and r.breaker == "closed"]
        if not healthy:
            status = "unavailable"
            overall = "unavailable"
        elif len(healthy) < len(replicas):
            status = "degraded"
            overall = "degraded" if overall == "ok" else overall
        else:
            status = "ok"
        backends[pool.backend] = {
            "status": status,
            "replicas": [
                {
                    "address": r.address,
                    "serving": r.serving,
                    "breaker": r.breaker,
                    "in_flight": r.in_flight,
                }
                for r in replicas
            ],
        }
    return respond_json(
        {"status": overall, "backends": backends},
        status_code=503 if overall == "unavailable" else 200,
    )


def _prometheus_text() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@scrape_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,  # no media type of its own: the text is declared below
    responses={
        200: {
            "description": "The Prometheus text exposition format (0.0.4).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (needs ViewMetrics unless metrics are public)."""
    gateway = gateway_of(request)
    if not gateway.settings.metrics_public:
        principal = await authenticate(request, gateway)
        if not principal.has(Permission.VIEW_METRICS):
            raise missing_permission(Permission.VIEW_METRICS)
    # Rendering touches every metric; keep it off the event loop.
    return await asyncio.to_thread(_prometheus_text)


def _samples(metric: Any) -> list[Any]:
    return [s for family in metric.collect() for s in family.samples]


@router.get("/metrics", summary="Metrics summary (JSON)")
async def metrics_summary(
    call: Annotated[Call, Depends(require(Permission.VIEW_METRICS, None))],
) -> Response:
    """Requests by route and status class, breaker states, rate-limit
    rejections and generated tokens since the gateway started."""
    routes: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for sample in _samples(HTTP_REQUESTS):
        if sample.name.endswith("_total"):
            labels = sample.labels
            key = f"{labels['method']} {labels['route']}"
            routes[key][labels["status"][0] + "xx"] += sample.value
    rejections = {
        s.labels["limit"]: s.value
        for s in _samples(RATE_LIMIT_REJECTIONS)
        if s.name.endswith("_total")
    }
    tokens = sum(s.value for s in _samples(GENERATED_TOKENS) if s.name.endswith("_total"))
    breakers = {
        pool.backend: {r.address: r.breaker.state.name.lower() for r in pool.replicas}
        for pool in call.backends.pools
    }
    return respond_json(
        {
            "requests": {route: dict(counts) for route, counts in sorted(routes.items())},
            "circuit_breakers": breakers,
            "rate_limit_rejections": rejections,
            "generated_tokens": tokens,
        }
    )
