"""One generation as its caller and the decode thread see it.

The caller describes it (``GenerationParams``) and reads it back through a
``GenerationStream`` of ``StreamChunk``s that ends with a ``Completion``. Between
them, a ``Request`` is the state the decode thread advances; the two sides meet
only through ``Event``s, which the decode thread hands to the stream's event loop.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import trace

from lodestar.runtime.errors import Internal, LodestarError
from lodestar.services.inference.constraints import OutputConstraint
from lodestar.services.inference.logprobs import TokenLogprob
from lodestar.services.inference.model import Sampler
from lodestar.services.inference.text import TextStream


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingDefaults:
    """Values a request gets for the sampling options it leaves unset."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64


@dataclass(frozen=True)
class GenerationParams:
    """Options of one generation (already validated by the caller)."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    constraint: OutputConstraint | None = None
    # Alternatives per token to report; None reports no log probabilities.
    top_logprobs: int | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens of one generation; ``cached_tokens`` of the prompt came from the prompt cache."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timing:
    """Milliseconds from the request's arrival: to its first token, to its end, in queue."""

    time_to_first_token_ms: float
    total_ms: float
    queue_ms: float


@dataclass(frozen=True)
class Completion:
    """How a generation ended (the text itself came as deltas)."""

    finish_reason: FinishReason
    usage: Usage
    timing: Timing


@dataclass(frozen=True)
class GenerationResult:
    text: str
    completion: Completion
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class StreamChunk:
    """Text since the previous chunk; ``completion`` is set on the last one.

    ``logprobs`` are the tokens generated since the previous chunk, when asked for.
    """

    text: str
    completion: Completion | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    name: str
    path: str
    context_size: int
    max_concurrent_sequences: int
    max_queue_length: int
    gpu_layers: int
    has_chat_template: bool
    vocab_size: int
    default_max_tokens: int


class Request:
    """One generation, shared by its asyncio stream and the decode thread.

    After submission the asyncio side writes only ``cancelled`` and the decode thread
    ``done`` (both under the scheduler's lock); everything else belongs to the decode
    thread.
    """

    __slots__ = (
        "admitted_at",
        "arrival",
        "cached_tokens",
        "cancelled",
        "completion_tokens",
        "done",
        "fed",
        "first_token_at",
        "last_token",
        "logprobs",
        "loop",
        "max_tokens",
        "n_past",
        "otel_parent",
        "output",
        "prompt",
        "prompt_position",
        "row",
        "sampler",
        "slot",
        "span",
        "stream",
        "text",
        "top_logprobs",
    )

    def __init__(
        self,
        prompt: list[int],
        sampler: Sampler,
        max_tokens: int,
        stops: Sequence[str],
        stream: GenerationStream,
        loop: asyncio.AbstractEventLoop,
        arrival: float,
        top_logprobs: int | None = None,
    ) -> None:
        self.prompt = prompt
        self.top_logprobs = top_logprobs
        # Entries of tokens not yet handed to the stream (decode thread only).
        self.logprobs: list[TokenLogprob] = []
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.text = TextStream(stops)
        self.stream = stream
        self.loop = loop
        self.arrival = arrival
        self.cancelled = False
        self.done = False
        self.otel_parent = otel_context.get_current()
        self.admitted_at = 0.0
        self.first_token_at = 0.0
        self.slot = -1
        self.n_past = 0
        self.prompt_position = 0
        self.row = -1
        self.output = -1
        self.last_token = -1
        self.fed: list[int] = []  # generated tokens decoded into the KV cache
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.span: trace.Span | None = None

    def take_logprobs(self) -> list[TokenLogprob]:
        """The entries not yet sent, handed over with the event that carries their text."""
        if not self.logprobs:
            return []
        taken = self.logprobs
        self.logprobs = []
        return taken


# What the decode thread tells a stream: new text (and its tokens' log probabilities,
# when asked for), and on the last event either the completion or the error that
# ended it.
Event = tuple[Request, str, Completion | None, LodestarError | None, list[TokenLogprob]]


class GenerationStream:
    """The asyncio end of one generation: iterate for ``StreamChunk``s.

    Chunks coalesce: a consumer slower than the decode loop gets everything produced
    since its last read in one chunk. Leaving the iteration early (or ``cancel()``)
    cancels the generation, which frees its slot within one decode step.
    """

    def __init__(self, cancel: Callable[[Request], None]) -> None:
        self._cancel = cancel
        self._pending: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._completion: Completion | None = None
        self._error: LodestarError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self.request: Request | None = None

    # Called on the event loop by ``dispatch``.
    def _deliver(
        self,
        text: str,
        completion: Completion | None,
        error: LodestarError | None,
        logprobs: list[TokenLogprob],
    ) -> None:
        if text:
            self._pending.append(text)
        if logprobs:
            self._logprobs.extend(logprobs)
        if completion is not None:
            self._completion = completion
        if error is not None:
            self._error = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamChunk:
        while True:
            if self._done:
                raise StopAsyncIteration
            if self._error is not None:
                self._done = True
                raise self._error
            if self._completion is not None:
                self._done = True
                text = "".join(self._pending)
                self._pending.clear()
                return StreamChunk(text, self._completion, self._take_logprobs())
            if self._pending or self._logprobs:
                text = self._pending[0] if len(self._pending) == 1 else "".join(self._pending)
                self._pending.clear()
                return StreamChunk(text, logprobs=self._take_logprobs())
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self.cancel()
                raise
            finally:
                self._waiter = None

    def _take_logprobs(self) -> tuple[TokenLogprob, ...]:
        if not self._logprobs:
            return ()
        taken = tuple(self._logprobs)
        self._logprobs.clear()
        return taken

    @property
    def finished(self) -> bool:
        return self._completion is not None or self._error is not None

    def cancel(self) -> None:
        """Stop the generation (no-op once it has finished)."""
        if self.request is not None and not self.finished:
            self._cancel(self.request)

    async def collect(self) -> GenerationResult:
        """Wait for the whole answer."""
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        try:
            async for chunk in self:
                parts.append(chunk.text)
                logprobs.extend(chunk.logprobs)
                if chunk.completion is not None:
                    return GenerationResult("".join(parts), chunk.completion, tuple(logprobs))
        finally:
            self.cancel()
        raise Internal("generation ended without a result")


def dispatch(events: list[Event]) -> None:
    """Deliver events to their streams; runs on the streams' event loop."""
    for request, text, completion, error, logprobs in events:
        request.stream._deliver(text, completion, error, logprobs)
