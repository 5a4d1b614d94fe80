"""The OpenAI-compatible API, driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.embedding.v1 import embedding_service_pb2_grpc as epb_grpc
from lodestar.runtime.channels import insecure_channel
from tests.flows.conftest import Stack, flows_settings
from tests.flows.harness import RunningGateway, gateway_settings, run_gateway

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


def _client(gateway: RunningGateway, *roles: str, key: str | None = None) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{gateway.url}/v1",
        api_key=key or gateway.token(*roles, sub="openai-user"),
        max_retries=0,
        timeout=60,
    )


@pytest.fixture
async def oai(gateway: RunningGateway) -> AsyncIterator[AsyncOpenAI]:
    async with _client(gateway, "user") as client:
        yield client


@pytest.fixture(scope="session")
async def models(gateway: RunningGateway) -> dict[str, str]:
    """The served model ids: generation and embedding."""
    async with _client(gateway, "user") as client:
        listed = [model.id async for model in client.models.list()]
    assert len(listed) == 2
    generation = next(m for m in listed if "SmolLM2" in m)
    embedding = next(m for m in listed if m != generation)
    return {"chat": generation, "embedding": embedding}


async def test_models_lists_what_the_token_may_use(
    gateway: RunningGateway, models: dict[str, str]
) -> None:
    async with _client(gateway, "viewer") as viewer:
        page = await viewer.models.list()
    assert [m.id for m in page.data] == [models["embedding"]]
    assert all(m.owned_by == "lodestar" and m.object == "model" for m in page.data)


async def test_chat_completion(oai: AsyncOpenAI, models: dict[str, str]) -> None:
    completion = await oai.chat.completions.create(
        model=models["chat"],
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        seed=1,
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == models["chat"]
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_streamed_chat_matches_the_whole_answer(
    oai: AsyncOpenAI, models: dict[str, str]
) -> None:
    options = {"model": models["chat"], "messages": QUESTION, "max_tokens": 16, "temperature": 0}
    whole = await oai.chat.completions.create(**options)  # type: ignore[call-overload]
    stream = await oai.chat.completions.create(  # type: ignore[call-overload]
        **options, stream=True, stream_options={"include_usage": True}
    )
    deltas: list[str] = []
    finish: list[str] = []
    usage = None
    roles = []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                deltas.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert roles == ["assistant"]
    assert "".join(deltas) == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert usage is not None
    assert whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    # The same conversation again: its prompt came from the inference prompt cache.
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1


async def test_chat_with_a_json_schema(oai: AsyncOpenAI, models: dict[str, str]) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    completion = await oai.chat.completions.create(
        model=models["chat"],
        messages=[{"role": "user", "content": "Is Paris in France? Answer in JSON."}],
        max_tokens=32,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "verdict", "schema": schema, "strict": True},
        },
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content)["answer"] in ("yes", "no")


async def test_chat_with_json_object_output(oai: AsyncOpenAI, models: dict[str, str]) -> None:
    completion = await oai.chat.completions.create(
        model=models["chat"],
        messages=[{"role": "user", "content": "Give a JSON object with a key named city."}],
        max_tokens=24,
        temperature=0,
        response_format={"type": "json_object"},
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert content.lstrip().startswith("{")


async def test_stop_sequences_end_the_answer(oai: AsyncOpenAI, models: dict[str, str]) -> None:
    options = {
        "model": models["chat"],
        "messages": [{"role": "user", "content": "Count from one to ten in words."}],
        "max_tokens": 40,
        "temperature": 0,
    }
    free = await oai.chat.completions.create(**options)  # type: ignore[call-overload]
    text = free.choices[0].message.content or ""
    words = text.split()
    assert len(words) > 3, text
    stop = words[2]
    stopped = await oai.chat.completions.create(**options, stop=[stop])  # type: ignore[call-overload]
    assert stop not in (stopped.choices[0].message.content or "")
    assert stopped.choices[0].finish_reason == "stop"


async def test_text_completion_whole_and_streamed(oai: AsyncOpenAI, models: dict[str, str]) -> None:
    options = {
        "model": models["chat"],
        "prompt": "The three primary colours are",
        "max_tokens": 8,
        "temperature": 0,
    }
    whole = await oai.completions.create(**options)  # type: ignore[call-overload]
    assert whole.object == "text_completion"
    assert whole.choices[0].text
    assert whole.usage is not None
    assert whole.usage.completion_tokens <= 8
    stream = await oai.completions.create(**options, stream=True)  # type: ignore[call-overload]
    parts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
    assert "".join(parts) == whole.choices[0].text


async def test_embeddings_match_the_embedding_service(
    oai: AsyncOpenAI, models: dict[str, str], stack: Stack
) -> None:
    texts = ["a red apple", "the stock market fell"]
    # The client asks for base64 unless told otherwise, and decodes it.
    default = await oai.embeddings.create(model=models["embedding"], input=texts)
    floats = await oai.embeddings.create(
        model=models["embedding"], input=texts, encoding_format="float"
    )
    async with insecure_channel(stack.embedding) as channel:
        direct = await epb_grpc.EmbeddingServiceStub(channel).EmbedTexts(
            epb.EmbedTextsRequest(texts=texts)
        )
    assert [d.index for d in default.data] == [0, 1]
    assert default.usage.prompt_tokens == direct.total_tokens > 0
    for index, expected in enumerate(direct.embeddings):
        want = np.asarray(expected.values, dtype=np.float32)
        for response in (default, floats):
            got = np.asarray(response.data[index].embedding, dtype=np.float32)
            assert got.shape == (384,)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    one = await oai.embeddings.create(model=models["embedding"], input="just one")
    assert len(one.data) == 1


async def test_empty_texts_are_answered_as_openai_answers_them(
    oai: AsyncOpenAI, models: dict[str, str]
) -> None:
    """OpenAI's API answers an empty message and an empty prompt (its default prompt
    is the start-of-text token), and refuses an empty list of content parts."""
    options = {"model": models["chat"], "max_tokens": 4, "temperature": 0}
    chat = await oai.chat.completions.create(
        messages=[{"role": "user", "content": ""}],
        **options,  # type: ignore[arg-type]
    )
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None
    assert chat.usage.prompt_tokens > 0
    empty = await oai.completions.create(prompt="", **options)  # type: ignore[call-overload]
    assert empty.usage is not None
    assert empty.usage.prompt_tokens == 1
    blank = await oai.completions.create(prompt="   ", **options)  # type: ignore[call-overload]
    assert blank.usage is not None
    assert blank.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError) as parts:
        await oai.chat.completions.create(
            messages=[{"role": "user", "content": []}],
            **options,  # type: ignore[arg-type]
        )
    assert parts.value.param is not None
    assert parts.value.param.startswith("messages[0].content")


async def test_a_top_p_a_32_bit_float_cannot_hold_is_refused_naming_it(
    oai: AsyncOpenAI, models: dict[str, str]
) -> None:
    """top_p is above 0 and travels as a 32-bit float: 5e-324 would arrive as 0."""
    with pytest.raises(openai.BadRequestError) as tiny:
        await oai.chat.completions.create(
            model=models["chat"], messages=QUESTION, max_tokens=1, top_p=5e-324
        )
    assert tiny.value.param == "top_p"
    smallest = await oai.chat.completions.create(
        model=models["chat"], messages=QUESTION, max_tokens=1, top_p=2.0**-149
    )
    assert smallest.choices[0].finish_reason in ("stop", "length")


async def test_errors_have_openai_shape(
    gateway: RunningGateway, oai: AsyncOpenAI, models: dict[str, str]
) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        await oai.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert unknown.value.code == "model_not_found"
    assert unknown.value.param == "model"

    with pytest.raises(openai.BadRequestError) as hot:
        await oai.chat.completions.create(
            model=models["chat"],
            messages=QUESTION,
            temperature=5,
        )
    assert hot.value.param == "temperature"
    assert hot.value.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as many:
        await oai.chat.completions.create(model=models["chat"], messages=QUESTION, n=99)
    assert many.value.param == "n"

    with pytest.raises(openai.BadRequestError) as empty:
        await oai.embeddings.create(model=models["embedding"], input=["fine", ""])
    assert empty.value.param == "input[1]"

    async with _client(gateway, key="not-a-jwt") as stranger:
        with pytest.raises(openai.AuthenticationError) as denied:
            await stranger.models.list()
    assert denied.value.code == "invalid_api_key"

    async with _client(gateway, "viewer") as viewer:
        with pytest.raises(openai.PermissionDeniedError) as forbidden:
            await viewer.chat.completions.create(model=models["chat"], messages=QUESTION)
    assert "GenerateText" in forbidden.value.message


async def test_error_body_fields(gateway: RunningGateway) -> None:
    async with gateway.client() as http:
        reply = await http.post(
            "/v1/chat/completions",
            json={"model": "x", "messages": [{"role": "function", "content": "hi"}]},
            headers=gateway.auth("user"),
        )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "messages[0].role"


async def test_the_prompt_may_not_exceed_the_context(
    oai: AsyncOpenAI, models: dict[str, str]
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await oai.completions.create(model=models["chat"], prompt="word " * 3000, max_tokens=4)
    assert raised.value.param == "prompt"
    assert raised.value.code == "context_length_exceeded"


async def test_usage_of_openai_routes_counts_tokens(
    gateway: RunningGateway, oai: AsyncOpenAI, models: dict[str, str], client: httpx.AsyncClient
) -> None:
    completion = await oai.chat.completions.create(
        model=models["chat"],
        messages=QUESTION,
        max_tokens=4,
        temperature=0,
    )
    assert completion.usage is not None
    await gateway.app.state.gateway.flows.usage.flush()
    reply = await client.get(
        "/api/v1/analytics/usage",
        params={"subject": "openai-user"},
        headers=gateway.auth("operator"),
    )
    assert reply.status_code == 200, reply.text
    rows = {row["route"]: row for row in reply.json()["usage"]}
    chat = rows["POST /v1/chat/completions"]
    assert chat["request_count"] >= 1
    assert chat["completion_tokens"] >= completion.usage.completion_tokens


async def test_a_client_that_disconnects_cancels_the_generation(
    gateway: RunningGateway, models: dict[str, str]
) -> None:
    from prometheus_client import REGISTRY

    labels = {"method": "StreamGenerateText", "finish_reason": "cancelled"}
    before = REGISTRY.get_sample_value("lodestar_inference_requests_total", labels) or 0
    body = {
        "model": models["chat"],
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 600,
        "stream": True,
    }
    async with (
        gateway.client() as http,
        http.stream(
            "POST", "/v1/chat/completions", json=body, headers=gateway.auth("user")
        ) as reply,
    ):
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break
    for _ in range(100):
        after = REGISTRY.get_sample_value("lodestar_inference_requests_total", labels) or 0
        if after > before:
            break
        await asyncio.sleep(0.05)
    assert after == before + 1


QUEUE_DEPTH = "lodestar_inference_queue_depth"
REQUESTS = "lodestar_inference_requests_total"


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels or {}) or 0


async def _until(holds: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if holds():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


async def test_keepalives_while_a_stream_waits_leave_the_openai_client_unchanged(
    stack: Stack, models: dict[str, str]
) -> None:
    """With a keep-alive interval shorter than any time to first token, a
    stream opens with keep-alive comments (and has more between slow tokens);
    the official client reads the same answer as without them."""
    settings = gateway_settings(
        stack.embedding, stack.vector, stack.inference, sse_keepalive_s=0.002
    )
    options = {"model": models["chat"], "messages": QUESTION, "max_tokens": 16, "temperature": 0}
    async with run_gateway(settings, flows_settings()) as gateway:
        async with (
            gateway.client() as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={**options, "stream": True},
                headers=gateway.auth("user"),
            ) as reply,
        ):
            assert reply.status_code == 200
            lines = [line async for line in reply.aiter_lines() if line]
        assert lines[0] == ": keep-alive"
        assert lines[-1] == "data: [DONE]"
        async with _client(gateway, "user") as client:
            whole = await client.chat.completions.create(**options)  # type: ignore[call-overload]
            stream = await client.chat.completions.create(  # type: ignore[call-overload]
                **options, stream=True
            )
            deltas = [
                chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
            ]
    assert "".join(deltas) == whole.choices[0].message.content


async def test_a_client_that_leaves_while_queued_cancels_the_generation(
    stack: Stack, models: dict[str, str]
) -> None:
    """The inference service with one sequence slot runs a long generation; a
    second one waits in its queue. Its client leaves after a keep-alive: the
    queued generation is cancelled there, before its first token."""
    settings = gateway_settings(
        stack.embedding, stack.vector, stack.small_inference, sse_keepalive_s=0.05
    )
    # Counting at temperature 0 goes on until max_tokens.
    counting = {
        "model": models["chat"],
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
    }
    queued = {**counting, "max_tokens": 8}
    cancelled = {"method": "StreamGenerateText", "finish_reason": "cancelled"}
    async with (
        run_gateway(settings, flows_settings()) as gateway,
        gateway.client() as http,
        http.stream(
            "POST", "/v1/completions", json=counting, headers=gateway.auth("user")
        ) as running,
    ):
        running_lines = running.aiter_lines()
        async for line in running_lines:
            if line.startswith("data: {"):
                break  # generating
        first_tokens = _sample("gen_ai_server_time_to_first_token_seconds_count")
        before = _sample(REQUESTS, cancelled)
        async with http.stream(
            "POST", "/v1/completions", json=queued, headers=gateway.auth("user")
        ) as waiting:
            assert waiting.status_code == 200
            assert await anext(waiting.aiter_lines()) == ": keep-alive"
            await _until(lambda: _sample(QUEUE_DEPTH) == 1, "queueing")
        await _until(lambda: _sample(REQUESTS, cancelled) > before, "the cancellation")
        await _until(lambda: _sample(QUEUE_DEPTH) == 0, "leaving the queue")
        assert _sample(REQUESTS, cancelled) == before + 1
        # Cancelled in the queue: no first token was produced for it; the
        # long generation goes on to its end.
        assert _sample("gen_ai_server_time_to_first_token_seconds_count") == first_tokens
        following = [line async for line in running_lines if line]
        assert following[-1] == "data: [DONE]"
        assert '"finish_reason":"length"' in following[-2]
