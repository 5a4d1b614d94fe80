"""OpenAI parity beyond plain chat: tool calling, log probabilities, ``n``
choices, model retrieval, error vocabulary and rate-limit headers, driven by
the official ``openai`` client. Every body is checked against the client's own
response models in strict mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from openai.types import Completion, Model
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.flows.harness import RunningGateway
from tests.flows.test_openai import _client

WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 1000},
                "b": {"type": "integer", "minimum": 0, "maximum": 1000},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather like in Paris?"}
]


@pytest.fixture
async def oai(gateway: RunningGateway) -> AsyncIterator[AsyncOpenAI]:
    async with _client(gateway, "user") as client:
        yield client


@pytest.fixture(scope="module")
async def chat_model(gateway: RunningGateway) -> str:
    async with _client(gateway, "user") as client:
        listed = [m.id async for m in client.models.list()]
    return next(m for m in listed if "SmolLM2" in m)


async def _chat(oai: AsyncOpenAI, **options: Any) -> tuple[ChatCompletion, dict[str, str]]:
    """A chat completion validated strictly by the client's model, and its headers."""
    raw = await oai.chat.completions.with_raw_response.create(**options)
    parsed = raw.parse()
    strict = ChatCompletion.model_validate(raw.http_response.json(), strict=True)
    assert strict == parsed
    return strict, dict(raw.http_response.headers)


async def _chunks(oai: AsyncOpenAI, **options: Any) -> list[ChatCompletionChunk]:
    """A streamed chat completion's chunks, each validated strictly from its raw event."""
    chunks: list[ChatCompletionChunk] = []
    async with oai.chat.completions.with_streaming_response.create(**options, stream=True) as raw:
        lines = [line async for line in raw.iter_lines()]
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(ChatCompletionChunk.model_validate(json.loads(line[6:]), strict=True))
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
    return chunks


async def test_required_tool_choice_returns_a_valid_call(oai: AsyncOpenAI, chat_model: str) -> None:
    completion, _ = await _chat(
        oai,
        model=chat_model,
        messages=ASK_WEATHER,
        tools=[WEATHER, ADD],
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(arguments) == {"city"}
        assert isinstance(arguments["city"], str)
    else:
        assert call.function.name == "add"
        assert set(arguments) == {"a", "b"}
        assert all(isinstance(v, int) and 0 <= v <= 1000 for v in arguments.values())


async def test_a_named_function_is_the_one_called(oai: AsyncOpenAI, chat_model: str) -> None:
    completion, _ = await _chat(
        oai,
        model=chat_model,
        messages=[{"role": "user", "content": "What is 2 plus 3?"}],
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "function": {"name": "add"}},
        temperature=0,
        max_tokens=60,
    )
    calls = completion.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].function.name == "add"
    arguments = json.loads(calls[0].function.arguments)
    assert isinstance(arguments["a"], int)
    assert isinstance(arguments["b"], int)


async def test_a_streamed_tool_call_assembles_to_the_unary_one(
    oai: AsyncOpenAI, chat_model: str
) -> None:
    options: dict[str, Any] = {
        "model": chat_model,
        "messages": ASK_WEATHER,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 60,
    }
    whole, _ = await _chat(oai, **options)
    expected = whole.choices[0].message.tool_calls
    assert expected is not None
    chunks = await _chunks(oai, **options)
    deltas = [d for c in chunks for choice in c.choices for d in choice.delta.tool_calls or ()]
    # The name comes first and alone; the arguments follow in several pieces.
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    assert deltas[0].id is not None
    assert len(deltas) > 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # The client's own stream helper assembles the deltas into the same call.
    async with oai.chat.completions.stream(**options) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == json.loads(expected[0].function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_auto_and_none_tool_choices(oai: AsyncOpenAI, chat_model: str) -> None:
    auto, _ = await _chat(
        oai, model=chat_model, messages=ASK_WEATHER, tools=[WEATHER], temperature=0, max_tokens=40
    )
    message = auto.choices[0].message
    if message.tool_calls:
        assert auto.choices[0].finish_reason == "tool_calls"
        assert json.loads(message.tool_calls[0].function.arguments)["city"]
    else:
        assert message.content
        assert not message.content.startswith("{")
    none, _ = await _chat(
        oai,
        model=chat_model,
        messages=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=12,
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content


async def test_tool_results_in_the_history(oai: AsyncOpenAI, chat_model: str) -> None:
    history: list[ChatCompletionMessageParam] = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 degrees."},
    ]
    completion, _ = await _chat(
        oai,
        model=chat_model,
        messages=history,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=24,
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 40


async def test_chat_logprobs_unary_and_streamed(oai: AsyncOpenAI, chat_model: str) -> None:
    options: dict[str, Any] = {
        "model": chat_model,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "temperature": 0,
        "max_tokens": 8,
        "logprobs": True,
        "top_logprobs": 3,
    }
    completion, _ = await _chat(oai, **options)
    choice = completion.choices[0]
    assert choice.logprobs is not None
    assert choice.logprobs.content
    entries = choice.logprobs.content
    assert completion.usage is not None
    assert len(entries) == completion.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy decoding takes the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes or []).decode("utf-8", errors="replace") == entry.token
    chunks = await _chunks(oai, **options)
    streamed = [
        e for c in chunks for ch in c.choices if ch.logprobs for e in ch.logprobs.content or ()
    ]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in entries
    ]


async def test_completion_logprobs(oai: AsyncOpenAI, chat_model: str) -> None:
    raw = await oai.completions.with_raw_response.create(
        model=chat_model, prompt="The sky is", max_tokens=6, temperature=0, logprobs=2
    )
    completion = Completion.model_validate(raw.http_response.json(), strict=True)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens
    assert logprobs.token_logprobs
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert logprobs.text_offset == [
        sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))
    ]
    assert logprobs.top_logprobs is not None
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    # Streamed with two choices: each chunk is a text_completion, the tokens add up.
    async with oai.completions.with_streaming_response.create(
        model=chat_model,
        prompt="The sky is",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        n=2,
        stream=True,
    ) as raw:
        events = [line[6:] async for line in raw.iter_lines() if line.startswith("data: {")]
    tokens: dict[int, list[str]] = {0: [], 1: []}
    for data in events:
        body = json.loads(data)
        # OpenAI streams "finish_reason": null until the last chunk, which the client's
        # Completion model does not allow (its stream builds chunks unvalidated): every
        # other field is checked strictly.
        for choice in body["choices"]:
            choice["finish_reason"] = choice["finish_reason"] or "length"
        chunk = Completion.model_validate(body, strict=True)
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.tokens:
                tokens[choice.index] += choice.logprobs.tokens
    assert tokens[0] == tokens[1] == logprobs.tokens


async def test_n_choices_unary_and_streamed(oai: AsyncOpenAI, chat_model: str) -> None:
    options: dict[str, Any] = {
        "model": chat_model,
        "messages": [{"role": "user", "content": "Write a short sentence about cats."}],
        "temperature": 1.0,
        "seed": 7,
        "max_tokens": 12,
        "n": 3,
    }
    completion, _ = await _chat(oai, **options)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content for c in completion.choices]
    assert all(texts)
    assert len(set(texts)) > 1
    chunks = await _chunks(oai, **options, stream_options={"include_usage": True})
    streamed: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    # Same seeds, same choices, whether streamed or not.
    assert [streamed[i] for i in range(3)] == texts
    assert set(finished) == {0, 1, 2}
    usage = chunks[-1].usage
    assert usage is not None
    assert completion.usage is not None
    assert usage.completion_tokens == completion.usage.completion_tokens


async def test_a_model_can_be_retrieved(gateway: RunningGateway, chat_model: str) -> None:
    async with _client(gateway, "user") as user:
        raw = await user.models.with_raw_response.retrieve(chat_model)
        model = Model.model_validate(raw.http_response.json(), strict=True)
        assert model.id == chat_model
        assert model.owned_by == "lodestar"
        with pytest.raises(openai.NotFoundError) as missing:
            await user.models.retrieve("gpt-4o")
        assert missing.value.code == "model_not_found"
    async with _client(gateway, "viewer") as viewer:
        with pytest.raises(openai.NotFoundError):
            await viewer.models.retrieve(chat_model)


async def test_rate_limit_headers(oai: AsyncOpenAI, chat_model: str) -> None:
    _, headers = await _chat(
        oai, model=chat_model, messages=ASK_WEATHER, max_tokens=2, temperature=0
    )
    assert int(headers["x-ratelimit-limit-requests"]) == 100_000
    assert 0 <= int(headers["x-ratelimit-remaining-requests"]) < 100_000
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert int(headers["x-ratelimit-limit-tokens"]) == 10_000_000
    assert int(headers["x-ratelimit-remaining-tokens"]) > 0


async def test_values_that_cannot_be_honoured_name_their_parameter(
    oai: AsyncOpenAI, chat_model: str
) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"presence_penalty": 1.0}, "presence_penalty", "unsupported_value"),
        ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "invalid_value",
        ),
        (
            {"tools": [WEATHER], "response_format": {"type": "json_object"}},
            "response_format",
            "unsupported_value",
        ),
        ({"n": 9}, "n", "invalid_value"),
    ]
    for extra, param, code in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(
                model=chat_model, messages=ASK_WEATHER, max_tokens=2, **extra
            )
        assert (refused.value.param, refused.value.code) == (param, code), extra
        assert refused.value.type == "invalid_request_error"
    # Parameters that change nothing here are accepted.
    accepted, _ = await _chat(
        oai,
        model=chat_model,
        messages=ASK_WEATHER,
        max_tokens=2,
        user="someone",
        store=False,
        metadata={"k": "v"},
        parallel_tool_calls=False,
        service_tier="auto",
    )
    assert accepted.choices[0].message.content is not None
