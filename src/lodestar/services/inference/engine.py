"""Continuous batching over one llama.cpp context.

One decode thread owns the context. Each step it drops cancelled sequences, admits
waiting requests into free sequence slots, and builds one batch: the next token of
every decoding sequence plus chunks of new prompts (prompt processing shares steps with
decoding, so a new request never waits for the others to finish). ``llama_decode``
runs with the GIL released; each sequence then samples from its own row of logits with
its own sampler chain. Text deltas of one step reach asyncio in one
``call_soon_threadsafe``.

Prompt cache: a finished sequence leaves its KV cells in its slot, and the slot
remembers the tokens they hold (prompt and the answer tokens decoded so far). A new
request takes the free slot whose tokens share the longest prefix with its prompt
(the least recently used one on a tie), the cells past that prefix are dropped, and
prompt processing starts after it: a repeated system prompt or a conversation that
grows turn by turn is not processed again.

Requests never hold a lock across a generation: the asyncio side only appends to the
waiting queue and flips a cancel flag, under a lock held for microseconds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from lodestar.runtime.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    LodestarError,
    ResourceExhausted,
    Unavailable,
)
from lodestar.services.inference import metrics
from lodestar.services.inference.constraints import OutputConstraint, to_gbnf
from lodestar.services.inference.model import (
    GrammarError,
    LlamaContext,
    LlamaModel,
    Sampler,
    SamplerConfig,
)
from lodestar.services.inference.settings import InferenceSettings
from lodestar.services.inference.text import TextStream

_log = logging.getLogger(__name__)

# llama.cpp treats this seed value as "pick a random seed".
_RANDOM_SEED = 0xFFFFFFFF


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


@dataclass(frozen=True)
class StreamChunk:
    """Text since the previous chunk; ``completion`` is set on the last one."""

    text: str
    completion: Completion | None = None


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


class _Request:
    """One generation, shared by its asyncio stream and the decode thread.

    After submission the asyncio side writes only ``cancelled`` and the decode thread
    ``done`` (both under the engine's lock); everything else belongs to the decode thread.
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
    ) -> None:
        self.prompt = prompt
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


