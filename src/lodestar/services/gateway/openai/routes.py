"""The OpenAI-compatible API, at the root: ``/v1/models``,
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``.

The bearer key is the platform's JWT, with the same permissions as the REST
API (GenerateText to generate, SearchVectors to embed) and the same rate
limits. Streams are Server-Sent Events of ``chat.completion.chunk`` (or
``text_completion``) objects ending with ``data: [DONE]``, with keep-alive
comments while the generation waits (``sse.respond``); closing the connection
cancels the generation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from starlette.responses import Response

from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import InvalidArgument, LodestarError, NotFound
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.convert import inference as convert
from lodestar.services.gateway.deps import flows_of, require
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.metrics import GENERATED_TOKENS
from lodestar.services.gateway.openai.errors import OpenAIRoute, lodestar_error_body
from lodestar.services.gateway.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormatIn,
    SamplingIn,
)
from lodestar.services.gateway.permissions import Permission
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.schemas.errors import EVENT_STREAM
from lodestar.services.gateway.sse import event
from lodestar.services.gateway.sse import respond as respond_events
from lodestar.services.gateway.state import set_tokens

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

_ROLES = {
    "system": ipb.ROLE_SYSTEM,
    "developer": ipb.ROLE_SYSTEM,
    "user": ipb.ROLE_USER,
    "assistant": ipb.ROLE_ASSISTANT,
}
_FINISH: dict[int, str] = {ipb.FINISH_REASON_LENGTH: "length"}
_DONE = b"data: [DONE]\n\n"

Generate = Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.GENERATE))]
# The model descriptions are cached, and the models' creation time kept, by the flows.
Flows = Annotated[FlowsRuntime, Depends(flows_of)]


def _finish(value: int) -> str:
    return _FINISH.get(value, "stop")


def _usage(usage: ipb.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }


def _check_model(asked: str, served: str) -> None:
    if asked.casefold() != served.casefold():
        raise NotFound(
            f"the model {asked!r} does not exist; this endpoint serves {served!r}",
            field="model",
            reason="MODEL_NOT_FOUND",
        )


async def _inference_model(call: Call, flows: FlowsRuntime, asked: str) -> str:
    info = await flows.inference_info(call)
    _check_model(asked, info.name)
    return info.name


def _sampling(request: ipb.GenerateTextRequest, body: SamplingIn, max_tokens: int | None) -> None:
    sampling = request.sampling
    sampling.SetInParent()
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if body.seed is not None:
        sampling.seed = body.seed
    sampling.stop.extend(body.stops)


def _constraint(request: ipb.GenerateTextRequest, response_format: ResponseFormatIn | None) -> None:
    if response_format is None or response_format.type == "text":
        return
    if response_format.type == "json_object":
        request.constraint.json_object = True
        return
    assert response_format.json_schema is not None
    schema = response_format.json_schema.schema_
    if schema is None:
        request.constraint.json_object = True
    else:
        request.constraint.json_schema = json.dumps(schema)


async def _debit(call: Call, prompt_tokens: int, completion_tokens: int) -> None:
    set_tokens(call.request.scope, prompt_tokens, completion_tokens)
    if completion_tokens > 0:
        GENERATED_TOKENS.inc(completion_tokens)
        await call.limiter.debit_tokens(call.principal.subject, completion_tokens)


_Chunk = Callable[[str | None, str | None], bytes]
_UsageChunk = Callable[[dict[str, Any]], bytes]


async def _relay(
    call: Call,
    request: ipb.GenerateTextRequest,
    *,
    chunk: _Chunk,
    opening: bytes | None,
    usage_chunk: _UsageChunk,
    include_usage: bool,
) -> Response:
    """The inference stream relayed as OpenAI chunks (``chunk`` makes one from
    a delta or a finish reason); failures before the first token still get
    their HTTP status."""
    messages = call.backends.inference.stream(convert.stream_request_from(request), call.options)
    events = _events(call, messages, chunk, opening, usage_chunk, include_usage=include_usage)
    return await respond_events(
        events, keepalive_s=call.settings.sse_keepalive_s, error_event=_error_event
    )


def _error_event(error: LodestarError) -> bytes:
    return event(lodestar_error_body(error))


async def _events(
    call: Call,
    messages: AsyncIterator[ipb.StreamGenerateTextResponse],
    chunk: _Chunk,
    opening: bytes | None,
    usage_chunk: _UsageChunk,
    *,
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    deltas = 0
    last: ipb.StreamGenerateTextResponse | None = None
    settled = False
    try:
        message = await anext(messages, None)
        if opening is not None:
            yield opening
        while message is not None:
            last = message
            if message.delta:
                deltas += 1
                yield chunk(message.delta, None)
            message = await anext(messages, None)
        usage = last.usage if last is not None else ipb.Usage()
        settled = True
        await _debit(call, usage.prompt_tokens, usage.completion_tokens or deltas)
        yield chunk(None, _finish(last.finish_reason if last is not None else 0))
        if include_usage:
            yield usage_chunk(_usage(usage))
        yield _DONE
    finally:
        # A client that went away cancels the inference stream now, not
        # when the suspended generator is collected.
        close = getattr(messages, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        if not settled:
            # Cancelled or failed midway: the tokens produced still count.
            await _debit(call, 0, deltas)


@router.get("/models", summary="Models (OpenAI-compatible)")
async def list_models(
    call: Annotated[
        Call,
        Depends(require((Permission.GENERATE_TEXT, Permission.SEARCH_VECTORS), RouteClass.READ)),
    ],
    flows: Flows,
) -> Response:
    """The generation model (needs GenerateText) and the embedding model (needs
    SearchVectors) this platform serves."""
    created = int(flows.started_at)
    data: list[dict[str, Any]] = []
    if call.principal.has(Permission.GENERATE_TEXT):
        info = await flows.inference_info(call)
        data.append(
            {"id": info.name, "object": "model", "created": created, "owned_by": "lodestar"}
        )
    if call.principal.has(Permission.SEARCH_VECTORS):
        model = await call.backends.embedding.model_info(call.options)
        data.append(
            {"id": model.name, "object": "model", "created": created, "owned_by": "lodestar"}
        )
    return respond_json({"object": "list", "data": data})


@router.post(
    "/chat/completions", summary="Chat completion (OpenAI-compatible)", responses=EVENT_STREAM
)
async def chat_completions(body: ChatCompletionRequest, call: Generate, flows: Flows) -> Response:
    """Chat completion; ``stream: true`` answers with ``chat.completion.chunk``
    events. Supports temperature, top_p, max_tokens (or max_completion_tokens),
    stop, seed and response_format (json_object, json_schema)."""
    model = await _inference_model(call, flows, body.model)
    request = ipb.GenerateTextRequest(
        messages=[ipb.ChatMessage(role=_ROLES[m.role], content=m.text) for m in body.messages]
    )
    _sampling(request, body, body.token_limit)
    _constraint(request, body.response_format)
    await call.limiter.check_tokens(call.principal.subject)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        response = await call.backends.inference.generate(request, call.options)
        await _debit(call, response.usage.prompt_tokens, response.usage.completion_tokens)
        return respond_json(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": response.text},
                        "logprobs": None,
                        "finish_reason": _finish(response.finish_reason),
                    }
                ],
                "usage": _usage(response.usage),
            }
        )
    header = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: str | None, finish: str | None) -> bytes:
        content = {} if delta is None else {"content": delta}
        return event(
            {
                **header,
                "choices": [
                    {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    def usage_chunk(usage: dict[str, int]) -> bytes:
        return event({**header, "choices": [], "usage": usage})

    opening = event(
        {
            **header,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
    )
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return await _relay(
        call,
        request,
        chunk=chunk,
        opening=opening,
        usage_chunk=usage_chunk,
        include_usage=include_usage,
    )


@router.post("/completions", summary="Text completion (OpenAI-compatible)", responses=EVENT_STREAM)
async def completions(body: CompletionRequest, call: Generate, flows: Flows) -> Response:
    """Raw text completion of one prompt (max_tokens defaults to 16, as in
    OpenAI's API); ``stream: true`` answers with ``text_completion`` events."""
    model = await _inference_model(call, flows, body.model)
    if not body.prompt_text.strip():
        raise InvalidArgument("prompt is empty", field="prompt", reason="EMPTY_PROMPT")
    request = ipb.GenerateTextRequest(prompt=body.prompt_text)
    _sampling(request, body, body.max_tokens)
    await call.limiter.check_tokens(call.principal.subject)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    header = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    if not body.stream:
        response = await call.backends.inference.generate(request, call.options)
        await _debit(call, response.usage.prompt_tokens, response.usage.completion_tokens)
        return respond_json(
            {
                **header,
                "choices": [
                    {
                        "text": response.text,
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": _finish(response.finish_reason),
                    }
                ],
                "usage": _usage(response.usage),
            }
        )

    def chunk(delta: str | None, finish: str | None) -> bytes:
        return event(
            {
                **header,
                "choices": [
                    {"text": delta or "", "index": 0, "logprobs": None, "finish_reason": finish}
                ],
            }
        )

    def usage_chunk(usage: dict[str, int]) -> bytes:
        return event({**header, "choices": [], "usage": usage})

    include_usage = body.stream_options is not None and body.stream_options.include_usage
    return await _relay(
        call,
        request,
        chunk=chunk,
        opening=None,
        usage_chunk=usage_chunk,
        include_usage=include_usage,
    )


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


@router.post("/embeddings", summary="Embeddings (OpenAI-compatible)")
async def embeddings(
    body: EmbeddingRequest,
    call: Annotated[Call, Depends(require(Permission.SEARCH_VECTORS, RouteClass.READ))],
) -> Response:
    """Vectors of one text or a list of texts from the platform's embedding
    model (``encoding_format`` float or base64, as the official client asks)."""
    model = await call.backends.embedding.model_info(call.options)
    _check_model(body.model, model.name)
    if body.dimensions is not None and body.dimensions != model.dimension:
        raise InvalidArgument(
            f"dimensions must be {model.dimension} (the model's) or left out",
            field="dimensions",
            reason="UNSUPPORTED_DIMENSIONS",
        )
    texts = body.texts
    batch = call.settings.embed_batch_size
    data: list[dict[str, Any]] = []
    tokens = 0
    for start in range(0, len(texts), batch):
        try:
            response = await _embed(call, epb.EmbedTextsRequest(texts=texts[start : start + batch]))
        except LodestarError as error:
            _shift_index(error, start)
            raise
        tokens += response.total_tokens
        for offset, embedding in enumerate(response.embeddings):
            data.append(
                {
                    "object": "embedding",
                    "index": start + offset,
                    "embedding": _encode(list(embedding.values), body.encoding_format),
                }
            )
    set_tokens(call.request.scope, tokens, 0)
    return respond_json(
        {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def _embed(call: Call, request: epb.EmbedTextsRequest) -> epb.EmbedTextsResponse:
    # The embedding client returns only vectors; the token count is wanted here.
    return await call.backends.embedding.embed_texts(request, call.options)


def _shift_index(error: LodestarError, start: int) -> None:
    """``texts[i]`` of a batch starting at ``start`` is ``input[start + i]``."""
    field = error.field or ""
    if start and field.startswith("texts[") and "]" in field:
        index, _, rest = field.removeprefix("texts[").partition("]")
        if index.isdigit():
            error.field = f"texts[{int(index) + start}]{rest}"
