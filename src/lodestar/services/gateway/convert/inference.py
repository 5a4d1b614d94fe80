"""REST models ⇄ ``lodestar.inference.v1`` messages."""

from __future__ import annotations

import json

import grpc

from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.runtime.errors import http_status_for
from lodestar.services.gateway.schemas import inference as rest

_ROLE = {
    rest.ChatRole.SYSTEM: pb.ROLE_SYSTEM,
    rest.ChatRole.USER: pb.ROLE_USER,
    rest.ChatRole.ASSISTANT: pb.ROLE_ASSISTANT,
}
_FINISH: dict[int, rest.FinishReason] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CANCELLED: "cancelled",
}


def generate_to_proto(item: rest.GenerateItem) -> pb.GenerateTextRequest:
    request = pb.GenerateTextRequest()
    if item.prompt is not None:
        request.prompt = item.prompt
    for message in item.messages or ():
        request.messages.add(role=_ROLE[message.role], content=message.content)
    sampling = request.sampling
    sampling.SetInParent()
    if item.max_tokens is not None:
        sampling.max_tokens = item.max_tokens
    if item.temperature is not None:
        sampling.temperature = item.temperature
    if item.top_p is not None:
        sampling.top_p = item.top_p
    if item.top_k is not None:
        sampling.top_k = item.top_k
    if item.min_p is not None:
        sampling.min_p = item.min_p
    if item.repeat_penalty is not None:
        sampling.repeat_penalty = item.repeat_penalty
    if item.stop:
        sampling.stop.extend(item.stop)
    if item.seed is not None:
        sampling.seed = item.seed
    fmt = item.response_format
    if fmt is not None and fmt.type != "text":
        if fmt.type == "json_object":
            request.constraint.json_object = True
        elif fmt.type == "json_schema":
            request.constraint.json_schema = json.dumps(fmt.json_schema)
        elif fmt.type == "grammar" and fmt.grammar is not None:
            request.constraint.grammar = fmt.grammar
    return request


def stream_request_from(request: pb.GenerateTextRequest) -> pb.StreamGenerateTextRequest:
    """The streaming request with the same prompt, sampling, constraint, tools and
    log-probability option."""
    stream = pb.StreamGenerateTextRequest(
        prompt=request.prompt, messages=request.messages, tools=request.tools
    )
    if request.HasField("top_logprobs"):
        stream.top_logprobs = request.top_logprobs
    if request.HasField("sampling"):
        stream.sampling.CopyFrom(request.sampling)
    if request.HasField("constraint"):
        stream.constraint.CopyFrom(request.constraint)
    return stream


def finish_reason(value: int) -> rest.FinishReason:
    return _FINISH.get(value, "unspecified")


def usage_from_proto(usage: pb.Usage) -> rest.Usage:
    return rest.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


def timing_from_proto(timing: pb.Timing) -> rest.Timing:
    return rest.Timing(
        time_to_first_token_ms=timing.time_to_first_token_ms,
        total_ms=timing.total_ms,
        queue_ms=timing.queue_ms,
    )


def generate_from_proto(response: pb.GenerateTextResponse) -> rest.GenerateResponse:
    return rest.GenerateResponse(
        text=response.text,
        finish_reason=finish_reason(response.finish_reason),
        usage=usage_from_proto(response.usage),
        model=response.model,
        timing=timing_from_proto(response.timing) if response.HasField("timing") else None,
    )


def _code_of(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def batch_from_proto(response: pb.BatchGenerateTextResponse) -> rest.BatchGenerateResponse:
    results: list[rest.BatchItemResult] = []
    for result in response.results:
        if result.WhichOneof("result") == "response":
            results.append(rest.BatchItemResult(response=generate_from_proto(result.response)))
        else:
            code = _code_of(result.error.code)
            results.append(
                rest.BatchItemResult(
                    error=rest.ItemError(
                        code=code.name,
                        message=result.error.message,
                        reason=result.error.reason or code.name,
                        status=http_status_for(code),
                    )
                )
            )
    return rest.BatchGenerateResponse(results=results)
