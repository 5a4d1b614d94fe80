"""Prometheus metrics of the vector service (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POINTS_UPSERTED = Counter(
    "lodestar_vector_points_upserted_total", "Points inserted or replaced.", ["collection"]
)
POINTS_DELETED = Counter("lodestar_vector_points_deleted_total", "Points deleted.", ["collection"])
SEARCH_DURATION = Histogram(
    "lodestar_vector_search_duration_seconds",
    "Time to answer a search, recommendation or clustering, in the service.",
    ["collection", "kind"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SEARCH_RESULTS = Histogram(
    "lodestar_vector_search_results",
    "Hits returned per search or recommendation.",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
COLLECTION_POINTS = Gauge(
    "lodestar_vector_collection_points", "Points in each collection.", ["collection"]
)
STORAGE_BYTES = Gauge(
    "lodestar_vector_storage_bytes", "Disk bytes used by each collection.", ["collection"]
)
OPTIMIZER_RUNS = Counter(
    "lodestar_vector_optimizer_runs_total",
    "Background index builds (optimizer runs) completed.",
    ["collection"],
)

ENGINE_RESTARTS = Counter(
    "lodestar_vector_engine_restarts_total",
    "Times the embedded engine's child process died on its own and was replaced.",
)


def forget_collection(name: str) -> None:
    """Drop a deleted collection's gauges, so they do not report stale sizes."""
    for gauge in (COLLECTION_POINTS, STORAGE_BYTES):
        try:
            gauge.remove(name)
        except KeyError:
            continue
