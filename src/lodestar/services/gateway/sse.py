"""Server-Sent Events responses that keep their connection alive, shared by
``/api/v1/generate`` and the OpenAI-compatible routes.

Whenever a stream has sent nothing for ``keepalive_s`` seconds (a generation
waiting in the inference queue, a long gap between tokens), a comment line
(``: keep-alive``) goes out: SSE clients ignore comments (the SSE
specification; the openai client's decoder), while proxies with an idle
timeout see traffic and keep the connection.

The response's status waits for the stream's first event or its first
keep-alive, whichever comes first: a failure before then (a refused prompt, no
replica) still answers with its HTTP status; a failure after it becomes the
API's error event. Once the status is sent, Starlette watches the connection:
a client that leaves cancels the wait for the next event, and so the inference
call, at once, whether the generation is queued or producing tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse

from lodestar.runtime.errors import LodestarError

_log = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
# No caching, and no buffering by nginx-style proxies, so events leave as made.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

ErrorEvent = Callable[[LodestarError], bytes]


def event(data: Any, name: str | None = None) -> bytes:
    """One event: ``data`` as JSON, under ``name`` when given."""
    head = b"" if name is None else b"event: " + name.encode() + b"\n"
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class _End:
    """Marks the end of the events (a task may not end by StopAsyncIteration)."""


_END = _End()


async def _next(events: AsyncGenerator[bytes, None]) -> bytes | _End:
    return await anext(events, _END)


async def respond(
    events: AsyncGenerator[bytes, None], *, keepalive_s: float, error_event: ErrorEvent
) -> StreamingResponse:
    """The ``text/event-stream`` response relaying ``events``.

    Waits up to ``keepalive_s`` for the first event, so that a failure before
    it raises here; ``error_event`` makes the event that reports a
    ``LodestarError`` raised once the response has started.
    """
    pending = asyncio.create_task(_next(events))
    try:
        await asyncio.wait((pending,), timeout=keepalive_s)
    except BaseException:
        pending.cancel()
        _keep(pending)
        raise
    if pending.done():
        first = pending.result()
        body = _relay(events, None, first, keepalive_s, error_event)
    else:
        body = _relay(events, pending, KEEPALIVE, keepalive_s, error_event)
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)


async def _relay(
    events: AsyncGenerator[bytes, None],
    pending: asyncio.Task[bytes | _End] | None,
    first: bytes | _End,
    keepalive_s: float,
    error_event: ErrorEvent,
) -> AsyncIterator[bytes]:
    """``first``, then ``events``, with a keep-alive after every ``keepalive_s``
    of silence. The next event is awaited in a task of its own, so that the
    wait can be interrupted by the timer without cancelling the stream."""
    try:
        if isinstance(first, _End):
            return
        yield first
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(events))
            await asyncio.wait((pending,), timeout=keepalive_s)
            if not pending.done():
                yield KEEPALIVE
                continue
            done, pending = pending, None
            try:
                item = done.result()
            except LodestarError as error:
                yield error_event(error)
                return
            if isinstance(item, _End):
                return
            yield item
    finally:
        # The client left (or the server stops), or the events ended. The
        # events' own cleanup (cancelling the inference call, counting the
        # tokens) runs in a task of its own, as this one may be being
        # cancelled: either the task awaiting the next event, cancelled (the
        # events end with it), or one that closes them.
        if pending is not None:
            pending.cancel()
            _keep(pending)
        else:
            _keep(asyncio.create_task(events.aclose()))


# Tasks left to finish on their own, held here because the event loop keeps
# only weak references to tasks.
_detached: set[asyncio.Task[Any]] = set()


def _keep(task: asyncio.Task[Any]) -> None:
    _detached.add(task)
    task.add_done_callback(_settled)


def _settled(task: asyncio.Task[Any]) -> None:
    _detached.discard(task)
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.warning("a stream's cleanup failed", exc_info=error)