class GenerationStream:
    """The asyncio end of one generation: iterate for ``StreamChunk``s.

    Chunks coalesce: a consumer slower than the decode loop gets everything produced
    since its last read in one chunk. Leaving the iteration early (or ``cancel()``)
    cancels the generation, which frees its slot within one decode step.
    """

    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine
        self._pending: list[str] = []
        self._completion: Completion | None = None
        self._error: LodestarError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self.request: _Request | None = None

    # Called on the event loop by the engine's dispatcher.
    def _deliver(
        self, text: str, completion: Completion | None, error: LodestarError | None
    ) -> None:
        if text:
            self._pending.append(text)
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
                return StreamChunk(text, self._completion)
            if self._pending:
                text = "".join(self._pending) if len(self._pending) > 1 else self._pending[0]
                self._pending.clear()
                return StreamChunk(text)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self.cancel()
                raise
            finally:
                self._waiter = None

    @property
    def finished(self) -> bool:
        return self._completion is not None or self._error is not None

    def cancel(self) -> None:
        """Stop the generation (no-op once it has finished)."""
        if self.request is not None and not self.finished:
            self._engine._cancel(self.request)

    async def collect(self) -> GenerationResult:
        """Wait for the whole answer."""
        parts: list[str] = []
        try:
            async for chunk in self:
                parts.append(chunk.text)
                if chunk.completion is not None:
                    return GenerationResult("".join(parts), chunk.completion)
        finally:
            self.cancel()
        raise Internal("generation ended without a result")


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (slice comparisons run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def _dispatch(events: list[tuple[_Request, str, Completion | None, LodestarError | None]]) -> None:
    for request, text, completion, error in events:
        request.stream._deliver(text, completion, error)


class InferenceEngine:
    """Generates text for many concurrent requests with one llama.cpp context."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        context_size: int = 2048,
        max_concurrent_sequences: int = 8,
        max_queue_length: int = 64,
        batch_size: int = 256,
        threads: int = 2,
        flash_attention: bool = True,
        prompt_cache: bool = True,
        defaults: SamplingDefaults | None = None,
        own_model: bool = False,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.model = model
        self._tracer = tracer or trace.get_tracer(__name__)
        self.defaults = defaults or SamplingDefaults()
        self._own_model = own_model
        self._context = LlamaContext(
            model,
            context_size=context_size,
            max_sequences=max_concurrent_sequences,
            batch_size=max(batch_size, max_concurrent_sequences),
            threads=threads,
            flash_attention=flash_attention,
        )
        self.context_size = self._context.sequence_context
        self.max_concurrent_sequences = max_concurrent_sequences
        self.max_queue_length = max_queue_length
        self.prompt_cache = prompt_cache
        self.info = EngineInfo(
            name=model.name,
            path=model.path,
            context_size=self.context_size,
            max_concurrent_sequences=max_concurrent_sequences,
            max_queue_length=max_queue_length,
            gpu_layers=model.gpu_layers,
            has_chat_template=model.chat_template is not None,
            vocab_size=model.vocab_size,
            default_max_tokens=min(self.defaults.max_tokens, self.context_size),
        )
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[_Request] = deque()
        self._reserved = 0  # requests accepted and not yet finished or cancelled
        self._cancels = 0  # bumped on every cancel, so the loop knows when to look
        self._closing = False
        self._active: list[_Request] = []  # decode thread only
        # The prompt cache (decode thread only): the tokens each slot's KV cells hold
        # and when the slot was last released.
        self._slot_tokens: list[list[int]] = [[] for _ in range(max_concurrent_sequences)]
        self._slot_released = [0] * max_concurrent_sequences
        self._releases = 0
        self._random = random.SystemRandom()
        self._thread = threading.Thread(target=self._run, name="inference-decode", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(
        cls, settings: InferenceSettings, model: LlamaModel | None = None
    ) -> InferenceEngine:
        """An engine as the settings describe it; loads the model unless one is given."""
        own = model is None
        if model is None:
            model = LlamaModel(
                settings.model_path, gpu_layers=settings.gpu_layers, name=settings.model_name
            )
        return cls(
            model,
            context_size=settings.context_size,
            max_concurrent_sequences=settings.max_concurrent_sequences,
            max_queue_length=settings.max_queue_length,
            batch_size=settings.batch_size,
            threads=settings.effective_threads,
            flash_attention=settings.flash_attention,
            prompt_cache=settings.prompt_cache,
            defaults=SamplingDefaults(
                max_tokens=settings.default_max_tokens,
                temperature=settings.default_temperature,
                top_p=settings.default_top_p,
                top_k=settings.default_top_k,
                min_p=settings.default_min_p,
                repeat_penalty=settings.default_repeat_penalty,
                repeat_last_n=settings.repeat_last_n,
            ),
            own_model=own,
        )

    # -- prompts -------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def render_chat(self, messages: Sequence[tuple[str, str]], *, field: str = "messages") -> str:
        """The conversation in the model's chat template; InvalidArgument if it rejects it."""
        if self.model.chat_template is None:
            raise FailedPrecondition(
                f"the model {self.model.name} has no chat template; send a prompt instead",
                field=field,
                reason="NO_CHAT_TEMPLATE",
            )
        try:
            return self.model.render_chat(messages)
        except Exception as error:
            raise InvalidArgument(
                f"{field} cannot be rendered with the model's chat template: {error}",
                field=field,
                reason="INVALID_CONVERSATION",
            ) from None

    def check_prompt_length(self, prompt_tokens: int, *, field: str = "prompt") -> None:
        if prompt_tokens >= self.context_size:
            raise InvalidArgument(
                f"{field} is {prompt_tokens} tokens but the context holds {self.context_size} "
                f"tokens for prompt and answer together; shorten it to fewer than "
                f"{self.context_size} tokens",
                field=field,
                reason="PROMPT_TOO_LONG",
                metadata={
                    "prompt_tokens": str(prompt_tokens),
                    "context_size": str(self.context_size),
                },
            )

    # -- generation ------------------------------------------------------------------

    def stream(
        self,
        prompt: list[int],
        params: GenerationParams,
        *,
        arrival: float | None = None,
        prompt_field: str = "prompt",
    ) -> GenerationStream:
        """Start a generation; ResourceExhausted at once when the queue is full."""
        if not prompt:
            raise InvalidArgument(
                f"{prompt_field} is empty", field=prompt_field, reason="EMPTY_PROMPT"
            )
        self.check_prompt_length(len(prompt), field=prompt_field)
        sampler = self._make_sampler(params)
        loop = asyncio.get_running_loop()
        stream = GenerationStream(self)
        request = _Request(
            prompt,
            sampler,
            params.max_tokens,
            params.stop,
            stream,
            loop,
            time.perf_counter() if arrival is None else arrival,
        )
        stream.request = request
        with self._lock:
            capacity = self.max_concurrent_sequences + self.max_queue_length
            refused = self._closing or self._reserved >= capacity
            if not refused:
                self._reserved += 1
                self._waiting.append(request)
                self._wakeup.notify()
                metrics.QUEUE_DEPTH.inc()
        if refused:
            sampler.free()
            if self._closing:
                raise Unavailable("the inference service is shutting down", reason="SHUTTING_DOWN")
            raise ResourceExhausted(
                f"all {self.max_concurrent_sequences} sequence slots are busy and "
                f"{self.max_queue_length} requests are already waiting; retry later",
                reason="QUEUE_FULL",
                retry_after_s=1.0,
            )
        return stream

    async def generate(
        self, prompt: list[int], params: GenerationParams, *, arrival: float | None = None
    ) -> GenerationResult:
        return await self.stream(prompt, params, arrival=arrival).collect()

    def _make_sampler(self, params: GenerationParams) -> Sampler:
        grammar: str | None = None
        if params.constraint is not None:
            grammar = to_gbnf(params.constraint)
        seed = params.seed
        if seed is None:
            seed = self._random.getrandbits(32)
        try:
            return self.model.make_sampler(
                SamplerConfig(
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    min_p=params.min_p,
                    repeat_penalty=params.repeat_penalty,
                    repeat_last_n=self.defaults.repeat_last_n,
                    seed=seed % _RANDOM_SEED,
                    grammar=grammar,
                )
            )
        except GrammarError as error:
            assert params.constraint is not None
            field = params.constraint.field
            raise InvalidArgument(
                f"{field} is not a valid grammar: {error}", field=field, reason="INVALID_GRAMMAR"
            ) from None

    def _cancel(self, request: _Request) -> None:
        with self._lock:
            if request.cancelled or request.done:
                return
            request.cancelled = True
            self._reserved -= 1
            self._cancels += 1
            self._wakeup.notify()

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop the decode loop (running generations end as cancelled) and free memory."""
        with self._lock:
            self._closing = True
            self._wakeup.notify()
        self._thread.join()
        self._context.close()
        if self._own_model:
            self.model.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- the decode loop (its own thread) --------------------------------------------------

    def _run(self) -> None:
        try:
            self._warm_up()
            self._loop()
        except BaseException:
            _log.exception("the decode loop failed; generations end with an error")
            self._fail_everything()

    def _fail_everything(self) -> None:
        """After a crash of the loop: refuse new work and end every stream with an error."""
        with self._lock:
            self._closing = True
            stranded = [*self._active, *self._waiting]
            metrics.QUEUE_DEPTH.dec(len(self._waiting))
            self._waiting.clear()
        self._active.clear()
        self._forget_cache()
        failure = Internal("the inference engine stopped unexpectedly; retry on another replica")
        events: list[tuple[_Request, str, Completion | None, LodestarError | None]] = []
        for request in stranded:
            try:
                events.append(self._finish(request, FinishReason.STOP, failure, []))
            except Exception:
                _log.exception("could not release a sequence")
                events.append((request, "", None, failure))
        if events:
            self._send(events)

    def _warm_up(self) -> None:
        """One tiny decode, so that the first request does not pay for llama.cpp's lazy
        allocations and thread start-up."""
        batch = self._context.batch
        batch.tokens[0], batch.positions[0], batch.seq_ids[0], batch.logits[0] = 0, 0, 0, 1
        if self._context.decode(1) != 0:
            _log.warning("the warm-up decode failed")
        self._context.forget(0)

    def _loop(self) -> None:
        context = self._context
        batch = context.batch
        tokens, positions, seq_ids, logits = (
            batch.tokens,
            batch.positions,
            batch.seq_ids,
            batch.logits,
        )
        capacity = context.batch_size
        n_ctx = context.sequence_context
        pieces = self.model.pieces
        end_of_generation = self.model.end_of_generation
        sample = context.sample
        perf_counter = time.perf_counter
        free_slots = list(range(self.max_concurrent_sequences - 1, -1, -1))
        active = self._active
        seen_cancels = 0
        observe_batch = metrics.DECODE_BATCH_SIZE.observe
        events: list[tuple[_Request, str, Completion | None, LodestarError | None]] = []
        finished: list[tuple[_Request, FinishReason, LodestarError | None]] = []

        while True:
            dropped: list[_Request] = []
            stopped: list[_Request] = []  # cancelled while holding a slot
            with self._lock:
                while not self._closing and not active and not self._waiting:
                    self._wakeup.wait()
                if self._closing:
                    dropped.extend(self._waiting)
                    self._waiting.clear()
                    metrics.QUEUE_DEPTH.dec(len(dropped))
                    break
                if self._cancels != seen_cancels:
                    seen_cancels = self._cancels
                    if any(r.cancelled for r in self._waiting):
                        dropped.extend(r for r in self._waiting if r.cancelled)
                        self._waiting = deque(r for r in self._waiting if not r.cancelled)
                    stopped = [r for r in active if r.cancelled]
                slots = len(free_slots) + len(stopped)
                admitted = [self._waiting.popleft() for _ in range(min(slots, len(self._waiting)))]
                if dropped or admitted:
                    metrics.QUEUE_DEPTH.dec(len(dropped) + len(admitted))
                    metrics.ACTIVE_SEQUENCES.inc(len(admitted))

            if stopped:
                # Their slots (and cached cells) go to the requests admitted just now.
                active[:] = [r for r in active if r not in stopped]
                for request in stopped:
                    events.append(self._finish(request, FinishReason.CANCELLED, None, free_slots))
            now = perf_counter()
            for request in dropped:
                finished.append((request, FinishReason.CANCELLED, None))
            for request in admitted:
                self._assign_slot(request, free_slots)
                request.admitted_at = now
                request.span = self._tracer.start_span(
                    "inference.prompt",
                    context=request.otel_parent,
                    attributes={
                        "inference.prompt_tokens": len(request.prompt),
                        "inference.cached_tokens": request.cached_tokens,
                        "inference.slot": request.slot,
                    },
                )
                active.append(request)

            # Build the step: one token per decoding sequence, then prompt chunks.
            n = 0
            for request in active:
                if request.prompt_position == len(request.prompt):
                    request.fed.append(request.last_token)
                    tokens[n] = request.last_token
                    positions[n] = request.n_past
                    seq_ids[n] = request.slot
                    logits[n] = 1
                    request.row = request.output = n
                    request.n_past += 1
                    n += 1
            decoding = outputs = n
            for request in active:
                if n >= capacity:
                    break
                start = request.prompt_position
                remaining = len(request.prompt) - start
                if remaining == 0:
                    continue
                size = min(remaining, capacity - n)
                end = n + size
                tokens[n:end] = request.prompt[start : start + size]
                positions[n:end] = range(request.n_past, request.n_past + size)
                seq_ids[n:end] = request.slot
                logits[n:end] = 0
                request.prompt_position += size
                request.n_past += size
                if size == remaining:
                    logits[end - 1] = 1
                    request.row = end - 1
                    request.output = outputs
                    outputs += 1
                n = end

            if n:
                status = context.decode(n)
                if decoding:
                    observe_batch(decoding)
                if status != 0:
                    failure = Internal(f"llama_decode failed with status {status}")
                    _log.error(
                        "llama_decode failed with status %d for %d sequences", status, len(active)
                    )
                    for request in active:
                        finished.append((request, FinishReason.STOP, failure))
                    active.clear()
                    # The KV state after a failed decode is unknown: start afresh.
                    self._forget_cache()
                else:
                    now = perf_counter()
                    view = None
                    for request in active:
                        row = request.row
                        if row < 0:
                            continue
                        request.row = -1
                        if request.sampler.greedy:
                            if view is None:
                                view = context.logits(outputs)
                            token = int(view[request.output].argmax())
                        else:
                            token = sample(request.sampler, row)
                        if request.first_token_at == 0.0:
                            self._first_token(request, now)
                        reason: FinishReason | None = None
                        text = ""
                        if token in end_of_generation:
                            reason = FinishReason.STOP
                        else:
                            request.completion_tokens += 1
                            request.last_token = token
                            text = request.text.push(pieces[token])
                            if request.text.stopped:
                                reason = FinishReason.STOP
                            elif (
                                request.completion_tokens >= request.max_tokens
                                or request.n_past + 1 >= n_ctx
                            ):
                                reason = FinishReason.LENGTH
                        if text:
                            events.append((request, text, None, None))
                        if reason is not None:
                            finished.append((request, reason, None))

            if finished:
                for request, reason, error in finished:
                    events.append(self._finish(request, reason, error, free_slots))
                done = {id(r) for r, _, _ in finished}
                active[:] = [r for r in active if id(r) not in done]
                finished.clear()
            if events:
                self._send(events)
                events = []

        # Shutting down: everything still running ends as cancelled.
        for request in active + dropped:
            events.append(self._finish(request, FinishReason.CANCELLED, None, free_slots))
        active.clear()
        if events:
            self._send(events)

    def _assign_slot(self, request: _Request, free_slots: list[int]) -> None:
        """Give an admitted request the free slot that caches most of its prompt.

        The slot's cells past the shared prefix are dropped and the prompt starts after
        it; at least the last prompt token is always decoded again, for its logits.
        """
        prompt = request.prompt
        best, shared = free_slots[-1], -1
        for slot in reversed(free_slots):
            common = _common_prefix(self._slot_tokens[slot], prompt) if self.prompt_cache else 0
            if common > shared or (
                common == shared and self._slot_released[slot] < self._slot_released[best]
            ):
                best, shared = slot, common
        free_slots.remove(best)
        self._slot_tokens[best] = []
        cached = self._context.keep_prefix(best, min(shared, len(prompt) - 1))
        request.slot = best
        request.n_past = request.prompt_position = request.cached_tokens = cached

    def _release_slot(self, request: _Request, free_slots: list[int], *, keep: bool) -> None:
        """Return a request's slot; with ``keep`` (and the prompt cache on) its KV cells
        stay, remembered by the tokens they hold."""
        slot = request.slot
        cached: list[int] = []
        if keep and self.prompt_cache:
            cached = request.prompt[: request.prompt_position] + request.fed
            if len(cached) != request.n_past:  # not what the cells hold: do not trust them
                cached = []
        if not cached:
            self._context.forget(slot)
        self._slot_tokens[slot] = cached
        self._releases += 1
        self._slot_released[slot] = self._releases
        free_slots.append(slot)
        request.slot = -1

    def _forget_cache(self) -> None:
        """Drop every KV cell and what the slots remember (after an unknown KV state)."""
        self._context.clear()
        for tokens in self._slot_tokens:
            tokens.clear()

    def _first_token(self, request: _Request, now: float) -> None:
        request.first_token_at = now
        metrics.TIME_TO_FIRST_TOKEN_SECONDS.observe(now - request.arrival)
        if request.span is not None:
            request.span.end()
        request.span = self._tracer.start_span("inference.decode", context=request.otel_parent)

    def _finish(
        self,
        request: _Request,
        reason: FinishReason,
        error: LodestarError | None,
        free_slots: list[int],
    ) -> tuple[_Request, str, Completion | None, LodestarError | None]:
        """Free a sequence's slot (its KV cells stay cached unless it failed) and sampler;
        the event that ends its stream."""
        if request.slot >= 0:
            self._release_slot(request, free_slots, keep=error is None)
            metrics.ACTIVE_SEQUENCES.dec()
        request.sampler.free()
        with self._lock:
            request.done = True
            if not request.cancelled:
                self._reserved -= 1
        text = request.text.finish() if reason is not FinishReason.CANCELLED else ""
        now = time.perf_counter()
        first = request.first_token_at
        completion = Completion(
            finish_reason=reason,
            usage=Usage(len(request.prompt), request.completion_tokens, request.cached_tokens),
            timing=Timing(
                time_to_first_token_ms=(first - request.arrival) * 1000 if first else 0.0,
                total_ms=(now - request.arrival) * 1000,
                queue_ms=((request.admitted_at or now) - request.arrival) * 1000,
            ),
        )
        if request.completion_tokens:
            metrics.COMPLETION_TOKENS_TOTAL.inc(request.completion_tokens)
        if request.admitted_at:
            metrics.PROMPT_TOKENS_TOTAL.inc(request.prompt_position)
            if request.cached_tokens:
                metrics.CACHED_PROMPT_TOKENS_TOTAL.inc(request.cached_tokens)
        if request.completion_tokens > 1 and first:
            metrics.TOKENS_PER_SECOND.observe(
                (request.completion_tokens - 1) / max(now - first, 1e-9)
            )
        if request.span is not None:
            request.span.set_attribute("inference.completion_tokens", request.completion_tokens)
            request.span.set_attribute("inference.finish_reason", reason.value)
            request.span.end()
            request.span = None
        return (request, text, None if error else completion, error)

    def _send(
        self, events: list[tuple[_Request, str, Completion | None, LodestarError | None]]
    ) -> None:
        """Hand one step's events to their event loops (one wake-up per loop)."""
        loop = events[0][0].loop
        if all(event[0].loop is loop for event in events):
            self._call_soon(loop, events)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for event in events:
            by_loop.setdefault(event[0].loop, []).append(event)
        for target, group in by_loop.items():
            self._call_soon(target, group)

    def _call_soon(self, loop: asyncio.AbstractEventLoop, events: list[Any]) -> None:
        try:
            loop.call_soon_threadsafe(_dispatch, events)
        except RuntimeError:
            # The loop is closed: nobody is listening any more; stop what still runs.
            for request, _, completion, error in events:
                if completion is None and error is None:
                    self._cancel(request)
