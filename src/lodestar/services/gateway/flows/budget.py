"""Fitting passages and examples into the model's context, counted in tokens.

The rule: prompt tokens + max_tokens (+ a small safety margin) never exceed the
context size. Every prompt that is sent has been counted by the inference
service's own tokenizer (CountTokens on the very text or conversation it will
render), so the budget holds exactly; estimates only choose what to try.

The pieces (passages best first, then examples) are tried in order: all of
them (one count, the usual case), else as many as an estimate from that count
and the prompt's own allows, dropping the last until the count fits; if no
whole piece fits, the first one is cut down to fit.

``fit_into_request`` applies this to an inference request: every stage that
adds to a prompt (retrieval and feedback, history, memory) fits through it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, Self, TypeVar

from lodestar.inference.v1 import inference_service_pb2 as ipb
from lodestar.runtime.errors import InvalidArgument
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.flows import prompting
from lodestar.services.gateway.flows.prompting import Turn
from lodestar.services.gateway.flows.runtime import FlowsRuntime

R = TypeVar("R")

# Tokens kept free between the prompt plus max_tokens and the context size: the
# margin the rule above calls small.
PROMPT_SAFETY_TOKENS: Final = 8

# Estimates are made a little pessimistic so that the verifying count usually passes.
_ESTIMATE_MARGIN = 1.15
_MIN_CUT_CHARS = 64


class Piece(Protocol):
    @property
    def size(self) -> int: ...

    def cut(self, chars: int) -> Self: ...


P = TypeVar("P", bound=Piece)


@dataclass(frozen=True, slots=True)
class Fitted(Generic[P, R]):
    pieces: list[P]
    rendered: R
    prompt_tokens: int
    # Pieces left out for lack of room (a cut piece counts as kept).
    dropped: int
    counts: int


class ContextOverflow(InvalidArgument):
    def __init__(self, prompt_tokens: int, max_tokens: int, context_size: int) -> None:
        super().__init__(
            f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}; together "
            f"they exceed the model's context of {context_size} tokens; shorten the prompt "
            "or lower max_tokens",
            field="max_tokens",
            reason="CONTEXT_OVERFLOW",
            metadata={
                "prompt_tokens": str(prompt_tokens),
                "max_tokens": str(max_tokens),
                "context_size": str(context_size),
            },
        )


async def fit(
    pieces: Sequence[P],
    render: Callable[[Sequence[P]], R],
    count: Callable[[R], Awaitable[int]],
    *,
    limit: int,
    max_tokens: int,
    context_size: int,
) -> Fitted[P, R]:
    """The most of ``pieces`` (a prefix-preferring subset) whose rendered prompt
    counts at most ``limit`` tokens. ContextOverflow if even none fits."""
    base_rendered = render([])
    if not pieces:
        base = await count(base_rendered)
        if base > limit:
            raise ContextOverflow(base, max_tokens, context_size)
        return Fitted([], base_rendered, base, 0, 1)
    full_rendered = render(pieces)
    full = await count(full_rendered)
    if full <= limit:
        return Fitted(list(pieces), full_rendered, full, 0, 1)
    base = await count(base_rendered)
    counts = 2
    if base > limit:
        raise ContextOverflow(base, max_tokens, context_size)

    total_chars = sum(max(1, p.size) for p in pieces)
    per_char = max(full - base, 1) / total_chars
    room = limit - base
    chosen: list[P] = []
    estimate = 0.0
    for piece in pieces:
        cost = max(1, piece.size) * per_char * _ESTIMATE_MARGIN
        if estimate + cost <= room:
            chosen.append(piece)
            estimate += cost
    while chosen:
        rendered = render(chosen)
        tokens = await count(rendered)
        counts += 1
        if tokens <= limit:
            return Fitted(chosen, rendered, tokens, len(pieces) - len(chosen), counts)
        chosen.pop()

    chars = int(room / (per_char * _ESTIMATE_MARGIN))
    while chars >= _MIN_CUT_CHARS:
        cut = pieces[0].cut(chars)
        rendered = render([cut])
        tokens = await count(rendered)
        counts += 1
        if tokens <= limit:
            return Fitted([cut], rendered, tokens, len(pieces) - 1, counts)
        chars = int(chars * 0.7)
    return Fitted([], base_rendered, base, len(pieces), counts)


# A rendered prompt: a text for a model without a chat template, else turns.
Prompt = str | list[Turn]


@dataclass(frozen=True, slots=True)
class Room:
    """The model's context and the most prompt tokens a request leaves in it."""

    context_size: int
    max_tokens: int
    limit: int


async def fit_into_request(
    call: Call,
    runtime: FlowsRuntime,
    request: ipb.GenerateTextRequest,
    pieces: Sequence[P],
    render: Callable[[Sequence[P]], Prompt],
    *,
    share: float = 1.0,
) -> tuple[Fitted[P, Prompt], Room]:
    """Fit the most of ``pieces`` into ``share`` of the room that ``request``
    (its max_tokens, else the model's default) leaves in the model's context,
    counted by the inference service, and rewrite the request's prompt or
    messages with what ``render`` makes of them. A share below 1 leaves the
    rest for stages that run later."""
    info = await runtime.inference_info(call)
    context_size = info.context_size
    max_tokens = (
        request.sampling.max_tokens
        if request.sampling.HasField("max_tokens")
        else min(info.default_max_tokens or context_size, context_size)
    )
    room = Room(context_size, max_tokens, context_size - max_tokens - PROMPT_SAFETY_TOKENS)

    async def count(rendered: Prompt) -> int:
        counted = ipb.CountTokensRequest()
        if isinstance(rendered, str):
            counted.text = rendered
        else:
            counted.messages.extend(prompting.turns_to_proto(rendered))
        response = await call.backends.inference.count_tokens(counted, call.options)
        return response.token_count

    limit = room.limit
    if share < 1 and pieces:
        base = await count(render([]))
        if base <= limit:
            limit = base + int((limit - base) * share)
    fitted = await fit(
        pieces, render, count, limit=limit, max_tokens=max_tokens, context_size=context_size
    )
    if isinstance(fitted.rendered, str):
        request.prompt = fitted.rendered
    else:
        request.ClearField("prompt")
        del request.messages[:]
        request.messages.extend(prompting.turns_to_proto(fitted.rendered))
    return fitted, room
