"""Prometheus metrics of the inference service (default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS_TOTAL = Counter(
    "lodestar_inference_requests_total",
    "Generations finished, by RPC method and finish reason (stop, length, cancelled, error).",
    ["method", "finish_reason"],
)
PROMPT_TOKENS_TOTAL = Counter(
    "lodestar_inference_prompt_tokens_total",
    "Prompt tokens of admitted requests, those taken from the prompt cache included.",
)
CACHED_PROMPT_TOKENS_TOTAL = Counter(
    "lodestar_inference_cached_prompt_tokens_total",
    "Prompt tokens taken from the prompt cache instead of being processed.",
)
COMPLETION_TOKENS_TOTAL = Counter("lodestar_inference_completion_tokens_total", "Tokens generated.")
# The two latencies OpenTelemetry's GenAI conventions define for model servers,
# under their names (gen_ai.server.time_to_first_token and
# gen_ai.server.time_per_output_token) as Prometheus spells them.
TIME_TO_FIRST_TOKEN_SECONDS = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "From a request's arrival to its first generated token (queueing included).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TIME_PER_OUTPUT_TOKEN_SECONDS = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Decode time per generated token after the first, one observation per request.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5),
)
TOKENS_PER_SECOND = Histogram(
    "lodestar_inference_tokens_per_second",
    "Decode rate of one request: tokens after the first over the time they took.",
    buckets=(1, 2.5, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000),
)
QUEUE_DEPTH = Gauge("lodestar_inference_queue_depth", "Requests waiting for a free sequence slot.")
ACTIVE_SEQUENCES = Gauge(
    "lodestar_inference_active_sequences", "Sequences holding a slot (prompt or decoding)."
)
DECODE_BATCH_SIZE = Histogram(
    "lodestar_inference_decode_batch_size",
    "Sequences advanced together by one llama_decode step.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)
