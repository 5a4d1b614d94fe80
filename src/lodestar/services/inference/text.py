"""Turning a stream of token pieces into text deltas.

A token's piece may end in the middle of a UTF-8 character, and a stop sequence may
span several tokens. ``TextStream`` holds back exactly what it cannot emit yet: the
bytes of an incomplete character, and the tail of the text that could still be the
start of a stop sequence. Text before a stop sequence is emitted; the stop sequence and
anything after it never are.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Incremental UTF-8 decoding with stop sequences (for one sequence)."""

    __slots__ = ("_decoder", "_held", "_stops", "stopped")

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Add a token's bytes; returns the text that is now safe to emit."""
        text = self._decoder.decode(piece)
        if not self._stops:
            return text
        if not text:
            return ""
        buffer = self._held + text
        cut = -1
        for stop in self._stops:
            found = buffer.find(stop)
            if found != -1 and (cut == -1 or found < cut):
                cut = found
        if cut != -1:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_stop_length(buffer)
        if keep:
            self._held = buffer[-keep:]
            return buffer[:-keep]
        self._held = ""
        return buffer

    def finish(self) -> str:
        """Everything still held (generation ended without completing a stop sequence)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _partial_stop_length(self, buffer: str) -> int:
        """Length of the longest tail of ``buffer`` that begins some stop sequence."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest
