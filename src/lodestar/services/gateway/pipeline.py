"""The generation pipeline behind ``POST /api/v1/generate``.

A generation runs through ordered stages around the inference call. A stage
serves one request option (``context`` for retrieval, ``store_embedding``,
``use_feedback``), declares the extra permissions it needs, and may:

- ``before``: rewrite the inference request (add retrieved passages or
  examples to the prompt) and set ``generation.sources``;
- ``after``: act on the answer (store it) and add fields to the response
  through ``generation.extra``.

A ``before`` may also answer the request itself (``generation.answered``, a
cache hit): there is no inference call and the later stages' ``before`` are
skipped, so a stage that checks something there must not rely on running.

Streaming answers are Server-Sent Events: ``sources`` first (when a stage set
them), then ``token`` events with text deltas, then one ``done`` event with the
finish reason, usage, timing and the stages' extra fields (or an ``error``
event, ``error_event``). The route relays them through ``sse.respond``, which
keeps the connection alive while the generation waits; a client that
disconnects cancels the inference stream.

An option that no installed stage serves is refused with 501, so a request
never silently loses what it asked for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from lodestar.auth.permissions import Permission, missing_permission
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import LodestarError
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import inference as convert
from lodestar.services.gateway.errors import error_payload
from lodestar.services.gateway.metrics import GENERATED_TOKENS
from lodestar.services.gateway.schemas.inference import GenerateRequest
from lodestar.services.gateway.sse import event
from lodestar.services.gateway.state import set_tokens

_log = logging.getLogger(__name__)

# Request options served by stages, and how to tell that a request uses them.
OPTIONS: dict[str, Callable[[GenerateRequest], bool]] = {
    "context": lambda r: r.context is not None,
    "store_embedding": lambda r: r.store_embedding,
    "use_feedback": lambda r: r.use_feedback,
    "memory": lambda r: r.memory,
    "conversation_id": lambda r: r.conversation_id is not None,
}


@dataclass
class Generation:
    """One generation as it moves through the pipeline."""

    body: GenerateRequest
    call: Call
    request: ipb.GenerateTextRequest
    # Retrieved passages (set by a retrieval stage); streamed first.
    sources: list[dict[str, Any]] | None = None
    # Fields added to the response (and the stream's done event).
    extra: dict[str, Any] = field(default_factory=dict)
    # Filled when the answer is complete.
    text: str = ""
    finish_reason: str = "unspecified"
    usage: ipb.Usage | None = None
    model: str = ""
    # Set by a stage's ``before`` to answer without inference (a cache hit):
    # the later stages' ``before`` are skipped and this is the answer.
    answered: ipb.GenerateTextResponse | None = None
    # Fields stages add to the interaction that ``store_embedding`` keeps.
    record: dict[str, Any] = field(default_factory=dict)
    # Set by a stage that rewrites the streamed text.
    text_filter: TextFilter | None = None


class TextFilter(Protocol):
    """Rewrites a streamed answer's text as it flows (e.g. drops bad citation
    markers); ``flush`` gives what it held back at the end."""

    def feed(self, delta: str) -> str: ...

    def flush(self) -> str: ...


class GenerateStage(Protocol):
    """A pipeline stage; see the module docstring."""

    option: str

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]: ...

    async def before(self, generation: Generation) -> None: ...

    async def after(self, generation: Generation) -> None: ...


class NotEnabled(LodestarError):
    """An option this gateway has no stage for (501)."""

    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, option: str) -> None:
        super().__init__(
            f"{option} is not enabled on this gateway",
            reason="OPTION_NOT_ENABLED",
            field=option,
        )


def error_event(error: LodestarError) -> bytes:
    """The ``error`` event that ends a stream failing after it started, with
    the error body of the REST API."""
    payload = error_payload(
        error.code, error.message, reason=error.reason, metadata=error.metadata or None
    )
    return event(payload, "error")


async def _replay(
    answer: ipb.GenerateTextResponse,
) -> AsyncIterator[ipb.StreamGenerateTextResponse]:
    """A whole answer as a stream of one delta."""
    message = ipb.StreamGenerateTextResponse(
        delta=answer.text,
        finish_reason=answer.finish_reason,
        usage=answer.usage,
        model=answer.model,
    )
    if answer.HasField("timing"):
        message.timing.CopyFrom(answer.timing)
    yield message


class GeneratePipeline:
    def __init__(self, stages: Sequence[GenerateStage] = ()) -> None:
        self.stages = list(stages)
        self._background: set[asyncio.Task[None]] = set()

    def add(self, stage: GenerateStage) -> None:
        self.stages.append(stage)

    def _plan(self, body: GenerateRequest, call: Call) -> list[GenerateStage]:
        served = {stage.option for stage in self.stages}
        for option, used in OPTIONS.items():
            if used(body) and option not in served:
                raise NotEnabled(option)
        active = [s for s in self.stages if s.option not in OPTIONS or OPTIONS[s.option](body)]
        for stage in active:
            for permission in stage.permissions(body):
                if not call.principal.has(permission):
                    raise missing_permission(permission)
        return active

    async def _admit(self, call: Call) -> None:
        await call.limiter.check_tokens(call.principal.subject)

    async def _debit(self, call: Call, tokens: int) -> None:
        if tokens <= 0:
            return
        GENERATED_TOKENS.inc(tokens)
        try:
            await call.limiter.debit_tokens(call.principal.subject, tokens)
        except Exception:
            _log.exception("could not debit %d generated tokens", tokens)

    async def _prepare(
        self, body: GenerateRequest, call: Call
    ) -> tuple[Generation, list[GenerateStage]]:
        stages = self._plan(body, call)
        await self._admit(call)
        generation = Generation(body, call, convert.generate_to_proto(body))
        for stage in stages:
            await stage.before(generation)
            if generation.answered is not None:
                break
        return generation, stages

    def _response(self, generation: Generation, timing: ipb.Timing | None) -> dict[str, Any]:
        usage = generation.usage or ipb.Usage()
        out: dict[str, Any] = {
            "text": generation.text,
            "finish_reason": generation.finish_reason,
            "usage": convert.usage_from_proto(usage).model_dump(),
            "model": generation.model,
        }
        if timing is not None:
            out["timing"] = convert.timing_from_proto(timing).model_dump()
        if generation.sources is not None:
            out["sources"] = generation.sources
        out.update(generation.extra)
        return out

    async def generate(self, body: GenerateRequest, call: Call) -> dict[str, Any]:
        """A whole answer, as the JSON object the route returns."""
        generation, stages = await self._prepare(body, call)
        response = generation.answered or await call.backends.inference.generate(
            generation.request, call.options
        )
        generation.text = response.text
        generation.finish_reason = convert.finish_reason(response.finish_reason)
        generation.usage = response.usage
        generation.model = response.model
        await self._debit(call, response.usage.completion_tokens)
        for stage in stages:
            await stage.after(generation)
        return self._response(generation, response.timing if response.HasField("timing") else None)

    async def stream(self, body: GenerateRequest, call: Call) -> AsyncGenerator[bytes, None]:
        """The SSE events of an answer. Limits and stages fail while this
        coroutine runs; the inference call's own failures before the first
        token fail the first event, before anything is sent."""
        generation, stages = await self._prepare(body, call)
        if generation.answered is not None:
            messages = _replay(generation.answered)
        else:
            request = convert.stream_request_from(generation.request)
            messages = call.backends.inference.stream(request, call.options)
        return self._events(generation, stages, messages)

    async def _events(
        self,
        generation: Generation,
        stages: list[GenerateStage],
        messages: AsyncIterator[ipb.StreamGenerateTextResponse],
    ) -> AsyncGenerator[bytes, None]:
        call = generation.call
        parts: list[str] = []
        deltas = 0
        last: ipb.StreamGenerateTextResponse | None = None
        finished = False
        try:
            message = await anext(messages, None)
            if generation.sources is not None:
                yield event({"sources": generation.sources}, "sources")
            while message is not None:
                last = message
                if message.model:
                    generation.model = message.model
                if message.delta:
                    deltas += 1
                    delta = message.delta
                    if generation.text_filter is not None:
                        delta = generation.text_filter.feed(delta)
                    parts.append(delta)
                    if delta:
                        yield event({"delta": delta}, "token")
                message = await anext(messages, None)
            if generation.text_filter is not None and (tail := generation.text_filter.flush()):
                parts.append(tail)
                yield event({"delta": tail}, "token")
            generation.text = "".join(parts)
            if last is not None:
                generation.finish_reason = convert.finish_reason(last.finish_reason)
                generation.usage = last.usage
            completion = generation.usage.completion_tokens if generation.usage else deltas
            finished = True
            await self._debit(call, completion)
            for stage in stages:
                await stage.after(generation)
            timing = last.timing if last is not None and last.HasField("timing") else None
            done = self._response(generation, timing)
            done.pop("text")
            done.pop("sources", None)
            yield event(done, "done")
        finally:
            if not finished:
                # Cancelled or failed midway: the tokens produced still count
                # (the prompt's are only known once the generation ends).
                set_tokens(call.request.scope, 0, deltas)
                # In a task of its own, as this one may be being cancelled.
                task = asyncio.create_task(self._debit(call, deltas))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
