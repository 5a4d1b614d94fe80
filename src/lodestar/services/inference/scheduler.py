"""Continuous batching over one llama.cpp context.

One decode thread owns the context. Each step it drops cancelled sequences, admits
waiting requests into free sequence slots, and builds one batch: the next token of
every decoding sequence plus chunks of new prompts (prompt processing shares steps with
decoding, so a new request never waits for the others to finish). ``llama_decode``
runs with the GIL released; each sequence then samples from its own row of logits with
its own sampler chain. Text deltas of one step reach asyncio in one
``call_soon_threadsafe``.

Requests never hold a lock across a generation: the asyncio side only appends to the
waiting queue and flips a cancel flag, under a lock held for microseconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from opentelemetry import trace

from lodestar.runtime.errors import Internal, LodestarError
from lodestar.services.inference import metrics
from lodestar.services.inference.generation import (
    Completion,
    Event,
    FinishReason,
    Request,
    Timing,
    Usage,
    dispatch,
)
from lodestar.services.inference.logprobs import token_logprob
from lodestar.services.inference.model import LlamaContext, LlamaModel
from lodestar.services.inference.prompt_cache import Slots

_log = logging.getLogger(__name__)


class Scheduler:
    """The waiting queue and the decode thread that turns requests into events.

    At most ``max_sequences + max_queue_length`` requests are accepted and not yet
    finished or cancelled; ``submit`` refuses the rest at once, so a burst waits in a
    bounded queue instead of piling up.
    """

    def __init__(
        self,
        model: LlamaModel,
        context: LlamaContext,
        *,
        max_sequences: int,
        max_queue_length: int,
        prompt_cache: bool,
        tracer: trace.Tracer,
    ) -> None:
        self._model = model
        self._context = context
        self._tracer = tracer
        self._capacity = max_sequences + max_queue_length
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._waiting: deque[Request] = deque()
        self._reserved = 0  # requests accepted and not yet finished or cancelled
        self._cancels = 0  # bumped on every cancel, so the loop knows when to look
        self._closing = False
        self._active: list[Request] = []  # decode thread only
        self._slots = Slots(context, max_sequences, prompt_cache=prompt_cache)  # decode thread
        self._thread = threading.Thread(target=self._run, name="inference-decode", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    def submit(self, request: Request) -> bool:
        """Queue a request; False (nothing queued) when full or closing."""
        with self._lock:
            refused = self._closing or self._reserved >= self._capacity
            if not refused:
                self._reserved += 1
                self._waiting.append(request)
                self._wakeup.notify()
                metrics.QUEUE_DEPTH.inc()
        return not refused

    def cancel(self, request: Request) -> None:
        with self._lock:
            if request.cancelled or request.done:
                return
            request.cancelled = True
            self._reserved -= 1
            self._cancels += 1
            self._wakeup.notify()

    def close(self) -> None:
        """Stop the decode loop; running and waiting generations end as cancelled."""
        with self._lock:
            self._closing = True
            self._wakeup.notify()
        self._thread.join()

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
        self._slots.forget()
        failure = Internal("the inference engine stopped unexpectedly; retry on another replica")
        events: list[Event] = []
        for request in stranded:
            try:
                events.append(self._finish(request, FinishReason.STOP, failure))
            except Exception:
                _log.exception("could not release a sequence")
                events.append((request, "", None, failure, []))
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
        pieces = self._model.pieces
        end_of_generation = self._model.end_of_generation
        sample = context.sample
        perf_counter = time.perf_counter
        slots = self._slots
        free_slots = slots.free
        active = self._active
        seen_cancels = 0
        observe_batch = metrics.DECODE_BATCH_SIZE.observe
        events: list[Event] = []
        finished: list[tuple[Request, FinishReason, LodestarError | None]] = []

        while True:
            dropped: list[Request] = []
            stopped: list[Request] = []  # cancelled while holding a slot
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
                open_slots = len(free_slots) + len(stopped)
                admitted = [
                    self._waiting.popleft() for _ in range(min(open_slots, len(self._waiting)))
                ]
                if dropped or admitted:
                    metrics.QUEUE_DEPTH.dec(len(dropped) + len(admitted))
                    metrics.ACTIVE_SEQUENCES.inc(len(admitted))

            if stopped:
                # Their slots (and cached cells) go to the requests admitted just now.
                active[:] = [r for r in active if r not in stopped]
                for request in stopped:
                    events.append(self._finish(request, FinishReason.CANCELLED, None))
            now = perf_counter()
            for request in dropped:
                finished.append((request, FinishReason.CANCELLED, None))
            for request in admitted:
                slots.assign(request)
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
                    slots.forget()
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
                            if request.top_logprobs is not None:
                                if view is None:
                                    view = context.logits(outputs)
                                request.logprobs.append(
                                    token_logprob(
                                        view[request.output], token, request.top_logprobs, pieces
                                    )
                                )
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
                            events.append((request, text, None, None, request.take_logprobs()))
                        if reason is not None:
                            finished.append((request, reason, None))

            if finished:
                for request, reason, error in finished:
                    events.append(self._finish(request, reason, error))
                done = {id(r) for r, _, _ in finished}
                active[:] = [r for r in active if id(r) not in done]
                finished.clear()
            if events:
                self._send(events)
                events = []

        # Shutting down: everything still running ends as cancelled.
        for request in active + dropped:
            events.append(self._finish(request, FinishReason.CANCELLED, None))
        active.clear()
        if events:
            self._send(events)

    def _first_token(self, request: Request, now: float) -> None:
        request.first_token_at = now
        metrics.TIME_TO_FIRST_TOKEN_SECONDS.observe(now - request.arrival)
        if request.span is not None:
            request.span.end()
        request.span = self._tracer.start_span("inference.decode", context=request.otel_parent)

    def _finish(self, request: Request, reason: FinishReason, error: LodestarError | None) -> Event:
        """Free a sequence's slot (its KV cells stay cached unless it failed) and sampler;
        the event that ends its stream."""
        if request.slot >= 0:
            self._slots.release(request, keep=error is None)
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
            decode_s = max(now - first, 1e-9)
            metrics.TOKENS_PER_SECOND.observe((request.completion_tokens - 1) / decode_s)
            metrics.TIME_PER_OUTPUT_TOKEN_SECONDS.observe(
                decode_s / (request.completion_tokens - 1)
            )
        if request.span is not None:
            request.span.set_attribute("inference.completion_tokens", request.completion_tokens)
            request.span.set_attribute("inference.finish_reason", reason.value)
            request.span.end()
            request.span = None
        return (request, text, None if error else completion, error, request.take_logprobs())

    def _send(self, events: list[Event]) -> None:
        """Hand one step's events to their event loops (one wake-up per loop)."""
        loop = events[0][0].loop
        if all(event[0].loop is loop for event in events):
            self._call_soon(loop, events)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Event]] = {}
        for event in events:
            by_loop.setdefault(event[0].loop, []).append(event)
        for target, group in by_loop.items():
            self._call_soon(target, group)

    def _call_soon(self, loop: asyncio.AbstractEventLoop, events: list[Event]) -> None:
        try:
            loop.call_soon_threadsafe(dispatch, events)
        except RuntimeError:
            # The loop is closed: nobody is listening any more; stop what still runs.
            for request, _, completion, error, _ in events:
                if completion is None and error is None:
                    self.cancel(request)
