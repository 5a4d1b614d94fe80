"""Streams that wait: the Server-Sent Events of /api/v1/generate and of the
OpenAI-compatible routes send keep-alive comments while a generation waits
for its first token (or between slow tokens), and a client that leaves while
the generation is queued cancels it then, not at its first token."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI

from lodestar.runtime.errors import InvalidArgument
from lodestar.services.gateway.app import create_app
from lodestar.services.gateway.flows.settings import FlowsSettings
from tests.gateway.fakes import FakeBackends
from tests.gateway.harness import RunningGateway, gateway_settings, run_gateway, sse_events

KEEPALIVE_S = 0.1
KEEPALIVE = ": keep-alive"

GENERATE = "/api/v1/generate"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

# (path, streamed body) of each streaming route.
ROUTES = {
    "generate": (GENERATE, {"prompt": "Count", "stream": True}),
    "chat": (
        CHAT,
        {"model": "fake-llm", "messages": [{"role": "user", "content": "Count"}], "stream": True},
    ),
    "completions": (COMPLETIONS, {"model": "fake-llm", "prompt": "Count", "stream": True}),
}


@pytest.fixture(scope="module")
async def streaming(fakes: FakeBackends) -> AsyncIterator[RunningGateway]:
    """A gateway with the OpenAI routes over the fakes, whose streams send a
    keep-alive after KEEPALIVE_S of silence."""
    settings = gateway_settings(
        fakes.address("embedding"),
        fakes.address("vector"),
        fakes.address("inference"),
        sse_keepalive_s=KEEPALIVE_S,
    )
    async with run_gateway(settings, create_app(settings, FlowsSettings())) as running:
        yield running


async def _cache_model_info(gateway: RunningGateway) -> None:
    """Has the OpenAI routes' model description cached, so that the next
    inference call a test arranges (a delay, a failure) is the generation."""
    async with gateway.client() as http:
        reply = await http.get("/v1/models", headers=gateway.auth("user"))
    assert reply.status_code == 200, reply.text


async def _lines(gateway: RunningGateway, route: str) -> tuple[int, list[str]]:
    path, body = ROUTES[route]
    async with (
        gateway.client() as http,
        http.stream("POST", path, json=body, headers=gateway.auth("user")) as reply,
    ):
        return reply.status_code, [line async for line in reply.aiter_lines() if line]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_queued_stream_sends_keepalives_before_its_first_token(
    streaming: RunningGateway, fakes: FakeBackends, route: str
) -> None:
    fakes.inference.first_token_delay_s = 6 * KEEPALIVE_S
    status, lines = await _lines(streaming, route)
    assert status == 200
    first_data = next(i for i, line in enumerate(lines) if not line.startswith(":"))
    # Sent while queued: the first line of all, then one at every interval.
    assert first_data >= 3, lines[: first_data + 1]
    assert set(lines[:first_data]) == {KEEPALIVE}


async def test_keepalives_leave_the_events_unchanged(
    streaming: RunningGateway, fakes: FakeBackends
) -> None:
    async with streaming.client() as http:
        prompt = {"prompt": "Count", "stream": True}
        plain = await http.post(GENERATE, json=prompt, headers=streaming.auth("user"))
        fakes.inference.first_token_delay_s = 3 * KEEPALIVE_S
        fakes.inference.stream_delay_s = 3 * KEEPALIVE_S
        waited = await http.post(GENERATE, json=prompt, headers=streaming.auth("user"))
    # Keep-alives before the first token and in the gaps between tokens...
    blocks = waited.text.strip().split("\n\n")
    assert blocks[0] == KEEPALIVE
    tokens = [i for i, block in enumerate(blocks) if block.startswith("event: token")]
    assert all(KEEPALIVE in blocks[a:b] for a, b in itertools.pairwise(tokens))
    # ...and the events are those of a stream without any.
    assert sse_events(waited.text) == sse_events(plain.text)


async def test_the_openai_client_reads_a_stream_with_keepalives(
    streaming: RunningGateway, fakes: FakeBackends
) -> None:
    fakes.inference.first_token_delay_s = 3 * KEEPALIVE_S
    fakes.inference.stream_delay_s = 1.5 * KEEPALIVE_S
    async with AsyncOpenAI(
        base_url=f"{streaming.url}/v1", api_key=streaming.token("user"), max_retries=0
    ) as client:
        chat = await client.chat.completions.create(
            model="fake-llm",
            messages=[{"role": "user", "content": "Count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in chat]
        completion = await client.completions.create(model="fake-llm", prompt="Count", stream=True)
        texts = [chunk.choices[0].text async for chunk in completion if chunk.choices]
    expected = "".join(f"tok{i} " for i in range(5))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert "".join(texts) == expected


@pytest.mark.parametrize("route", ROUTES)
async def test_a_client_that_leaves_while_queued_cancels_the_generation(
    streaming: RunningGateway, fakes: FakeBackends, route: str
) -> None:
    inference = fakes.inference
    inference.first_token_delay_s = 30
    inference.stream_cancelled.clear()
    path, body = ROUTES[route]
    async with (
        streaming.client() as http,
        http.stream("POST", path, json=body, headers=streaming.auth("user")) as reply,
    ):
        assert reply.status_code == 200
        assert await anext(reply.aiter_lines()) == KEEPALIVE
        left = time.monotonic()
    # Noticed while the generation is still queued, not at its first token.
    await asyncio.wait_for(inference.stream_cancelled.wait(), timeout=5)
    assert time.monotonic() - left < 5


async def test_a_client_that_leaves_before_any_answer_cancels_the_generation(
    streaming: RunningGateway, fakes: FakeBackends
) -> None:
    """Gone before even the status was sent: noticed at the first keep-alive."""
    inference = fakes.inference
    inference.first_token_delay_s = 30
    inference.stream_started.clear()
    inference.stream_cancelled.clear()
    path, body = ROUTES["generate"]
    async with streaming.client() as http:
        request = asyncio.create_task(http.post(path, json=body, headers=streaming.auth("user")))
        await asyncio.wait_for(inference.stream_started.wait(), timeout=5)
        request.cancel()  # closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await request
    await asyncio.wait_for(inference.stream_cancelled.wait(), timeout=5)


async def test_a_failure_before_the_first_keepalive_keeps_its_http_status(
    streaming: RunningGateway, fakes: FakeBackends
) -> None:
    await _cache_model_info(streaming)
    fakes.inference.recorder.fail_next.append(
        InvalidArgument("prompt is too long", field="prompt", reason="PROMPT_TOO_LONG")
    )
    status, lines = await _lines(streaming, "chat")
    assert status == 400
    # OpenAI's code for a prompt longer than the context.
    assert json.loads(lines[0])["error"]["code"] == "context_length_exceeded"


def _error_of(route: str, lines: list[str]) -> Any:
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    if route == "generate":
        assert lines[-2] == "event: error"
        return data[-1]["error"]["details"]["reason"].lower()
    return data[-1]["error"]["code"]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_failure_after_a_keepalive_is_an_error_event(
    streaming: RunningGateway, fakes: FakeBackends, route: str
) -> None:
    await _cache_model_info(streaming)
    fakes.inference.recorder.delay_s = 6 * KEEPALIVE_S
    fakes.inference.recorder.fail_next.append(
        InvalidArgument("prompt is too long", field="prompt", reason="PROMPT_TOO_LONG")
    )
    status, lines = await _lines(streaming, route)
    # The status went out with the first keep-alive; the error is the last event.
    assert status == 200
    assert lines[0] == KEEPALIVE
    expected = "prompt_too_long" if route == "generate" else "context_length_exceeded"
    assert _error_of(route, lines) == expected
