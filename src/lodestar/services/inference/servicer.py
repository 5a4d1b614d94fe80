"""gRPC transport of the inference service: validation and proto ⇄ engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import trace

from lodestar import limits
from lodestar.inference.v1 import inference_service_pb2 as pb
from lodestar.inference.v1 import inference_service_pb2_grpc as pb_grpc
from lodestar.runtime import genai
from lodestar.runtime.errors import InvalidArgument, LodestarError
from lodestar.services.inference import metrics
from lodestar.services.inference.constraints import OutputConstraint
from lodestar.services.inference.engine import InferenceEngine
from lodestar.services.inference.generation import Completion, FinishReason, GenerationParams
from lodestar.services.inference.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from lodestar.services.inference.tools import (
    ToolSpec,
    arguments_value,
    call_grammar,
    call_text,
    check_tools,
    parse_tool,
)

_log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[object, object]

TOKENIZE_INLINE_CHARS = 16_384

_ROLES: dict[int, str] = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
}
_FINISH_REASONS: dict[FinishReason, pb.FinishReason.ValueType] = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}


# GenerateTextRequest and StreamGenerateTextRequest share their fields.
_GenerationMessage = pb.GenerateTextRequest | pb.StreamGenerateTextRequest


@dataclass(frozen=True)
class PreparedGeneration:
    """A validated request: prompt tokens and generation options."""

    tokens: list[int]
    params: GenerationParams
    prompt_field: str


def _in_range(value: float, low: float, high: float, *, low_open: bool = False) -> bool:
    if not math.isfinite(value):
        return False
    return (low < value if low_open else low <= value) and value <= high


def _logprobs(entries: Sequence[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=entry.token,
            logprob=entry.logprob,
            token_bytes=entry.token_bytes,
            top_logprobs=[
                pb.TopLogprob(token=top.token, logprob=top.logprob, token_bytes=top.token_bytes)
                for top in entry.top
            ],
        )
        for entry in entries
    ]


def _out_of_range(field: str, value: float, expected: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} is {value}; it must be {expected}", field=field, reason="OUT_OF_RANGE"
    )


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Every RPC of InferenceService over one continuously batched engine."""

    def __init__(self, engine: InferenceEngine, tracer: trace.Tracer | None = None) -> None:
        self._engine = engine
        self._tracer = tracer or trace.get_tracer(__name__)
        info = engine.info
        self._model = info.name
        self._model_info = pb.ModelInfo(
            name=info.name,
            path=info.path,
            context_size=info.context_size,
            max_concurrent_sequences=info.max_concurrent_sequences,
            max_queue_length=info.max_queue_length,
            gpu_layers=info.gpu_layers,
            has_chat_template=info.has_chat_template,
            vocab_size=info.vocab_size,
            default_max_tokens=info.default_max_tokens,
        )
        self.max_batch_requests = info.max_concurrent_sequences + info.max_queue_length

    # -- validation ------------------------------------------------------------------

    @staticmethod
    def _tools(request: _GenerationMessage) -> list[ToolSpec]:
        tools = [
            parse_tool(index, tool.name, tool.description, tool.parameters)
            for index, tool in enumerate(request.tools)
        ]
        check_tools(tools)
        return tools

    def _turn(self, index: int, message: pb.ChatMessage) -> dict[str, Any]:
        """One message as the chat template sees it (OpenAI's message shape)."""
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(
                f"messages[{index}].role is unset; use ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT "
                "or ROLE_TOOL",
                field=f"messages[{index}].role",
                reason="INVALID_ROLE",
            )
        calls = message.tool_calls
        if calls and role != "assistant":
            raise InvalidArgument(
                f"messages[{index}].tool_calls is set on a {role} message; only assistant "
                "messages call tools",
                field=f"messages[{index}].tool_calls",
                reason="INVALID_TOOL_CALLS",
            )
        # A message may be empty (as in OpenAI's API): the template still marks its turn.
        turn: dict[str, Any] = {"role": role, "content": message.content}
        if role == "tool" and message.tool_call_id:
            turn["tool_call_id"] = message.tool_call_id
        if calls and self._engine.model.template_renders_tools:
            turn["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments_value(call.arguments)},
                }
                for call in calls
            ]
        elif calls:
            # The template knows no tool calls: they are written as the model writes them.
            written = "\n".join(call_text(call.name, call.arguments) for call in calls)
            turn["content"] = f"{message.content}\n{written}" if message.content else written
        return turn

    def _prompt_text(
        self, request: _GenerationMessage, tools: Sequence[ToolSpec] = ()
    ) -> tuple[str, str]:
        """The text to tokenize and the field it came from."""
        prompt, messages = request.prompt, request.messages
        if prompt and messages:
            raise InvalidArgument(
                "both prompt and messages are set; set exactly one of them",
                field="prompt",
                reason="PROMPT_AND_MESSAGES",
            )
        if messages:
            turns = [self._turn(index, message) for index, message in enumerate(messages)]
            return self._engine.render_chat(turns, tools=tools), "messages"
        return prompt, "prompt"

    def _params(self, request: _GenerationMessage, tools: Sequence[ToolSpec]) -> GenerationParams:
        sampling, constraint = request.sampling, request.constraint
        defaults = self._engine.defaults
        context_size = self._engine.context_size
        max_tokens = min(defaults.max_tokens, context_size)
        if sampling.HasField("max_tokens"):
            max_tokens = sampling.max_tokens
            if not 1 <= max_tokens <= context_size:
                raise _out_of_range(
                    "sampling.max_tokens",
                    max_tokens,
                    f"between 1 and {context_size} (the context size)",
                )
        temperature = defaults.temperature
        if sampling.HasField("temperature"):
            temperature = sampling.temperature
            low, high = limits.TEMPERATURE
            if not _in_range(temperature, low, high):
                raise _out_of_range(
                    "sampling.temperature", temperature, f"between {low} and {high}"
                )
        top_p = defaults.top_p
        if sampling.HasField("top_p"):
            top_p = sampling.top_p
            low, high = limits.TOP_P
            if not _in_range(top_p, low, high, low_open=True):
                raise _out_of_range(
                    "sampling.top_p", top_p, f"greater than {low} and at most {high}"
                )
        top_k = defaults.top_k
        if sampling.HasField("top_k"):
            top_k = sampling.top_k
            if not 0 <= top_k <= limits.MAX_TOP_K:
                raise _out_of_range(
                    "sampling.top_k", top_k, f"between 0 and {limits.MAX_TOP_K} (0 turns it off)"
                )
        min_p = defaults.min_p
        if sampling.HasField("min_p"):
            min_p = sampling.min_p
            low, high = limits.MIN_P
            if not _in_range(min_p, low, high):
                raise _out_of_range("sampling.min_p", min_p, f"between {low} and {high}")
        repeat_penalty = defaults.repeat_penalty
        if sampling.HasField("repeat_penalty"):
            repeat_penalty = sampling.repeat_penalty
            low, high = limits.REPEAT_PENALTY
            if not _in_range(repeat_penalty, low, high):
                raise _out_of_range(
                    "sampling.repeat_penalty", repeat_penalty, f"between {low} and {high}"
                )
        stops = tuple(sampling.stop)
        if len(stops) > limits.MAX_STOP_SEQUENCES:
            raise InvalidArgument(
                f"sampling.stop has {len(stops)} entries; "
                f"at most {limits.MAX_STOP_SEQUENCES} are allowed",
                field="sampling.stop",
                reason="TOO_MANY_STOP_SEQUENCES",
            )
        for index, stop in enumerate(stops):
            if not stop or len(stop) > limits.MAX_STOP_CHARS:
                raise InvalidArgument(
                    f"sampling.stop[{index}] must have 1 to {limits.MAX_STOP_CHARS} characters",
                    field=f"sampling.stop[{index}]",
                    reason="INVALID_STOP_SEQUENCE",
                )
        kind = constraint.WhichOneof("kind")
        output: OutputConstraint | None = None
        if kind == "json_object" and constraint.json_object:
            output = OutputConstraint("json_object")
        elif kind == "json_schema":
            output = OutputConstraint("json_schema", constraint.json_schema)
        elif kind == "grammar":
            output = OutputConstraint("grammar", constraint.grammar)
        elif kind == "tool_call":
            choice = constraint.tool_call
            field = "constraint.tool_call"
            names = list(choice.names)
            grammar = call_grammar(tools, names, allow_text=choice.allow_text, field=field)
            output = OutputConstraint("tool_call", grammar)
        top_logprobs: int | None = None
        if request.HasField("top_logprobs"):
            top_logprobs = request.top_logprobs
            if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
                raise _out_of_range(
                    "top_logprobs", top_logprobs, f"between 0 and {MAX_TOP_LOGPROBS}"
                )
        return GenerationParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            stop=stops,
            seed=sampling.seed if sampling.HasField("seed") else None,
            constraint=output,
            top_logprobs=top_logprobs,
        )

    async def _tokenize(self, text: str) -> list[int]:
        # Long texts take milliseconds to tokenize; keep the event loop free meanwhile.
        if len(text) > TOKENIZE_INLINE_CHARS:
            return await asyncio.to_thread(self._engine.tokenize, text)
        return self._engine.tokenize(text)

    async def prepare(self, request: _GenerationMessage) -> PreparedGeneration:
        """Validate a generation request; InvalidArgument names the offending field."""
        tools = self._tools(request)
        params = self._params(request, tools)
        text, field = self._prompt_text(request, tools)
        tokens = await self._tokenize(text)
        if not tokens and field == "prompt":
            # An empty prompt asks for text from the start of a document, as in OpenAI's
            # API (whose default prompt is the start-of-text token).
            tokens = self._engine.document_start()
        if not tokens:
            raise InvalidArgument(f"{field} has no tokens", field=field, reason="EMPTY_PROMPT")
        self._engine.check_prompt_length(len(tokens), field=field)
        return PreparedGeneration(tokens, params, field)

    # -- responses ---------------------------------------------------------------------

    @staticmethod
    def _usage(completion: Completion) -> pb.Usage:
        usage = completion.usage
        return pb.Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_prompt_tokens=usage.cached_tokens,
        )

    @staticmethod
    def _timing(completion: Completion) -> pb.Timing:
        timing = completion.timing
        return pb.Timing(
            time_to_first_token_ms=timing.time_to_first_token_ms,
            total_ms=timing.total_ms,
            queue_ms=timing.queue_ms,
        )

    def _span(
        self, request: _GenerationMessage, prepared: PreparedGeneration
    ) -> AbstractContextManager[trace.Span]:
        params = prepared.params
        return genai.operation_span(
            self._tracer,
            genai.CHAT if request.messages else genai.TEXT_COMPLETION,
            self._model,
            genai.LLAMA_CPP,
            {
                "gen_ai.request.max_tokens": params.max_tokens,
                "gen_ai.request.temperature": params.temperature,
                "gen_ai.request.top_p": params.top_p,
                "gen_ai.request.top_k": params.top_k,
            },
        )

    def _record(self, span: trace.Span, completion: Completion) -> None:
        genai.record_response(
            span,
            model=self._model,
            input_tokens=completion.usage.prompt_tokens,
            output_tokens=completion.usage.completion_tokens,
            finish_reasons=(completion.finish_reason.value,),
        )

    async def _generate(
        self, request: _GenerationMessage, arrival: float
    ) -> pb.GenerateTextResponse:
        prepared = await self.prepare(request)
        with self._span(request, prepared) as span:
            stream = self._engine.stream(
                prepared.tokens,
                prepared.params,
                arrival=arrival,
                prompt_field=prepared.prompt_field,
            )
            result = await stream.collect()
            completion = result.completion
            self._record(span, completion)
        return pb.GenerateTextResponse(
            text=result.text,
            finish_reason=_FINISH_REASONS[completion.finish_reason],
            usage=self._usage(completion),
            model=self._model,
            timing=self._timing(completion),
            logprobs=_logprobs(result.logprobs),
        )

    @staticmethod
    def _count(method: str, response: pb.GenerateTextResponse | None, error: bool = False) -> None:
        if error or response is None:
            reason = "error"
        else:
            reason = pb.FinishReason.Name(response.finish_reason).removeprefix("FINISH_REASON_")
            reason = reason.lower()
        metrics.REQUESTS_TOTAL.labels(method, reason).inc()

    # -- RPCs ------------------------------------------------------------------------

    async def GenerateText(
        self, request: pb.GenerateTextRequest, context: Context
    ) -> pb.GenerateTextResponse:
        arrival = time.perf_counter()
        try:
            response = await self._generate(request, arrival)
        except asyncio.CancelledError:
            metrics.REQUESTS_TOTAL.labels("GenerateText", "cancelled").inc()
            raise
        except Exception:
            self._count("GenerateText", None, error=True)
            raise
        self._count("GenerateText", response)
        return response

    async def StreamGenerateText(
        self, request: pb.StreamGenerateTextRequest, context: Context
    ) -> AsyncIterator[pb.StreamGenerateTextResponse]:
        arrival = time.perf_counter()
        method = "StreamGenerateText"
        spans = contextlib.ExitStack()
        try:
            prepared = await self.prepare(request)
            span = spans.enter_context(self._span(request, prepared))
            stream = self._engine.stream(
                prepared.tokens,
                prepared.params,
                arrival=arrival,
                prompt_field=prepared.prompt_field,
            )
        except BaseException as error:
            spans.__exit__(type(error), error, error.__traceback__)
            metrics.REQUESTS_TOTAL.labels(method, "error").inc()
            raise
        model = self._model
        reason = "cancelled"
        try:
            async for chunk in stream:
                completion = chunk.completion
                if completion is None:
                    yield pb.StreamGenerateTextResponse(
                        delta=chunk.text, model=model, logprobs=_logprobs(chunk.logprobs)
                    )
                    continue
                reason = completion.finish_reason.value
                self._record(span, completion)
                yield pb.StreamGenerateTextResponse(
                    delta=chunk.text,
                    finish_reason=_FINISH_REASONS[completion.finish_reason],
                    usage=self._usage(completion),
                    model=model,
                    timing=self._timing(completion),
                    logprobs=_logprobs(chunk.logprobs),
                )
        except LodestarError:
            reason = "error"
            raise
        finally:
            # Covers the client cancelling, a deadline and a failed send alike.
            stream.cancel()
            metrics.REQUESTS_TOTAL.labels(method, reason).inc()
            spans.close()

    async def BatchGenerateText(
        self, request: pb.BatchGenerateTextRequest, context: Context
    ) -> pb.BatchGenerateTextResponse:
        arrival = time.perf_counter()
        items = request.requests
        if not items:
            raise InvalidArgument(
                "requests is empty; send at least one", field="requests", reason="EMPTY_BATCH"
            )
        if len(items) > self.max_batch_requests:
            raise InvalidArgument(
                f"requests has {len(items)} entries; at most {self.max_batch_requests} are "
                "allowed in one call",
                field="requests",
                reason="BATCH_TOO_LARGE",
            )
        outcomes = await asyncio.gather(
            *(self._batch_item(index, item, arrival) for index, item in enumerate(items))
        )
        return pb.BatchGenerateTextResponse(results=outcomes)

    async def _batch_item(
        self, index: int, item: pb.GenerateTextRequest, arrival: float
    ) -> pb.BatchGenerateTextResult:
        method = "BatchGenerateText"
        try:
            response = await self._generate(item, arrival)
        except LodestarError as error:
            self._count(method, None, error=True)
            field = f"requests[{index}].{error.field}" if error.field else f"requests[{index}]"
            return pb.BatchGenerateTextResult(
                error=pb.ItemError(
                    code=error.code.value[0],
                    message=f"{field}: {error.message}",
                    reason=error.reason,
                )
            )
        except asyncio.CancelledError:
            metrics.REQUESTS_TOTAL.labels(method, "cancelled").inc()
            raise
        except Exception:
            _log.exception("batch item %d failed", index)
            self._count(method, None, error=True)
            return pb.BatchGenerateTextResult(
                error=pb.ItemError(
                    code=grpc.StatusCode.INTERNAL.value[0],
                    message=f"requests[{index}]: internal error; it has been logged",
                    reason="INTERNAL",
                )
            )
        self._count(method, response)
        return pb.BatchGenerateTextResult(response=response)

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: Context
    ) -> pb.CountTokensResponse:
        if request.text and request.messages:
            raise InvalidArgument(
                "both text and messages are set; set exactly one of them",
                field="text",
                reason="TEXT_AND_MESSAGES",
            )
        if not request.text and not request.messages:
            raise InvalidArgument(
                "text is empty and no messages are set; set exactly one of text or messages",
                field="text",
                reason="EMPTY_TEXT",
            )
        if request.messages:
            probe = pb.GenerateTextRequest(messages=request.messages)
            text, _ = self._prompt_text(probe)
        else:
            text = request.text
        return pb.CountTokensResponse(
            token_count=len(await self._tokenize(text)), context_size=self._engine.context_size
        )

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(model=self._model_info)
