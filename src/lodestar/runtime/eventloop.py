"""Running a service's main coroutine on the chosen event loop.

uvloop (libuv) runs the same asyncio code with less CPU per network event than
the standard loop. The gateway runs on it when it is installed (its
``LODESTAR_EVENT_LOOP`` setting chooses), and so does the vector engine process;
both their packages' extras install it.

The inference service runs on it too (the same setting), for another reason: its
decode thread hands every step's tokens to the loop with ``call_soon_threadsafe``.
The standard loop's wake-up is a socket write that releases the GIL, so the woken
loop takes the GIL and the decode thread waits for it before it can start the next
``llama_decode`` (3% of that thread's time in a profile of one stream); uvloop's
wake-up keeps the GIL, and the decode thread goes straight back to decoding.

The embedding and vector services run the standard loop: grpc.aio does its I/O on
its own threads, and uvloop measured no faster there.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoop = Literal["auto", "uvloop", "asyncio"]


def loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``choice`` (None: the standard loop); ``auto`` picks
    uvloop when it is installed."""
    if choice == "asyncio":
        return None
    if choice == "auto" and importlib.util.find_spec("uvloop") is None:
        return None
    try:
        import uvloop
    except ImportError:
        raise RuntimeError("the uvloop event loop was asked for but is not installed") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: EventLoop = "auto") -> T:
    """``asyncio.run(main)`` on the event loop ``choice`` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
