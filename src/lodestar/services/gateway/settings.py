"""Gateway settings, from ``LODESTAR_GATEWAY_*`` environment variables.

The gateway serves HTTP rather than gRPC: its settings derive from
``ServiceSettings`` (what every service process shares) rather than ``ServerSettings``.

Lists (backend addresses, JWT algorithms) are comma-separated; mappings (the
role table, rate limits) are JSON objects, e.g.
``LODESTAR_GATEWAY_ROLES='{"reader": ["SearchVectors"]}'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from lodestar import limits
from lodestar.auth.settings import DEVELOPMENT_SIGNING_KEY as DEVELOPMENT_SIGNING_KEY
from lodestar.auth.settings import TokenSettings
from lodestar.runtime.settings import ServiceSettings
from lodestar.services.gateway.discovery import parse_target
from lodestar.services.gateway.ratelimit import RouteClass

_DEFAULT_REQUESTS_PER_MINUTE: dict[RouteClass, int] = {
    RouteClass.GENERATE: 120,
    RouteClass.READ: 3000,
    RouteClass.WRITE: 1200,
    RouteClass.ADMIN: 120,
}
_DEFAULT_DEADLINES_S: dict[RouteClass, float] = {
    RouteClass.GENERATE: 300.0,
    RouteClass.READ: 10.0,
    RouteClass.WRITE: 60.0,
    RouteClass.ADMIN: 300.0,
}


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


Addresses = Annotated[tuple[str, ...], NoDecode]


class GatewaySettings(ServiceSettings, TokenSettings):
    """Everything the gateway reads from its environment; how tokens are verified
    (``TokenSettings``) it shares with the gRPC services."""

    model_config = SettingsConfigDict(
        env_prefix="LODESTAR_GATEWAY_", extra="ignore", frozen=True, populate_by_name=True
    )

    port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="HTTP port (0 picks a free one); change it where 8080 is taken.",
    )

    embedding_addresses: Addresses = Field(
        ("127.0.0.1:50051",),
        description="Embedding service replicas, comma-separated host:port; set it to "
        "where the embedding service runs (every replica, when there are several). "
        "dns:///name:port (or dns://DNS-SERVER-IP/name:port) stands for every address the "
        "name resolves to, re-resolved every few seconds: give a headless Service so that "
        "calls spread over every ready pod and follow scaling.",
    )
    vector_addresses: Addresses = Field(
        ("127.0.0.1:50052",),
        description="Vector service replicas (which also serve analytics), comma-separated "
        "host:port or dns:///name:port (see embedding_addresses); set it to where the "
        "vector service runs.",
    )
    inference_addresses: Addresses = Field(
        ("127.0.0.1:50053",),
        description="Inference service replicas, comma-separated host:port or "
        "dns:///name:port (see embedding_addresses); set it to where the inference service "
        "runs.",
    )

    deadlines_s: dict[RouteClass, float] = Field(
        default_factory=lambda: dict(_DEFAULT_DEADLINES_S),
        description="Default deadline in seconds per route class (generate, read, write, "
        "admin), JSON; raise generate's for long generations on slow hardware. A client's "
        "X-Request-Timeout or grpc-timeout header can only shorten it.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (413 above); raise it for clients that "
        "insert larger batches of points in one request.",
    )

    service_token_file: Path | None = Field(
        None,
        description="File holding the gateway's own bearer token (from your identity "
        "provider; re-read when it changes) for what it does on its own authority (usage "
        "records, the collection a generation stores into, feedback scores, the flows' private "
        "stores); it needs AdministerSystem, ManageCollections, SearchVectors, InsertVectors, "
        "UpdateVectors and DeleteVectors. Unset: with the HS256 key "
        "the gateway signs one itself.",
    )

    requests_per_minute: dict[RouteClass, int] = Field(
        default_factory=lambda: dict(_DEFAULT_REQUESTS_PER_MINUTE),
        description="Requests per minute per subject and route class (generate, read, "
        "write, admin), JSON; 0 disables a class's limit. Set it to what one client may "
        "fairly use of your deployment.",
    )
    generated_tokens_per_minute: int = Field(
        60_000,
        ge=0,
        description="Generated tokens per minute per subject; 0 disables it. Set it to "
        "the share of the inference service's throughput one client may use.",
    )
    rate_limit_window_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Window the rate limits refill over, in seconds: a subject may use a "
        "whole window's allowance at once, then it refills evenly. The limits are per minute "
        "at the default 60; lower it to allow shorter bursts.",
    )
    redis_url: str = Field(
        "",
        description="Redis URL for rate-limit state shared by gateway replicas "
        "(e.g. redis://redis:6379/0); empty keeps it in memory, per replica. Set it when "
        "the gateway runs more than one replica.",
    )
    redis_key_prefix: str = Field(
        "lodestar:ratelimit:",
        description="Prefix of the rate limits' Redis keys; give each deployment its own "
        "when several share one Redis, so that their limits stay apart.",
    )

    breaker_failure_threshold: int = Field(
        5,
        ge=1,
        description="Consecutive failures that open a replica's circuit breaker; raise it "
        "where a backend's network drops calls now and then without the replica being down.",
    )
    breaker_open_s: float = Field(
        5.0,
        gt=0,
        description="Seconds a breaker stays open before a half-open health probe; lower it "
        "to bring a restarted replica back into use sooner, raise it to probe a failing one "
        "less often.",
    )

    sse_keepalive_s: float = Field(
        15.0,
        gt=0,
        description="Seconds a streamed answer (Server-Sent Events of /api/v1/generate and "
        "the OpenAI routes) may stay silent, queued or between tokens, before the gateway "
        "sends a keep-alive comment; it also bounds how long a stream's HTTP status waits "
        "for the first token. Keep it below the idle timeout of every proxy and load "
        "balancer in front of the gateway (often 60 s).",
    )

    embed_batch_size: int = Field(
        limits.DEFAULT_TEXTS_PER_EMBED_CALL,
        ge=1,
        description="Most texts sent to the embedding service in one call; keep it at most "
        "the embedding service's LODESTAR_EMBEDDING_MAX_TEXTS_PER_REQUEST when that is changed.",
    )
    document_max_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Largest document accepted by the documents API (413 above); at most "
        "max_body_bytes, which bounds every request body.",
    )
    document_job_threshold_bytes: int = Field(
        256 * 1024,
        ge=0,
        description="Uploads larger than this are written by a background job (202 with a "
        "job id) rather than within the request; lower it where clients time out waiting.",
    )
    document_jobs_per_process: int = Field(
        2,
        ge=0,
        description="Document jobs this gateway (or a lodestar worker) runs at once. With "
        "Redis, 0 on the gateways leaves queued jobs to lodestar worker processes.",
    )
    document_job_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Longest a document job may run; with Redis, a job whose worker died is "
        "run again by another worker this long (plus 10 s) after it started.",
    )
    store_text_key: str = Field(
        "text",
        description="Payload key that keeps the text of a point inserted by text (empty: "
        "the text is not stored); change it if your payloads use `text` for something else.",
    )

    metrics_public: bool = Field(
        False,
        description="Serve GET /metrics without a token (for scrapers on a trusted network); "
        "otherwise it needs the ViewMetrics permission. Set it when Prometheus scrapes "
        "the gateway without a token.",
    )
    docs_enabled: bool = Field(
        True,
        description="Serve the interactive API docs at /docs; turn it off to keep the API's "
        "description from the public.",
    )
    access_log: bool = Field(
        True,
        description="Log one line per request; turn it off where a proxy in front of the "
        "gateway already logs each request.",
    )

    @field_validator(
        "embedding_addresses",
        "vector_addresses",
        "inference_addresses",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("embedding_addresses", "vector_addresses", "inference_addresses")
    @classmethod
    def _at_least_one(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("give at least one host:port address")
        for address in value:
            if parse_target(address) is not None:
                continue
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{address!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _complete_tables(self) -> GatewaySettings:
        # A partial JSON override keeps the defaults of the classes it leaves out.
        for name, defaults in (
            ("deadlines_s", _DEFAULT_DEADLINES_S),
            ("requests_per_minute", _DEFAULT_REQUESTS_PER_MINUTE),
        ):
            table: dict[RouteClass, Any] = getattr(self, name)
            missing = {k: v for k, v in defaults.items() if k not in table}
            if missing:
                object.__setattr__(self, name, {**missing, **table})
        if any(v <= 0 for v in self.deadlines_s.values()):
            raise ValueError("deadlines_s values must be positive")
        if any(v < 0 for v in self.requests_per_minute.values()):
            raise ValueError("requests_per_minute values must be >= 0")
        return self

    def deadline_for(self, route_class: RouteClass) -> float:
        return self.deadlines_s[route_class]
