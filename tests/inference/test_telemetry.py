"""Generation spans follow OpenTelemetry's GenAI conventions (checked with the
SDK's in-memory exporter): ``{operation} {model}``, the request's model and
options, the token usage and the finish reasons."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.runtime import genai
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.servicer import InferenceServicer


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    monkeypatch.setattr(genai, "tracing_enabled", lambda: True)
    return InMemorySpanExporter()


def _servicer(engine: InferenceEngine, exporter: InMemorySpanExporter) -> InferenceServicer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return InferenceServicer(engine, tracer=provider.get_tracer("test"))


async def test_a_chat_generation_is_one_genai_span(
    engine: InferenceEngine, exporter: InMemorySpanExporter
) -> None:
    servicer = _servicer(engine, exporter)
    request = pb.GenerateTextRequest(
        messages=[pb.ChatMessage(role=pb.ROLE_USER, content="Say hi.")],
        sampling=pb.SamplingOptions(max_tokens=4, temperature=0),
    )
    response = await servicer.GenerateText(request, None)  # type: ignore[arg-type]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    model = response.model
    span = spans[f"chat {model}"]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == model
    assert attributes["gen_ai.response.model"] == model
    assert attributes["gen_ai.request.max_tokens"] == 4
    assert attributes["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == response.usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)


async def test_a_streamed_completion_is_one_genai_span(
    engine: InferenceEngine, exporter: InMemorySpanExporter
) -> None:
    servicer = _servicer(engine, exporter)
    request = pb.StreamGenerateTextRequest(
        prompt="Once upon a time", sampling=pb.SamplingOptions(max_tokens=3)
    )
    stream: AsyncIterator[pb.StreamGenerateTextResponse] = servicer.StreamGenerateText(
        request,
        None,  # type: ignore[arg-type]
    )
    last = [chunk async for chunk in stream][-1]
    (span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("text_completion ")]
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.usage.output_tokens"] == last.usage.completion_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ("length",)
