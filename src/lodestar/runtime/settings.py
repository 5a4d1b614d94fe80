"""Typed settings from environment variables.

Every service has one settings class deriving from ``ServiceSettings`` (the gRPC
services through ``ServerSettings``), with its own prefix (``LODESTAR_EMBEDDING_``,
``LODESTAR_VECTOR_``, ...). What the process bootstrap (``runtime.process``) reads is
declared here once, each under one variable for the whole platform:
``LODESTAR_LOG_LEVEL``, ``LODESTAR_LOG_JSON``, ``LODESTAR_EVENT_LOOP`` and
``LODESTAR_GC_THRESHOLD``; the gRPC keepalive interval that clients and servers
share, ``LODESTAR_GRPC_KEEPALIVE_S`` (``runtime.keepalive``); the certificates of every
gRPC hop, ``LODESTAR_GRPC_TLS_*`` (``runtime.tls``); and, for the gRPC services, how
tokens are verified (``auth.settings``, the gateway's variables) and whether a call
needs one, ``LODESTAR_GRPC_REQUIRE_TOKEN``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from lodestar.auth.settings import TokenSettings
from lodestar.runtime.eventloop import EventLoop
from lodestar.runtime.keepalive import KeepaliveSettings
from lodestar.runtime.tls import TlsSettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

# Annotated so that a service can change the default and keep the variable and its
# description (the embedding service runs the standard loop unless told otherwise).
EventLoopSetting = Annotated[
    EventLoop,
    Field(
        validation_alias=AliasChoices("LODESTAR_EVENT_LOOP"),
        description="Event loop of every service: uvloop, asyncio, or auto (uvloop when "
        "installed; the embedding service, whose time goes to its model, runs asyncio "
        "unless this is set). Set asyncio to rule uvloop out when diagnosing a fault.",
    ),
]


class ServiceSettings(KeepaliveSettings, TlsSettings):
    """What every service process shares: its address, its drain, what the
    bootstrap sets up (logging, event loop, garbage collector), the keepalive
    interval and the certificates of its gRPC connections; subclasses set
    ``env_prefix`` and their own port."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_", extra="ignore", frozen=True)

    host: str = Field(
        "127.0.0.1",
        description="Address the server binds to; 0.0.0.0 in a container, so that other "
        "hosts can reach it.",
    )
    port: int = Field(0, ge=0, le=65535, description="Port (0 picks a free one).")
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="Seconds in-flight calls (streams included) may take to finish after "
        "SIGTERM; raise it when answers take longer, keeping it below the orchestrator's "
        "own grace period (Kubernetes' terminationGracePeriodSeconds).",
    )
    log_level: LogLevel = Field(
        "INFO",
        validation_alias=AliasChoices("LODESTAR_LOG_LEVEL"),
        description="Log level of every service; DEBUG while tracking a fault down.",
    )
    log_json: bool = Field(
        False,
        validation_alias=AliasChoices("LODESTAR_LOG_JSON"),
        description="One JSON object a log line, for a log collector; plain text otherwise.",
    )
    event_loop: EventLoopSetting = "auto"
    gc_threshold: int = Field(
        50_000,
        ge=0,
        validation_alias=AliasChoices("LODESTAR_GC_THRESHOLD"),
        description="Allocations between young garbage collections once a service has "
        "started (what exists then is frozen out of collection); 0 keeps Python's "
        "defaults. Lower it only if memory grows with cyclic garbage between collections.",
    )

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable that sets ``field``: its alias where it has one, else
        the class's prefix and the field's name."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
            return alias.choices[0]
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    def listen_ports(self) -> dict[str, int]:
        """The ports this process listens on (on ``host``), by the field that sets each;
        0 (a free port) is left out, since it cannot be taken."""
        return {"port": self.port} if self.port else {}


class ServerSettings(ServiceSettings, TokenSettings):
    """What every gRPC service shares besides: the metrics endpoint, the pause
    between NOT_SERVING and the drain, and the tokens its calls carry."""

    port: int = Field(0, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics HTTP port; unset disables it."
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="Seconds to keep serving after health turns NOT_SERVING on SIGTERM, so "
        "that load balancers stop sending traffic before the drain starts; set it to a few "
        "probe periods behind a load balancer that follows gRPC health.",
    )

    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Plaintext port serving only the gRPC health service, beside a TLS "
        "port: for Kubernetes' gRPC probes, which cannot speak TLS. Unset: health is "
        "served on the gRPC port alone.",
    )
    require_token: bool = Field(
        False,
        validation_alias=AliasChoices("LODESTAR_GRPC_REQUIRE_TOKEN"),
        description="Refuse (UNAUTHENTICATED) every call without a bearer token, as the "
        "gateway refuses REST requests; a call that carries one is checked whether or "
        "not this is set. Turn it on wherever anyone but the platform's own processes "
        "can reach a service (the gateway forwards its callers' tokens).",
    )

    def listen_ports(self) -> dict[str, int]:
        ports = super().listen_ports()
        if self.metrics_port:
            ports["metrics_port"] = self.metrics_port
        if self.health_port:
            ports["health_port"] = self.health_port
        return ports

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
