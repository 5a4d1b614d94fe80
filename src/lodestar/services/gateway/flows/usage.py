"""Usage recording: one event per answered request (subject, route template,
status, prompt and completion tokens, latency), sent to the analytics service
in batches by a background task.

The request path only appends a tuple to a list; the analytics service (served
by the vector service, which stores the events in its database) makes the
figures persistent and the same whichever gateway replica is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Final

import grpc
from prometheus_client import Counter

from lodestar.auth.permissions import Permission
from lodestar.runtime.errors import LodestarError
from lodestar.services.gateway.deadline import CallOptions, Deadline
from lodestar.services.gateway.state import STATE_SUBJECT, STATE_TOKENS, set_tokens
from lodestar.vector.v1 import analytics_service_pb2 as apb

if TYPE_CHECKING:
    from lodestar.services.gateway.pipeline import Generation
    from lodestar.services.gateway.schemas.inference import GenerateRequest

_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

USAGE_EVENTS = Counter(
    "lodestar_gateway_usage_events_total",
    "Usage events by outcome: recorded by the analytics service, or dropped.",
    ["outcome"],
)

_SEND_TIMEOUT_S = 10.0
_MAX_ATTEMPTS = 3
# Events are sent every second, or as soon as a batch is full: figures are at most
# a second behind, in at most one RecordUsage call a second per gateway under load.
FLUSH_INTERVAL_S: Final = 1.0
BATCH_SIZE: Final = 500  # at most limits.MAX_USAGE_EVENTS
# Events kept while the analytics service is unreachable (minutes of heavy
# traffic, a few tens of megabytes); the oldest are dropped beyond it.
MAX_PENDING: Final = 100_000

# (subject, route, status, prompt tokens, completion tokens, latency ms, unix time)
Event = tuple[str, str, int, int, int, float, float]
Sender = Callable[[apb.RecordUsageRequest, CallOptions], Awaitable[apb.RecordUsageResponse]]


class UsageRecorder:
    """Buffers events and sends them every ``interval_s`` (or sooner when a
    batch is full). Events that cannot be delivered because the service is
    unavailable are kept (up to ``max_pending``) and sent later."""

    def __init__(
        self,
        send: Sender,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        batch_size: int = BATCH_SIZE,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._send = send
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._pending: deque[tuple[Event, int]] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = False
        self._failing = False

    def record(self, event: Event) -> None:
        """Queue one event (never blocks, never raises)."""
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            USAGE_EVENTS.labels("dropped").inc()
        self._pending.append((event, 0))
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the background task after sending what is pending. A send in
        progress is let finish (cancelling it could leave its events recorded
        without the gateway knowing)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, timeout_s)
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        if self._pending:
            _log.warning("%d usage events could not be recorded", len(self._pending))
            USAGE_EVENTS.labels("dropped").inc(len(self._pending))
            self._pending.clear()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the recorder must outlive any one failure
                _log.exception("usage events could not be sent")

    async def flush(self) -> None:
        """Send the events pending now (those that fail with UNAVAILABLE stay).

        Events recorded while the batches are in flight wait for the next
        flush: under steady traffic, draining them too would turn the batching
        into a call for every few requests."""
        async with self._lock:
            retry: list[tuple[Event, int]] = []
            remaining = len(self._pending)
            while remaining > 0 and self._pending:
                size = min(self._batch_size, remaining, len(self._pending))
                remaining -= size
                batch = [self._pending.popleft() for _ in range(size)]
                if not await self._deliver(batch):
                    retry.extend((event, attempts + 1) for event, attempts in batch)
            kept = [item for item in retry if item[1] < _MAX_ATTEMPTS]
            if len(kept) < len(retry):
                USAGE_EVENTS.labels("dropped").inc(len(retry) - len(kept))
            self._pending.extendleft(reversed(kept))

    async def _deliver(self, batch: list[tuple[Event, int]]) -> bool:
        """True when the batch is settled (recorded or refused for good)."""
        request = apb.RecordUsageRequest()
        for (subject, route, status, prompt, completion, latency_ms, at), _ in batch:
            event = request.events.add(
                subject=subject,
                route=route,
                status_code=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                latency_ms=latency_ms,
            )
            event.time.FromNanoseconds(int(at * 1e9))
        options = CallOptions(Deadline.after(_SEND_TIMEOUT_S))
        try:
            await self._send(request, options)
        except LodestarError as error:
            if error.code is grpc.StatusCode.UNAVAILABLE:
                # Once per outage, not once per attempt.
                if not self._failing:
                    _log.warning("analytics service unavailable; usage events are kept")
                self._failing = True
                return False
            _log.error("usage events refused by the analytics service: %s", error.message)
            USAGE_EVENTS.labels("dropped").inc(len(batch))
            return True
        if self._failing:
            _log.info("analytics service reachable again; usage events sent")
            self._failing = False
        USAGE_EVENTS.labels("recorded").inc(len(batch))
        return True


def _route_template(scope: Scope) -> str | None:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else None


class UsageMiddleware:
    """Records one usage event per HTTP request that matched a route.

    It sits outside the gateway's own middleware, so it sees the final status
    (413s and 500s included) and the time until the last byte of a stream.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        recorder: Callable[[Scope], UsageRecorder | None],
        excluded: frozenset[str],
    ) -> None:
        self.app = app
        self._recorder = recorder
        self._excluded = excluded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = _route_template(scope)
            if template is not None:
                route = f"{scope['method']} {template}"
                recorder = self._recorder(scope)
                if recorder is not None and route not in self._excluded:
                    state = scope.get("state") or {}
                    prompt, completion = state.get(STATE_TOKENS, (0, 0))
                    recorder.record(
                        (
                            str(state.get(STATE_SUBJECT, "")),
                            route,
                            status,
                            prompt,
                            completion,
                            (time.perf_counter() - start) * 1000,
                            time.time(),
                        )
                    )


class UsageStage:
    """Always runs: leaves a generation's token counts for its usage event."""

    option = "usage"

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        return None

    async def after(self, generation: Generation) -> None:
        usage = generation.usage
        if usage is not None:
            set_tokens(generation.call.request.scope, usage.prompt_tokens, usage.completion_tokens)
