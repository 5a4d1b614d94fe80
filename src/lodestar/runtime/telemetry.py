"""OpenTelemetry tracing, configured from the standard OTEL_* variables.

Tracing is on when an exporter is named (``OTEL_TRACES_EXPORTER``: otlp or
console) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Otherwise nothing is installed, spans
are the API's no-op ones, and ``span`` skips even those. ``OTEL_SDK_DISABLED=true`` wins.
W3C traceparent is the propagation format (the API's default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Final

import grpc
from opentelemetry import trace

_log = logging.getLogger(__name__)
_state: dict[str, bool] = {"enabled": False}
_NO_SPAN: Final = nullcontext()


def tracing_requested(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(service_name: str) -> bool:
    """Install a tracer provider for this process if tracing is requested."""
    if _state["enabled"]:
        return True
    if not tracing_requested():
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    # Default resource names match the Kubernetes manifests: lodestar-<service>.
    default_name = (
        service_name if service_name.startswith("lodestar") else f"lodestar-{service_name}"
    )
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", default_name)})
    provider = TracerProvider(resource=resource)
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    for name in (e.strip() for e in exporters):
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
            )
            if protocol.strip().lower() != "grpc":
                # Only the gRPC exporter is installed; say so rather than fail quietly.
                _log.warning("OTLP protocol %r is not supported; exporting over grpc", protocol)
            exporter = OTLPSpanExporter()
        else:
            _log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _state["enabled"] = True
    _log.info("tracing enabled for %s (exporters: %s)", service_name, ",".join(exporters))
    return True


def tracing_enabled() -> bool:
    return _state["enabled"]


def shutdown_tracing() -> None:
    """Flush pending spans (called on graceful shutdown)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if _state["enabled"] and callable(shutdown):
        shutdown()


def tracing_server_interceptor() -> grpc.aio.ServerInterceptor | None:
    """The OTel gRPC server interceptor, or None when tracing is off."""
    if not _state["enabled"]:
        return None
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor()  # type: ignore[no-untyped-call]
    return interceptor


def tracing_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """OTel gRPC client interceptors (traceparent on outgoing calls), or none."""
    if not _state["enabled"]:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def span(
    tracer: trace.Tracer, name: str, attributes: Mapping[str, str | int] | None = None
) -> AbstractContextManager[object]:
    """``tracer.start_as_current_span(name)`` while this process's tracing is on
    (``configure_tracing``); otherwise one shared context that does nothing. The API's
    no-op tracer still does work for every span, which is worth saving on paths that
    run thousands of times a second (searches). For the tracers of ``tracer``: one handed
    in from elsewhere (a test's own provider) records only while tracing is on."""
    if not _state["enabled"]:
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes)
