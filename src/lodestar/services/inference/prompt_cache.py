"""The context's sequence slots and the prompt cache they hold.

A finished sequence leaves its KV cells in its slot, and the slot remembers the
tokens they hold (prompt and the answer tokens decoded so far). A new request takes
the free slot whose tokens share the longest prefix with its prompt (the least
recently used one on a tie), the cells past that prefix are dropped, and prompt
processing starts after it: a repeated system prompt or a conversation that grows
turn by turn is not processed again.
"""

from __future__ import annotations

from lodestar.services.inference.generation import Request
from lodestar.services.inference.model import LlamaContext


def common_prefix(a: list[int], b: list[int]) -> int:
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


class Slots:
    """Free sequence slots and the tokens each slot's KV cells hold.

    Decode thread only. With ``prompt_cache`` off every slot is forgotten on release,
    so a request always starts from an empty slot.
    """

    def __init__(self, context: LlamaContext, count: int, *, prompt_cache: bool) -> None:
        self._context = context
        self.prompt_cache = prompt_cache
        self.free = list(range(count - 1, -1, -1))
        self._tokens: list[list[int]] = [[] for _ in range(count)]
        self._released = [0] * count  # when each slot was last released
        self._releases = 0

    def assign(self, request: Request) -> None:
        """Give an admitted request the free slot that caches most of its prompt.

        The slot's cells past the shared prefix are dropped and the prompt starts after
        it; at least the last prompt token is always decoded again, for its logits.
        """
        prompt = request.prompt
        free = self.free
        best, shared = free[-1], -1
        for slot in reversed(free):
            common = common_prefix(self._tokens[slot], prompt) if self.prompt_cache else 0
            if common > shared or (
                common == shared and self._released[slot] < self._released[best]
            ):
                best, shared = slot, common
        free.remove(best)
        self._tokens[best] = []
        cached = self._context.keep_prefix(best, min(shared, len(prompt) - 1))
        request.slot = best
        request.n_past = request.prompt_position = request.cached_tokens = cached

    def release(self, request: Request, *, keep: bool) -> None:
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
        self._tokens[slot] = cached
        self._releases += 1
        self._released[slot] = self._releases
        self.free.append(slot)
        request.slot = -1

    def forget(self) -> None:
        """Drop every KV cell and what the slots remember (after an unknown KV state)."""
        self._context.clear()
        for tokens in self._tokens:
            tokens.clear()
