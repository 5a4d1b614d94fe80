"""The OpenAI-compatible API, at the root: ``/v1/models`` (and
``/v1/models/{id}``), ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings``.

The bearer key is the platform's JWT, with the same permissions as the REST
API (GenerateText to generate, SearchVectors to embed) and the same rate
limits. Streams are Server-Sent Events of ``chat.completion.chunk`` (or
``text_completion``) objects ending with ``data: [DONE]``, with keep-alive
comments while the generation waits (``sse.respond``); closing the connection
cancels the generation. Chat completions call tools (``tools``,
``tool_choice``), both return token log probabilities when asked, and ``n``
choices are decoded in parallel (``openai.streaming``). The running experiment
and the semantic cache apply to single-choice answers without tools or log
probabilities (``openai.served``).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from starlette.responses import Response

from lodestar.auth.permissions import Permission
from lodestar.embedding.v1 import embedding_service_pb2 as epb
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import InvalidArgument, LodestarError, NotFound
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.deps import flows_of, require
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.openai.choices import (
    ChatChoice,
    TextChoice,
    chat_choice,
    text_choice,
)
from lodestar.services.gateway.openai.errors import OpenAIRoute
from lodestar.services.gateway.openai.headers import remember_tokens
from lodestar.services.gateway.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseFormatIn,
    SamplingIn,
)
from lodestar.services.gateway.openai.served import serve
from lodestar.services.gateway.openai.streaming import answer_all, per_choice, relay, usage_of
from lodestar.services.gateway.openai.tools import add_tools, check_chat, history
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond_json
from lodestar.services.gateway.schemas.errors import EVENT_STREAM
from lodestar.services.gateway.sse import event
from lodestar.services.gateway.state import set_tokens

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

Generate = Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.GENERATE))]
# The model descriptions are cached, and the models' creation time kept, by the flows.
Flows = Annotated[FlowsRuntime, Depends(flows_of)]
ListModels = Annotated[
    Call, Depends(require((Permission.GENERATE_TEXT, Permission.SEARCH_VECTORS), RouteClass.READ))
]


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


async def _check_tokens(call: Call) -> None:
    remember_tokens(call.request.scope, await call.limiter.check_tokens(call.principal.subject))


async def _visible_models(call: Call, flows: FlowsRuntime) -> list[dict[str, Any]]:
    created = int(flows.started_at)
    names: list[str] = []
    if call.principal.has(Permission.GENERATE_TEXT):
        names.append((await flows.inference_info(call)).name)
    if call.principal.has(Permission.SEARCH_VECTORS):
        names.append((await call.backends.embedding.model_info(call.options)).name)
    return [
        {"id": name, "object": "model", "created": created, "owned_by": "lodestar"}
        for name in names
    ]


@router.get("/models", summary="Models (OpenAI-compatible)")
async def list_models(call: ListModels, flows: Flows) -> Response:
    """The generation model (needs GenerateText) and the embedding model (needs
    SearchVectors) this platform serves."""
    return respond_json({"object": "list", "data": await _visible_models(call, flows)})


@router.get("/models/{model:path}", summary="Model (OpenAI-compatible)")
async def retrieve_model(model: str, call: ListModels, flows: Flows) -> Response:
    """One of the models ``/v1/models`` lists; 404 ``model_not_found`` otherwise."""
    for entry in await _visible_models(call, flows):
        if entry["id"].casefold() == model.casefold():
            return respond_json(entry)
    raise NotFound(
        f"the model {model!r} does not exist or this key may not use it",
        field="model",
        reason="MODEL_NOT_FOUND",
    )


def _chunk_header(completion_id: str, created: int, model: str, kind: str) -> dict[str, Any]:
    header: dict[str, Any] = {"id": completion_id, "object": kind, "created": created}
    header["model"] = model
    if kind == "chat.completion.chunk":
        header["system_fingerprint"] = None
    return header


@router.post(
    "/chat/completions", summary="Chat completion (OpenAI-compatible)", responses=EVENT_STREAM
)
async def chat_completions(body: ChatCompletionRequest, call: Generate, flows: Flows) -> Response:
    """Chat completion; ``stream: true`` answers with ``chat.completion.chunk``
    events. Supports temperature, top_p, max_tokens (or max_completion_tokens),
    stop, seed, response_format (json_object, json_schema), tools with
    tool_choice (auto, none, required or a named function; the call is
    constrained to the function's parameters schema), logprobs with
    top_logprobs, and n parallel choices."""
    model = await _inference_model(call, flows, body.model)
    check_chat(body)
    request = ipb.GenerateTextRequest(messages=history(body.messages))
    _sampling(request, body, body.token_limit)
    _constraint(request, body.response_format)
    add_tools(request, body)
    if body.logprobs:
        request.top_logprobs = body.top_logprobs or 0
    await _check_tokens(call)
    tools, logprobs = body.calls_tools, bool(body.logprobs)
    # A cached answer is one text: no choices to draw, no calls or probabilities to give.
    cacheable = body.cache and body.choices == 1 and not tools and not logprobs
    served = await serve(call, flows, "chat", request, cache=cacheable, model=model)
    requests = per_choice(request, body.choices)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.stream:
        responses = await answer_all(call, requests, served)
        return served.with_headers(
            respond_json(
                {
                    **_chunk_header(completion_id, created, model, "chat.completion"),
                    "system_fingerprint": None,
                    "choices": [
                        chat_choice(i, r, tools=tools, logprobs=logprobs)
                        for i, r in enumerate(responses)
                    ],
                    "usage": usage_of([r.usage for r in responses]),
                }
            )
        )
    header = _chunk_header(completion_id, created, model, "chat.completion.chunk")
    return await relay(
        call,
        requests,
        served,
        [ChatChoice(i, tools=tools, logprobs=logprobs) for i in range(len(requests))],
        chunk=lambda choice: event({**header, "choices": [choice]}),
        usage_chunk=lambda usage: event({**header, "choices": [], "usage": usage}),
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
    )


@router.post("/completions", summary="Text completion (OpenAI-compatible)", responses=EVENT_STREAM)
async def completions(body: CompletionRequest, call: Generate, flows: Flows) -> Response:
    """Raw text completion of one prompt (max_tokens defaults to 16, as in
    OpenAI's API); ``stream: true`` answers with ``text_completion`` events.
    ``logprobs`` (0..5) returns the tokens' log probabilities, ``n`` parallel
    choices (``best_of``, if sent, must equal ``n``)."""
    model = await _inference_model(call, flows, body.model)
    if body.best_of is not None and body.best_of != body.choices:
        raise InvalidArgument(
            "best_of must equal n (or be left out): candidates are not ranked here",
            field="best_of",
            reason="UNSUPPORTED_VALUE",
        )
    request = ipb.GenerateTextRequest(prompt=body.prompt_text)
    _sampling(request, body, body.max_tokens)
    logprobs = body.logprobs is not None
    if body.logprobs is not None:
        request.top_logprobs = body.logprobs
    await _check_tokens(call)
    cacheable = body.cache and body.choices == 1 and not logprobs
    served = await serve(call, flows, "completions", request, cache=cacheable, model=model)
    requests = per_choice(request, body.choices)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    header = _chunk_header(completion_id, int(time.time()), model, "text_completion")
    if not body.stream:
        responses = await answer_all(call, requests, served)
        return served.with_headers(
            respond_json(
                {
                    **header,
                    "choices": [
                        text_choice(i, r, logprobs=logprobs) for i, r in enumerate(responses)
                    ],
                    "usage": usage_of([r.usage for r in responses]),
                }
            )
        )
    return await relay(
        call,
        requests,
        served,
        [TextChoice(i, logprobs=logprobs) for i in range(len(requests))],
        chunk=lambda choice: event({**header, "choices": [choice]}),
        usage_chunk=lambda usage: event({**header, "choices": [], "usage": usage}),
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
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
