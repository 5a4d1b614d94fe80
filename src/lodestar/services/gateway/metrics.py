"""The gateway's Prometheus metrics (prometheus_client's default registry)."""

from __future__ import annotations

import contextlib
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    120,
)

HTTP_REQUESTS = Counter(
    "lodestar_gateway_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "lodestar_gateway_http_request_duration_seconds",
    "Time to answer an HTTP request (for streams: until the last byte).",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
BREAKER_STATE = Gauge(
    "lodestar_gateway_circuit_breaker_state",
    "Circuit breaker of each backend replica: 1 for the state it is in (closed, "
    "half_open or open), 0 for the others.",
    ["backend", "replica", "state"],
)
BREAKER_STATES = ("closed", "half_open", "open")


def set_breaker_state(backend: str, replica: str, state: str) -> None:
    """A state set: one series per state, so that queries select a state by name."""
    for name in BREAKER_STATES:
        BREAKER_STATE.labels(backend, replica, name).set(1 if name == state else 0)


def remove_breaker_state(backend: str, replica: str) -> None:
    for name in BREAKER_STATES:
        with contextlib.suppress(KeyError):
            BREAKER_STATE.remove(backend, replica, name)


RATE_LIMIT_REJECTIONS = Counter(
    "lodestar_gateway_rate_limit_rejections_total",
    "Requests refused with 429, by the limit reached (requests or tokens).",
    ["limit"],
)
BACKEND_DURATION = Histogram(
    "lodestar_gateway_backend_request_duration_seconds",
    "Duration of gRPC calls to backends, by backend, method and status code.",
    ["backend", "method", "code"],
    buckets=_LATENCY_BUCKETS,
)
GENERATED_TOKENS = Counter(
    "lodestar_gateway_generated_tokens_total",
    "Tokens generated for clients through the gateway.",
)


class Children(Generic[M]):
    """A metric's labelled children, looked up once per label set (the hot
    path then skips prometheus_client's locking ``labels()``). For
    low-cardinality labels only."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child  # type: ignore[no-any-return]


HTTP_REQUESTS_BY = Children(HTTP_REQUESTS)
HTTP_DURATION_BY = Children(HTTP_DURATION)
BACKEND_DURATION_BY = Children(BACKEND_DURATION)
