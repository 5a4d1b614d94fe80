"""Building the prompt of an augmented generation: retrieved passages and past
interactions (examples) around the caller's own prompt or conversation.

Pure functions of their inputs, so that what the model is shown can be tested
without any service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lodestar.inference.v1 import inference_service_pb2 as ipb

Turn = tuple[str, str]  # (role, content); role is system, user or assistant

RAG_INSTRUCTIONS = (
    "Answer the question using only the numbered passages below. Cite the passages you "
    "use by their number, like [1]. If the passages do not contain the answer, say that "
    "you do not know."
)
NO_CONTEXT_INSTRUCTIONS = (
    "No passage of the knowledge base matched the question. Say that the knowledge base "
    "has no answer to it; do not make one up."
)
EXAMPLE_INSTRUCTIONS = "Earlier answers that users rated well are included as examples."

_ROLE_TO_PROTO = {
    "system": ipb.ROLE_SYSTEM,
    "user": ipb.ROLE_USER,
    "assistant": ipb.ROLE_ASSISTANT,
}
_ROLE_FROM_PROTO = {v: k for k, v in _ROLE_TO_PROTO.items()}


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved point used as grounding."""

    id: int | str
    score: float
    text: str
    payload: dict[str, Any]
    truncated: bool = False

    @property
    def size(self) -> int:
        return len(self.text)

    @property
    def label(self) -> str:
        """A short name of where the passage comes from, if its payload has one."""
        page = self.payload.get("page")
        where = f", page {page}" if isinstance(page, int) else ""
        for key in ("title", "source", "name", "url", "path"):
            value = self.payload.get(key)
            if isinstance(value, str) and value:
                return value[:120] + where
        return ""

    def cut(self, chars: int) -> Passage:
        return replace(self, text=self.text[:chars].rstrip(), truncated=True)


@dataclass(frozen=True, slots=True)
class Example:
    """A past, well-rated interaction shown to the model as an example."""

    id: int | str
    similarity: float
    feedback_score: float
    prompt: str
    answer: str

    @property
    def size(self) -> int:
        return len(self.prompt) + len(self.answer)

    def cut(self, chars: int) -> Example:
        half = max(1, chars // 2)
        return replace(self, prompt=self.prompt[:half], answer=self.answer[:half])


def question_of(request: ipb.GenerateTextRequest) -> str:
    """What the caller asks: the prompt, or the last user turn of a conversation."""
    if request.prompt:
        return request.prompt
    for message in reversed(request.messages):
        if message.role == ipb.ROLE_USER:
            return message.content
    return request.messages[-1].content if request.messages else ""


def turns_of(request: ipb.GenerateTextRequest) -> list[Turn]:
    if request.prompt:
        return [("user", request.prompt)]
    return [(_ROLE_FROM_PROTO.get(m.role, "user"), m.content) for m in request.messages]


def _passages_block(passages: Sequence[Passage]) -> str:
    lines = []
    for number, passage in enumerate(passages, start=1):
        label = f" ({passage.label})" if passage.label else ""
        lines.append(f"[{number}]{label} {passage.text}")
    return "\n\n".join(lines)


def system_text(
    passages: Sequence[Passage], examples: Sequence[Example], *, context_requested: bool
) -> str:
    parts: list[str] = []
    if context_requested:
        if passages:
            parts.append(RAG_INSTRUCTIONS + "\n\nPassages:\n" + _passages_block(passages))
        else:
            parts.append(NO_CONTEXT_INSTRUCTIONS)
    if examples:
        parts.append(EXAMPLE_INSTRUCTIONS)
    return "\n\n".join(parts)


def compose_turns(
    original: Sequence[Turn],
    passages: Sequence[Passage],
    examples: Sequence[Example],
    *,
    context_requested: bool,
) -> list[Turn]:
    """The conversation the model sees: one system turn (the caller's own system
    text first, then the passages), the examples as earlier exchanges, then the
    caller's turns."""
    turns = list(original)
    caller_system = ""
    if turns and turns[0][0] == "system":
        caller_system = turns.pop(0)[1]
    ours = system_text(passages, examples, context_requested=context_requested)
    system = "\n\n".join(part for part in (caller_system, ours) if part)
    out: list[Turn] = [("system", system)] if system else []
    for example in examples:
        out.append(("user", example.prompt))
        out.append(("assistant", example.answer))
    out.extend(turns)
    return out


def compose_prompt(
    prompt: str,
    passages: Sequence[Passage],
    examples: Sequence[Example],
    *,
    context_requested: bool,
) -> str:
    """The same as ``compose_turns`` as one raw prompt, for a model without a
    chat template."""
    parts = [system_text(passages, examples, context_requested=context_requested)]
    for example in examples:
        parts.append(f"Question: {example.prompt}\nAnswer: {example.answer}")
    parts.append(f"Question: {prompt}\nAnswer:")
    return "\n\n".join(part for part in parts if part)


def turns_to_proto(turns: Sequence[Turn]) -> list[ipb.ChatMessage]:
    return [ipb.ChatMessage(role=_ROLE_TO_PROTO[role], content=text) for role, text in turns]


def excerpt(text: str, chars: int) -> str:
    if len(text) <= chars:
        return text
    return text[:chars].rstrip() + "…"


def passage_text(payload: dict[str, Any], text_key: str) -> str:
    """The text of a stored point: its text key, else the longest string value."""
    value = payload.get(text_key) if text_key else None
    if isinstance(value, str) and value:
        return value
    strings = [v for v in payload.values() if isinstance(v, str)]
    return max(strings, key=len) if strings else ""


def payload_excerpt(payload: dict[str, Any], *, skip: str, chars: int) -> dict[str, Any]:
    """The payload without its text (returned apart) and with long strings cut."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key == skip:
            continue
        out[key] = excerpt(value, chars) if isinstance(value, str) else value
    return out
