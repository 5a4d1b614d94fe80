"""The continuous-batching engine without gRPC (real model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from lodestar.runtime.errors import InvalidArgument, ResourceExhausted, Unavailable
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.generation import FinishReason, GenerationParams
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
    ttft_before = _sample("gen_ai_server_time_to_first_token_seconds_count")
    tpot_before = _sample("gen_ai_server_time_per_output_token_seconds_count")
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
    assert _sample("gen_ai_server_time_to_first_token_seconds_count") - ttft_before == 3
    decoded = sum(1 for r in results if r.completion.usage.completion_tokens > 1)
    tpot = _sample("gen_ai_server_time_per_output_token_seconds_count") - tpot_before
    assert tpot == decoded
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


# -- the prompt cache --------------------------------------------------------------------

SYSTEM = "You are a concise assistant who answers questions about geography and history."
CACHE_GREEDY = GenerationParams(
    max_tokens=32, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0
)


def _chat(engine: InferenceEngine, *turns: tuple[str, str]) -> list[int]:
    return engine.tokenize(engine.render_chat([("system", SYSTEM), *turns]))


def _shared_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


@pytest.fixture
async def cached_engine(model: LlamaModel) -> AsyncIterator[InferenceEngine]:
    engine = InferenceEngine(
        model, context_size=256, max_concurrent_sequences=2, batch_size=16, threads=THREADS
    )
    yield engine
    await engine.aclose()


@pytest.fixture
async def uncached_engine(model: LlamaModel) -> AsyncIterator[InferenceEngine]:
    engine = InferenceEngine(
        model,
        context_size=256,
        max_concurrent_sequences=2,
        batch_size=16,
        threads=THREADS,
        prompt_cache=False,
    )
    yield engine
    await engine.aclose()


async def test_a_repeated_prompt_comes_from_the_cache_and_gives_the_same_text(
    cached_engine: InferenceEngine,
) -> None:
    prompt = _chat(cached_engine, ("user", "What is the capital of France?"))
    cached_before = _sample("lodestar_inference_cached_prompt_tokens_total")
    prompt_before = _sample("lodestar_inference_prompt_tokens_total")
    first = await cached_engine.generate(prompt, CACHE_GREEDY)
    second = await cached_engine.generate(prompt, CACHE_GREEDY)
    assert first.completion.usage.cached_tokens == 0
    # Everything but the last prompt token, which is decoded again for its logits.
    assert second.completion.usage.cached_tokens == len(prompt) - 1
    assert second.text == first.text
    assert second.completion.usage.completion_tokens == first.completion.usage.completion_tokens
    assert (
        _sample("lodestar_inference_cached_prompt_tokens_total") - cached_before == len(prompt) - 1
    )
    assert _sample("lodestar_inference_prompt_tokens_total") - prompt_before == 2 * len(prompt)


async def test_a_shared_prefix_gives_what_an_engine_without_the_cache_gives(
    cached_engine: InferenceEngine, uncached_engine: InferenceEngine
) -> None:
    question = ("user", "What is the capital of France?")
    first = _chat(cached_engine, question)
    answer = await cached_engine.generate(first, CACHE_GREEDY)
    other = _chat(cached_engine, ("user", "Name three rivers in Europe."))
    follow_up = _chat(
        cached_engine, question, ("assistant", answer.text), ("user", "And of Spain?")
    )
    cached_tokens = []
    for prompt in (follow_up, other):
        cached = await cached_engine.generate(prompt, CACHE_GREEDY)
        fresh = await uncached_engine.generate(prompt, CACHE_GREEDY)
        assert fresh.completion.usage.cached_tokens == 0
        assert cached.text == fresh.text
        cached_tokens.append(cached.completion.usage.cached_tokens)
    # The follow-up reused the earlier prompt and answer; the other question the system
    # prompt (from the same slot: it shares more with it than with the empty one).
    assert cached_tokens[0] > len(first)
    assert cached_tokens[1] == _shared_prefix(other, follow_up) > 0
    other_result = await cached_engine.generate(other, CACHE_GREEDY)
    assert other_result.completion.usage.cached_tokens == len(other) - 1


async def test_a_request_takes_the_free_slot_that_caches_most_of_its_prompt(
    cached_engine: InferenceEngine,
) -> None:
    france = _chat(cached_engine, ("user", "What is the capital of France?"))
    rivers = _chat(cached_engine, ("user", "Name three rivers in Europe."))
    shared = _shared_prefix(france, rivers)
    assert 0 < shared < len(rivers) - 1
    await cached_engine.generate(france, CACHE_GREEDY)
    second = await cached_engine.generate(rivers, CACHE_GREEDY)
    # The empty slot was the least recently used one, but the other shares a prefix.
    assert second.completion.usage.cached_tokens == shared
    together = [cached_engine.generate(p, CACHE_GREEDY) for p in (rivers, france)]
    first_pair = await asyncio.gather(*together)
    # Rivers finds its own slot again; France gets the empty one.
    assert [r.completion.usage.cached_tokens for r in first_pair] == [len(rivers) - 1, 0]
    together = [cached_engine.generate(p, CACHE_GREEDY) for p in (rivers, france)]
    second_pair = await asyncio.gather(*together)
    assert [r.completion.usage.cached_tokens for r in second_pair] == [
        len(rivers) - 1,
        len(france) - 1,
    ]
    assert [r.text for r in second_pair] == [r.text for r in first_pair]


async def test_a_cancelled_generation_leaves_a_usable_cache(
    cached_engine: InferenceEngine, uncached_engine: InferenceEngine
) -> None:
    prompt = _chat(cached_engine, ("user", "Tell me a long story about the sea."))
    stream = cached_engine.stream(prompt, LONG)
    await stream.__anext__()
    stream.cancel()
    cached = await cached_engine.generate(prompt, CACHE_GREEDY)
    fresh = await uncached_engine.generate(prompt, CACHE_GREEDY)
    assert cached.completion.usage.cached_tokens == len(prompt) - 1
    assert cached.text == fresh.text
