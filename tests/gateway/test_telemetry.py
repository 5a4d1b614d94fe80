"""The gateway's HTTP server spans follow OpenTelemetry's HTTP conventions:
named ``{method} {route template}``, with the route, the status and, for a
failure, ``error.type`` (checked with the SDK's in-memory exporter)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from lodestar.services.gateway import middleware
from lodestar.services.gateway.errors import install_error_handlers
from lodestar.services.gateway.middleware import GatewayMiddleware


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.setattr(middleware, "tracing_enabled", lambda: True)
    spans = InMemorySpanExporter()
    yield spans
    spans.clear()


def _app(exporter: InMemorySpanExporter) -> FastAPI:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("boom")

    app.add_middleware(
        GatewayMiddleware,  # type: ignore[arg-type]
        max_body_bytes=1024,
        access_log=False,
        tracer=provider.get_tracer("test"),
    )
    return app


async def _spans(exporter: InMemorySpanExporter, path: str) -> list[ReadableSpan]:
    transport = httpx.ASGITransport(app=_app(exporter), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        await client.get(path)
    return list(exporter.get_finished_spans())


async def test_a_server_span_is_named_for_the_route_template(
    exporter: InMemorySpanExporter,
) -> None:
    (span,) = await _spans(exporter, "/items/7")
    assert span.name == "GET /items/{item_id}"
    assert span.kind is SpanKind.SERVER
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == "/items/{item_id}"
    assert attributes["http.request.method"] == "GET"
    assert attributes["url.path"] == "/items/7"
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes


async def test_a_failed_request_has_an_error_type(exporter: InMemorySpanExporter) -> None:
    (span,) = await _spans(exporter, "/broken")
    attributes = dict(span.attributes or {})
    assert span.name == "GET /broken"
    assert attributes["http.response.status_code"] == 500
    assert attributes["error.type"] == "RuntimeError"
    assert span.status.status_code is StatusCode.ERROR


async def test_an_unmatched_path_is_named_for_the_method_alone(
    exporter: InMemorySpanExporter,
) -> None:
    (span,) = await _spans(exporter, "/nowhere")
    attributes = dict(span.attributes or {})
    assert span.name == "GET"
    assert "http.route" not in attributes
    assert attributes["http.response.status_code"] == 404
