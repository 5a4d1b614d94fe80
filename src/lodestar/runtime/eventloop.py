"""Running a service's main coroutine on the chosen event loop.

uvloop (libuv) runs the same asyncio code with less CPU per network event than
the standard loop. The gateway, the vector service and the vector engine process
run on it when it is installed (``LODESTAR_EVENT_LOOP`` chooses, the engine process
as its service does); their packages' extras install it. In five paired runs
of searches from 8 clients, the vector service process took 3-9% less CPU per
search on uvloop than on the standard loop (each search wakes its loop twice: for
grpc.aio's completion and for the engine process's reply).

The inference service runs on it too (the same setting), for another reason: its
decode thread hands every step's tokens to the loop with ``call_soon_threadsafe``.
The standard loop's wake-up is a socket write that releases the GIL, so the woken
loop takes the GIL and the decode thread waits for it before it can start the next
``llama_decode`` (3% of that thread's time in a profile of one stream); uvloop's
wake-up keeps the GIL, and the decode thread goes straight back to decoding.

The embedding service runs the standard loop: its time goes to the model, and
uvloop has not been measured there.
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
