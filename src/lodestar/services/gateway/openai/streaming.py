"""Generations of the OpenAI routes: ``n`` choices decoded in parallel, unary
or relayed as one stream of chunks.

Each choice is its own inference request (the service decodes them together
by continuous batching); a stream interleaves their chunks as they come, each
tagged with its choice's index, and ends with the usage of them all. A
``ChoiceRenderer`` turns one choice's inference messages into OpenAI choice
objects (chat deltas, tool calls, text completion pieces).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from starlette.responses import Response

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import LodestarError
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import inference as convert
from lodestar.services.gateway.metrics import GENERATED_TOKENS
from lodestar.services.gateway.openai.errors import lodestar_error_body
from lodestar.services.gateway.openai.served import Served
from lodestar.services.gateway.sse import event
from lodestar.services.gateway.sse import respond as respond_events
from lodestar.services.gateway.state import set_tokens

_DONE = b"data: [DONE]\n\n"
_Message = ipb.StreamGenerateTextResponse


class ChoiceRenderer(Protocol):
    def opening(self) -> dict[str, Any] | None: ...

    def delta(self, message: _Message) -> list[dict[str, Any]]: ...

    def finish(self, finish_reason: int) -> list[dict[str, Any]]: ...


def per_choice(request: ipb.GenerateTextRequest, choices: int) -> list[ipb.GenerateTextRequest]:
    """One request per choice; with a seed, choice ``i`` samples with ``seed + i``
    so that the choices differ and each is reproducible."""
    if choices == 1:
        return [request]
    out: list[ipb.GenerateTextRequest] = []
    for index in range(choices):
        copy = ipb.GenerateTextRequest()
        copy.CopyFrom(request)
        if request.sampling.HasField("seed"):
            copy.sampling.seed = (request.sampling.seed + index) % 2**64
        out.append(copy)
    return out


def usage_of(usages: Sequence[ipb.Usage], completion_tokens: int | None = None) -> dict[str, Any]:
    """Usage of all choices: the prompt counted once, the completions summed."""
    first = usages[0] if usages else ipb.Usage()
    completion = (
        sum(u.completion_tokens for u in usages) if completion_tokens is None else completion_tokens
    )
    return {
        "prompt_tokens": first.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": first.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": first.cached_prompt_tokens},
    }


async def debit(call: Call, prompt_tokens: int, completion_tokens: int) -> None:
    set_tokens(call.request.scope, prompt_tokens, completion_tokens)
    if completion_tokens > 0:
        GENERATED_TOKENS.inc(completion_tokens)
        await call.limiter.debit_tokens(call.principal.subject, completion_tokens)


async def generate_all(
    call: Call, requests: Sequence[ipb.GenerateTextRequest]
) -> list[ipb.GenerateTextResponse]:
    """Every choice's answer; the first failure cancels the others."""
    if len(requests) == 1:
        responses = [await call.backends.inference.generate(requests[0], call.options)]
    else:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(call.backends.inference.generate(r, call.options))
                for r in requests
            ]
        responses = [task.result() for task in tasks]
    usage = usage_of([r.usage for r in responses])
    await debit(call, usage["prompt_tokens"], usage["completion_tokens"])
    return responses


async def answer_all(
    call: Call, requests: Sequence[ipb.GenerateTextRequest], served: Served
) -> list[ipb.GenerateTextResponse]:
    """The cached answer, or every choice's generated one (the first offered to
    the cache and counted for the experiment)."""
    if served.answer is not None:
        await served.finish(served.answer.text, served.answer.finish_reason, None, "")
        return [served.answer]
    responses = await generate_all(call, requests)
    first = responses[0]
    await served.finish(first.text, first.finish_reason, first.usage, first.model)
    return responses


async def _replay(answer: ipb.GenerateTextResponse) -> AsyncIterator[_Message]:
    """A cached answer as a stream of one delta."""
    yield _Message(
        delta=answer.text,
        finish_reason=answer.finish_reason,
        usage=answer.usage,
        model=answer.model,
    )


async def _merge(
    streams: Sequence[AsyncIterator[_Message]],
) -> AsyncGenerator[tuple[int, _Message], None]:
    """The messages of several streams as they come, tagged with their stream's index."""
    if len(streams) == 1:
        async for message in streams[0]:
            yield 0, message
        return
    queue: asyncio.Queue[tuple[int, _Message | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[_Message]) -> None:
        try:
            async for message in stream:
                await queue.put((index, message))
        except Exception as error:
            await queue.put((index, error))
        else:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(streams)
        while live:
            index, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def relay(
    call: Call,
    requests: Sequence[ipb.GenerateTextRequest],
    served: Served,
    renderers: Sequence[ChoiceRenderer],
    *,
    chunk: Callable[[dict[str, Any]], bytes],
    usage_chunk: Callable[[dict[str, Any]], bytes],
    include_usage: bool,
) -> Response:
    """The choices' inference streams relayed as one stream of OpenAI chunks;
    failures before the first token still get their HTTP status."""
    streams: list[AsyncIterator[_Message]]
    if served.answer is not None:
        streams = [_replay(served.answer)]
    else:
        streams = [
            call.backends.inference.stream(convert.stream_request_from(r), call.options)
            for r in requests
        ]
    events = _events(call, streams, served, renderers, chunk, usage_chunk, include_usage)
    return served.with_headers(
        await respond_events(
            events, keepalive_s=call.settings.sse_keepalive_s, error_event=_error_event
        )
    )


def _error_event(error: LodestarError) -> bytes:
    return event(lodestar_error_body(error))


async def _events(
    call: Call,
    streams: Sequence[AsyncIterator[_Message]],
    served: Served,
    renderers: Sequence[ChoiceRenderer],
    chunk: Callable[[dict[str, Any]], bytes],
    usage_chunk: Callable[[dict[str, Any]], bytes],
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    deltas = [0] * len(streams)
    first_text: list[str] = []  # the first choice's, for the cache
    first_last: _Message | None = None
    usages: dict[int, ipb.Usage] = {}
    settled = False
    merged = _merge(streams)
    try:
        item = await anext(merged, None)
        for renderer in renderers:
            opening = renderer.opening()
            if opening is not None:
                yield chunk(opening)
        while item is not None:
            index, message = item
            renderer = renderers[index]
            if index == 0:
                first_last = message
                first_text.append(message.delta)
            if message.delta:
                deltas[index] += 1
            choices = renderer.delta(message)
            if message.HasField("usage"):
                usages[index] = message.usage
                choices += renderer.finish(message.finish_reason)
            for choice in choices:
                yield chunk(choice)
            item = await anext(merged, None)
        for index, renderer in enumerate(renderers):
            if index not in usages:
                for choice in renderer.finish(0):
                    yield chunk(choice)
        settled = True
        ordered = [
            usages.get(i, ipb.Usage(completion_tokens=deltas[i])) for i in range(len(deltas))
        ]
        usage = usage_of(ordered)
        await debit(call, usage["prompt_tokens"], usage["completion_tokens"])
        if first_last is not None:
            await served.finish(
                "".join(first_text), first_last.finish_reason, usages.get(0), first_last.model
            )
        if include_usage:
            yield usage_chunk(usage)
        yield _DONE
    finally:
        # A client that went away cancels the inference streams now, not
        # when the suspended generators are collected.
        with contextlib.suppress(Exception):
            await merged.aclose()
        for stream in streams:
            close = getattr(stream, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        if not settled:
            # Cancelled or failed midway: the tokens produced still count.
            await debit(call, 0, sum(deltas))
