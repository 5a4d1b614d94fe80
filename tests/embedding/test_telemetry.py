"""An embedding call is one span of OpenTelemetry's GenAI conventions (checked
with the SDK's in-memory exporter): ``embeddings {model}`` with the model and
the input tokens."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lodestar.embedding.v1 import embedding_service_pb2 as pb
from lodestar.runtime import genai
from lodestar.services.embedding.engine import EmbeddingEngine
from lodestar.services.embedding.servicer import EmbeddingServicer


async def test_an_embedding_call_is_one_genai_span(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(genai, "tracing_enabled", lambda: True)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    servicer = EmbeddingServicer(
        engine,
        max_batch_size=8,
        max_wait_s=0.001,
        max_texts_per_request=8,
        max_text_chars=1000,
        tracer=provider.get_tracer("test"),
    )
    try:
        response = await servicer.EmbedTexts(
            pb.EmbedTextsRequest(texts=["a red planet", "a blue ocean"]),
            None,  # type: ignore[arg-type]
        )
    finally:
        await servicer.batcher.close()
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("embeddings ")]
    attributes = dict(span.attributes or {})
    assert span.name == f"embeddings {response.model}"
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.request.model"] == response.model
    assert attributes["gen_ai.usage.input_tokens"] == response.total_tokens > 0
