"""Running a service's main coroutine on the event loop its settings choose.

uvloop (libuv) runs the same asyncio code with less CPU per network event than the
standard loop. ``LODESTAR_EVENT_LOOP`` chooses for every service (``auto``: uvloop
where it is installed; the inference, vector and gateway extras install it), and the
vector engine process follows its service. The vector service and the gateway wake
their loop several times per request; the inference service's decode thread hands
every step's tokens to the loop with ``call_soon_threadsafe``, and uvloop's wake-up,
unlike the standard loop's socket write, does not release the GIL, so the decode
thread goes straight back to decoding. The embedding service spends its time in the
model and runs the standard loop unless the variable is set.
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
