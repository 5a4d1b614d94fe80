"""Conversations with server-side history, and personal memory, as generation
stages.

- ``conversation_id``: the caller's earlier turns of that conversation are put
  between their system message and their new messages; the newest that fit the
  context are kept, the oldest dropped (the response's ``conversation`` says
  which were used and how many were dropped). The exchange is then kept as the
  next turn.
- ``memory: true``: the caller's own past interactions most similar to the
  question are added to the system message (the response's ``memory`` lists
  them), and the exchange is remembered.

Both fit what they add with ``budget.fit_into_request`` against the model's context, counted
by the inference service's tokenizer, so a conversation however long never
overflows it. When retrieval, feedback or memory also want room, the history
takes at most half of what is free, and memory half of what then remains.

Both only read and write the caller's own interactions (``flows.personal``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from lodestar.auth.permissions import Permission
from lodestar.services.gateway.call import Call
from lodestar.services.gateway.flows import personal, prompting
from lodestar.services.gateway.flows.augment import augmentation, question_vector
from lodestar.services.gateway.flows.budget import fit_into_request
from lodestar.services.gateway.flows.prompting import Turn
from lodestar.services.gateway.flows.runtime import FlowsRuntime
from lodestar.services.gateway.pipeline import Generation
from lodestar.services.gateway.schemas.inference import GenerateRequest

MEMORY_INSTRUCTIONS: Final = (
    "What this user said in earlier conversations with you (use it only where it helps "
    "answer them):"
)
_STATE_KEY = "flows_conversation"


@dataclass(frozen=True, slots=True)
class Exchange:
    """A remembered prompt and its answer: a past turn or a recalled memory."""

    id: int | str
    prompt: str
    answer: str
    turn: int = 0
    similarity: float | None = None

    @property
    def size(self) -> int:
        return len(self.prompt) + len(self.answer)

    def cut(self, chars: int) -> Exchange:
        half = max(1, chars // 2)
        return replace(self, prompt=self.prompt[-half:], answer=self.answer[:half])


@dataclass
class _State:
    """What the stages learned before generating, for storing afterwards."""

    turn: int | None = None


def _state(generation: Generation) -> _State:
    found: _State | None = getattr(generation.call.request.state, _STATE_KEY, None)
    if found is None:
        found = _State()
        setattr(generation.call.request.state, _STATE_KEY, found)
    return found


def _split_system(turns: Sequence[Turn]) -> tuple[str, list[Turn]]:
    rest = list(turns)
    system = ""
    if rest and rest[0][0] == "system":
        system = rest.pop(0)[1]
    return system, rest


class ConversationStage:
    """``conversation_id``: earlier turns in, this exchange kept as the next turn."""

    option = "conversation_id"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        call = generation.call
        conversation = generation.body.conversation_id
        assert conversation is not None
        turns = await conversation_turns(call, self._runtime, conversation)
        _state(generation).turn = ((turns[-1].turn or 0) if turns else 0) + 1
        # Newest first: ``fit`` keeps a prefix, so the oldest are dropped.
        pieces = [
            Exchange(item.id, item.prompt, item.answer, item.turn or 0) for item in reversed(turns)
        ]
        system, rest = _split_system(prompting.turns_of(generation.request))

        def render(chosen: Sequence[Exchange]) -> list[Turn]:
            out: list[Turn] = [("system", system)] if system else []
            for exchange in sorted(chosen, key=lambda e: e.turn):
                out.append(("user", exchange.prompt))
                out.append(("assistant", exchange.answer))
            return out + rest

        body = generation.body
        shared = body.context is not None or body.use_feedback or body.memory
        fitted, _ = await fit_into_request(
            call,
            self._runtime,
            generation.request,
            pieces,
            render,
            share=0.5 if shared else 1.0,
        )
        generation.extra["conversation"] = {
            "id": conversation,
            "turn": _state(generation).turn,
            "history": [e.id for e in sorted(fitted.pieces, key=lambda e: e.turn)],
            "dropped": fitted.dropped,
        }

    async def after(self, generation: Generation) -> None:
        return None


class MemoryStage:
    """``memory: true``: the caller's relevant past interactions in the system message."""

    option = "memory"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        call = generation.call
        body = generation.body
        vector = await question_vector(call, augmentation(generation), self._runtime)
        recalled = await personal.recall(
            call, self._runtime, vector, exclude_conversation=body.conversation_id
        )
        pieces = [
            Exchange(item.id, item.prompt, item.answer, similarity=item.similarity)
            for item in recalled
        ]
        info = await self._runtime.inference_info(call)
        request = generation.request
        raw_prompt = request.prompt if request.prompt and not info.has_chat_template else None
        system, rest = _split_system(prompting.turns_of(request))

        def block(chosen: Sequence[Exchange]) -> str:
            lines = [MEMORY_INSTRUCTIONS]
            for exchange in chosen:
                lines.append(f"- They said: {exchange.prompt}\n  You answered: {exchange.answer}")
            return "\n".join(lines) if chosen else ""

        def render(chosen: Sequence[Exchange]) -> str | list[Turn]:
            memories = block(chosen)
            if raw_prompt is not None:
                return f"{memories}\n\n{raw_prompt}" if memories else raw_prompt
            text = "\n\n".join(part for part in (system, memories) if part)
            return ([("system", text)] if text else []) + rest

        shared = body.context is not None or body.use_feedback
        fitted, _ = await fit_into_request(
            call,
            self._runtime,
            generation.request,
            pieces,
            render,
            share=0.5 if shared else 1.0,
        )
        generation.extra["memory"] = {
            "found": len(recalled),
            "recalled": [{"id": e.id, "similarity": e.similarity} for e in fitted.pieces],
        }

    async def after(self, generation: Generation) -> None:
        return None


