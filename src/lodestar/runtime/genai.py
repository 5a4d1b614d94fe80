"""OpenTelemetry's GenAI semantic conventions, for the spans of generations and
embeddings: one span per operation, named ``{gen_ai.operation.name}
{gen_ai.request.model}``, with the request's options, the token usage and the
finish reasons, so that tracing backends that know the conventions show them
as model calls. The model runs in the serving process, so the span is INTERNAL.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final

from opentelemetry import trace

from lodestar.runtime.telemetry import tracing_enabled

OPERATION: Final = "gen_ai.operation.name"
PROVIDER: Final = "gen_ai.provider.name"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_MODEL: Final = "gen_ai.response.model"
INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
FINISH_REASONS: Final = "gen_ai.response.finish_reasons"

CHAT: Final = "chat"
TEXT_COMPLETION: Final = "text_completion"
EMBEDDINGS: Final = "embeddings"

# The engines that run the models (a provider name as the conventions spell it).
LLAMA_CPP: Final = "llama.cpp"
SENTENCE_TRANSFORMERS: Final = "sentence_transformers"


@contextmanager
def operation_span(
    tracer: trace.Tracer,
    operation: str,
    model: str,
    provider: str,
    request: Mapping[str, str | int | float] | None = None,
) -> Iterator[trace.Span]:
    """The operation's span, current while the block runs (work started inside,
    such as the decoding steps, are its children); a non-recording span while
    this process's tracing is off."""
    if not tracing_enabled():
        yield trace.INVALID_SPAN
        return
    attributes: dict[str, str | int | float] = {
        OPERATION: operation,
        REQUEST_MODEL: model,
        PROVIDER: provider,
    }
    attributes.update(request or {})
    with tracer.start_as_current_span(
        f"{operation} {model}", kind=trace.SpanKind.INTERNAL, attributes=attributes
    ) as span:
        yield span


def record_response(
    span: trace.Span,
    *,
    model: str,
    input_tokens: int,
    output_tokens: int | None = None,
    finish_reasons: Sequence[str] = (),
) -> None:
    if not span.is_recording():
        return
    span.set_attribute(RESPONSE_MODEL, model)
    span.set_attribute(INPUT_TOKENS, input_tokens)
    if output_tokens is not None:
        span.set_attribute(OUTPUT_TOKENS, output_tokens)
    if finish_reasons:
        span.set_attribute(FINISH_REASONS, list(finish_reasons))
