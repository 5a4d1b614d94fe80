"""The continuous-batching engine without gRPC (real model)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from lodestar.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from lodestar.services.inference.engine import (
    FinishReason,
    GenerationParams,
    InferenceEngine,
)
from lodestar.services.inference.model import LlamaModel
from tests.inference.conftest import THREADS

GREEDY = GenerationParams(
    max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0
)
LONG = GenerationParams(
    max_tokens=400, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0
)


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def small_engine(model: LlamaModel) -> InferenceEngine:
    return InferenceEngine(
        model, context_size=256, max_concurrent_sequences=1, max_queue_length=1, threads=THREADS
    )


async def test_cancelling_a_queued_request_frees_its_place_at_once(
    small_engine: InferenceEngine, engine: InferenceEngine
) -> None:
    prompt = small_engine.tokenize("Count to one hundred:")
    try:
        running = small_engine.stream(prompt, LONG)
        await running.__anext__()
        queued = small_engine.stream(prompt, GREEDY)
        with pytest.raises(ResourceExhausted):
            small_engine.stream(prompt, GREEDY)
        queued.cancel()
        replacement = small_engine.stream(prompt, GREEDY)
        running.cancel()
        result = await replacement.collect()
        assert result.completion.finish_reason is FinishReason.LENGTH
        assert result.text == (await engine.generate(prompt, GREEDY)).text
    finally:
        await small_engine.aclose()


async def test_closing_the_engine_ends_running_generations_as_cancelled(
    small_engine: InferenceEngine,
) -> None:
    prompt = small_engine.tokenize(small_engine.render_chat([("user", "Tell me a long story.")]))
    stream = small_engine.stream(prompt, LONG)
    first = await stream.__anext__()
    assert first.completion is None
    await small_engine.aclose()
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].completion is not None
    assert chunks[-1].completion.finish_reason is FinishReason.CANCELLED
    with pytest.raises(Unavailable):
        small_engine.stream(small_engine.tokenize("Hello"), GREEDY)


async def test_length_limit_of_the_context_ends_with_length(model: LlamaModel) -> None:
    engine = InferenceEngine(model, context_size=256, max_concurrent_sequences=1, threads=THREADS)
    try:
        # A long prompt, so that the context fills after a few dozen generated tokens.
        notes = "The dragon slept in the mountain. " * 22
        prompt = engine.tokenize(engine.render_chat([("user", f"{notes}Continue the story.")]))
        assert 180 < len(prompt) < engine.context_size - 20
        result = await engine.generate(prompt, LONG)
        assert result.completion.finish_reason is FinishReason.LENGTH
        assert result.completion.usage.total_tokens == engine.context_size
        with pytest.raises(InvalidArgument) as raised:
            engine.stream(list(range(100, 100 + engine.context_size)), GREEDY)
        assert raised.value.field == "prompt"
        assert raised.value.reason == "PROMPT_TOO_LONG"
    finally:
        await engine.aclose()


async def test_generations_record_metrics(engine: InferenceEngine) -> None:
    tokens_before = _sample("lodestar_inference_completion_tokens_total")
    prompt_before = _sample("lodestar_inference_prompt_tokens_total")
    ttft_before = _sample("lodestar_inference_time_to_first_token_seconds_count")
    shared_steps_before = _sample("lodestar_inference_decode_batch_size_count") - _sample(
        "lodestar_inference_decode_batch_size_bucket", {"le": "1.0"}
    )
    prompts = [engine.tokenize(f"Write about {topic}.") for topic in ("cats", "dogs", "birds")]
    results = await asyncio.gather(*(engine.generate(p, GREEDY) for p in prompts))
    generated = sum(r.completion.usage.completion_tokens for r in results)
    assert _sample("lodestar_inference_completion_tokens_total") - tokens_before == generated
    assert _sample("lodestar_inference_prompt_tokens_total") - prompt_before == sum(
        map(len, prompts)
    )
    assert _sample("lodestar_inference_time_to_first_token_seconds_count") - ttft_before == 3
    shared_steps = _sample("lodestar_inference_decode_batch_size_count") - _sample(
        "lodestar_inference_decode_batch_size_bucket", {"le": "1.0"}
    )
    # Concurrent requests were decoded together: some steps advanced several sequences.
    assert shared_steps > shared_steps_before
    assert _sample("lodestar_inference_active_sequences") == 0
    assert _sample("lodestar_inference_queue_depth") == 0


async def test_prompt_and_decode_spans_belong_to_the_caller_trace(model: LlamaModel) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    engine = InferenceEngine(
        model, context_size=256, max_concurrent_sequences=1, threads=THREADS, tracer=tracer
    )
    try:
        with tracer.start_as_current_span("caller") as caller:
            result = await engine.generate(engine.tokenize("Hello there"), GREEDY)
    finally:
        await engine.aclose()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"caller", "inference.prompt", "inference.decode"} <= set(spans)
    trace_id = caller.get_span_context().trace_id
    for name in ("inference.prompt", "inference.decode"):
        span = spans[name]
        assert span.context is not None
        assert span.context.trace_id == trace_id
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
    decode = spans["inference.decode"]
    assert decode.attributes is not None
    assert (
        decode.attributes["inference.completion_tokens"]
        == result.completion.usage.completion_tokens
    )
    assert spans["inference.prompt"].end_time is not None
    assert decode.start_time is not None
    assert spans["inference.prompt"].end_time <= decode.start_time