async def conversation_turns(
    call: Call, runtime: FlowsRuntime, conversation_id: str
) -> list[personal.MemoryItem]:
    """The caller's turns of one conversation, in order (none for a new one)."""
    flt = personal.owned_interactions(call, personal.keyword("conversation_id", conversation_id))
    collection = personal.collection_of(runtime)
    turns = [personal.item_of(p) async for p in personal.scan(call, collection, flt)]
    return sorted(turns, key=lambda item: (item.turn or 0, item.created_at))


@dataclass(slots=True)
class ConversationSummary:
    id: str
    turns: int
    started_at: str
    updated_at: str
    # The first prompt, shortened.
    title: str


async def list_conversations_of(call: Call, runtime: FlowsRuntime) -> list[ConversationSummary]:
    """The caller's conversations, most recently active first."""
    flt = personal.owned_interactions(call)
    flt.must_not.add().is_empty.key = "conversation_id"
    grouped: dict[str, tuple[ConversationSummary, int]] = {}
    collection = personal.collection_of(runtime)
    async for point in personal.scan(call, collection, flt):
        item = personal.item_of(point)
        if item.conversation_id is None:
            continue
        turn = item.turn or 0
        found = grouped.get(item.conversation_id)
        if found is None:
            summary = ConversationSummary(
                item.conversation_id, 0, item.created_at, item.created_at, item.prompt[:120]
            )
            found = grouped[item.conversation_id] = (summary, turn)
        summary, first = found
        summary.turns += 1
        summary.started_at = min(summary.started_at, item.created_at)
        summary.updated_at = max(summary.updated_at, item.created_at)
        if turn < first:
            summary.title = item.prompt[:120]
            grouped[item.conversation_id] = (summary, turn)
    return sorted(
        (summary for summary, _ in grouped.values()),
        key=lambda s: (s.updated_at, s.id),
        reverse=True,
    )


def _asked(body: GenerateRequest) -> str:
    """The caller's new question as they sent it."""
    if body.prompt is not None:
        return body.prompt
    messages = body.messages or []
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""


class RememberStage:
    """Runs for every generation, after ``store_embedding``'s stage: keeps the
    exchange of a conversation or of ``memory: true`` as the caller's
    interaction, and folds anything stored in the conversations collection into
    their profile."""

    option = "remember"

    def __init__(self, runtime: FlowsRuntime) -> None:
        self._runtime = runtime

    def permissions(self, body: GenerateRequest) -> Iterable[Permission]:
        return ()

    async def before(self, generation: Generation) -> None:
        return None

    async def after(self, generation: Generation) -> None:
        body = generation.body
        call = generation.call
        remembering = body.memory or body.conversation_id is not None
        stored = generation.extra.get("stored")
        conversation: dict[str, Any] = {}
        if body.conversation_id is not None:
            conversation = {
                "conversation_id": body.conversation_id,
                "turn": _state(generation).turn,
            }
        if (
            stored is not None
            and stored["collection"] == self._runtime.settings.conversations_collection
        ):
            # store_embedding already kept it where memory lives: one point, not two.
            await personal.tag_stored(call, self._runtime, stored["id"], conversation)
            item_id = stored["id"]
        elif remembering:
            item = await personal.remember(
                call,
                self._runtime,
                _asked(body),
                generation.text,
                conversation_id=body.conversation_id,
                turn=_state(generation).turn,
                extra={"model": generation.model, "session_id": body.session_id or ""},
            )
            item_id = item.id
        else:
            return
        if body.conversation_id is not None:
            generation.extra["conversation"]["turn_id"] = item_id
        if body.memory:
            generation.extra["memory"]["remembered"] = item_id
