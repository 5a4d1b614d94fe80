"""Prometheus metrics of the embedding service (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TEXTS_TOTAL = Counter("lodestar_embedding_texts_total", "Texts embedded.")
BATCH_SIZE = Histogram(
    "lodestar_embedding_batch_size",
    "Texts per forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
BATCH_DURATION_SECONDS = Histogram(
    "lodestar_embedding_batch_duration_seconds",
    "Time of one forward pass, from hand-off to the worker thread to its result.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("lodestar_embedding_queue_depth", "Texts waiting for a forward pass.")
