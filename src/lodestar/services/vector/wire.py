"""Messages between the service and its engine process: framing and coalesced writes.

A frame is a 4-byte little-endian length and a pickle. Both ends are this package in
the same installation and nothing else can reach their socket pair, so pickling is
safe. Each end writes the frames of one turn of its event loop together
(``CoalescingWriter``) and hands on the frames of one read together (``FrameReader``):
calls that start together cross in one write, and the other end sees them as one group.
"""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

_HEADER = 4


def frame(message: object) -> bytes:
    """``message`` as one frame."""
    payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return len(payload).to_bytes(_HEADER, "little") + payload


class CoalescingWriter:
    """Frames for one transport, written together at the end of the event loop's turn
    (one write, and one wake-up of the reader, for every frame of the turn)."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self._frames: list[bytes] = []

    def put(self, message: object) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame(message))

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if frames and not self.transport.is_closing():  # else the callers have failed already
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class FrameReader(asyncio.Protocol):
    """Whole messages out of a byte stream: those that complete in one read are handed to
    ``on_messages`` together, in order."""

    def __init__(
        self,
        on_messages: Callable[[list[Any]], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._on_messages = on_messages
        self._on_lost = on_lost
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        messages: list[Any] = []
        offset, end = 0, len(self._buffer)
        with memoryview(self._buffer) as view:
            while end - offset >= _HEADER:
                size = int.from_bytes(view[offset : offset + _HEADER], "little")
                stop = offset + _HEADER + size
                if stop > end:
                    break
                messages.append(pickle.loads(view[offset + _HEADER : stop]))
                offset = stop
        del self._buffer[:offset]
        if messages:
            self._on_messages(messages)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)
