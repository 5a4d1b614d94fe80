"""Dynamic batching: concurrent requests share forward passes.

Callers ``submit`` a list of items and await their results. One dispatcher
task takes queued items in arrival order, up to ``max_batch_size`` at a time,
and runs each batch in a single worker thread (torch releases the GIL, so the
event loop keeps accepting requests meanwhile). While a batch runs, the next
one fills up by itself, so under load every pass is full without any waiting.

A request larger than ``max_batch_size`` is split over several batches;
small requests are merged. When the worker is idle, a batch is dispatched at
once unless the previous batch merged several callers (a sign of concurrent
traffic): then a partly filled batch lingers up to ``max_wait_s`` for as many
callers as the previous batch had. A lone caller therefore never waits.

At most ``max_queued`` items wait; beyond that callers are turned away with
RESOURCE_EXHAUSTED at once rather than queueing into their deadlines.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace

from lodestar.runtime.errors import ResourceExhausted, Unavailable
from lodestar.runtime.telemetry import tracer as get_tracer
from lodestar.services.embedding.metrics import (
    BATCH_DURATION_SECONDS,
    BATCH_SIZE,
    QUEUE_DEPTH,
    TEXTS_TOTAL,
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Request(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    results: list[R | None]
    span_context: trace.SpanContext  # the caller's span, for the batch's trace
    dispatched: int = 0  # items already handed to a batch
    pending: int = field(init=False)  # items without a result yet

    def __post_init__(self) -> None:
        self.pending = len(self.items)

    @property
    def undispatched(self) -> int:
        return len(self.items) - self.dispatched


@dataclass(frozen=True)
class _Slice(Generic[T, R]):
    request: _Request[T, R]
    start: int
    count: int


class DynamicBatcher(Generic[T, R]):
    """Merge concurrent ``submit`` calls into batches for ``run_batch``.

    ``run_batch`` gets a list of items and returns one result per item, in
    order; it runs in the batcher's worker thread. An exception it raises is
    given to every caller with an item in that batch.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        max_queued: int | None = None,
        name: str = "embedding",
        tracer: trace.Tracer | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.max_queued = max_queued
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._name = name
        self._queue: deque[_Request[T, R]] = deque()
        self._queued = 0
        self._wakeup: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._previous_batch_callers = 0
        self._tracer = tracer or get_tracer(__name__)

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return self._queued

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for ``items``, in order, computed in shared batches."""
        if self._closed:
            raise Unavailable("the embedding service is shutting down; retry on another replica")
        if not items:
            return []
        # An empty queue takes any request, so a limit below the request size cannot starve it.
        full = self.max_queued is not None and self._queued + len(items) > self.max_queued
        if full and self._queued:
            raise ResourceExhausted(
                f"{self._queued} texts are already waiting (limit {self.max_queued}); "
                "retry shortly or on another replica",
                reason="QUEUE_FULL",
                retry_after_s=1.0,
            )
        loop = asyncio.get_running_loop()
        wakeup = self._ensure_started(loop)
        request: _Request[T, R] = _Request(
            items=items,
            future=loop.create_future(),
            results=[None] * len(items),
            span_context=trace.get_current_span().get_span_context(),
        )
        self._queue.append(request)
        self._set_queued(self._queued + len(items))
        wakeup.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            # The caller is gone: its items that have not started are dropped.
            self._set_queued(self._queued - request.undispatched)
            request.dispatched = len(items)
            raise

    async def close(self) -> None:
        """Stop accepting items, finish the queued ones, stop the worker thread."""
        self._closed = True
        if self._dispatcher is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._dispatcher
            self._dispatcher = None
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)
            self._executor = None

    def _ensure_started(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._wakeup is None or self._dispatcher is None or self._dispatcher.done():
            self._wakeup = asyncio.Event()
            self._executor = self._executor or ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"{self._name}-batch"
            )
            # A fresh context: the dispatcher outlives the call that started it and
            # must not carry that call's span or request id into later batches.
            self._dispatcher = loop.create_task(
                self._dispatch(self._wakeup, self._executor), context=contextvars.Context()
            )
        return self._wakeup

    def _set_queued(self, value: int) -> None:
        self._queued = value
        QUEUE_DEPTH.set(value)

    async def _dispatch(self, wakeup: asyncio.Event, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._queued == 0:
                if self._closed:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            if (
                self.max_wait_s > 0
                and self._queued < self.max_batch_size
                and self._previous_batch_callers > 1
            ):
                await self._linger(wakeup)
            slices = self._take_batch()
            if slices:
                await self._execute(slices, loop, executor)
            else:
                self._set_queued(0)  # only abandoned requests were left; never spin

    async def _linger(self, wakeup: asyncio.Event) -> None:
        """Wait up to max_wait_s for the batch to fill or the previous callers to return."""
        deadline = time.monotonic() + self.max_wait_s
        while (
            self._queued < self.max_batch_size and len(self._queue) < self._previous_batch_callers
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Slice[T, R]]:
        slices: list[_Slice[T, R]] = []
        room = self.max_batch_size
        while self._queue and room:
            request = self._queue[0]
            if request.future.done() or request.undispatched == 0:
                self._queue.popleft()
                continue
            count = min(room, request.undispatched)
            slices.append(_Slice(request, request.dispatched, count))
            request.dispatched += count
            room -= count
            if request.undispatched == 0:
                self._queue.popleft()
        taken = self.max_batch_size - room
        self._set_queued(self._queued - taken)
        return slices

    async def _execute(
        self,
        slices: list[_Slice[T, R]],
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
    ) -> None:
        items = [item for s in slices for item in s.request.items[s.start : s.start + s.count]]
        callers = len({id(s.request) for s in slices})
        self._previous_batch_callers = callers
        # A batch belongs to its first caller's trace; every caller's span is linked.
        traced = [s.request.span_context for s in slices if s.request.span_context.is_valid]
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(traced[0]))
            if traced
            else otel_context.Context()
        )
        with self._tracer.start_as_current_span(
            f"{self._name}.batch",
            context=parent,
            links=[trace.Link(span_context) for span_context in traced],
            attributes={f"{self._name}.batch_size": len(items), f"{self._name}.callers": callers},
        ):
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(executor, self._run_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"batch function returned {len(results)} results for {len(items)} items"
                    )
            except asyncio.CancelledError:
                self._fail(slices, Unavailable("the embedding service stopped; retry"))
                raise
            except Exception as error:  # every caller of the batch learns of it
                self._fail(slices, error)
                return
            finally:
                BATCH_DURATION_SECONDS.observe(time.perf_counter() - started)
        BATCH_SIZE.observe(len(items))
        TEXTS_TOTAL.inc(len(items))
        offset = 0
        for s in slices:
            request = s.request
            if not request.future.done():
                request.results[s.start : s.start + s.count] = results[offset : offset + s.count]
                request.pending -= s.count
                if request.pending == 0:
                    request.future.set_result(cast(list[R], request.results))
            offset += s.count

    def _fail(self, slices: list[_Slice[T, R]], error: Exception) -> None:
        for s in slices:
            request = s.request
            if not request.future.done():
                request.future.set_exception(error)
            # The rest of a failed request is not worth computing.
            self._set_queued(self._queued - request.undispatched)
            request.dispatched = len(request.items)
