"""Typed settings from environment variables.

Every service has one settings class deriving from ``ServerSettings``, with its
own prefix (``LODESTAR_EMBEDDING_``, ``LODESTAR_VECTOR_``, ...). Logging is
configured once for the whole platform (``LODESTAR_LOG_LEVEL``, ``LODESTAR_LOG_JSON``), as is
the garbage collector (``LODESTAR_GC_THRESHOLD``) and, for the services that choose
one, the event loop (``LODESTAR_EVENT_LOOP``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lodestar.runtime.eventloop import EventLoop

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

# Shared by every service's settings (the gateway's included).
GcThreshold = Annotated[
    int,
    Field(
        ge=0,
        validation_alias=AliasChoices("LODESTAR_GC_THRESHOLD"),
        description="Allocations between young garbage collections once the service has "
        "started (startup objects are frozen out of collection); 0 keeps Python's defaults.",
    ),
]

# For the services whose ``__main__`` runs on ``runtime.eventloop`` (see which there).
EventLoopSetting = Annotated[
    EventLoop,
    Field(
        validation_alias=AliasChoices("LODESTAR_EVENT_LOOP"),
        description="Event loop of the gateway, the inference service and the vector "
        "service: uvloop, asyncio, or auto (uvloop when installed).",
    ),
]


class ServerSettings(BaseSettings):
    """Settings every gRPC service shares; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(env_prefix="LODESTAR_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server binds to.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port (0 picks a free one).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus metrics HTTP port; unset disables it."
    )
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="Seconds in-flight calls may take to finish on shutdown."
    )
    shutdown_delay_s: float = Field(
        0.0,
        ge=0,
        description="Seconds to keep serving after health turns NOT_SERVING, so load "
        "balancers stop sending traffic before the drain starts.",
    )
    log_level: LogLevel = Field(
        "INFO", validation_alias=AliasChoices("LODESTAR_LOG_LEVEL"), description="Log level."
    )
    log_json: bool = Field(
        False, validation_alias=AliasChoices("LODESTAR_LOG_JSON"), description="JSON log lines."
    )
    gc_threshold: GcThreshold = 50_000

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
