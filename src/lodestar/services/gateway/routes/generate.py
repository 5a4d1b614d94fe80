"""Text generation: one answer (JSON or Server-Sent Events) or a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.responses import Response

from lodestar.auth.permissions import Permission
from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.context import Gateway, gateway_of
from lodestar.services.gateway.convert import inference as convert
from lodestar.services.gateway.deps import require
from lodestar.services.gateway.flows.experiments import apply_to_generate
from lodestar.services.gateway.flows.semantic_cache import response_headers
from lodestar.services.gateway.metrics import GENERATED_TOKENS
from lodestar.services.gateway.pipeline import error_event
from lodestar.services.gateway.ratelimit import RouteClass
from lodestar.services.gateway.responses import respond, respond_json
from lodestar.services.gateway.routes.base import api_router
from lodestar.services.gateway.schemas.inference import (
    BatchGenerateRequest,
    BatchGenerateResponse,
    GenerateRequest,
    GenerateResponse,
)
from lodestar.services.gateway.sse import respond as respond_events
from lodestar.services.gateway.state import set_tokens

router = api_router("generation")


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Generate text",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def generate(
    body: GenerateRequest,
    call: Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.GENERATE))],
    gateway: Annotated[Gateway, Depends(gateway_of)],
) -> Response:
    """Text or chat generation. With ``stream: true`` the answer comes as
    Server-Sent Events: ``token`` events with text deltas, then a ``done`` event
    with the finish reason, usage and timing (or an ``error`` event), and a
    keep-alive comment whenever the stream is silent for a while (queued, or
    between slow tokens). Closing the connection cancels the generation."""
    pipeline = gateway.pipeline
    body = await apply_to_generate(body, call, gateway.flows)
    if not body.stream:
        response = respond_json(await pipeline.generate(body, call))
    else:
        events = await pipeline.stream(body, call)
        response = await respond_events(
            events, keepalive_s=call.settings.sse_keepalive_s, error_event=error_event
        )
    response.headers.update(response_headers(call.request))
    return response


@router.post("/generate/batch", response_model=BatchGenerateResponse, summary="Generate many texts")
async def generate_batch(
    body: BatchGenerateRequest,
    call: Annotated[Call, Depends(require(Permission.GENERATE_TEXT, RouteClass.GENERATE))],
) -> Response:
    """Many generations; results in request order, each with its own error."""
    limiter = call.limiter
    await limiter.check_tokens(call.principal.subject)
    request = ipb.BatchGenerateTextRequest(
        requests=[convert.generate_to_proto(item) for item in body.requests]
    )
    response = await call.backends.inference.batch_generate(request, call.options)
    answered = [r.response.usage for r in response.results if r.WhichOneof("result") == "response"]
    generated = sum(usage.completion_tokens for usage in answered)
    set_tokens(call.request.scope, sum(u.prompt_tokens for u in answered), generated)
    if generated:
        GENERATED_TOKENS.inc(generated)
        await limiter.debit_tokens(call.principal.subject, generated)
    return respond(convert.batch_from_proto(response))
